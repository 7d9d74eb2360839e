"""python -m shards build when a file is broken or a rebuild fails, and the resolution it writes labels at:
a file that cannot be decoded ends the build with one stderr line naming it (exit 2, no traceback, also from
the pool's worker processes); a failed rebuild leaves the split without a manifest, locally and on s3://;
--resize resizes the images only unless --resize-labels; an unpacked Dark Zurich builds like the per-archive
one. Trees of a few tiny images (tests/dataset_trees.py)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from shards.cli import main
from tests import dataset_trees as trees
from tests.helpers import free_port
from uda_dist.data import reading, s3, schema

MANIFEST = f"gta5-train{schema.MANIFEST_SUFFIX}"


def build(layout: str, root: str, out, *extra: str, split: str = "train") -> int:
    return main(["build", "--layout", layout, "--root", root, "--split", split, "--out", str(out),
                 "--workers", "1", "--samples-per-shard", "1", *extra])


def read_back(location: str) -> tuple[schema.Manifest, dict]:
    """The split's manifest and {key: (image, label, json)} read through the training reader."""
    manifest = schema.read_manifest(location)
    samples = {}
    for raw in reading.read_samples([{"url": u} for u in manifest.urls()], reading.BadData("fail")):
        samples[raw["__key__"]] = reading.decoded(raw, labeled=manifest.labeled)
    return manifest, samples


def error_lines(capfd) -> list[str]:
    """stderr of this process and of its children (the pool's workers), as lines."""
    return capfd.readouterr().err.splitlines()


@pytest.fixture
def gta5(tmp_path) -> tuple[str, trees.Tree]:
    root = str(tmp_path / "gta5")
    return root, trees.make_gta5_tree(root, np.random.default_rng(0))


