"""What a person reads at the end of a run: a per-class IoU table, pictures of predictions, and the plots
the tracker records (confusion matrix, per-class IoU bars; matplotlib, imported only for those)."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from uda_dist.data.schema import CLASSES, IGNORE_INDEX, PALETTE
from uda_dist.metrics import class_set_mious, mean_of_defined


def format_iou_table(iou_by_run: dict[str, list[float]], classes: tuple[str, ...] = CLASSES,
                     class_sets: tuple[int, ...] = ()) -> str:
    """Per-class IoU (%) with one column per run and the mIoU (mean of the defined IoUs) last, then the mIoU
    over each of ``class_sets`` (SYNTHIA's 16 and 13 classes: mIoU16, mIoU13)."""
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
    subsets = [class_set_mious(iou_by_run[name], class_sets) for name in names]
    for n in class_sets:
        lines.append(f"{f'mIoU{n}':<14}" + "".join(f"{_pct(s[f'miou{n}']):>{width + 2}}" for s in subsets))
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
    return _grid(path, columns)


def save_overlays(path: str, images_NHW3: np.ndarray, labels_NHW: np.ndarray, preds_NHW: np.ndarray) -> str:
    """Target images with the prediction overlaid (half-transparent, Cityscapes palette), beside the ground
    truth overlaid the same way."""
    blend = {"prediction": _overlay(images_NHW3, preds_NHW), "ground truth": _overlay(images_NHW3, labels_NHW)}
    return _grid(path, blend)


def _overlay(images_NHW3: np.ndarray, labels_NHW: np.ndarray) -> np.ndarray:
    colours = colorize(labels_NHW).astype(np.float32)
    mixed = 0.5 * images_NHW3.astype(np.float32) + 0.5 * colours
    keep = (labels_NHW == IGNORE_INDEX)[..., None]  # ignored pixels show the image
    return np.where(keep, images_NHW3, mixed.round()).astype(np.uint8)


def _grid(path: str, columns: dict[str, np.ndarray]) -> str:
    first = next(iter(columns.values()))
    n, h, w = first.shape[:3]
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


def save_confusion_plot(path: str, confusion_KK: np.ndarray, classes: tuple[str, ...] = CLASSES) -> str:
    """The confusion matrix, each ground-truth row normalised to 1 (rows without pixels stay empty)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = confusion_KK.sum(axis=1, keepdims=True)
    share_KK = np.divide(confusion_KK, totals, out=np.zeros(confusion_KK.shape), where=totals > 0)
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(share_KK, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_iou_bars(path: str, iou_K: list[float], classes: tuple[str, ...] = CLASSES) -> str:
    """Per-class IoU (%) as bars in the classes' palette colours, with the mIoU as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.nan_to_num(100 * np.asarray(iou_K, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(range(len(classes)), values, color=PALETTE[: len(classes)] / 255.0, edgecolor="black", linewidth=0.5)
    ax.axhline(100 * mean_of_defined(np.asarray(iou_K, dtype=np.float64)), color="black", linestyle="--",
               label="mIoU")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
