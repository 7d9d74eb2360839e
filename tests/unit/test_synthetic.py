"""The synthetic benchmark: determinism, labels, the shared layout prior, a real appearance shift, the
cache (atomic, written once, safe under concurrent callers) and shards that read back exactly."""
import json
import multiprocessing
import os

import numpy as np
import pytest
import webdataset as wds

from uda_dist.data import schema, synthetic
from uda_dist.data.synthetic import (
    DOMAINS, GENERATOR_VERSION, SyntheticConfig, ensure_synthetic, render_scene, resolve_manifest)

SMALL = SyntheticConfig(height=64, width=128)
REQUIRED = {0, 1, 2, 5, 7, 8, 10, 11, 13}  # road sidewalk building pole sign vegetation sky person car
MAIN = (0, 1, 2, 8, 10, 13)  # classes large enough for stable colour statistics


def renders(domain: str, n: int, cfg: SyntheticConfig = SMALL, split: str = "train"):
    return [render_scene(domain, i, split, cfg=cfg) for i in range(n)]


def class_colours(pairs) -> np.ndarray:
    """Mean RGB per class (19x3; NaN where absent) over (image, label) pairs."""
    sums, counts = np.zeros((19, 3)), np.zeros(19)
    for image, label in pairs:
        flat = label.reshape(-1)
        keep = flat < 19
        counts += np.bincount(flat[keep], minlength=19)
        for c in range(3):
            sums[:, c] += np.bincount(flat[keep], weights=image[..., c].reshape(-1)[keep], minlength=19)
    with np.errstate(invalid="ignore"):
        return sums / counts[:, None]


def band_frequencies(pairs, bands: int = 4) -> np.ndarray:
    """Class frequency (bands x 19) in horizontal bands of the image."""
    out = np.zeros((bands, 19))
    for _, label in pairs:
        for b, rows in enumerate(np.array_split(label, bands, axis=0)):
            out[b] += np.bincount(rows.reshape(-1), minlength=256)[:19] / rows.size
    return out / len(pairs)


@pytest.fixture(scope="module")
def small_renders():
    return {d: renders(d, 24) for d in DOMAINS}


def test_config_rejects_bad_values():
    for bad in (dict(shift=1.5), dict(shift=-0.1), dict(height=8), dict(num_train=0), dict(seed=-1)):
        with pytest.raises(ValueError):
            SyntheticConfig(**bad)
    with pytest.raises(ValueError, match="valid"):
        render_scene("day", 0, "train", cfg=SMALL)


def test_render_is_deterministic_and_seeded():
    for domain in DOMAINS:
        a, b = render_scene(domain, 3, "val", cfg=SMALL), render_scene(domain, 3, "val", cfg=SMALL)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert a[0].shape == (64, 128, 3) and a[0].dtype == np.uint8
        assert a[1].shape == (64, 128) and a[1].dtype == np.uint8
    other = render_scene("source", 3, "val", cfg=SyntheticConfig(height=64, width=128, seed=1))
    assert not np.array_equal(other[0], render_scene("source", 3, "val", cfg=SMALL)[0])
    assert not np.array_equal(render_scene("source", 3, "train", cfg=SMALL)[1],
                              render_scene("source", 3, "val", cfg=SMALL)[1])


def test_layouts_are_not_shared_between_domains():
    """Scene i of the source and of the target are independent draws, not the same street re-coloured."""
    agree = [np.mean(render_scene("source", i, "train", cfg=SMALL)[1]
                     == render_scene("target", i, "train", cfg=SMALL)[1]) for i in range(6)]
    assert np.mean(agree) < 0.8


def test_layout_does_not_depend_on_resolution():
    """No random draw depends on the image size: the same scene at twice the size has the same labels."""
    for i in range(4):
        small = render_scene("source", i, "train", cfg=SMALL)[1]
        big = render_scene("source", i, "train", cfg=SyntheticConfig(height=128, width=256))[1]
        assert np.mean(big[1::2, 1::2] == small) > 0.9


def test_labels_are_trainids_and_cover_the_classes(small_renders):
    seen = set()
    for domain in DOMAINS:
        present = set()
        for _, label in small_renders[domain][:10]:
            values = set(np.unique(label).tolist())
            assert values <= set(range(19)) | {255}
            present |= values
        assert len(present - {255}) >= 9, (domain, sorted(present))
        seen |= present
    assert REQUIRED <= seen


