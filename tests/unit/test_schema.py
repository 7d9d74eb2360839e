"""The shard contract end to end: what is written is what the loaders hand out, pixel for pixel."""
import io
import os

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from uda_dist.data import schema
from uda_dist.data.webdataset import LoaderConfig, eval_loader, train_loader

H, W = 12, 20


def make_samples(n: int, seed: int = 0) -> tuple[list[dict], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """n encoded samples whose labels together hold all 19 trainIds and 255, plus the raw arrays by key."""
    rng = np.random.default_rng(seed)
    encoded, raw = [], {}
    for i in range(n):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        label = rng.choice(np.r_[np.arange(schema.NUM_CLASSES), 255], size=(H, W)).astype(np.uint8)
        label.reshape(-1)[:20] = np.r_[np.arange(schema.NUM_CLASSES), 255]
        key = f"sample_{i:04d}"
        encoded.append(schema.encode_sample(key, image, label, {"dataset": "toy", "index": i}))
        raw[key] = (image, label)
    return encoded, raw


def as_uint8(image_B3HW: torch.Tensor) -> np.ndarray:
    return (image_B3HW * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_round_trip_through_eval_loader(tmp_path):
    encoded, raw = make_samples(7)
    manifest = schema.write_shards(encoded, str(tmp_path), dataset="toy", split="val", labeled=True,
                                   max_per_shard=3)
    seen = []
    for batch in eval_loader(manifest.urls(), cfg=LoaderConfig(eval_batch_size=2, num_workers=0)):
        assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.int64
        assert batch["valid"].all()
        for key, image, label in zip(batch["key"], as_uint8(batch["image"]), batch["label"].numpy()):
            np.testing.assert_array_equal(image, raw[key][0])
            np.testing.assert_array_equal(label, raw[key][1])
            seen.append(key)
    assert seen == sorted(raw)  # shard order, each once


def test_round_trip_through_train_loader_with_augmentation_off(tmp_path):
    encoded, raw = make_samples(5)
    manifest = schema.write_shards(encoded, str(tmp_path), dataset="toy", split="train", labeled=True,
                                   max_per_shard=2)
    cfg = LoaderConfig(batch_size=2, crop_size=(H, W), flip=False, scale_range=(1.0, 1.0), cat_max_ratio=1.0,
                       num_workers=0, epoch_batches=6, shuffle_buffer=3)
    for batch in train_loader(manifest.urls(), cfg=cfg, labeled=True, seed=0):
        for key, image, label in zip(batch["key"], as_uint8(batch["image"]), batch["label"].numpy()):
            np.testing.assert_array_equal(image, raw[key][0])
            np.testing.assert_array_equal(label, raw[key][1])


def test_rebuild_is_byte_identical(tmp_path):
    for name in ("a", "b"):
        schema.write_shards(make_samples(5)[0], str(tmp_path / name), dataset="toy", split="train",
                            labeled=True, max_per_shard=2)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(os.listdir(tmp_path / "b")) and len(names) == 4  # 3 shards + manifest
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_manifest_round_trip(tmp_path):
    encoded, raw = make_samples(5)
    written = schema.write_shards(encoded, str(tmp_path), dataset="toy", split="train", labeled=True,
                                  max_per_shard=2)
    read = schema.read_manifest(written.location)
    assert read == written
    assert read.num_samples == 5 and [s.num_samples for s in read.shards] == [2, 2, 1]
    assert all(os.path.isfile(url) for url in read.urls())
    expected = sum(np.bincount(label.reshape(-1), minlength=256)[:schema.NUM_CLASSES] for _, label in raw.values())
    assert list(read.class_pixels) == expected.tolist()
    with pytest.raises(schema.SchemaError, match="malformed"):
        schema.Manifest.from_json('{"dataset": "toy"}')


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def palette_label(index_HW: np.ndarray) -> Image.Image:
    """A GTA5-style label: 'P' mode, the palette index is the class id, the palette holds class colours."""
    image = Image.fromarray(index_HW, mode="P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:schema.NUM_CLASSES] = schema.PALETTE
    image.putpalette(palette.reshape(-1).tolist())
    return image


def test_decode_label_refuses_palette_and_rgb():
    index_HW = np.arange(H * W, dtype=np.uint8).reshape(H, W) % schema.NUM_CLASSES
    with pytest.raises(schema.SchemaError, match="'P'"):
        schema.decode_label(png_bytes(palette_label(index_HW)))
    with pytest.raises(schema.SchemaError, match="'RGB'"):
        schema.decode_label(png_bytes(Image.fromarray(np.repeat(index_HW[..., None], 3, axis=2))))


def test_converting_decoders_destroy_labels_and_ours_keeps_them():
    """The pitfall the schema exists for: converting decoders (PIL convert, webdataset's image handlers)
    change label values; the raw index is exact, and our decoder refuses what it cannot read exactly."""
    index_HW = (np.arange(H * W).reshape(H, W) % schema.NUM_CLASSES).astype(np.uint8)
    data = png_bytes(palette_label(index_HW))
    with Image.open(io.BytesIO(data)) as image:
        np.testing.assert_array_equal(np.asarray(image), index_HW)  # the raw index is the label
        assert not np.array_equal(np.asarray(image.convert("L")), index_HW)  # luminance of the colour
        assert not np.array_equal(np.asarray(image.convert("RGB"))[..., 0], index_HW)
    assert not np.array_equal(wds.imagehandler("l8")("x.label.png", data), index_HW)
    # Even an exact 'L' label is rescaled by webdataset's float decoders; ours returns the raw values.
    l_data = schema.encode_png(index_HW)
    assert wds.imagehandler("l")("x.label.png", l_data).max() <= 1.0
    np.testing.assert_array_equal(schema.decode_label(l_data), index_HW)


def test_encode_sample_rejects_dotted_keys():
    image = np.zeros((H, W, 3), dtype=np.uint8)
    with pytest.raises(schema.SchemaError, match="dot-free"):
        schema.encode_sample("frame.0001", image, None, {})


def test_write_shards_refuses_labeled_mismatch(tmp_path):
    encoded, _ = make_samples(1)
    with pytest.raises(schema.SchemaError, match="present"):
        schema.write_shards(encoded, str(tmp_path), dataset="toy", split="train", labeled=False)
