"""Pseudo-label selection: how self-training turns the target's pseudo-labels into labels and pixel weights.

A part that the self-training config chooses (``method.pseudo_selection``), not a subclass override, so that
every self-training method (DAFormer's, SePiCo's, DiGA's) can use either:

- ``"confidence"`` (DAFormer, the default): every pixel keeps its label and is weighted by q, the share of
  the batch's pixels whose teacher confidence is >= ``method.pseudo_threshold`` (one scalar per batch).
- ``"centroid_agreement"`` (DiGA): a pixel keeps its label, with weight 1, only where it agrees with the class
  of the nearest target feature centroid of the teacher's decoder feature; elsewhere it is ignored (255). No
  threshold. The centroids (uda_dist.stats.centroids) start from one pass of the model over the target train
  split before the first step, and move at every optimiser step with the teacher's features where the
  selected label, and on the source (when the method feeds it) the ground truth, agree with the teacher.

A selector sees the pseudo-labels and the teacher's view of the same target images (``TeacherView``),
returns (label_BHW, weight_BHW, values to log), and may keep state (``state_dict``), which the method saves
with its own. The PL-crop rows get weight 0 whichever selector runs.

Legend: B batch, K classes, C feature channels, H, W image size, h, w the head's grid.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from uda_dist.losses.segmentation import IGNORE_INDEX
from uda_dist.methods.base import NoState
from uda_dist.stats.centroids import ClassCentroids, agreement_selection


@dataclasses.dataclass(frozen=True)
class TeacherView:
    """The teacher's pass over a batch: logits at the head's grid, the decoder feature the classifier reads
    (same grid), and the logits at image size."""

    logits_BKhw: torch.Tensor
    fused_BChw: torch.Tensor
    logits_BKHW: torch.Tensor


def confidence_weight(logits_BKHW: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """q: the share of the batch's pixels whose max teacher probability is >= threshold (a device scalar)."""
    max_prob_BHW = torch.softmax(logits_BKHW.detach().float(), dim=1).amax(dim=1)
    return (max_prob_BHW >= threshold).float().mean()


class Selector(NoState):
    """The interface of a pseudo-label selector; its hooks do nothing unless the selector keeps statistics."""

    def select(self, label_BHW: torch.Tensor, view: TeacherView
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(label_BHW, weight_BHW, values to log) for the target pseudo-labels and the teacher's view of them."""
        raise NotImplementedError

    def observe_source(self, view: TeacherView, label_BHW: torch.Tensor) -> None:
        """The teacher's view of labelled source images (used by selectors with statistics)."""

    def start(self, batches: Callable[[], Any], features: Callable[[torch.Tensor], TeacherView],
              device: torch.device) -> None:
        """Before the first step of a fresh run: ``batches()`` is this rank's share of the target train split."""

    def after_step(self) -> None:
        """Once per optimiser step, on every rank."""


class ConfidenceWeight(Selector):
    """DAFormer's quality weight: q = share of pixels with max teacher probability >= threshold, on every pixel."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def select(self, label_BHW, view):
        q = confidence_weight(view.logits_BKHW, threshold=self.threshold)
        return label_BHW, q.expand(label_BHW.shape), {"pseudo.confident_ratio": q}


class CentroidAgreement(Selector):
    """DiGA's threshold-free selection: the pseudo-label where it agrees with the nearest centroid, weight 1."""

    def __init__(self, centroids: ClassCentroids):
        self.centroids = centroids

    def select(self, label_BHW, view):
        nearest_BHW = self.centroids.nearest(view.fused_BChw, size=tuple(label_BHW.shape[-2:]))
        selected_BHW = agreement_selection(label_BHW, nearest_BHW)
        self.centroids.contribute(view.fused_BChw, view.logits_BKhw, selected_BHW)
        kept_BHW = selected_BHW != IGNORE_INDEX
        return selected_BHW, torch.ones_like(label_BHW, dtype=torch.float32), {
            "pseudo.agreement_ratio": (kept_BHW.sum() / (label_BHW != IGNORE_INDEX).sum().clamp_min(1)).float(),
            "pseudo.centroid_classes": self.centroids.seen_K.sum().float()}

    def observe_source(self, view, label_BHW):
        self.centroids.contribute(view.fused_BChw, view.logits_BKhw, label_BHW)

    def start(self, batches, features, device):
        def grid(image_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            view = features(image_B3HW)
            return view.fused_BChw, view.logits_BKhw

        self.centroids.initialise(batches, grid, device)

    def after_step(self):
        self.centroids.commit()

    def state_dict(self):
        return {"centroids": self.centroids.state_dict()}

    def load_state_dict(self, state):
        self.centroids.load_state_dict(state["centroids"])

