"""shards.layouts and shards.labels on tiny trees in the real published layouts (tests/dataset_trees.py):
every labeled split comes out pixel-exact in trainIds, every broken layout raises a ValueError naming it."""
from __future__ import annotations

import os
import re
import shutil
import zlib

import numpy as np
import pytest
from PIL import Image

from shards import labels, layouts
from tests import dataset_trees as trees

TREE_CONDITIONS = {"darkzurich": ("night", "twilight", "day"), "acdc": trees.ACDC_CONDITIONS}
CASES = [(layout, split, condition) for layout in layouts.LAYOUTS for split in layouts.splits(layout)
         for condition in (None, *TREE_CONDITIONS.get(layout, ()))
         if (layout, split) != ("darkzurich", "val") or condition in (None, "night")]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[str, trees.Tree]]:
    """Every layout's tree, built once for the module: {layout: (root, expected)}."""
    out = {}
    for seed, (layout, make) in enumerate(trees.MAKERS.items()):
        root = str(tmp_path_factory.mktemp(layout))
        out[layout] = (root, make(root, np.random.default_rng(seed)))
    return out


def _tree(tmp_path, layout: str) -> tuple[str, trees.Tree]:
    """A fresh tree of one layout that a test may break."""
    root = str(tmp_path / layout)
    return root, trees.MAKERS[layout](root, np.random.default_rng(0))


# ---------------------------------------------------------------- the trees come out exactly

@pytest.mark.parametrize("layout,split,condition", CASES)
def test_every_split_lists_and_loads_exactly(built, layout, split, condition):
    root, tree = built[layout]
    expected = tree[(split, condition)]
    samples = layouts.list_samples(layout, root, split, condition=condition)
    assert [s.key for s in samples] == sorted(expected)
    for sample in samples:
        want = expected[sample.key]
        image, label, meta = layouts.load_sample(sample)
        assert os.path.isabs(sample.image) and meta["relpath"] == sample.relpath
        assert os.path.join(root, sample.relpath) == sample.image
        np.testing.assert_array_equal(image, want.image)
        assert image.dtype == np.uint8 and image.shape[2] == 3
        if want.label is None:
            assert sample.label is None and label is None
        else:
            assert label.dtype == np.uint8 and label.shape == image.shape[:2]
            np.testing.assert_array_equal(label, want.label)
        mismatched = trees.GTA5_MISMATCHED.get(sample.key) if layout == "gta5" else None
        assert meta.get("label_resized_from") == (list(mismatched[1]) if mismatched else None)


def test_the_trees_cover_every_class_and_unmapped_ids(built):
    """The fixtures exercise the tables: all 19 trainIds and ignore appear in every labeled source."""
    for layout, split in (("gta5", "train"), ("synthia", "train"), ("cityscapes", "train"), ("acdc", "val"),
                          ("darkzurich", "val")):
        values = np.unique(np.concatenate([e.label.ravel() for e in built[layout][1][(split, None)].values()]))
        assert values.tolist() == [*range(19), 255], layout


def test_keys_follow_each_layouts_convention(built):
    def keys(layout, split):
        return [s.key for s in layouts.list_samples(layout, built[layout][0], split)]

    def relpaths(layout, split):
        return [s.relpath for s in layouts.list_samples(layout, built[layout][0], split)]

    assert keys("gta5", "train") == ["00001", "00002", "00003"]
    assert keys("synthia", "train") == ["0000000", "0000001", "0000002"]
    assert keys("cityscapes", "val") == ["frankfurt_000000_000294", "lindau_000000_000019"]
    assert keys("darkzurich", "val") == ["night-GOPR0356_frame_000321", "night-GOPR0356_frame_000322"]
    assert "fog-GOPR0475_frame_000041" in keys("acdc", "train")
    assert relpaths("gta5", "train")[0] == "images/00001.png"
    assert relpaths("synthia", "train")[0] == "RGB/0000000.png"
    assert relpaths("cityscapes", "val")[0] == "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    assert relpaths("darkzurich", "val")[0] == \
        "Dark_Zurich_val_anon/rgb_anon/val/night/GOPR0356/GOPR0356_frame_000321_rgb_anon.png"
    assert relpaths("acdc", "train")[0] == "rgb_anon/fog/train/GOPR0475/GOPR0475_frame_000041_rgb_anon.png"
    all_keys = [k for layout in layouts.LAYOUTS for split in layouts.splits(layout) for k in keys(layout, split)]
    assert all(k and "." not in k for k in all_keys)
    assert {k.split("-")[0] for k in keys("darkzurich", "train")} == {"night", "twilight", "day"}


