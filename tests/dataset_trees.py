"""Tiny dataset trees in the published layouts and label encodings (shards/layouts.py, shards/labels.py), for tests.

Each make_<layout>_tree(root, rng) (MAKERS by layout) writes a few small images per split (and condition)
under `root`, as the dataset ships them (decoy sibling files included), and returns what a correct reader
must produce:
  {(split, condition): {key: Expected(image uint8 HxWx3, label uint8 HxW trainIds or None)}}
with condition None for layouts without conditions; for Dark Zurich and ACDC the (split, None) entry holds all
conditions together (what list_samples(..., condition=None) lists). `label` is None for splits without public
labels. Expected labels are computed here from the published id tables (Cityscapes labelId and SYNTHIA class
id -> trainId), written out again on purpose, independently of shards.labels; the one size-mismatched GTA5
pair (GTA5_MISMATCHED) expects its label nearest-resized to the image, computed without Pillow. Dark Zurich
has a maker per accepted layout (DARKZURICH_MAKERS: one folder per archive, or unpacked as mmsegmentation's).

SYNTHIA's labels are 16-bit-per-channel RGB PNGs, which Pillow cannot write: write_png16_rgb encodes them
with numpy + zlib, using all five PNG row filters (None, Sub, Up, Average, Paeth) and optionally Adam7
interlacing, so the reader is proved on every path of a real PNG decoder.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from typing import NamedTuple

import numpy as np
from PIL import Image

from uda_dist.data.schema import PALETTE

CITYSCAPES_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SYNTHIA_TRAIN = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
                 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
CITYSCAPES_UNMAPPED = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)
GTA5_UNMAPPED = (0, 1, 9, 30, 34, 250, 255)
SYNTHIA_UNMAPPED = (0, 13, 14, 22, 23, 255, 256, 300, 1000, 65535)
TRAINID_VALUES = (*range(19), 255)
ACDC_CONDITIONS = ("fog", "night")
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
"""(x0, y0, dx, dy) of the seven Adam7 passes."""


GTA5_MISMATCHED = {"00003": ((12, 16), (10, 13))}
"""GTA5 key -> (image (H, W), label file (H, W)) of the pair whose sizes differ."""


class Expected(NamedTuple):
    image: np.ndarray
    """uint8 HxWx3, as written."""
    label: np.ndarray | None
    """uint8 HxW trainIds at the image's size (None for unlabeled splits)."""


Tree = dict[tuple[str, str | None], dict[str, Expected]]


# ---------------------------------------------------------------- writing files

def _filter_row(row: np.ndarray, prior: np.ndarray, kind: int, bpp: int) -> np.ndarray:
    """One PNG scanline filtered with filter type `kind` (0-4); every filter predicts from original bytes."""
    r, p = row.astype(np.int16), prior.astype(np.int16)
    left = np.concatenate([np.zeros(bpp, np.int16), r[:-bpp]])
    upleft = np.concatenate([np.zeros(bpp, np.int16), p[:-bpp]])
    if kind == 0:
        predictor = np.zeros_like(r)
    elif kind == 1:
        predictor = left
    elif kind == 2:
        predictor = p
    elif kind == 3:
        predictor = (left + p) // 2
    else:
        estimate = left + p - upleft
        pa, pb, pc = np.abs(estimate - left), np.abs(estimate - p), np.abs(estimate - upleft)
        predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, p, upleft))
    return ((r - predictor) % 256).astype(np.uint8)


def _filtered_rows(rows: np.ndarray, bpp: int, first_filter: int) -> bytes:
    """Filtered scanlines (filter byte + data) of one (sub)image; the filter type cycles 0..4 over rows."""
    out, prior = [], np.zeros(rows.shape[1], np.uint8)
    for i, row in enumerate(rows):
        kind = (first_filter + i) % 5
        out.append(bytes([kind]) + _filter_row(row, prior, kind, bpp).tobytes())
        prior = row
    return b"".join(out)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_png16_rgb(path: str, rgb_HW3: np.ndarray, *, interlace: bool = False) -> None:
    """A 16-bit-per-channel RGB PNG (IHDR bit depth 16, colour type 2), as SYNTHIA's GT/LABELS files are.
    Rows cycle through the five filter types (so any image of 5+ rows, or 2+ rows interlaced, uses all)."""
    assert rgb_HW3.dtype == np.uint16 and rgb_HW3.ndim == 3 and rgb_HW3.shape[2] == 3
    height, width = rgb_HW3.shape[:2]
    big_endian = rgb_HW3.astype(">u2")
    raw, rows_written = [], 0
    for x0, y0, dx, dy in (ADAM7 if interlace else ((0, 0, 1, 1),)):
        sub = np.ascontiguousarray(big_endian[y0::dy, x0::dx])
        if sub.size:
            raw.append(_filtered_rows(sub.view(np.uint8).reshape(sub.shape[0], -1), 6, rows_written))
            rows_written += sub.shape[0]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, int(interlace))
    with open(_mkdirs(path), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"".join(raw)))
                + _chunk(b"IEND", b""))