def damage(path: str, how: str) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"truncated": data[:len(data) // 2], "empty": b"", "not an image": b"<html>403</html>\n"}[how])


# ---------------------------------------------------------------- a file that cannot be decoded

@pytest.mark.parametrize("member, how, reason", [
    ("images", "truncated", "image file is truncated"), ("labels", "truncated", "Truncated File Read"),
    ("labels", "empty", "the file is empty (0 bytes)"),
    ("images", "not an image", "not an image file Pillow can identify"),
])
def test_an_undecodable_file_ends_the_build_with_one_line_naming_it(gta5, tmp_path, capfd, member, how, reason):
    root, _ = gta5
    path = os.path.join(root, member, "00002.png")
    damage(path, how)
    assert build("gta5", root, tmp_path / "out") == 2
    kind = "image" if member == "images" else "label"
    assert error_lines(capfd) == [f"error: {kind} {path} cannot be decoded: {reason}"]


def test_a_truncated_label_of_a_cityscapes_val_split_is_named(tmp_path, capfd):
    root = str(tmp_path / "cityscapes")
    trees.make_cityscapes_tree(root, np.random.default_rng(0))
    path = os.path.join(root, "gtFine", "val", "lindau", "lindau_000000_000019_gtFine_labelIds.png")
    damage(path, "truncated")
    assert build("cityscapes", root, tmp_path / "out", split="val") == 2
    assert error_lines(capfd) == [f"error: label {path} cannot be decoded: image file is truncated"]


# ---------------------------------------------------------------- a failed rebuild is not complete

@pytest.mark.parametrize("broken", ["00001", "00003"])
def test_a_failed_local_rebuild_leaves_no_manifest_and_verify_says_so(gta5, tmp_path, capfd, broken):
    root, _ = gta5
    out = tmp_path / "out"
    assert build("gta5", root, out) == 0 and (out / MANIFEST).is_file()
    image = os.path.join(root, "images", f"{broken}.png")
    shutil.copy(image, tmp_path / "good.png")
    damage(image, "truncated")
    capfd.readouterr()
    assert build("gta5", root, out) == 2
    assert not (out / MANIFEST).exists() and not (out / f"{MANIFEST}.tmp").exists()
    assert sorted(os.listdir(out)) == [f"gta5-train-{i:06d}.tar" for i in range(3)]  # old and replaced ones
    assert main(["verify", str(out / MANIFEST), "--workers", "1"]) == 2
    assert error_lines(capfd)[-1] == (f"error: no manifest at {out / MANIFEST}: 3 shards of the split are there "
                                      f"without it, so its last build did not finish; rebuild it with python -m "
                                      f"shards build")
    shutil.copy(tmp_path / "good.png", image)
    assert build("gta5", root, out) == 0 and main(["verify", str(out / MANIFEST), "--workers", "1"]) == 0


def test_a_rebuild_refused_before_writing_keeps_the_old_split_complete(gta5, tmp_path, capfd):
    root, _ = gta5
    out = tmp_path / "out"
    assert build("gta5", root, out) == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    os.remove(os.path.join(root, "labels", "00002.png"))
    assert build("gta5", root, out) == 2 and "00002.png has no label file" in error_lines(capfd)[-1]
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before  # nothing was replaced


def test_verify_of_a_folder_or_a_never_built_split_is_one_line(tmp_path, capfd):
    assert main(["verify", str(tmp_path)]) == 2
    assert main(["stats", str(tmp_path / "acdc-val.manifest.json")]) == 2
    assert error_lines(capfd) == [
        f"error: {tmp_path} is a folder: give a split's manifest, none is there",
        f"error: no manifest at {tmp_path / 'acdc-val.manifest.json'}: the split was never built there; "
        f"rebuild it with python -m shards build"]


def test_a_failed_s3_rebuild_leaves_no_manifest(gta5, s3_server, capfd):
    root, _ = gta5
    url = f"s3://runs/faults/{MANIFEST}"
    assert build("gta5", root, "s3://runs/faults") == 0 and s3.exists(url)
    image = os.path.join(root, "images", "00003.png")
    good = open(image, "rb").read()
    damage(image, "truncated")
    capfd.readouterr()
    assert build("gta5", root, "s3://runs/faults") == 2
    assert error_lines(capfd) == [f"error: image {image} cannot be decoded: image file is truncated"]
    assert not s3.exists(url) and s3.exists("s3://runs/faults/gta5-train-000001.tar")
    assert main(["verify", url, "--workers", "1"]) == 2
    assert error_lines(capfd)[-1].startswith(f"error: no manifest at {url}: the split was never built or its last "
                                             f"build did not finish")
    open(image, "wb").write(good)
    assert build("gta5", root, "s3://runs/faults") == 0 and main(["verify", url, "--workers", "1"]) == 0


def test_an_unreachable_s3_endpoint_is_one_line_before_anything_is_built(gta5, s3_server, monkeypatch, capfd):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    assert build("gta5", gta5[0], "s3://runs/nowhere") == 2
    lines = error_lines(capfd)
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the S3 endpoint http://127.0.0.1:")


# ---------------------------------------------------------------- label resolution

def test_resize_resizes_the_images_and_keeps_labels_at_their_published_size(tmp_path):
    root = str(tmp_path / "cityscapes")
    tree = trees.make_cityscapes_tree(root, np.random.default_rng(0))
    assert build("cityscapes", root, tmp_path / "out", "--resize", "6", "8", split="val") == 0
    location = str(tmp_path / "out" / f"cityscapes-val{schema.MANIFEST_SUFFIX}")
    _, samples = read_back(location)
    assert sorted(samples) == sorted(tree[("val", None)])
    for key, (image, label, meta) in samples.items():
        assert image.shape == (6, 8, 3) and label.shape == (12, 16)
        np.testing.assert_array_equal(label, tree[("val", None)][key].label)  # every published pixel
        assert (meta["orig_size"], meta["size"], meta["label_size"]) == ([12, 16], [6, 8], [12, 16])
        assert "label_resized_from" not in meta
    assert main(["verify", location, "--workers", "1"]) == 0


def test_resize_labels_resizes_them_nearest_and_records_it(tmp_path, capfd):
    root = str(tmp_path / "cityscapes")
    tree = trees.make_cityscapes_tree(root, np.random.default_rng(0))
    out = tmp_path / "out"
    assert build("cityscapes", root, out, "--resize", "6", "8", "--resize-labels", split="val") == 0
    _, samples = read_back(str(out / f"cityscapes-val{schema.MANIFEST_SUFFIX}"))
    for key, (image, label, meta) in samples.items():
        assert image.shape == (6, 8, 3) and label.shape == (6, 8) and "label_size" not in meta
        np.testing.assert_array_equal(label, tree[("val", None)][key].label[1::2, 1::2])  # PIL nearest: centres
        assert meta["label_resized_from"] == meta["orig_size"] == [12, 16]
    assert build("cityscapes", root, out, "--resize-labels", split="val") == 2
    assert error_lines(capfd)[-1] == "error: --resize-labels resizes labels to the --resize H W size: give --resize too"


def test_the_mismatched_gta5_label_records_its_file_size_either_way(gta5, tmp_path):
    root, tree = gta5
    (key, ((height, width), label_hw)), = trees.GTA5_MISMATCHED.items()
    for extra, label_shape in ((), (height, width)), (("--resize-labels",), (6, 8)):
        out = tmp_path / "-".join(("out", *extra))
        assert build("gta5", root, out, "--resize", "6", "8", *extra) == 0
        _, samples = read_back(str(out / MANIFEST))
        image, label, meta = samples[key]
        assert image.shape == (6, 8, 3) and label.shape == label_shape
        assert meta["label_resized_from"] == list(label_hw) and meta["orig_size"] == [height, width]
        if not extra:
            np.testing.assert_array_equal(label, tree[("train", None)][key].label)


# ---------------------------------------------------------------- Dark Zurich unpacked

def test_an_unpacked_darkzurich_builds_the_same_samples_as_the_archives(tmp_path):
    built = {}
    for dz_layout, make in trees.DARKZURICH_MAKERS.items():
        root = str(tmp_path / dz_layout)
        tree = make(root, np.random.default_rng(0))
        out = tmp_path / f"out-{dz_layout}"
        assert build("darkzurich", root, out, "--condition", "night", split="val") == 0
        manifest, samples = read_back(str(out / f"darkzurich-night-val{schema.MANIFEST_SUFFIX}"))
        assert manifest.labeled and sorted(samples) == sorted(tree[("val", "night")])
        for key, (image, label, meta) in samples.items():
            np.testing.assert_array_equal(image, tree[("val", "night")][key].image)
            np.testing.assert_array_equal(label, tree[("val", "night")][key].label)
        built[dz_layout] = {key: meta["relpath"] for key, (_, _, meta) in samples.items()}
    assert built["archives"].keys() == built["unpacked"].keys()
    assert all(built["archives"][key] == f"Dark_Zurich_val_anon/{relpath}"
               for key, relpath in built["unpacked"].items())


def test_a_json_records_the_published_sizes(gta5, tmp_path):
    """The sample json of an unresized build: orig_size == size, no label_size (label at the image's size)."""
    root, _ = gta5
    assert build("gta5", root, tmp_path / "out") == 0
    _, samples = read_back(str(tmp_path / "out" / MANIFEST))
    meta = samples["00001"][2]
    assert meta["orig_size"] == meta["size"] and "label_size" not in meta and "label_resized_from" not in meta