def test_labels_keep_their_published_size(built):
    """Only the size-mismatched GTA5 pair is fitted to its image; every other label comes out as published."""
    for layout in layouts.LAYOUTS:
        for split in layouts.splits(layout):
            for sample in layouts.list_samples(layout, built[layout][0], split):
                if sample.label is not None and (layout, sample.key) != ("gta5", *trees.GTA5_MISMATCHED):
                    with Image.open(sample.label) as raw:
                        assert layouts.load_sample(sample)[1].shape == raw.size[::-1], (layout, sample.key)


def test_unlabeled_splits_and_labels_false_give_no_label(built, tmp_path):
    for layout, split in (("cityscapes", "test"), ("darkzurich", "train"), ("acdc", "test")):
        assert all(s.label is None for s in layouts.list_samples(layout, built[layout][0], split)), layout
    assert os.path.isdir(os.path.join(built["cityscapes"][0], "gtFine", "test"))  # dummy labels, ignored
    root, _ = _tree(tmp_path, "gta5")
    shutil.rmtree(os.path.join(root, "labels"))
    samples = layouts.list_samples("gta5", root, "train", labels=False)
    assert [s.label for s in samples] == [None] * 3 and layouts.load_sample(samples[0])[1] is None


def test_size_mismatched_gta5_label_is_resized_nearest_and_recorded(built):
    (key, ((height, width), (label_h, label_w))), = trees.GTA5_MISMATCHED.items()
    sample = {s.key: s for s in layouts.list_samples("gta5", built["gta5"][0], "train")}[key]
    with Image.open(sample.label) as raw:
        assert raw.size == (label_w, label_h) != (width, height)  # the label file really differs
    image, label, meta = layouts.load_sample(sample)
    assert image.shape[:2] == label.shape == (height, width) and meta["label_resized_from"] == [label_h, label_w]
    np.testing.assert_array_equal(label, trees.nearest_resize(labels.gta5_label(sample.label), height, width))


# ---------------------------------------------------------------- Dark Zurich: per archive or unpacked

DZ_CASES = [("train", None), ("train", "night"), ("train", "twilight"), ("train", "day"), ("val", None),
            ("val", "night")]


@pytest.mark.parametrize("dz_layout", sorted(trees.DARKZURICH_MAKERS))
def test_darkzurich_reads_either_layout_with_the_same_keys(tmp_path, dz_layout):
    root = str(tmp_path / dz_layout)
    tree = trees.DARKZURICH_MAKERS[dz_layout](root, np.random.default_rng(5))
    assert layouts.darkzurich_layout(root) == dz_layout
    top = sorted(os.listdir(root))
    assert top == (["Dark_Zurich_train_anon", "Dark_Zurich_val_anon"] if dz_layout == "archives"
                   else ["corresp", "gps", "gt", "rgb_anon"])
    for split, condition in DZ_CASES:
        samples = layouts.list_samples("darkzurich", root, split, condition=condition)
        assert [s.key for s in samples] == sorted(tree[(split, condition)])
        for sample in samples:
            image, label, _ = layouts.load_sample(sample)
            want = tree[(split, condition)][sample.key]
            np.testing.assert_array_equal(image, want.image)
            assert (label is None) == (want.label is None) == (split == "train")
            if label is not None:
                np.testing.assert_array_equal(label, want.label)
    val = layouts.list_samples("darkzurich", root, "val")[0]
    prefix = "Dark_Zurich_val_anon/" if dz_layout == "archives" else ""
    assert val.relpath == f"{prefix}rgb_anon/val/night/GOPR0356/GOPR0356_frame_000321_rgb_anon.png"
    assert val.label == os.path.join(root, f"{prefix}gt/val/night/GOPR0356/GOPR0356_frame_000321_gt_labelTrainIds.png")


