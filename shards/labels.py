"""Label files as the datasets publish them -> trainIds (uint8, 255 = ignore). ../../shared/DATASETS.md.

- GTA5: 8-bit palette ("P") PNGs whose palette INDEX is the Cityscapes labelId. Read the raw indices;
  converting to RGB or luminance (what a generic image decoder does) destroys them.
- SYNTHIA-RAND-CITYSCAPES: 16-bit-per-channel RGB PNGs, the class id in the R channel (the last channel in
  OpenCV's BGR order, as the reference code reads it with cv2.IMREAD_UNCHANGED). Pillow opens them as 8-bit
  RGB and keeps only each sample's high byte, so every id below 256 reads as 0. read_png16_rgb decodes them
  exactly with Pillow's own C PNG decoder by unpacking the rows twice, once keeping the high bytes
  ("RGB;16B") and once the low bytes ("RGB;16L" on big-endian PNG data), and joins the two.
- Cityscapes: *_gtFine_labelIds.png, 8-bit labelIds. Dark Zurich and ACDC: *_gt_labelTrainIds.png, already
  trainIds (values outside 0-18 become 255).
"""
from __future__ import annotations

import struct

import numpy as np
from PIL import Image

from uda_dist.data.schema import IGNORE_INDEX, NUM_CLASSES

CITYSCAPES_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                         26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # labelId -1 (plate) never occurs in a PNG
SYNTHIA_TO_TRAINID = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
                      18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """uint8[256]: id -> trainId, every unmapped id -> 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for source_id, train_id in mapping.items():
        table[source_id] = train_id
    return table


CITYSCAPES_LUT = lookup_table(CITYSCAPES_TO_TRAINID)
SYNTHIA_LUT = lookup_table(SYNTHIA_TO_TRAINID)
TRAINID_LUT = lookup_table({c: c for c in range(NUM_CLASSES)})


def read_index_png(path: str) -> np.ndarray:
    """The raw 8-bit values of a single-channel ("L") or palette ("P") PNG, never converted."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            raise ValueError(f"{path}: label must be an 8-bit single-channel or palette PNG, got mode {image.mode!r}")
        return np.asarray(image)


def gta5_label(path: str) -> np.ndarray:
    return CITYSCAPES_LUT[read_index_png(path)]


def cityscapes_label(path: str) -> np.ndarray:
    return CITYSCAPES_LUT[read_index_png(path)]


def trainid_label(path: str) -> np.ndarray:
    return TRAINID_LUT[read_index_png(path)]


def synthia_label(path: str) -> np.ndarray:
    ids_HW = read_png16_rgb(path)[..., 0]
    return np.where(ids_HW < 256, SYNTHIA_LUT[np.minimum(ids_HW, 255)], IGNORE_INDEX).astype(np.uint8)


def png_header(path: str) -> dict[str, int]:
    """The IHDR fields of a PNG file."""
    with open(path, "rb") as f:
        head = f.read(33)
    if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return {"width": width, "height": height, "bit_depth": depth, "colour_type": colour, "interlace": interlace}


def read_png16_rgb(path: str) -> np.ndarray:
    """uint16 HxWx3 of a 16-bit (or 8-bit) RGB PNG, every channel exact."""
    header = png_header(path)
    if header["colour_type"] != 2 or header["bit_depth"] not in (8, 16):
        raise ValueError(f"{path}: expected an RGB PNG of 8 or 16 bits per channel, got {header}")
    if header["interlace"]:
        raise ValueError(f"{path}: interlaced (Adam7) PNG labels are not supported; re-save them non-interlaced")
    if header["bit_depth"] == 8:
        with Image.open(path) as image:
            return np.asarray(image).astype(np.uint16)
    high, low = _unpack_rows(path, "RGB;16B"), _unpack_rows(path, "RGB;16L")
    return (high.astype(np.uint16) << 8) | low


def _unpack_rows(path: str, rawmode: str) -> np.ndarray:
    """Decode with Pillow's PNG decoder, unpacking each 6-byte pixel with the given raw mode."""
    with Image.open(path) as image:
        if len(image.tile) != 1 or image.tile[0][0] != "zip":
            raise ValueError(f"{path}: unexpected PNG layout {image.tile!r}")
        tile = image.tile[0]
        image.tile = [tile._replace(args=(rawmode,)) if hasattr(tile, "_replace") else (*tile[:3], rawmode)]
        return np.asarray(image)
