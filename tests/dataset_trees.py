"""Tiny dataset trees in the real published layouts and label encodings (../../shared/DATASETS.md), with the
trainIds each sample must come out with. The id tables here are written out from DATASETS.md on their own,
so they check the library's tables rather than repeat them.

Each make_* writes under ``root`` and returns {(split, condition): {key: (image uint8 HxWx3, trainIds uint8
HxW or None)}}.
"""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np
from PIL import Image

from uda_dist.data.schema import PALETTE

# DATASETS.md: Cityscapes labelId -> trainId, and SYNTHIA id -> trainId; everything else 255
CS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
      28: 15, 31: 16, 32: 17, 33: 18}
SYN = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15,
       20: 16, 12: 17, 11: 18}


def mapped(ids: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(ids.shape, 255, dtype=np.uint8)
    for source_id, train_id in table.items():
        out[ids == source_id] = train_id
    return out


def _image(rng, size) -> np.ndarray:
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def _save(path: str, array: np.ndarray, mode: str | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


def _ids(rng, size, pool: list[int]) -> np.ndarray:
    ids = rng.choice(pool, size=size)
    ids.reshape(-1)[: len(pool)] = pool  # every id of the pool appears
    return ids


def write_palette_png(path: str, index_HW: np.ndarray, rng) -> None:
    """A GTA5 label: mode "P", the index is the labelId; the palette holds colours, not ids."""
    image = Image.fromarray(index_HW.astype(np.uint8), mode="P")
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    palette[:19] = PALETTE
    image.putpalette(palette.reshape(-1).tolist())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)


def png16_rgb_bytes(array_HW3: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one), rows filtered with all five PNG filter types in turn."""
    height, width, _ = array_HW3.shape
    raw = np.frombuffer(array_HW3.astype(">u2").tobytes(), np.uint8).reshape(height, width * 6).astype(np.int32)
    rows, bpp = [], 6
    for y in range(height):
        x, prior = raw[y], raw[y - 1] if y else np.zeros_like(raw[0])
        left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]])
        kind = y % 5
        if kind == 0:
            predicted = np.zeros_like(x)
        elif kind == 1:
            predicted = left
        elif kind == 2:
            predicted = prior
        elif kind == 3:
            predicted = (left + prior) // 2
        else:
            p = left + prior - upper_left
            pa, pb, pc = abs(p - left), abs(p - prior), abs(p - upper_left)
            predicted = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upper_left))
        rows.append(bytes([kind]) + ((x - predicted) % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


def make_gta5(root: str, rng) -> dict:
    pool = sorted(CS) + [0, 1, 9, 30, 250]
    out = {}
    for i, (size, label_size) in enumerate([((12, 16), (12, 16)), ((14, 18), (14, 18)), ((12, 16), (10, 13))]):
        key = f"{i + 1:05d}"
        image, ids = _image(rng, size), _ids(rng, label_size, pool)
        _save(os.path.join(root, "images", f"{key}.png"), image)
        write_palette_png(os.path.join(root, "labels", f"{key}.png"), ids, rng)
        train_ids = mapped(ids, CS)
        if label_size != size:  # the published mismatched pairs: nearest to the image's size
            train_ids = np.asarray(Image.fromarray(train_ids).resize(size[::-1], Image.NEAREST))
        out[key] = (image, train_ids)
    return {("train", None): out}


def make_synthia(root: str, rng) -> dict:
    pool = sorted(SYN) + [0, 13, 22, 300, 1000]
    out = {}
    for i, size in enumerate([(12, 16), (10, 20)]):
        key = f"{i:07d}"
        image, ids = _image(rng, size), _ids(rng, size, pool)
        label = np.stack([ids, rng.integers(0, 65536, size), rng.integers(0, 65536, size)], axis=-1)
        _save(os.path.join(root, "RGB", f"{key}.png"), image)
        os.makedirs(os.path.join(root, "GT", "LABELS"), exist_ok=True)
        with open(os.path.join(root, "GT", "LABELS", f"{key}.png"), "wb") as f:
            f.write(png16_rgb_bytes(label.astype(np.uint16)))
        out[key] = (image, mapped(ids, SYN))
    return {("train", None): out}


def make_cityscapes(root: str, rng) -> dict:
    pool = sorted(CS) + [0, 1, 4, 9, 10, 14, 15, 16, 18, 29, 30]
    out = {}
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",)), ("test", ("berlin",))):
        samples = {}
        for city in cities:
            for frame in (19, 20):
                key = f"{city}_000000_{frame:06d}"
                image, ids = _image(rng, (12, 16)), _ids(rng, (12, 16), pool)
                _save(os.path.join(root, "leftImg8bit", split, city, f"{key}_leftImg8bit.png"), image)
                label_dir = os.path.join(root, "gtFine", split, city)
                _save(os.path.join(label_dir, f"{key}_gtFine_color.png"), _image(rng, (12, 16)))  # decoys
                _save(os.path.join(label_dir, f"{key}_gtFine_instanceIds.png"), ids.astype(np.uint8) + 1, "L")
                with open(os.path.join(label_dir, f"{key}_gtFine_polygons.json"), "w") as f:
                    f.write("{}")
                if split != "test":
                    _save(os.path.join(label_dir, f"{key}_gtFine_labelIds.png"), ids.astype(np.uint8), "L")
                samples[key] = (image, None if split == "test" else mapped(ids, CS))
        out[(split, None)] = samples
    return out


def _train_ids(rng, size) -> np.ndarray:
    return _ids(rng, size, list(range(19)) + [255])


def make_darkzurich(root: str, rng) -> dict:
    out = {}
    for cond, sequence in (("night", "GOPR0351"), ("twilight", "GOPR0357"), ("day", "GOPR0361")):
        samples = {}
        for frame in (3, 7):
            stem = f"{sequence}_frame_{frame:06d}"
            image = _image(rng, (12, 16))
            _save(os.path.join(root, "Dark_Zurich_train_anon", "rgb_anon", "train", cond, sequence,
                               f"{stem}_rgb_anon.png"), image)
            samples[f"{cond}-{stem}"] = (image, None)
        out[("train", cond)] = samples
    corresp = os.path.join(root, "Dark_Zurich_train_anon", "corresp", "train", "night")
    os.makedirs(corresp, exist_ok=True)
    with open(os.path.join(corresp, "GOPR0351.csv"), "w") as f:
        f.write("night,day\n")
    samples = {}
    for frame in (321, 322):
        stem = f"GOPR0356_frame_{frame:06d}"
        image, train_ids = _image(rng, (12, 16)), _train_ids(rng, (12, 16))
        _save(os.path.join(root, "Dark_Zurich_val_anon", "rgb_anon", "val", "night", "GOPR0356",
                           f"{stem}_rgb_anon.png"), image)
        _save(os.path.join(root, "Dark_Zurich_val_anon", "gt", "val", "night", "GOPR0356",
                           f"{stem}_gt_labelTrainIds.png"), train_ids.astype(np.uint8), "L")
        samples[f"night-{stem}"] = (image, train_ids.astype(np.uint8))
    out[("val", "night")] = samples
    return out


def make_acdc(root: str, rng) -> dict:
    out = {}
    for cond in ("fog", "night"):
        for split in ("train", "val", "test"):
            samples = {}
            for frame in (41, 42):
                stem = f"GOPR0475_frame_{frame:06d}"
                image, train_ids = _image(rng, (12, 16)), _train_ids(rng, (12, 16)).astype(np.uint8)
                _save(os.path.join(root, "rgb_anon", cond, split, "GOPR0475", f"{stem}_rgb_anon.png"), image)
                if split != "test":
                    gt = os.path.join(root, "gt", cond, split, "GOPR0475")
                    _save(os.path.join(gt, f"{stem}_gt_labelTrainIds.png"), train_ids, "L")
                    _save(os.path.join(gt, f"{stem}_gt_labelColor.png"), _image(rng, (12, 16)))
                samples[f"{cond}-{stem}"] = (image, None if split == "test" else train_ids)
            out[(split, cond)] = samples
    return out


MAKERS = {"gta5": make_gta5, "synthia": make_synthia, "cityscapes": make_cityscapes, "darkzurich": make_darkzurich,
          "acdc": make_acdc}