def test_darkzurich_root_with_both_layouts_or_neither_is_one_line_naming_the_folders(tmp_path):
    root, _ = _tree(tmp_path, "darkzurich")
    os.makedirs(os.path.join(root, "rgb_anon", "val", "night"))
    with pytest.raises(ValueError, match=r"^darkzurich root .* holds both layouts: Dark_Zurich_train_anon/ and "
                                         r"Dark_Zurich_val_anon/ \(one folder per archive\) and rgb_anon/ "
                                         r"\(unpacked\); keep one of them$") as both:
        layouts.list_samples("darkzurich", root, "val")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not dark zurich")
    with pytest.raises(ValueError, match=r"^darkzurich root .*empty holds neither Dark_Zurich_train_anon/ or "
                                         r"Dark_Zurich_val_anon/ .* nor rgb_anon/ and gt/ .*mmsegmentation") as neither:
        layouts.list_samples("darkzurich", str(empty), "train")
    assert "\n" not in str(both.value) + str(neither.value)


def test_darkzurich_unpacked_with_a_missing_folder_names_it(tmp_path):
    root = str(tmp_path / "dz")
    trees.make_darkzurich_unpacked_tree(root, np.random.default_rng(0))
    shutil.rmtree(os.path.join(root, "gt"))
    with pytest.raises(ValueError, match=r"expected folder .*dz/gt/val/night is missing"):
        layouts.list_samples("darkzurich", root, "val")
    assert len(layouts.list_samples("darkzurich", root, "train")) == 7  # rgb_anon/ alone is the unpacked layout


@pytest.mark.parametrize("dz_layout", sorted(trees.DARKZURICH_MAKERS))
def test_darkzurich_night_train_lists_its_day_pairs_from_the_correspondence_files(tmp_path, dz_layout):
    root = str(tmp_path / dz_layout)
    tree = trees.DARKZURICH_MAKERS[dz_layout](root, np.random.default_rng(5))
    samples = layouts.list_samples("darkzurich", root, "train", condition="night", day_pairs=True)
    assert {s.key: s.day for s in samples} == {
        night: os.path.join(root, "" if dz_layout == "unpacked" else "Dark_Zurich_train_anon", "rgb_anon", "train",
                            "day", day[4:12], f"{day[4:]}_rgb_anon.png")
        for night, day in trees.DARKZURICH_DAY_PAIRS.items()}
    for sample in samples:
        night = tree[("train", "night")][sample.key].image
        day = tree[("train", "day")][trees.DARKZURICH_DAY_PAIRS[sample.key]].image
        want = np.asarray(Image.fromarray(day).resize(night.shape[1::-1], Image.BILINEAR)) \
            if day.shape != night.shape else day
        np.testing.assert_array_equal(layouts.load_day_image(sample, night.shape[:2]), want)
    assert all(s.day is None for s in layouts.list_samples("darkzurich", root, "train", condition="night"))


def _corresp(root: str) -> str:
    return os.path.join(root, "Dark_Zurich_train_anon", "corresp", "train", "night")


