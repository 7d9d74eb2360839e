"""Label decoding: the published label files of each dataset -> uint8 trainIds (255 = ignore).

Encodings and id tables, per dataset:
- Cityscapes: gtFine *_gtFine_labelIds.png, 8-bit single channel ("L"): labelIds, mapped to trainIds.
- GTA5: labels/*.png, 8-bit palette ("P") PNGs whose palette INDEX is the Cityscapes labelId. Converting the
  image (to RGB or luminance, what a generic decoder does) destroys the labels: the raw index is read.
- SYNTHIA-RAND-CITYSCAPES: GT/LABELS/*.png, 16 bits per channel RGB, the class id in the R channel (the last
  channel in OpenCV's BGR order). Pillow opens these as 8-bit "RGB" keeping only each sample's high byte, so
  every id below 256 reads as 0; read_png16_rgb decodes them exactly with Pillow's own C decoder.
- Dark Zurich and ACDC: *_gt_labelTrainIds.png, 8-bit single channel, already trainIds (others -> 255).
Every decoder reads the whole file (Pillow decodes lazily; each forces the full decode), so a truncated label
raises (OSError / SyntaxError from Pillow) instead of giving partial ids. Pure numpy + Pillow.
"""
from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from uda_dist.data.schema import IGNORE_INDEX, NUM_CLASSES

_CITYSCAPES = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
               26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
_SYNTHIA = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
            18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """uint8[256]: id -> trainId, every unmapped id -> 255 (read-only)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for source_id, train_id in mapping.items():
        table[source_id] = train_id
    table.setflags(write=False)
    return table


CITYSCAPES_LABELID_TO_TRAINID = _lookup_table(_CITYSCAPES)
"""Cityscapes labelId -> trainId. labelId -1 (license plate) never occurs in an 8-bit PNG (the Cityscapes
scripts write labelIds >= 0 only), so it needs no entry."""
SYNTHIA_ID_TO_TRAINID = _lookup_table(_SYNTHIA)
"""SYNTHIA class id -> trainId for ids < 256; synthia_label maps ids >= 256 to 255."""
TRAINID_TO_TRAINID = _lookup_table({i: i for i in range(NUM_CLASSES)})
"""Keeps 0..18; every other value -> 255."""


def _read_single_channel(path: str, modes: tuple[str, ...]) -> np.ndarray:
    """The raw 8-bit values of a single-channel label; any other mode is refused, never converted."""
    with Image.open(path) as im:
        if im.mode not in modes:
            raise ValueError(f"label {path}: expected an 8-bit single-channel PNG (mode {' or '.join(modes)}), "
                             f"got mode {im.mode!r}; converting it would not give label ids")
        im.load()  # decode to the last pixel now: a truncated file raises here
        return np.array(im, dtype=np.uint8)


def read_palette_index(path: str) -> np.ndarray:
    """The palette indices of a "P" PNG (uint8 HxW) as stored; an "L" PNG's values are taken as indices."""
    return _read_single_channel(path, ("P", "L"))


def read_png_ihdr(data: bytes, path: str = "<bytes>") -> tuple[int, int, int, int, int]:
    """(width, height, bit depth, colour type, interlace method) from the IHDR chunk that starts every PNG."""
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file (no PNG signature followed by an IHDR chunk)")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return width, height, depth, colour, interlace


def _decode_with_rawmode(data: bytes, rawmode: str, path: str) -> np.ndarray:
    """Decode an RGB PNG with Pillow, unpacking its pixels with `rawmode` instead of the one Pillow chose."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "RGB" or len(im.tile) != 1 or im.tile[0].codec_name != "zip":
            raise ValueError(f"{path}: Pillow opened this RGB PNG as mode {im.mode!r} with tiles {im.tile!r}")
        im.tile = [im.tile[0]._replace(args=(rawmode,))]
        im.load()  # decode to the last pixel now: a truncated file raises here
        return np.asarray(im)


def read_png16_rgb(path: str) -> np.ndarray:
    """The exact uint16 HxWx3 samples of a 16-bit RGB PNG (an 8-bit RGB PNG's values, as uint16).

    Pillow unpacks a 16-bit RGB PNG with the raw mode "RGB;16B", which keeps the high byte of each big-endian
    sample. Decoding the same bytes again with "RGB;16L" (little-endian 16-bit: keep the second byte) gives the
    low bytes. Both passes run Pillow's C inflate + unfilter + Adam7 de-interlacing, so interlaced files work
    too. The format is taken from the IHDR chunk parsed here, not from the mode Pillow reports.
    """
    with open(path, "rb") as f:
        data = f.read()
    width, height, depth, colour, interlace = read_png_ihdr(data, path)
    if colour != 2 or depth not in (8, 16):
        raise ValueError(f"{path}: expected an RGB PNG (colour type 2) of 8 or 16 bits per channel, got IHDR "
                         f"{width}x{height}, bit depth {depth}, colour type {colour}, interlace {interlace}")
    if depth == 8:
        return _decode_with_rawmode(data, "RGB", path).astype(np.uint16)
    high = _decode_with_rawmode(data, "RGB;16B", path).astype(np.uint16)
    low = _decode_with_rawmode(data, "RGB;16L", path).astype(np.uint16)
    if high.shape != (height, width, 3):
        raise ValueError(f"{path}: decoded shape {high.shape} does not match the IHDR size {width}x{height}")
    return (high << 8) | low


def cityscapes_label(path: str) -> np.ndarray:
    """Cityscapes *_gtFine_labelIds.png ("L") -> trainIds."""
    return CITYSCAPES_LABELID_TO_TRAINID[_read_single_channel(path, ("L",))]


def gta5_label(path: str) -> np.ndarray:
    """GTA5 labels/*.png (palette index = Cityscapes labelId) -> trainIds."""
    return CITYSCAPES_LABELID_TO_TRAINID[read_palette_index(path)]


def synthia_label(path: str) -> np.ndarray:
    """SYNTHIA GT/LABELS/*.png (16-bit RGB, class id in R) -> trainIds; ids >= 256 -> 255."""
    ids_HW = read_png16_rgb(path)[..., 0]
    mapped_HW = SYNTHIA_ID_TO_TRAINID[np.minimum(ids_HW, 255)]
    return np.where(ids_HW < 256, mapped_HW, IGNORE_INDEX).astype(np.uint8)


def trainid_label(path: str) -> np.ndarray:
    """Dark Zurich / ACDC *_gt_labelTrainIds.png ("L"): 0..18 kept, any other value -> 255."""
    return TRAINID_TO_TRAINID[_read_single_channel(path, ("L",))]


DECODERS = {"gta5": gta5_label, "synthia": synthia_label, "cityscapes": cityscapes_label,
            "trainid": trainid_label}
"""A SourceSample's `decoder` name -> the function that reads its label file as trainIds."""