def test_class_frequencies_are_long_tailed(small_renders):
    freq = band_frequencies(small_renders["source"], bands=1)[0]
    big = freq[[0, 2, 8]].min()  # road, building, vegetation
    small = freq[[5, 7, 11]].max()  # pole, sign, person
    assert big > 0.08 and small < 0.03 and big > 5 * small


def test_domains_share_the_layout_prior(small_renders):
    """Sky on top and road at the bottom, with the same per-band class frequencies in every domain."""
    source = band_frequencies(small_renders["source"])
    assert source[0, 10] > 0.15 and source[-1, 0] > 0.4 and source[-1, 10] == 0
    for domain in ("target", "night"):
        diff = np.abs(band_frequencies(small_renders[domain]) - source)[:, list(MAIN)]
        assert diff.max() < 0.15, (domain, diff.round(2))


def test_target_and_night_look_different_from_the_source(small_renders):
    """At the default shift (0.5) class colours move by ~25 grey levels (target) and ~45 (night); the
    same-look baseline (shift 0, per-instance jitter only) is ~14 and ~7."""
    source = class_colours(small_renders["source"])[list(MAIN)]
    for domain in ("target", "night"):
        shift = np.abs(class_colours(small_renders[domain])[list(MAIN)] - source).mean()
        assert shift > 20, (domain, shift)
    brightness = {d: np.mean([img.mean() for img, _ in small_renders[d]]) for d in DOMAINS}
    assert brightness["night"] < 0.7 * brightness["source"]


def test_target_has_texture_and_noise_the_source_lacks(small_renders):
    """High-frequency energy inside large regions (grain, foliage, sensor noise) is the target's, not the source's."""
    def energy(pairs):
        values = []
        for image, label in pairs:
            grey = image.astype(np.float32).mean(axis=2)
            lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
            inner = label[1:-1, 1:-1]
            same = ((inner == label[:-2, 1:-1]) & (inner == label[2:, 1:-1])
                    & (inner == label[1:-1, :-2]) & (inner == label[1:-1, 2:]))
            values.append(np.median(np.abs(lap[same & ((inner == 0) | (inner == 8))])))  # median: edges of
        return np.mean(values)  # markings and shadows inside a region are few
    assert energy(small_renders["target"]) > 3 * energy(small_renders["source"]) + 2


def test_shift_zero_renders_targets_like_the_source(small_renders):
    flat = SyntheticConfig(height=64, width=128, shift=0.0)
    source = class_colours(small_renders["source"])[list(MAIN)]
    for domain in ("target", "night"):
        pairs = renders(domain, 24, flat)
        assert np.abs(class_colours(pairs)[list(MAIN)] - source).mean() < 10
        label = pairs[0][1]
        assert np.array_equal(label, small_renders[domain][0][1])  # shift changes appearance, not layout


TINY = dict(height=32, width=64, num_train=3, num_val=2)


def snapshot(folder: str) -> dict[str, tuple[int, int]]:
    return {name: (os.stat(os.path.join(folder, name)).st_mtime_ns, os.stat(os.path.join(folder, name)).st_size)
            for name in sorted(os.listdir(folder))}


def test_ensure_synthetic_generates_once_and_reads_back(tmp_path, capsys):
    cfg = SyntheticConfig(cache_dir=str(tmp_path), **TINY)
    paths = ensure_synthetic(cfg)
    assert sorted(paths) == sorted(f"{d}/{s}" for d in DOMAINS for s in ("train", "val"))
    assert "generating" in capsys.readouterr().out
    folder = os.path.dirname(paths["source/train"])
    assert folder == os.path.join(str(tmp_path), "synthetic", cfg.content_hash())
    assert sorted(os.listdir(os.path.join(str(tmp_path), "synthetic"))) == [cfg.content_hash()]  # no temp left
    before = snapshot(folder)
    assert ensure_synthetic(cfg) == paths
    assert snapshot(folder) == before and capsys.readouterr().out == ""
    assert json.load(open(os.path.join(folder, "synthetic.json")))["generator_version"] == GENERATOR_VERSION
    for name, path in paths.items():
        domain, split = name.split("/")
        manifest = schema.read_manifest(path)
        assert manifest.labeled and manifest.dataset == f"synthetic-{domain}" and manifest.split == split
        assert manifest.num_samples == cfg.count(split)
        samples = list(wds.WebDataset(manifest.urls(), shardshuffle=False))
        assert len(samples) == cfg.count(split)
        total = np.zeros(19, np.int64)
        for index, raw in enumerate(samples):
            image, label, meta = schema.decode_sample(raw)
            expected = render_scene(domain, index, split, cfg=cfg)
            assert np.array_equal(image, expected[0]) and np.array_equal(label, expected[1])
            assert meta["dataset"] == f"synthetic-{domain}" and meta["split"] == split
            total += schema.class_histogram(label)
        assert list(manifest.class_pixels) == total.tolist()