@pytest.mark.parametrize("breakage, message", [
    ("no_folder", r"day pairs need Dark Zurich's correspondence files: .*corresp/train/night is missing"),
    ("no_row", r"night image .*GOPR0355_frame_000007_rgb_anon\.png has no row in the correspondence files"),
    ("no_day", r"day image .*GOPR0347_frame_000005_rgb_anon\.png, paired with .*GOPR0351_frame_000160_rgb_anon"
               r"\.png by the correspondence files, is missing"),
    ("conflict", r"GOPR0355\.csv:2: night image train/night/GOPR0351/GOPR0351_frame_000159 is paired with "
                 r"train/day/GOPR0347/GOPR0347_frame_000005 here and with train/day/GOPR0346/GOPR0346_frame_000001 "
                 r"at .*GOPR0351\.csv:1"),
    ("bad_row", r"GOPR0355\.csv:1: expected 'night image,day image', got 'a,b,c'"),
    ("not_night", r"day pairs exist for Dark Zurich's night train images only: .*got darkzurich train twilight")])
def test_day_pairs_that_cannot_be_made_are_one_line_naming_the_file(tmp_path, breakage, message):
    root, _ = _tree(tmp_path, "darkzurich")
    condition = "twilight" if breakage == "not_night" else "night"
    if breakage == "no_folder":
        shutil.rmtree(_corresp(root))
    elif breakage == "no_row":
        os.remove(os.path.join(_corresp(root), "GOPR0355.csv"))
    elif breakage == "no_day":
        os.remove(os.path.join(root, "Dark_Zurich_train_anon", "rgb_anon", "train", "day", "GOPR0347",
                               "GOPR0347_frame_000005_rgb_anon.png"))
        shutil.rmtree(os.path.join(root, "Dark_Zurich_train_anon", "rgb_anon", "train", "day", "GOPR0347"))
    elif breakage in ("conflict", "bad_row"):
        with open(os.path.join(_corresp(root), "GOPR0355.csv"), "a" if breakage == "conflict" else "w") as f:
            f.write("train/night/GOPR0351/GOPR0351_frame_000159,train/day/GOPR0347/GOPR0347_frame_000005\n"
                    if breakage == "conflict" else "a,b,c\n")
    with pytest.raises(ValueError, match=message) as error:
        layouts.list_samples("darkzurich", root, "train", condition=condition, day_pairs=True)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- files that cannot be decoded

def _truncate(path: str, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])


DAMAGES = {"truncated": _truncate, "empty": lambda p: open(p, "wb").close(),
           "not an image": lambda p: open(p, "wb").write(b"<html>404 Not Found</html>\n")}
REASONS = {"truncated": ".*([Tt]runcated|broken)", "empty": r"the file is empty \(0 bytes\)",
           "not an image": "not an image file Pillow can identify"}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("layout,member", [("cityscapes", "image"), ("cityscapes", "label"),
                                           ("synthia", "label"), ("gta5", "label"), ("acdc", "label")])
def test_a_file_that_cannot_be_decoded_is_one_line_naming_it(tmp_path, layout, member, damage):
    root, _ = _tree(tmp_path, layout)
    sample = layouts.list_samples(layout, root, layouts.splits(layout)[0])[-1]
    path = getattr(sample, member)
    DAMAGES[damage](path)
    with pytest.raises(ValueError) as error:
        layouts.load_sample(sample)
    message = str(error.value)
    assert path in message and "\n" not in message
    if (layout, damage) != ("synthia", "empty") and (layout, damage) != ("synthia", "not an image"):
        assert re.search(rf"^{member} {re.escape(path)} cannot be decoded: ({REASONS[damage]})", message), message
    else:  # the 16-bit reader checks the PNG signature itself
        assert "is not a PNG file" in message