def _mkdirs(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _save(path: str, array: np.ndarray) -> None:
    Image.fromarray(array).save(_mkdirs(path))


def _random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(12, 25)), int(rng.integers(16, 33))


def _ids(rng: np.random.Generator, shape: tuple[int, int], values, must) -> np.ndarray:
    """Random ids from `values`, the ids in `must` written first (so every one of them appears)."""
    ids = rng.choice(np.asarray(values), size=shape)
    ids.reshape(-1)[:len(must)] = must
    return ids


def _map(ids: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(ids.shape, 255, np.uint8)
    for source_id, train_id in table.items():
        out[ids == source_id] = train_id
    return out


def nearest_resize(label_HW: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize computed without Pillow: each output pixel centre -> its source pixel (the
    identity where the sizes agree)."""
    rows = np.floor((np.arange(height) + 0.5) * label_HW.shape[0] / height).astype(int)
    cols = np.floor((np.arange(width) + 0.5) * label_HW.shape[1] / width).astype(int)
    return label_HW[rows][:, cols]


# ---------------------------------------------------------------- GTA5 and SYNTHIA

def gta5_palette(rng: np.random.Generator) -> np.ndarray:
    """An arbitrary 256x3 palette (not the identity): Cityscapes colours for the mapped labelIds, black for
    0..4 (as Cityscapes colours them), random for the rest."""
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    palette[:5] = 0
    for label_id, train_id in CITYSCAPES_TRAIN.items():
        palette[label_id] = PALETTE[train_id]
    return palette


def write_palette_png(path: str, index_HW: np.ndarray, palette_256x3: np.ndarray) -> None:
    """A mode "P" PNG whose indices are `index_HW` (a GTA5 label)."""
    image = Image.fromarray(index_HW.astype(np.uint8))
    image.putpalette(palette_256x3.reshape(-1).tolist())
    assert image.mode == "P"
    image.save(_mkdirs(path))


def make_gta5_tree(root: str, rng: np.random.Generator) -> Tree:
    """images/0000{1,2,3}.png + labels/ (palette PNGs, indices = labelIds); 00003's label is 10x13 while its
    image is 12x16 (a size-mismatched pair, as a few GTA5 pairs are)."""
    palette, mapped = gta5_palette(rng), list(CITYSCAPES_TRAIN)
    samples = {}
    for index, must in ((1, mapped[:10] + list(GTA5_UNMAPPED)), (2, mapped[10:]), (3, mapped)):
        key = f"{index:05d}"
        (height, width), label_shape = GTA5_MISMATCHED.get(key, (_size(rng),) * 2)
        ids = _ids(rng, label_shape, mapped + list(GTA5_UNMAPPED), must)
        image = _random_image(rng, height, width)
        _save(os.path.join(root, "images", f"{key}.png"), image)
        write_palette_png(os.path.join(root, "labels", f"{key}.png"), ids, palette)
        samples[key] = Expected(image, nearest_resize(_map(ids, CITYSCAPES_TRAIN), height, width))
    return {("train", None): samples}


def make_synthia_tree(root: str, rng: np.random.Generator) -> Tree:
    """RGB/000000{0,1,2}.png + GT/LABELS/ (16-bit RGB, id in R, instance-like values in G and B; 0000001 is
    Adam7-interlaced) + GT/COLOR/ decoys."""
    mapped = list(SYNTHIA_TRAIN)
    samples = {}
    for index, must in enumerate((mapped[:10] + list(SYNTHIA_UNMAPPED), mapped[10:], mapped)):
        key = f"{index:07d}"
        height, width = _size(rng)
        label16 = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16)
        label16[..., 0] = _ids(rng, (height, width), mapped + list(SYNTHIA_UNMAPPED), must)
        image = _random_image(rng, height, width)
        _save(os.path.join(root, "RGB", f"{key}.png"), image)
        _save(os.path.join(root, "GT", "COLOR", f"{key}.png"), _random_image(rng, height, width))
        write_png16_rgb(os.path.join(root, "GT", "LABELS", f"{key}.png"), label16, interlace=index == 1)
        samples[key] = Expected(image, _map(label16[..., 0], SYNTHIA_TRAIN))
    return {("train", None): samples}


# ---------------------------------------------------------------- Cityscapes

CITYSCAPES_FRAMES = {"train": (("aachen", 0, 19), ("aachen", 1, 19), ("bochum", 0, 313)),
                     "val": (("frankfurt", 0, 294), ("lindau", 0, 19)),
                     "test": (("berlin", 0, 19), ("bielefeld", 1, 3))}


def make_cityscapes_tree(root: str, rng: np.random.Generator) -> Tree:
    """leftImg8bit/{train,val,test}/{city}/ + gtFine/{split}/{city}/ labelIds ("L") with color, instanceIds
    and polygons decoys; gtFine/test holds all-zero dummy labelIds (as published), which must be ignored.
    Every image is 12x16 (Cityscapes images all share one size)."""
    mapped = list(CITYSCAPES_TRAIN)
    tree: Tree = {}
    for split, frames in CITYSCAPES_FRAMES.items():
        samples = {}
        for n, (city, seq, frame) in enumerate(frames):
            key = f"{city}_{seq:06d}_{frame:06d}"
            height, width = 12, 16
            image = _random_image(rng, height, width)
            relpath = f"leftImg8bit/{split}/{city}/{key}_leftImg8bit.png"
            _save(os.path.join(root, relpath), image)
            must = mapped[n * 7:(n + 1) * 7] + list(CITYSCAPES_UNMAPPED)
            ids = _ids(rng, (height, width), mapped + list(CITYSCAPES_UNMAPPED), must).astype(np.uint8)
            labeled = split != "test"
            _write_cityscapes_gt(os.path.join(root, "gtFine", split, city, key),
                                 ids if labeled else np.zeros_like(ids), rng)
            samples[key] = Expected(image, _map(ids, CITYSCAPES_TRAIN) if labeled else None)
        tree[(split, None)] = samples
    return tree


def _write_cityscapes_gt(stem: str, label_ids: np.ndarray, rng: np.random.Generator) -> None:
    _save(f"{stem}_gtFine_labelIds.png", label_ids)
    _save(f"{stem}_gtFine_color.png", _random_image(rng, *label_ids.shape))
    _save(f"{stem}_gtFine_instanceIds.png", (label_ids.astype(np.int32) * 1000 + 1).astype(np.uint16))
    with open(f"{stem}_gtFine_polygons.json", "w") as f:
        json.dump({"imgHeight": int(label_ids.shape[0]), "imgWidth": int(label_ids.shape[1]), "objects": []}, f)


# ---------------------------------------------------------------- Dark Zurich and ACDC

def _write_sequence_frames(root: str, image_dir: str, label_dir: str | None, condition: str,
                           frames: tuple[tuple[str, int], ...], rng: np.random.Generator) -> dict[str, Expected]:
    """{image_dir}/{seq}/{seq}_frame_{n:06d}_rgb_anon.png and, with label_dir, {label_dir}/{seq}/..._gt_
    labelTrainIds.png (0..18 and 255) + labelColor / labelIds / invIds decoys; keys "{condition}-{seq}_frame_{n}"."""
    samples = {}
    for seq, frame in frames:
        name = f"{seq}_frame_{frame:06d}"
        height, width = _size(rng)
        image = _random_image(rng, height, width)
        relpath = f"{image_dir}/{seq}/{name}_rgb_anon.png"
        _save(os.path.join(root, relpath), image)
        label = None
        if label_dir is not None:
            label = _ids(rng, (height, width), TRAINID_VALUES, TRAINID_VALUES).astype(np.uint8)
            stem = os.path.join(root, label_dir, seq, name)
            _save(f"{stem}_gt_labelTrainIds.png", label)
            _save(f"{stem}_gt_labelColor.png", _random_image(rng, height, width))
            _save(f"{stem}_gt_labelIds.png", rng.integers(0, 34, (height, width), dtype=np.uint8))
            _save(f"{stem}_gt_invIds.png", rng.integers(0, 256, (height, width), dtype=np.uint8))
        samples[f"{condition}-{name}"] = Expected(image, label)
    return samples


def _with_all_conditions(tree: Tree) -> Tree:
    """Adds (split, None) = the union of the split's conditions."""
    merged: Tree = {}
    for (split, _), samples in tree.items():
        merged.setdefault((split, None), {}).update(samples)
    return {**tree, **merged}


DARKZURICH_TRAIN_FRAMES = {"night": (("GOPR0351", 159), ("GOPR0351", 160), ("GOPR0355", 7)),
                           "twilight": (("GOPR0348", 21), ("GOPR0348", 22)),
                           "day": (("GOPR0346", 1), ("GOPR0347", 5))}
DARKZURICH_VAL_FRAMES = (("GOPR0356", 321), ("GOPR0356", 322))


DARKZURICH_CORRESP_ROWS = {
    "GOPR0351": ("train/night/GOPR0351/GOPR0351_frame_000159,train/day/GOPR0346/GOPR0346_frame_000001", "",
                 "/train/night/GOPR0351/GOPR0351_frame_000160_rgb_anon.png,"
                 "/train/day/GOPR0347/GOPR0347_frame_000005_rgb_anon.png"),
    "GOPR0355": ("train/night/GOPR0355/GOPR0355_frame_000007,train/day/GOPR0346/GOPR0346_frame_000001",)}
"""corresp/train/night/{seq}.csv rows (the published form, a blank line, and a leading "/" with the suffix)."""
DARKZURICH_DAY_PAIRS = {"night-GOPR0351_frame_000159": "day-GOPR0346_frame_000001",
                        "night-GOPR0351_frame_000160": "day-GOPR0347_frame_000005",
                        "night-GOPR0355_frame_000007": "day-GOPR0346_frame_000001"}
"""The day image key of each night train key, by DARKZURICH_CORRESP_ROWS."""


def make_darkzurich_tree(root: str, rng: np.random.Generator, *, unpacked: bool = False) -> Tree:
    """One folder per archive: `root` holds Dark_Zurich_train_anon/rgb_anon/train/{night,twilight,day}/GOPRxxxx/
    (unlabeled; corresp/train/night/*.csv pairing the night frames with day frames) and Dark_Zurich_val_anon/{rgb_anon,gt}/val/night/GOPR0356/
    (labelTrainIds). unpacked=True: the same frames unpacked into `root` (mmsegmentation's data/dark_zurich):
    rgb_anon/{train,val}/..., gt/val/night/..., corresp/, with gps/ and rgb_anon/val_ref/ decoys."""
    train_base, val_base = ("", "") if unpacked else ("Dark_Zurich_train_anon/", "Dark_Zurich_val_anon/")
    tree: Tree = {}
    for condition, frames in DARKZURICH_TRAIN_FRAMES.items():
        tree[("train", condition)] = _write_sequence_frames(
            root, f"{train_base}rgb_anon/train/{condition}", None, condition, frames, rng)
    for seq, rows in DARKZURICH_CORRESP_ROWS.items():
        with open(_mkdirs(os.path.join(root, train_base, "corresp", "train", "night", f"{seq}.csv")), "w") as f:
            f.write("".join(f"{row}\n" for row in rows))
    tree[("val", "night")] = _write_sequence_frames(root, f"{val_base}rgb_anon/val/night",
                                                    f"{val_base}gt/val/night", "night", DARKZURICH_VAL_FRAMES, rng)
    if unpacked:
        _save(os.path.join(root, "rgb_anon", "val_ref", "day", "GOPR0356_ref",
                           "GOPR0356_ref_frame_000321_ref_rgb_anon.png"), _random_image(rng, 12, 16))
        with open(_mkdirs(os.path.join(root, "gps", "val", "night", "GOPR0356.csv")), "w") as f:
            f.write("47.37,8.54\n")
    return _with_all_conditions(tree)


def make_darkzurich_unpacked_tree(root: str, rng: np.random.Generator) -> Tree:
    """make_darkzurich_tree with everything unpacked into `root` (rgb_anon/ and gt/ directly under it)."""
    return make_darkzurich_tree(root, rng, unpacked=True)


def make_acdc_tree(root: str, rng: np.random.Generator) -> Tree:
    """rgb_anon/{fog,night}/{train,val,test}/GOPRxxxx/ (+ a train_ref decoy folder) and
    gt/{cond}/{train,val}/GOPRxxxx/ (labelTrainIds + decoys); fog/train spans two sequences; test unlabeled.
    Two of the four conditions, as a partial download has: "all conditions" means the ones present."""
    tree: Tree = {}
    for c, condition in enumerate(ACDC_CONDITIONS):
        seq = f"GOPR04{75 + c}"
        for s, split in enumerate(("train", "val", "test")):
            frames = ((seq, 41), ("GOPR0999", 3)) if (condition, split) == ("fog", "train") else \
                ((seq, 41 + s), (seq, 100 + s))
            label_dir = f"gt/{condition}/{split}" if split != "test" else None
            tree[(split, condition)] = _write_sequence_frames(root, f"rgb_anon/{condition}/{split}", label_dir,
                                                              condition, frames, rng)
        _save(os.path.join(root, "rgb_anon", condition, "train_ref", seq, f"{seq}_frame_000041_ref_rgb_anon.png"),
              _random_image(rng, 12, 16))
    return _with_all_conditions(tree)


MAKERS = {"gta5": make_gta5_tree, "synthia": make_synthia_tree, "cityscapes": make_cityscapes_tree,
          "darkzurich": make_darkzurich_tree, "acdc": make_acdc_tree}
"""make_<layout>_tree by layout name (shards.layouts.LAYOUTS)."""
DARKZURICH_MAKERS = {"archives": make_darkzurich_tree, "unpacked": make_darkzurich_unpacked_tree}
"""The two Dark Zurich layouts shards.layouts accepts, by shards.layouts.darkzurich_layout's name."""
