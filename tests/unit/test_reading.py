"""Bad data (truncated shards, undecodable images, stale manifests) and rare class sampling in the reader."""
import collections
import os

import numpy as np
import pytest
import torch

from uda_dist.data import reading, schema
from uda_dist.data.webdataset import LoaderConfig, eval_loader, train_loader

H, W = 16, 24


def encoded_split(n: int, seed: int = 0, rare: dict[int, int] | None = None) -> tuple[list[dict], dict]:
    """n encoded samples (labels of classes 0-3, plus class c covering rows of sample i for i, c in rare)."""
    rng = np.random.default_rng(seed)
    samples, raw = [], {}
    for i in range(n):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        label = rng.integers(0, 4, (H, W), dtype=np.uint8)
        if rare and i in rare:
            label[: H // 2] = rare[i]
        key = f"k{i:03d}"
        samples.append(schema.encode_sample(key, image, label, {}))
        raw[key] = (image, label)
    return samples, raw


def plain_cfg(**overrides) -> LoaderConfig:
    fields = dict(batch_size=1, crop_size=(H, W), flip=False, cat_max_ratio=1.0, num_workers=0, epoch_batches=12,
                  shuffle_buffer=0, eval_batch_size=1)
    return LoaderConfig(**{**fields, **overrides})


def as_uint8(image_B3HW: torch.Tensor) -> np.ndarray:
    return (image_B3HW * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture
def damaged(tmp_path):
    """A split of 9 samples in 3 shards: k004's image bytes are garbage, and shard 2 is cut inside k007's
    image (k007 keeps its json and label, k008 is lost). Returns (manifest, raw arrays, good keys)."""
    samples, raw = encoded_split(9)
    samples[4]["png"] = b"\x89PNG but not really"
    manifest = schema.write_shards(samples, str(tmp_path), dataset="toy", split="s", labeled=True, max_per_shard=3)
    k007 = manifest.shards[2].samples[1]
    path = manifest.urls()[2]
    with open(path, "r+b") as f:
        f.truncate(k007.offset + k007.size - 600)  # the image is the last member: cut inside it
    return manifest, raw, [f"k{i:03d}" for i in (0, 1, 2, 3, 5, 6)]


def test_eval_pass_skips_and_counts_bad_data_without_misaligning(damaged):
    manifest, raw, good = damaged
    seen, counts = [], collections.Counter()
    for batch in eval_loader(manifest.urls(), cfg=plain_cfg(bad_data="skip")):
        counts.update(batch.pop("bad_data"))
        for key, image, label, valid in zip(batch["key"], as_uint8(batch["image"]), batch["label"].numpy(),
                                            batch["valid"].tolist()):
            if valid:
                np.testing.assert_array_equal(image, raw[key][0])
                np.testing.assert_array_equal(label, raw[key][1])
                seen.append(key)
            else:  # the stand-in for an unusable sample is never scored
                assert key in ("k004", "k007") and (label == schema.IGNORE_INDEX).all()
    assert seen == good
    assert counts == {"skipped_samples": 2, "broken_shards": 1}


def test_train_stream_skips_and_counts_bad_data_without_misaligning(damaged):
    manifest, raw, good = damaged
    counts, keys = collections.Counter(), []
    for batch in train_loader(manifest, cfg=plain_cfg(bad_data="skip", epoch_batches=30), labeled=True, seed=0):
        counts.update(batch["bad_data"])
        key = batch["key"][0]
        keys.append(key)
        np.testing.assert_array_equal(as_uint8(batch["image"])[0], raw[key][0])
        np.testing.assert_array_equal(batch["label"][0].numpy(), raw[key][1])
    assert set(keys) <= set(good) and len(keys) == 30
    assert counts["skipped_samples"] > 0 and counts["broken_shards"] > 0


def test_fail_policy_names_the_shard_or_sample(damaged):
    manifest, _, _ = damaged
    with pytest.raises(reading.BadDataError, match="k004.*bad_data=skip"):
        list(eval_loader(manifest.urls()[:2], cfg=plain_cfg()))
    with pytest.raises(reading.BadDataError, match=f"shard {manifest.urls()[2]} could not be read"):
        list(eval_loader(manifest.urls()[2:], cfg=plain_cfg()))


def test_unreadable_data_fails_instead_of_spinning(tmp_path):
    urls = []
    for i in range(2):
        urls.append(str(tmp_path / f"junk{i}.tar"))
        with open(urls[-1], "wb") as f:
            f.write(os.urandom(3000))
    loader = train_loader(urls, cfg=plain_cfg(bad_data="skip"), labeled=True, seed=0)
    with pytest.raises(reading.BadDataError, match=f"{reading.MAX_CONSECUTIVE_BAD} reads in a row failed"):
        next(iter(loader))


def test_eval_ranks_stay_even_when_one_owns_a_bad_sample(damaged):
    manifest, _, _ = damaged
    batches = [len(list(eval_loader(manifest.urls(), cfg=plain_cfg(bad_data="skip"), rank=r, world_size=2)))
               for r in range(2)]
    assert batches[0] == batches[1] == 4  # 8 readable samples (k008 was cut off) over 2 ranks


def test_rcs_class_probs_are_daformers_softmax():
    pixels = np.array([5000, 0, 300, 20, *([0] * 15)], dtype=np.int64)
    classes, probs = reading.rcs_class_probs(pixels, temperature=0.01)
    freq = torch.tensor([5000.0, 300.0, 20.0], dtype=torch.float64)
    expected = torch.softmax((1 - freq / freq.sum()) / 0.01, dim=-1)  # DAFormer get_rcs_class_probs
    assert classes == [0, 2, 3]
    np.testing.assert_allclose(probs, expected.numpy(), rtol=1e-12)


def rare_manifest(tmp_path, n=10):
    """Class 18 fills half of k002 only; class 17 half of k005 and k006; classes 0-3 everywhere."""
    samples, raw = encoded_split(n, rare={2: 18, 5: 17, 6: 17})
    return schema.write_shards(samples, str(tmp_path), dataset="toy", split="s", labeled=True, max_per_shard=4), raw


def test_rare_class_sampler_draws_classes_by_probability_and_samples_above_the_threshold(tmp_path):
    manifest, _ = rare_manifest(tmp_path)
    sampler = reading.rare_class_sampler(manifest, temperature=0.5, min_pixels=60)  # 0-3 hold ~96 px each
    assert set(sampler.classes) == {0, 1, 2, 3, 17, 18}
    assert {s.key for _, s in sampler.samples[18]} == {"k002"} and {s.key for _, s in sampler.samples[17]} == {"k005", "k006"}
    rng = np.random.default_rng(0)
    draws = [sampler.draw(rng) for _ in range(4000)]
    share = collections.Counter(d["__rcs_class__"] for d in draws)
    for c, p in zip(sampler.classes, sampler.probs):
        assert abs(share[c] / len(draws) - p) < 0.03
    assert all(d["key"] == "k002" for d in draws if d["__rcs_class__"] == 18)


def test_rare_class_sampler_leaves_out_classes_below_the_threshold(tmp_path):
    manifest, _ = rare_manifest(tmp_path)
    sampler = reading.rare_class_sampler(manifest, temperature=0.01, min_pixels=150)  # rare halves are 192 px
    assert 18 in sampler.classes and all(c in (17, 18) for c in sampler.classes)  # 0-3 hold ~96 px each
    with pytest.raises(schema.SchemaError, match="no sample has more than 10000 pixels"):
        reading.rare_class_sampler(manifest, temperature=0.01, min_pixels=10000)


def test_rcs_stream_reads_single_samples_exactly_and_favours_rare_classes(tmp_path):
    manifest, raw = rare_manifest(tmp_path)
    cfg = plain_cfg(rcs_temperature=0.01, rcs_min_pixels=100, epoch_batches=60)
    keys = []
    for batch in train_loader(manifest, cfg=cfg, labeled=True, seed=0):
        key = batch["key"][0]
        keys.append(key)
        np.testing.assert_array_equal(as_uint8(batch["image"])[0], raw[key][0])
        np.testing.assert_array_equal(batch["label"][0].numpy(), raw[key][1])
    assert collections.Counter(keys)["k002"] > 60 / 10 * 3  # uniform sampling would give ~6


def test_rcs_needs_a_manifest_with_an_index(tmp_path):
    manifest, _ = rare_manifest(tmp_path)
    with pytest.raises(ValueError, match="needs a labeled split given as a Manifest"):
        train_loader(manifest.urls(), cfg=plain_cfg(rcs_temperature=0.01), labeled=True, seed=0)
    bare = schema.Manifest.from_json(manifest.to_json().replace('"samples"', '"old"'), location=manifest.location)
    with pytest.raises(schema.SchemaError, match="per-sample index"):
        train_loader(bare, cfg=plain_cfg(rcs_temperature=0.01), labeled=True, seed=0)


def test_a_stale_manifest_is_bad_data_not_a_wrong_sample(tmp_path):
    manifest, _ = rare_manifest(tmp_path / "a")
    shifted = schema.write_shards(encoded_split(10, seed=1)[0][1:], str(tmp_path / "a"), dataset="toy", split="s",
                                  labeled=True, max_per_shard=4)  # same file names, other samples
    assert shifted.urls() == manifest.urls()[:3]
    cfg = plain_cfg(rcs_temperature=0.01, rcs_min_pixels=100)
    with pytest.raises(reading.BadDataError, match="manifest does not match the shard"):
        list(train_loader(manifest, cfg=cfg, labeled=True, seed=0))