def test_a_label_cut_short_is_not_read_as_partial_ids(tmp_path):
    """Pillow decodes lazily: the label decoders force the full decode, so a cut file raises, naming it."""
    path = str(tmp_path / "l_gt_labelTrainIds.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 19, (64, 80), dtype=np.uint8)).save(path)
    _truncate(path, 0.6)
    with pytest.raises(OSError, match="truncated"):
        labels.trainid_label(path)
    with pytest.raises(ValueError, match=rf"label {re.escape(path)} cannot be decoded: image file is truncated"):
        layouts._decoded(path, "label", labels.trainid_label)


# ---------------------------------------------------------------- label decoding

def _filter_types(path: str, height: int, row_bytes: int) -> set[int]:
    """The filter byte of every scanline of a non-interlaced PNG with one IDAT chunk."""
    data = open(path, "rb").read()
    start = data.index(b"IDAT") + 4
    raw = zlib.decompress(data[start:start + int.from_bytes(data[start - 8:start - 4], "big")])
    return {raw[row * (row_bytes + 1)] for row in range(height)}


@pytest.mark.parametrize("interlace", [False, True])
def test_png16_reader_is_exact_where_pillow_keeps_only_high_bytes(tmp_path, interlace):
    rng = np.random.default_rng(1)
    values = rng.integers(0, 65536, (13, 17, 3), dtype=np.uint16)
    values[..., 0] = rng.integers(0, 40, (13, 17))  # SYNTHIA-like ids: all < 256
    values[0, :4, 0] = [255, 256, 300, 1000]
    path = str(tmp_path / "label.png")
    trees.write_png16_rgb(path, values, interlace=interlace)
    if not interlace:
        assert _filter_types(path, 13, 17 * 6) == {0, 1, 2, 3, 4}
    got = labels.read_png16_rgb(path)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, values)
    with Image.open(path) as plain:
        np.testing.assert_array_equal(np.asarray(plain), values >> 8)  # Pillow's own decode: high bytes only


def test_png16_reader_reads_8bit_rgb_and_refuses_other_formats(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb8.png")
    got = labels.read_png16_rgb(str(tmp_path / "rgb8.png"))
    assert got.dtype == np.uint16 and (got == rgb).all()
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "gray16.png")
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(tmp_path / "rgba.png")
    for name, depth, colour in (("gray16.png", 16, 0), ("rgba.png", 8, 6)):
        with pytest.raises(ValueError, match=rf"{name}.*bit depth {depth}, colour type {colour}"):
            labels.read_png16_rgb(str(tmp_path / name))
    (tmp_path / "fake.png").write_bytes(b"not a png at all, but long enough to have a header......")
    with pytest.raises(ValueError, match="fake.png is not a PNG"):
        labels.read_png16_rgb(str(tmp_path / "fake.png"))


def test_synthia_labels_map_the_r_channel_and_plain_pillow_would_be_wrong(built):
    root, tree = built["synthia"]
    for key, want in tree[("train", None)].items():
        path = os.path.join(root, "GT", "LABELS", f"{key}.png")
        np.testing.assert_array_equal(labels.synthia_label(path), want.label)
        with Image.open(path) as plain:
            naive = labels.SYNTHIA_ID_TO_TRAINID[np.asarray(plain)[..., 0]]
        assert (naive != want.label).mean() > 0.5, key


def test_lookup_tables_match_the_published_id_tables():
    cityscapes, synthia = labels.CITYSCAPES_LABELID_TO_TRAINID, labels.SYNTHIA_ID_TO_TRAINID
    for table, mapping in ((cityscapes, trees.CITYSCAPES_TRAIN), (synthia, trees.SYNTHIA_TRAIN)):
        assert table.dtype == np.uint8 and table.shape == (256,)
        assert {i: int(t) for i, t in enumerate(table) if t != 255} == mapping
    assert sorted(trees.CITYSCAPES_TRAIN.values()) == list(range(19))
    ids = np.array([[3, 4, 21, 0], [11, 255, 17, 33]], np.uint8)
    assert cityscapes[ids].tolist() == [[255, 255, 8, 255], [2, 255, 5, 18]]
    assert synthia[ids].tolist() == [[0, 1, 3, 255], [18, 255, 12, 255]]


