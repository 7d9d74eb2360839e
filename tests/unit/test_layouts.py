"""Label decoding (GTA5 palette indices, SYNTHIA 16-bit R channel) and layout listing errors."""
import os

import numpy as np
import pytest
from PIL import Image

from shards import labels, layouts
from tests.dataset_trees import make_cityscapes, make_gta5, png16_rgb_bytes, write_palette_png


def test_png16_reader_is_exact_for_every_filter_where_pillow_is_not(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (11, 13, 3)).astype(np.uint16)
    values[..., 0] = rng.integers(0, 40, (11, 13))  # SYNTHIA-like ids in R: below 256
    path = tmp_path / "label.png"
    path.write_bytes(png16_rgb_bytes(values))  # rows use filters None, Sub, Up, Average, Paeth in turn
    np.testing.assert_array_equal(labels.read_png16_rgb(str(path)), values)
    with Image.open(path) as plain:  # what a plain decode gives: the high bytes, so every id reads 0
        assert (np.asarray(plain.convert("RGB"))[..., 0] == 0).all()


def test_synthia_ids_map_to_trainids_and_large_ids_to_ignore(tmp_path):
    ids = np.array([[3, 4, 2, 21, 11], [0, 13, 22, 300, 1000]], dtype=np.uint16)
    path = tmp_path / "label.png"
    path.write_bytes(png16_rgb_bytes(np.stack([ids, ids * 7, ids + 1], axis=-1)))
    np.testing.assert_array_equal(labels.synthia_label(str(path)), [[0, 1, 2, 3, 18], [255] * 5])


def test_gta5_labels_are_palette_indices_not_colours(tmp_path):
    ids = np.array([[7, 8, 26, 0, 33]], dtype=np.uint8)
    path = str(tmp_path / "label.png")
    write_palette_png(path, ids, np.random.default_rng(0))
    np.testing.assert_array_equal(labels.gta5_label(path), [[0, 1, 13, 255, 18]])
    with Image.open(path) as plain:
        assert not np.array_equal(np.asarray(plain.convert("L")), ids)  # a converting decoder loses them


def test_labels_that_are_not_8_bit_single_channel_are_refused(tmp_path):
    path = str(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match="rgb.png.*mode 'RGB'"):
        labels.cityscapes_label(path)
    with pytest.raises(ValueError, match="not a PNG"):
        labels.read_png16_rgb(__file__)


def test_listing_errors_name_the_problem(tmp_path):
    rng = np.random.default_rng(0)
    make_gta5(str(tmp_path / "gta"), rng)
    make_cityscapes(str(tmp_path / "cs"), rng)
    with pytest.raises(ValueError, match="unknown layout 'gta6'"):
        layouts.list_samples("gta6", str(tmp_path), "train")
    with pytest.raises(ValueError, match="is not a folder"):
        layouts.list_samples("gta5", str(tmp_path / "missing"), "train")
    with pytest.raises(ValueError, match="expected folder .*leftImg8bit"):
        layouts.list_samples("cityscapes", str(tmp_path / "gta"), "train")
    os.remove(tmp_path / "gta" / "labels" / "00002.png")
    with pytest.raises(ValueError, match="images/00002.png has no label file"):
        layouts.list_samples("gta5", str(tmp_path / "gta"), "train")
    os.remove(tmp_path / "gta" / "images" / "00002.png")
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(tmp_path / "gta" / "labels" / "00009.png")
    with pytest.raises(ValueError, match="labels/00009.png has no image"):
        layouts.list_samples("gta5", str(tmp_path / "gta"), "train")
    assert [s.label for s in layouts.list_samples("cityscapes", str(tmp_path / "cs"), "test")] == [None] * 2
    unlabeled = layouts.list_samples("cityscapes", str(tmp_path / "cs"), "val", labels=False)
    assert [s.key for s in unlabeled] == ["frankfurt_000000_000019", "frankfurt_000000_000020"]
