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

Where the pseudo-labels come from can also be a night image's daytime pair (``method.day_night``, SePiCo's
Cityscapes -> Dark Zurich recipe, after DANNet): the teacher labels the night image and its GPS-matched day
image (the same resize, crop and flip), and the two softmaxes are fused per class,
  p = w * p_day + (1 - w) * p_night,  w_k = day_ratio where p_day,k > day_confidence, else 1 - day_ratio,
for the classes whose appearance the night changes least (road, sidewalk, building, wall, fence, vegetation,
terrain, sky: SePiCo's ranges [0, 5) and [8, 11)); w_k = 0 (the night alone) for the others. With class
weights (``method.class_weight``, the log-frequency prior) p is multiplied by them before the arg-max. The
pseudo-label is argmax p and its confidence max p (DAFormer's q counts the pixels with max p >= threshold).

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


SHIFT_INSENSITIVE_CLASSES = (0, 1, 2, 3, 4, 8, 9, 10)
"""road, sidewalk, building, wall, fence, vegetation, terrain, sky: the trainIds whose pseudo-labels may come from
the day image (SePiCo's shift_insensitive_classes [(0, 5), (8, 11)])."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DayNightConfig:
    """SePiCo's day/night pseudo-label fusion (Cityscapes -> Dark Zurich; DANNet's mix of day and night
    predictions). Needs a target split built with day pairs (python -m shards build --day-pairs)."""

    enabled: bool = False
    """Fuse the teacher's prediction on each night image's daytime pair into its pseudo-labels."""
    day_ratio: float = 0.8
    """Weight of the day prediction of a fused class where the day probability exceeds day_confidence;
    1 - day_ratio elsewhere (SePiCo: 0.8)."""
    day_confidence: float = 0.4
    """Day probability above which a fused class leans on the day image (SePiCo, DANNet: 0.4)."""
    classes: tuple[int, ...] = SHIFT_INSENSITIVE_CLASSES
    """The trainIds fused; every other class keeps the night prediction alone."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.day_ratio <= 1.0 or not 0.0 <= self.day_confidence <= 1.0:
            raise ValueError(f"day_night.day_ratio and day_confidence must be in [0, 1], got {self.day_ratio}, "
                             f"{self.day_confidence}")
        object.__setattr__(self, "classes", tuple(int(k) for k in self.classes))
        if len(set(self.classes)) != len(self.classes) or any(not 0 <= k < 256 for k in self.classes):
            raise ValueError(f"day_night.classes must be distinct trainIds, got {self.classes}")


def fuse_day_night(day_BKHW: torch.Tensor, night_BKHW: torch.Tensor, *, cfg: DayNightConfig,
                   class_weight_K: torch.Tensor | None = None) -> torch.Tensor:
    """w * p_day + (1 - w) * p_night per class (module docstring), times the class weights when given."""
    K = day_BKHW.shape[1]
    fused_K = torch.zeros(K, dtype=torch.bool, device=day_BKHW.device)
    fused_K[[k for k in cfg.classes if k < K]] = True
    lean_BKHW = torch.where(day_BKHW > cfg.day_confidence, cfg.day_ratio, 1.0 - cfg.day_ratio)
    w_BKHW = lean_BKHW * fused_K.view(1, K, 1, 1)
    mixed_BKHW = w_BKHW * day_BKHW + (1.0 - w_BKHW) * night_BKHW
    return mixed_BKHW if class_weight_K is None else mixed_BKHW * class_weight_K.view(1, K, 1, 1)


def log_frequency_weights(frequency_K: tuple[float, ...], *, spread: float) -> tuple[float, ...]:
    """DANNet's and SePiCo's class prior: w_k = 1 + spread * (mean(log f) - log f_k) / std(log f) (std with
    n - 1, as torch.std), so rarer classes weigh more, about 1 +- spread."""
    log_f = torch.log(torch.tensor(frequency_K, dtype=torch.float64))
    return tuple(float(w) for w in (log_f.mean() - log_f) / log_f.std() * spread + 1.0)


@dataclasses.dataclass(frozen=True)
class TeacherView:
    """The teacher's pass over a batch: logits at the head's grid, the decoder feature the classifier reads
    (same grid), and the logits at image size; ``probs_BKHW`` the pseudo-label scores when they are not the
    softmax of those logits (the day/night fusion)."""

    logits_BKhw: torch.Tensor
    fused_BChw: torch.Tensor
    logits_BKHW: torch.Tensor
    probs_BKHW: torch.Tensor | None = None

    def scores_BKHW(self) -> torch.Tensor:
        """What ranks the classes of a pixel: the fused scores, else the logits."""
        return self.logits_BKHW if self.probs_BKHW is None else self.probs_BKHW

    def confidence_BHW(self) -> torch.Tensor:
        """The pseudo-label's confidence: max of the fused scores, else of the softmax."""
        if self.probs_BKHW is not None:
            return self.probs_BKHW.detach().float().amax(dim=1)
        return torch.softmax(self.logits_BKHW.detach().float(), dim=1).amax(dim=1)


def confidence_weight(logits_BKHW: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """q: the share of the batch's pixels whose max teacher probability is >= threshold (a device scalar)."""
    return confident_share(torch.softmax(logits_BKHW.detach().float(), dim=1).amax(dim=1), threshold=threshold)


def confident_share(confidence_BHW: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """The share of the pixels whose confidence is >= threshold (a device scalar)."""
    return (confidence_BHW >= threshold).float().mean()


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
        q = confident_share(view.confidence_BHW(), threshold=self.threshold)
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