def test_gta5_labels_are_raw_palette_indices(tmp_path):
    ids = np.array([[7, 8, 0, 250], [33, 26, 1, 24]], np.uint8)
    path = str(tmp_path / "00001.png")
    trees.write_palette_png(path, ids, trees.gta5_palette(np.random.default_rng(3)))
    with Image.open(path) as im:
        assert im.mode == "P"
        assert (np.asarray(im.convert("L")) != ids).any()  # a converting decoder destroys the ids
    np.testing.assert_array_equal(labels.read_palette_index(path), ids)
    assert labels.gta5_label(path).tolist() == [[0, 1, 255, 255], [18, 13, 255, 11]]


def test_trainid_labels_keep_0_to_18_and_ignore_the_rest(tmp_path):
    Image.fromarray(np.array([[0, 18, 19, 254, 255]], np.uint8)).save(tmp_path / "l.png")
    assert labels.trainid_label(str(tmp_path / "l.png")).tolist() == [[0, 18, 255, 255, 255]]


@pytest.mark.parametrize("decoder", ["gta5", "cityscapes", "trainid"])
def test_label_in_a_converting_mode_is_refused(tmp_path, decoder):
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"colour\.png.*mode 'RGB'"):
        labels.DECODERS[decoder](str(tmp_path / "colour.png"))


# ---------------------------------------------------------------- names and errors

def test_names_splits_and_conditions():
    assert layouts.splits("cityscapes") == ("train", "val", "test") and layouts.splits("gta5") == ("train",)
    assert layouts.conditions("darkzurich") == ("night", "twilight", "day") and layouts.conditions("synthia") == ()
    assert [layouts.dataset_name("gta5"), layouts.dataset_name("acdc"), layouts.dataset_name("acdc", "fog"),
            layouts.dataset_name("darkzurich", "night")] == ["gta5", "acdc", "acdc-fog", "darkzurich-night"]
    for call in (lambda: layouts.splits("kitti"), lambda: layouts.conditions("kitti"),
                 lambda: layouts.dataset_name("kitti")):
        with pytest.raises(ValueError, match="unknown layout 'kitti'"):
            call()
    with pytest.raises(ValueError, match="unknown condition 'fog' for gta5"):
        layouts.dataset_name("gta5", "fog")


def test_unknown_layout_split_condition_and_missing_root(built, tmp_path):
    root = built["acdc"][0]
    cases = [(("kitti", root, "train"), {}, "unknown layout 'kitti'"),
             (("acdc", root, "trainval"), {}, "unknown split 'trainval' for acdc"),
             (("acdc", root, "train"), {"condition": "sunny"}, "unknown condition 'sunny' for acdc"),
             (("darkzurich", built["darkzurich"][0], "val"), {"condition": "day"},
              "unknown condition 'day' for darkzurich val; valid conditions: night"),
             (("gta5", built["gta5"][0], "train"), {"condition": "fog"}, "gta5 has no conditions"),
             (("gta5", str(tmp_path / "nowhere"), "train"), {}, "dataset root .*nowhere.* is not a folder")]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            layouts.list_samples(*args, **kwargs)


