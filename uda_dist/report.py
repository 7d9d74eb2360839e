"""What a person reads at the end of a run: a per-class IoU table and a picture of predictions."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from uda_dist.data.schema import CLASSES, IGNORE_INDEX, PALETTE
from uda_dist.metrics import mean_of_defined


def format_iou_table(iou_by_run: dict[str, list[float]], classes: tuple[str, ...] = CLASSES) -> str:
    """Per-class IoU (%) with one column per run and the mIoU (mean of the defined IoUs) last."""
    names = list(iou_by_run)
    width = max(12, *(len(n) for n in names))
    header = f"{'class':<14}" + "".join(f"{n:>{width + 2}}" for n in names)
    lines = [header, "-" * len(header)]
    for c, cls in enumerate(classes):
        cells = [iou_by_run[n][c] for n in names]
        if all(math.isnan(v) for v in cells):
            continue
        lines.append(f"{cls:<14}" + "".join(f"{_pct(v):>{width + 2}}" for v in cells))
    lines.append("-" * len(header))
    means = [mean_of_defined(iou_by_run[n]) for n in names]
    lines.append(f"{'mIoU':<14}" + "".join(f"{_pct(v):>{width + 2}}" for v in means))
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def colorize(label_HW: np.ndarray) -> np.ndarray:
    """trainIds -> Cityscapes palette colours (ignore -> black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(PALETTE)] = PALETTE
    lut[IGNORE_INDEX] = 0
    return lut[label_HW]


def save_prediction_grid(path: str, images_NHW3: np.ndarray, labels_NHW: np.ndarray,
                         preds: dict[str, np.ndarray]) -> str:
    """A PNG grid, one row per image: image | ground truth | each run's prediction, with column titles."""
    columns = {"target image": images_NHW3, "ground truth": colorize(labels_NHW)}
    columns.update({name: colorize(p) for name, p in preds.items()})
    n, h, w = labels_NHW.shape
    title_h, pad = 14, 2
    canvas = Image.new("RGB", (len(columns) * (w + pad) + pad, title_h + n * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for col, (title, tiles) in enumerate(columns.items()):
        x = pad + col * (w + pad)
        draw.text((x + 2, 1), title, fill="black")
        for row in range(n):
            canvas.paste(Image.fromarray(tiles[row]), (x, title_h + pad + row * (h + pad)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path
