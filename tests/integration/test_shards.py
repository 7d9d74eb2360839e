"""python -m shards end to end: each published layout (tiny trees in the real encodings) -> shards whose
trainIds are exactly the expected ones, pixel by pixel; byte-identical rebuilds; verify and stats; s3://."""
import os
import tarfile

import numpy as np
import pytest

from shards.cli import main
from tests.dataset_trees import MAKERS
from uda_dist.data import reading, schema
from uda_dist.data.webdataset import LoaderConfig, eval_loader

BUILDS = [("gta5", "train", None), ("synthia", "train", None), ("cityscapes", "train", None),
          ("cityscapes", "val", None), ("cityscapes", "test", None), ("darkzurich", "train", None),
          ("darkzurich", "val", "night"), ("acdc", "train", None), ("acdc", "val", "fog"), ("acdc", "test", None)]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    rng = np.random.default_rng(0)
    built = {}
    for layout, make in MAKERS.items():
        root = str(tmp_path_factory.mktemp(layout))
        built[layout] = (root, make(root, rng))
    return built


def expected_samples(tree: dict, split: str, condition: str | None) -> dict:
    return {key: value for (s, c), samples in tree.items() if s == split and condition in (None, c)
            for key, value in samples.items()}


def build(layout, root, split, condition, out, *extra) -> int:
    args = ["build", "--layout", layout, "--root", root, "--split", split, "--out", str(out), "--workers", "1",
            "--samples-per-shard", "2", *extra]
    return main(args + (["--condition", condition] if condition else []))


def read_back(location: str) -> tuple[schema.Manifest, dict]:
    manifest = schema.read_manifest(location)
    samples = {}
    for raw in reading.read_samples([{"url": u} for u in manifest.urls()], reading.BadData("fail")):
        image, label, meta = reading.decoded(raw, labeled=manifest.labeled)
        samples[raw["__key__"]] = (image, label, meta)
    return manifest, samples


@pytest.mark.parametrize("layout, split, condition", BUILDS)
def test_a_layout_becomes_shards_with_exact_trainids(trees, tmp_path, layout, split, condition):
    root, tree = trees[layout]
    assert build(layout, root, split, condition, tmp_path) == 0
    expected = expected_samples(tree, split, condition)
    name = f"{layout}-{condition}" if condition else layout
    manifest, samples = read_back(str(tmp_path / f"{name}-{split}{schema.MANIFEST_SUFFIX}"))
    assert sorted(samples) == sorted(expected) and manifest.num_samples == len(expected)
    assert manifest.labeled == all(label is not None for _, label in expected.values())
    for key, (image, label) in expected.items():
        np.testing.assert_array_equal(samples[key][0], image)
        if label is None:
            assert samples[key][1] is None
        else:
            np.testing.assert_array_equal(samples[key][1], label)
            assert list(manifest.shards[0].samples[0].class_pixels) or not manifest.labeled
    if layout == "gta5":  # the mismatched pair was resized, and says so
        assert samples["00003"][2]["label_resized_from"] == [10, 13]


def test_rebuilds_are_byte_identical_whatever_the_processes(trees, tmp_path):
    root, _ = trees["gta5"]
    assert build("gta5", root, "train", None, tmp_path / "a") == 0
    assert build("gta5", root, "train", None, tmp_path / "b", "--workers", "2") == 0
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(os.listdir(tmp_path / "b")) and len(names) == 3  # 2 shards + manifest
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_resize_and_jpeg(trees, tmp_path):
    root, tree = trees["cityscapes"]
    assert build("cityscapes", root, "val", None, tmp_path, "--resize", "6", "8", "--resize-labels",
                 "--image-format", "jpg") == 0
    _, samples = read_back(str(tmp_path / f"cityscapes-val{schema.MANIFEST_SUFFIX}"))
    for key, (image, label, meta) in samples.items():
        assert image.shape == (6, 8, 3) and label.shape == (6, 8) and meta["orig_size"] == [12, 16]
        np.testing.assert_array_equal(label, tree[("val", None)][key][1][1::2, 1::2])  # PIL nearest: centres


def test_verify_passes_then_finds_a_damaged_sample_and_stats_prints_the_classes(trees, tmp_path, capsys):
    root, _ = trees["acdc"]
    assert build("acdc", root, "train", None, tmp_path) == 0
    location = str(tmp_path / f"acdc-train{schema.MANIFEST_SUFFIX}")
    assert main(["verify", location, "--workers", "1"]) == 0
    assert main(["stats", location]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "acdc/train: 4 samples in 2 shards, labeled" in out and "traffic light" in out
    manifest = schema.read_manifest(location)
    target = manifest.shards[1].samples[1]
    with tarfile.open(manifest.urls()[1]) as tar:
        image_at = tar.getmember(f"{target.key}.png").offset_data
    with open(manifest.urls()[1], "r+b") as f:  # garble the image of the shard's 2nd sample past its signature
        f.seek(image_at + 8)
        f.write(b"\0" * 64)
    assert main(["verify", location, "--workers", "1"]) == 1
    assert f"sample '{target.key}'" in capsys.readouterr().out


def test_shards_go_to_s3_and_read_back_exactly(trees, s3_server):
    root, tree = trees["synthia"]
    assert build("synthia", root, "train", None, "s3://runs/synthia") == 0
    location = f"s3://runs/synthia/synthia-train{schema.MANIFEST_SUFFIX}"
    assert main(["verify", location, "--workers", "1"]) == 0
    seen = {}
    for batch in eval_loader(schema.read_manifest(location).urls(), cfg=LoaderConfig(eval_batch_size=1, num_workers=0)):
        seen[batch["key"][0]] = batch["label"][0].numpy()
    for key, (_, label) in tree[("train", None)].items():
        np.testing.assert_array_equal(seen[key], label)


@pytest.mark.parametrize("args, message", [
    (["--layout", "gta5", "--root", "/nonexistent"], "is not a folder"),
    (["--layout", "cityscapes", "--split", "test2"], "splits"),
    (["--layout", "acdc", "--condition", "sunny"], "conditions"),
])
def test_bad_arguments_are_named(trees, tmp_path, capsys, args, message):
    root = trees[args[1]][0]
    full = ["build", "--root", root, "--out", str(tmp_path), *args]
    assert main(full) == 2
    assert message in capsys.readouterr().err


def test_the_synthetic_benchmark_builds_like_a_dataset(tmp_path):
    from uda_dist.data.synthetic import SyntheticConfig, render_scene

    args = ["build", "--layout", "synthetic", "--condition", "night", "--split", "val", "--out", str(tmp_path),
            "--count", "3", "--workers", "1"]
    assert main(args) == 0
    _, samples = read_back(str(tmp_path / f"synthetic-night-val{schema.MANIFEST_SUFFIX}"))
    assert sorted(samples) == [f"night-val-{i:06d}" for i in range(3)]
    image, label = render_scene("night", 2, "val", cfg=SyntheticConfig())
    np.testing.assert_array_equal(samples["night-val-000002"][0], image)
    np.testing.assert_array_equal(samples["night-val-000002"][1], label)