def test_broken_trees_raise_naming_the_path(tmp_path):
    root, _ = _tree(tmp_path, "cityscapes")
    os.remove(os.path.join(root, "gtFine", "train", "bochum", "bochum_000000_000313_gtFine_labelIds.png"))
    with pytest.raises(ValueError, match=r"image .*bochum_000000_000313_leftImg8bit.png has no label file"):
        layouts.list_samples("cityscapes", root, "train")
    os.remove(os.path.join(root, "leftImg8bit", "val", "lindau", "lindau_000000_000019_leftImg8bit.png"))
    with pytest.raises(ValueError, match=r"label .*lindau_000000_000019_gtFine_labelIds.png has no image"):
        layouts.list_samples("cityscapes", root, "val")
    shutil.rmtree(os.path.join(root, "gtFine", "val"))
    with pytest.raises(ValueError, match=r"expected folder .*gtFine/val is missing"):
        layouts.list_samples("cityscapes", root, "val")
    shutil.copy(os.path.join(root, "leftImg8bit", "test", "bielefeld", "bielefeld_000001_000003_leftImg8bit.png"),
                os.path.join(root, "leftImg8bit", "test", "berlin"))
    with pytest.raises(ValueError, match="duplicate key 'bielefeld_000001_000003' in cityscapes test"):
        layouts.list_samples("cityscapes", root, "test")
    for city in ("berlin", "bielefeld"):
        shutil.rmtree(os.path.join(root, "leftImg8bit", "test", city))
        os.makedirs(os.path.join(root, "leftImg8bit", "test", city))
    with pytest.raises(ValueError, match=r"cityscapes test: no images \(\*_leftImg8bit.png\) in .*leftImg8bit/test"):
        layouts.list_samples("cityscapes", root, "test")


def test_all_conditions_are_those_present_and_a_named_one_must_be(tmp_path):
    root, tree = _tree(tmp_path, "acdc")
    assert not os.path.exists(os.path.join(root, "rgb_anon", "snow"))  # a partial download: fog and night
    shutil.rmtree(os.path.join(root, "rgb_anon", "night", "val"))
    assert [s.key for s in layouts.list_samples("acdc", root, "val")] == sorted(tree[("val", "fog")])
    for condition in ("night", "snow"):
        with pytest.raises(ValueError, match=rf"expected folder .*rgb_anon/{condition}/val is missing"):
            layouts.list_samples("acdc", root, "val", condition=condition)
    shutil.rmtree(os.path.join(root, "gt", "fog", "val", "GOPR0475"))
    with pytest.raises(ValueError, match=r"image .*fog/val/GOPR0475/GOPR0475_frame_000042_rgb_anon.png has no"):
        layouts.list_samples("acdc", root, "val")
    shutil.rmtree(os.path.join(root, "rgb_anon", "fog", "val"))
    with pytest.raises(ValueError, match=r"acdc val: none of the condition folders exists: .*rgb_anon/fog/val"):
        layouts.list_samples("acdc", root, "val")


def test_dotted_key_and_unknown_decoder(tmp_path):
    gta_root, _ = _tree(tmp_path, "gta5")
    for folder in ("images", "labels"):
        shutil.copy(os.path.join(gta_root, folder, "00001.png"), os.path.join(gta_root, folder, "00001.v2.png"))
    with pytest.raises(ValueError, match=r"00001.v2.png gives the sample key '00001.v2'.*dot-free"):
        layouts.list_samples("gta5", gta_root, "train")
    image = os.path.join(gta_root, "images", "00001.png")
    sample = layouts.SourceSample(key="00001", image=image, label=image, decoder="cv2", relpath="images/00001.png")
    with pytest.raises(ValueError, match="unknown label decoder 'cv2'"):
        layouts.load_sample(sample)


def test_decoy_siblings_exist_and_are_ignored(built):
    """The decoys are really in the trees (so the exact-listing test proves they are skipped)."""
    dz, acdc, cs = built["darkzurich"][0], built["acdc"][0], built["cityscapes"][0]
    names = [f for _, _, files in os.walk(dz) for f in files] + [f for _, _, files in os.walk(acdc) for f in files]
    names += [f for _, _, files in os.walk(cs) for f in files]
    for suffix in ("_gt_labelColor.png", "_gt_labelIds.png", "_gt_invIds.png", ".csv", "_gtFine_color.png",
                   "_gtFine_instanceIds.png", "_gtFine_polygons.json", "_ref_rgb_anon.png"):
        assert any(n.endswith(suffix) for n in names), suffix
    assert re.fullmatch(r"[a-z]+_\d{6}_\d{6}", layouts.list_samples("cityscapes", cs, "train")[0].key)
