"""How a model predicts a split: evaluation, labelling the target, predictions for the benchmark servers.

``predict(model, image_B3HW, cfg, size)`` gives class probabilities at ``size`` (the label's resolution when
scoring; the stored image's when labelling):
1. at each of ``cfg.scales`` (the image resized by the factor, bilinear, align_corners=False) the logits of the
   whole image, resized to ``size``;
2. combined: "max" = the softmax of the element-wise maximum of the logits (DiGA's two-scale inference);
   "mean" = the mean of the softmax probabilities (mmseg's test-time augmentation).
With one scale both are the softmax of that scale's logits.

Legend: B batch, K classes, H, W image.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from uda_dist.model.heads import resize_to


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How the model predicts a split (evaluation, labelling the target)."""

    scales: tuple[float, ...] = (1.0,)
    """Inference scales: the image resized by each factor, its logits resized back and combined (DiGA: 1.0,
    0.5 with combine=max). (1.0,) = one pass at the image's size."""
    combine: Literal["max", "mean"] = "mean"
    """How several scales combine: "max" = element-wise max of the logits (DiGA), "mean" = mean of the softmax
    probabilities (mmseg's test-time augmentation)."""

    def __post_init__(self) -> None:
        if not self.scales or any(not 0.0 < s <= 4.0 for s in self.scales):
            raise ValueError(f"eval.scales must be one or more scales in (0, 4], got {self.scales}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))


@torch.no_grad()
def predict(model: nn.Module, image_B3HW: torch.Tensor, cfg: EvalConfig, size: Sequence[int]) -> torch.Tensor:
    """Class probabilities [B, K, *size] of the model on the image, as ``cfg`` says (see the module docstring)."""
    combined_BKHW = None
    for scale in cfg.scales:
        logits_BKHW = _whole(model, _scaled(image_B3HW, scale), size)
        if cfg.combine == "mean":
            logits_BKHW = logits_BKHW.float().softmax(dim=1)
        combined_BKHW = logits_BKHW if combined_BKHW is None else (
            torch.maximum(combined_BKHW, logits_BKHW) if cfg.combine == "max" else combined_BKHW + logits_BKHW)
    if cfg.combine == "max":
        return combined_BKHW.float().softmax(dim=1)
    return combined_BKHW / len(cfg.scales)


def _scaled(image_B3HW: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return image_B3HW
    H, W = image_B3HW.shape[-2:]
    return resize_to(image_B3HW, (max(1, round(H * scale)), max(1, round(W * scale))))


def _whole(model: nn.Module, image_B3HW: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The model's logits of the whole image, resized to ``size``."""
    return resize_to(model(image_B3HW).logits_BKhw, size)
