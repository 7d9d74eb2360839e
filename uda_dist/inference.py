"""How a model predicts a split: evaluation, labelling the target, predictions for the benchmark servers.

``predict(model, image_B3HW, cfg, size)`` gives class probabilities at ``size``: the label's full resolution
when scoring (Cityscapes 2048x1024; the label is never resized to the prediction), the stored image's size
when labelling:
1. the image resized to ``cfg.resize`` (bilinear, align_corners=False) when set: the papers' inference size
   (DAFormer 512x1024, SePiCo 640x1280, as H x W);
2. at each of ``cfg.scales`` (that image resized by the factor), and flipped left-right too with ``cfg.flip``:
   the logits of the whole image, or with ``cfg.window`` of sliding windows (mmseg's and HRDA's slide
   inference: windows of that size every ``cfg.stride`` pixels, the last one flush with the border, each
   window's logits resized to it, those of overlapping windows averaged; an image smaller than the window is
   one window), flipped back and resized to ``size`` (bilinear). A whole image's logits are resized once, from
   the head's grid straight to ``size``, where mmseg resizes them to the input and then to the label;
3. combined: "max" = the softmax of the element-wise maximum of the logits (DiGA's two-scale inference);
   "mean" = the mean of the softmax probabilities (mmseg's test-time augmentation).
With one view (one scale, no flip) both are the softmax of its logits.

Class subsets (uda_dist.metrics.CLASS_SETS): ``cfg.class_sets`` names those a run reports beside the 19
classes (SYNTHIA sources: 16 and 13, as ``miou16``, ``miou13``). The prediction is always over all 19.

Legend: B batch, K classes, H, W image.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from uda_dist.metrics import CLASS_SETS
from uda_dist.model.heads import resize_to


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How the model predicts a split (evaluation, labelling the target, predictions for a server)."""

    resize: tuple[int, int] | None = None
    """(H, W) the image is resized to for inference (DAFormer 512x1024, SePiCo 640x1280); the prediction is
    then resized to the label's full size. None = the stored image's size."""
    scales: tuple[float, ...] = (1.0,)
    """Inference scales of the (resized) image, each a view (DiGA: 1.0, 0.5 with combine=max; mmseg's
    multi-scale test 0.5 ... 1.75)."""
    flip: bool = False
    """Also predict each scale flipped left-right (flipped back), a view of its own."""
    combine: Literal["max", "mean"] = "mean"
    """How several views combine: "max" = element-wise max of the logits (DiGA), "mean" = mean of the softmax
    probabilities (mmseg's test-time augmentation)."""
    window: tuple[int, int] | None = None
    """(H, W) of sliding-window inference (HRDA: 1024x1024 on 2048x1024); None = the whole image at once."""
    stride: tuple[int, int] | None = None
    """(H, W) step of the windows (HRDA: 512x512); None = half the window."""
    class_sets: tuple[int, ...] = ()
    """Class subsets reported beside the 19 classes: 16 and/or 13 (SYNTHIA sources)."""

    def __post_init__(self) -> None:
        if not self.scales or any(not 0.0 < s <= 4.0 for s in self.scales):
            raise ValueError(f"eval.scales must be one or more scales in (0, 4], got {self.scales}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        for name in ("resize", "window", "stride"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 2 or any(int(v) != v or v < 1 for v in value):
                    raise ValueError(f"eval.{name} must be two positive ints (H W), got {value!r}")
                object.__setattr__(self, name, (int(value[0]), int(value[1])))
        if self.stride is not None and self.window is None:
            raise ValueError("eval.stride needs eval.window (sliding-window inference)")
        if any(n not in CLASS_SETS or n == 19 for n in self.class_sets):
            raise ValueError(f"eval.class_sets may hold 16 and 13 (SYNTHIA's subsets), got {self.class_sets}")

    @property
    def strides(self) -> tuple[int, int] | None:
        """The windows' step: ``stride``, or half the window."""
        if self.window is None:
            return None
        return self.stride or (max(1, self.window[0] // 2), max(1, self.window[1] // 2))


@torch.no_grad()
def predict(model: nn.Module, image_B3HW: torch.Tensor, cfg: EvalConfig, size: Sequence[int]) -> torch.Tensor:
    """Class probabilities [B, K, *size] of the model on the image, as ``cfg`` says (see the module docstring)."""
    if cfg.resize is not None:
        image_B3HW = resize_to(image_B3HW, cfg.resize)
    combined_BKHW, views = None, 0
    for view_B3HW, flipped in _views(image_B3HW, cfg):
        logits_BKHW = _logits(model, view_B3HW, cfg)
        logits_BKHW = resize_to(logits_BKHW.flip(-1) if flipped else logits_BKHW, size).float()
        if cfg.combine == "mean":
            logits_BKHW = logits_BKHW.softmax(dim=1)
        combined_BKHW = logits_BKHW if combined_BKHW is None else (
            torch.maximum(combined_BKHW, logits_BKHW) if cfg.combine == "max" else combined_BKHW + logits_BKHW)
        views += 1
    if cfg.combine == "max":
        return combined_BKHW.softmax(dim=1)
    return combined_BKHW / views


def _views(image_B3HW: torch.Tensor, cfg: EvalConfig) -> Iterator[tuple[torch.Tensor, bool]]:
    """(view, flipped) per scale, then its left-right flip with cfg.flip."""
    H, W = image_B3HW.shape[-2:]
    for scale in cfg.scales:
        scaled_B3HW = image_B3HW if scale == 1.0 else resize_to(
            image_B3HW, (max(1, round(H * scale)), max(1, round(W * scale))))
        yield scaled_B3HW, False
        if cfg.flip:
            yield scaled_B3HW.flip(-1), True


def _logits(model: nn.Module, image_B3HW: torch.Tensor, cfg: EvalConfig) -> torch.Tensor:
    """The model's logits of the whole image on its head's grid (resized once, to the output size, by the
    caller), or of sliding windows at the image's size."""
    if cfg.window is None:
        return model(image_B3HW).logits_BKhw
    return slide_logits(model, image_B3HW, window=cfg.window, stride=cfg.strides)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one side (mmseg's slide_inference): every ``stride`` pixels, the last
    window flush with the border; one window at 0 when the side is not longer than the window."""
    count = max(length - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, length - window), 0) for i in range(count)})


def slide_logits(model: nn.Module, image_B3HW: torch.Tensor, *, window: tuple[int, int],
                 stride: tuple[int, int]) -> torch.Tensor:
    """Logits [B, K, H, W]: each window's logits (at the window's size) summed where windows overlap, divided by
    the number of windows covering each pixel."""
    H, W = image_B3HW.shape[-2:]
    total_BKHW = count_HW = None
    for top in window_starts(H, window[0], stride[0]):
        for left in window_starts(W, window[1], stride[1]):
            crop_B3hw = image_B3HW[..., top:top + window[0], left:left + window[1]]
            logits_BKhw = resize_to(model(crop_B3hw).logits_BKhw, crop_B3hw.shape[-2:]).float()
            h, w = logits_BKhw.shape[-2:]
            if total_BKHW is None:
                total_BKHW = logits_BKhw.new_zeros((*logits_BKhw.shape[:2], H, W))
                count_HW = logits_BKhw.new_zeros((H, W))
            total_BKHW[..., top:top + h, left:left + w] += logits_BKhw
            count_HW[top:top + h, left:left + w] += 1
    return total_BKHW / count_HW
