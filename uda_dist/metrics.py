"""Confusion matrix -> per-class IoU and mIoU (mmseg's definition).

The confusion matrix is accumulated on the device during an evaluation (int64 counts, rows = ground truth,
columns = prediction) and read to the host once at its end; with several workers the counts are reduced
once per evaluation, never the IoUs. A class that appears in neither ground truth nor prediction has no
IoU (NaN) and is left out of the mean, as mmseg's nanmean does.

Legend: B batch, K classes, H, W image size, N pixels.
"""
from __future__ import annotations

import numpy as np
import torch

from uda_dist.losses.segmentation import IGNORE_INDEX

CLASS_SETS: dict[int, tuple[int, ...]] = {
    19: tuple(range(19)),
    16: tuple(k for k in range(19) if k not in (9, 14, 16)),
    13: tuple(k for k in range(19) if k not in (3, 4, 5, 9, 14, 16)),
}
"""The class subsets papers report mIoU over, by size (trainIds): SYNTHIA -> Cityscapes reports 16 classes (the
19 without terrain 9, truck 14, train 16) and 13 (the 16 without wall 3, fence 4, pole 5)."""


def confusion_matrix(pred_BHW: torch.Tensor, label_BHW: torch.Tensor, *, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[K, K] int64 counts of (ground truth, prediction) over the labelled pixels. A label (other than
    ignore) or a prediction outside [0, K), or a prediction of another shape, is a ValueError: it would be
    counted into a wrong cell."""
    if pred_BHW.shape != label_BHW.shape:
        raise ValueError(f"prediction {tuple(pred_BHW.shape)} and label {tuple(label_BHW.shape)} differ in shape")
    valid_N = label_BHW.reshape(-1) != ignore_index
    label_N = label_BHW.reshape(-1)[valid_N].long()
    pred_N = pred_BHW.reshape(-1)[valid_N].long()
    for name, values_N in (("label", label_N), ("prediction", pred_N)):
        outside_N = (values_N < 0) | (values_N >= num_classes)
        if bool(outside_N.any()):
            raise ValueError(f"{name} values {sorted(set(values_N[outside_N][:1000].tolist()))[:5]} are outside "
                             f"the classes 0..{num_classes - 1} (and {ignore_index} = ignore for labels)")
    counts = torch.bincount(label_N * num_classes + pred_N, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion_KK: np.ndarray) -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN); NaN where the class is in neither ground truth nor prediction."""
    confusion_KK = np.asarray(confusion_KK, dtype=np.float64)
    tp_K = np.diag(confusion_KK)
    union_K = confusion_KK.sum(0) + confusion_KK.sum(1) - tp_K
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union_K > 0, tp_K / union_K, np.nan)


def mean_iou(confusion_KK: np.ndarray, classes: list[int] | None = None) -> float:
    """Mean of the defined per-class IoUs (optionally over a class subset, e.g. SYNTHIA's 16)."""
    iou_K = iou_per_class(confusion_KK)
    return mean_of_defined(iou_K[classes] if classes is not None else iou_K)


def class_set_mious(iou_K, class_sets) -> dict[str, float]:
    """{"miou16": ..., "miou13": ...}: the mean of the defined per-class IoUs over each subset of CLASS_SETS
    asked for."""
    iou_K = np.asarray(iou_K, dtype=np.float64)
    return {f"miou{n}": mean_of_defined(iou_K[list(CLASS_SETS[n])]) for n in class_sets}


def mean_of_defined(iou_K) -> float:
    """Mean of the IoUs that are defined (not NaN); NaN when none is."""
    iou_K = np.asarray(iou_K, dtype=np.float64)
    return float(np.nanmean(iou_K)) if np.isfinite(iou_K).any() else float("nan")