def test_generation_is_byte_identical_and_keyed_by_content(tmp_path):
    a = ensure_synthetic(SyntheticConfig(cache_dir=str(tmp_path / "a"), **TINY))
    b = ensure_synthetic(SyntheticConfig(cache_dir=str(tmp_path / "b"), **TINY))
    folder_a, folder_b = os.path.dirname(a["night/train"]), os.path.dirname(b["night/train"])
    shards = [n for n in sorted(os.listdir(folder_a)) if n.endswith((".tar", ".json")) and n != "synthetic.json"]
    assert shards == [n for n in sorted(os.listdir(folder_b)) if n in shards] and len(shards) == 12
    for name in shards:
        assert open(os.path.join(folder_a, name), "rb").read() == open(os.path.join(folder_b, name), "rb").read()
    hashes = {SyntheticConfig(**{**TINY, **change}).content_hash()
              for change in ({}, {"seed": 1}, {"shift": 0.25}, {"num_val": 3}, {"width": 96})}
    assert len(hashes) == 5
    assert SyntheticConfig(cache_dir="x", **TINY).content_hash() == SyntheticConfig(**TINY).content_hash()
    assert SyntheticConfig(shift=1, **TINY).content_hash() == SyntheticConfig(shift=1.0, **TINY).content_hash()


def test_concurrent_callers_share_one_complete_cache(tmp_path):
    """Two processes generating at once: both succeed, one folder survives, no temporary folder is left."""
    cfg = SyntheticConfig(cache_dir=str(tmp_path), **TINY)
    context = multiprocessing.get_context("fork")  # modules already imported: both start at once
    procs = [context.Process(target=ensure_synthetic, args=(cfg,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert os.listdir(os.path.join(str(tmp_path), "synthetic")) == [cfg.content_hash()]
    paths = ensure_synthetic(cfg)
    assert all(schema.read_manifest(p).num_samples == cfg.count(name.split("/")[1]) for name, p in paths.items())


def test_a_caller_that_loses_the_race_keeps_the_winners_cache(tmp_path, monkeypatch):
    cfg = SyntheticConfig(cache_dir=str(tmp_path), **TINY)
    real = synthetic._generate

    def beaten(cfg_, out_dir):  # another caller finishes while this one generates
        monkeypatch.setattr(synthetic, "_generate", real)
        winner = snapshot(os.path.dirname(ensure_synthetic(cfg_)["source/val"]))
        real(cfg_, out_dir)
        beaten.winner = winner

    monkeypatch.setattr(synthetic, "_generate", beaten)
    paths = ensure_synthetic(cfg)
    folder = os.path.dirname(paths["source/val"])
    assert snapshot(folder) == beaten.winner and os.listdir(os.path.dirname(folder)) == [cfg.content_hash()]
    os.remove(paths["night/val"])  # an incomplete cache is regenerated
    assert ensure_synthetic(cfg) == paths and all(os.path.exists(p) for p in paths.values())
    assert os.listdir(os.path.dirname(folder)) == [cfg.content_hash()]


def test_resolve_manifest(tmp_path):
    cfg = SyntheticConfig(cache_dir=str(tmp_path), **TINY)
    with pytest.raises(ValueError, match="synthetic:source/train"):
        resolve_manifest("synthetic:target/test", cfg)
    with pytest.raises(ValueError, match="valid names"):
        resolve_manifest("synthetic:day/val", cfg)
    assert not os.path.exists(os.path.join(str(tmp_path), "synthetic"))  # a bad name generates nothing
    path = resolve_manifest("synthetic:target/val", cfg)
    assert path == ensure_synthetic(cfg)["target/val"] == resolve_manifest("target/val", cfg)
    assert schema.read_manifest(path).dataset == "synthetic-target"
