"""Plug-in loss terms: the parts a recipe adds to self-training (SePiCo's contrast, PGPC's contrast, DiGA's
distillation, FADA's and ASANet's adversarial terms), each reading the passes the step already made instead
of making its own.

Self-training (uda_dist.methods.self_training) runs one step top to bottom and hands every term a
``StepContext``: the student's source pass (with its projection features when a term asks for them), the
pseudo-labels of the target, the teacher's view, the random generator, and the source class statistics. The
statistics are ONE object per method (uda_dist.stats.class_stats), fed once per step with the teacher's
projection of the un-augmented source and its ground truth, in one packed all-reduce, whichever and however
many terms read them. A term returns named, already weighted losses in two places: ``losses`` after the
student's source pass, and ``mix_losses`` after its pass over the ClassMix image (``MixedPass``), so that a
term contrasting the mixed image reuses that forward pass. The student's pass over the un-augmented target
(``StepContext.student_target``) is made once, the first time a term asks for it, and shared by the terms
that read it. A term that trains a module of its own (a discriminator) declares it in
``auxiliaries`` and returns its losses from ``auxiliary_losses``; the trainer runs that phase
(uda_dist.step) for every term's module.

The math of each term is in a pure module (uda_dist.losses.contrast, .pgpc, .distillation, .adversarial,
.affinity); a term only picks the pixels, labels and weights it feeds them.

Legend: B batch, K classes, D projection dim, H, W image, h, w feature grid, N pixels.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from uda_dist.auxiliary import Auxiliary
from uda_dist.data.augment import StrongAugConfig
from uda_dist.losses.contrast import downscale_labels
from uda_dist.losses.segmentation import IGNORE_INDEX
from uda_dist.methods.base import NoState
from uda_dist.methods.labelers import Selector, TeacherView
from uda_dist.model.heads import resize_to
from uda_dist.stats.class_stats import ClassStatistics
from uda_dist.stats.moments import Moments


@dataclasses.dataclass
class StepContext:
    """What a term sees of the step (built by self-training, in the order it runs)."""

    step: int
    student: nn.Module
    source: dict[str, Any]
    """The source batch ("image" is the un-augmented image)."""
    source_out: Any
    """The student's SegOutput on the source image of its pass (strongly augmented with
    ``method.strong_source``; proj_BDhw set when a term asked for it, the encoder levels when a term asked for
    features)."""
    logits_src_BKHW: torch.Tensor
    target: dict[str, Any]
    pseudo_label_BHW: torch.Tensor | None
    """The selected pseudo-labels of the target (None when the step makes none; their weights are the ClassMix
    pass's outside the pasted source)."""
    pseudo_view: TeacherView | None
    """The teacher's view of the target the pseudo-labels come from."""
    generator: torch.Generator
    teacher_view: Callable[[torch.Tensor], TeacherView]
    selector: Selector
    stats: ClassStatistics | None
    strong_aug: StrongAugConfig
    """The strong photometric augmentation of self-training (for a term's own strongly augmented pass)."""
    label_min_share: float
    pl_crop: tuple[int, int]
    """(top, bottom) PL-crop rows."""
    _target_pass: "TargetPass | None" = None

    def student_target(self) -> "TargetPass":
        """The student's pass over the (un-augmented) target image with its encoder levels: made the first time
        a term asks, then shared by every term of the step."""
        if self._target_pass is None:
            image_B3HW = self.target["image"]
            out = self.student(image_B3HW, with_features=True)
            self._target_pass = TargetPass(out=out, logits_BKHW=resize_to(out.logits_BKhw, image_B3HW.shape[-2:]))
        return self._target_pass

    def contrast_pseudo_labels(self) -> torch.Tensor:
        """The target pseudo-labels for a contrast: every pixel, the PL-crop rows ignored."""
        top, bottom = self.pl_crop
        cropped_H = pl_crop_rows(self.pseudo_label_BHW.shape[1], top=top, bottom=bottom,
                                 device=self.pseudo_label_BHW.device)
        return self.pseudo_label_BHW.masked_fill(cropped_H.view(1, -1, 1), IGNORE_INDEX)

    def grid_labels(self, label_BHW: torch.Tensor, feat_BDhw: torch.Tensor) -> torch.Tensor:
        """Labels on the feature grid (the majority class where its share >= label_min_share, else ignore)."""
        return grid_labels(label_BHW, feat_BDhw, num_classes=self.student.cfg.num_classes,
                           min_share=self.label_min_share)


@dataclasses.dataclass
class TargetPass:
    """The student's pass over the un-augmented target image."""

    out: Any
    """The student's SegOutput, with the encoder levels (``features``)."""
    logits_BKHW: torch.Tensor
    """Its logits at image size."""


@dataclasses.dataclass
class MixedPass:
    """The ClassMix image and the student's pass over it."""

    image_B3HW: torch.Tensor
    mask_BHW: torch.Tensor
    """Where the source was pasted."""
    label_BHW: torch.Tensor
    weight_BHW: torch.Tensor
    out: Any
    """The student's SegOutput (proj_BDhw set when a term asked for it)."""
    logits_BKHW: torch.Tensor


class Term(NoState):
    """The interface of a plug-in loss term; every hook does nothing by default."""

    uses_statistics: bool = False
    """Reads the source class statistics (the method then keeps and feeds them)."""
    needs_pseudo_labels: bool = False
    """Reads the target's pseudo-labels even when the method's own mixed term is off."""
    uses_teacher: bool = False
    """Reads the EMA teacher (``StepContext.teacher_view``); the method keeps a teacher only when something
    reads it."""

    def source_projection(self, step: int) -> bool:
        """Whether this step's source pass must return projection features."""
        return False

    def source_features(self, step: int) -> bool:
        """Whether this step's source pass must return the encoder levels (``SegOutput.features``)."""
        return False

    def mix_projection(self, step: int) -> bool:
        """Whether this step's ClassMix pass must return projection features."""
        return False

    def on_statistics(self, batch: Moments) -> None:
        """The step's source moments, reduced over workers, right after the statistics took them."""

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Named, weighted losses after the student's source pass."""
        return {}

    def mix_losses(self, ctx: StepContext, mixed: MixedPass) -> dict[str, torch.Tensor]:
        """Named, weighted losses after the student's ClassMix pass."""
        return {}

    def auxiliaries(self) -> dict[str, Auxiliary]:
        """Modules this term trains beside the student, each with its optimiser config (a discriminator), by a
        name unique in the run: the trainer freezes them during the step's losses and steps them after."""
        return {}

    def auxiliary_losses(self, name: str) -> dict[str, torch.Tensor]:
        """Named losses of this term's auxiliary ``name``, from tensors ``losses`` cached detached in this
        micro-batch."""
        raise NotImplementedError(f"{type(self).__name__} declares no auxiliary module {name!r}")

    def log_values(self) -> dict[str, torch.Tensor]:
        """Device tensors worth logging from the last step (synced to the host only at log cadence)."""
        return {}


class ContrastTerm(Term):
    """A term that contrasts the student's projection features, anchored by the target's pseudo-labels among
    others, against the source class statistics: it needs the projection head."""

    uses_statistics = True
    needs_pseudo_labels = True
    uses_teacher = True

    def __init__(self, cfg: Any, student: nn.Module, *, method: str):
        if getattr(student, "proj_head", None) is None:
            raise ValueError(f"{method} needs a projection head: set model.proj_dim > 0 (the real recipes: 512)")
        self.cfg = cfg

    def on(self, step: int) -> bool:
        """From ``cfg.start_step`` on (the statistics are fed from step 0 whatever the start)."""
        return step >= self.cfg.start_step

    def source_projection(self, step: int) -> bool:
        return self.on(step)


def grid_labels(label_BHW: torch.Tensor, feat_BDhw: torch.Tensor, *, num_classes: int, min_share: float
                ) -> torch.Tensor:
    """Labels on ``feat_BDhw``'s grid [B, h, w]: the majority class where its share >= min_share, else ignore."""
    return downscale_labels(label_BHW, size=tuple(feat_BDhw.shape[-2:]), num_classes=num_classes,
                            min_share=min_share)


def pl_crop_rows(height: int, *, top: int, bottom: int, device: torch.device | None = None) -> torch.Tensor:
    """bool [H]: the PL-crop rows (the first ``top`` and the last ``bottom``), whose pseudo-labels are not used."""
    rows_H = torch.arange(height, device=device)
    return (rows_H < top) | (rows_H >= height - bottom)


def pixels(feat_BDhw: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w] -> [B*h*w, D] in the label order of label_Bhw.reshape(-1)."""
    return feat_BDhw.permute(0, 2, 3, 1).reshape(-1, feat_BDhw.shape[1])
