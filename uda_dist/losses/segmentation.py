"""Segmentation losses: pure functions of tensors (no module state, no host sync).

Legend: B batch, K classes, H, W image size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def cross_entropy(logits_BKHW: torch.Tensor, label_BHW: torch.Tensor, *,
                  weight_BHW: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                  class_weight_K: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise cross-entropy.

    Unweighted: the mean over the labelled (non-ignored) pixels; 0 (with a gradient path) when none are.
    Weighted (DACS/DAFormer pseudo-label loss): per-pixel CE times the weight, averaged over ALL pixels,
    ignored ones counting as 0 — mmseg's weighted reduction without avg_non_ignore, as DAFormer trains it.
    ``class_weight_K`` multiplies each pixel's CE by its label's class weight (mmseg's class_weight) before
    either reduction.
    """
    ce_BHW = F.cross_entropy(logits_BKHW.float(), label_BHW, ignore_index=ignore_index, reduction="none",
                             weight=None if class_weight_K is None else class_weight_K.float())
    if weight_BHW is not None:
        return (ce_BHW * weight_BHW).mean()
    valid_BHW = (label_BHW != ignore_index).to(ce_BHW.dtype)
    return ce_BHW.sum() / valid_BHW.sum().clamp_min(1.0)
