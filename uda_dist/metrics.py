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


def confusion_matrix(pred_BHW: torch.Tensor, label_BHW: torch.Tensor, *, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[K, K] int64 counts of (ground truth, prediction) over the labelled pixels."""
    valid_N = label_BHW.reshape(-1) != ignore_index
    label_N = label_BHW.reshape(-1)[valid_N].long()
    pred_N = pred_BHW.reshape(-1)[valid_N].long()
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


def mean_of_defined(iou_K) -> float:
    """Mean of the IoUs that are defined (not NaN); NaN when none is."""
    iou_K = np.asarray(iou_K, dtype=np.float64)
    return float(np.nanmean(iou_K)) if np.isfinite(iou_K).any() else float("nan")
