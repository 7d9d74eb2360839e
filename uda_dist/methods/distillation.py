"""DiGA's symmetric distillation as a plug-in term of self-training, and DiGA's two stages as configs.

Paper: Shen et al., "DiGA: Distil to Generalize and then Adapt for Domain Adaptive Semantic Segmentation",
CVPR 2023. Reference: fy-vision/DiGA. The formula is in uda_dist.losses.distillation, the cross-domain mixture
in uda_dist.data.fda.

The term: the student and its EMA teacher on the source image x (the student's source pass of the step) and
on its cross-domain mixture x_aug, weight * [H(T(x), S(x_aug)) + 0.5 H(T(x_aug), S(x))]. x_aug mixes, per
ClassMix mask of the source label, beta * jitter(x) + (1 - beta) * x with the target-styled x (Fourier domain
adaptation with the target batch's amplitude) on the other half; the teacher's view of x_aug also feeds the
pseudo-label selector's source statistics (DiGA's centroids). DiGA's two stages are configs of self-training
(``diga_warmup``, ``diga_self_training`` in uda_dist.methods.self_training).

Legend: B batch, K classes, H, W image size.
"""
from __future__ import annotations

import dataclasses

import torch

from uda_dist.data.augment import StrongAugConfig, strong_photometric
from uda_dist.data.class_mix import class_mix_masks
from uda_dist.data.fda import cross_domain_mixture, fourier_style
from uda_dist.losses.distillation import symmetric_distillation
from uda_dist.losses.segmentation import IGNORE_INDEX
from uda_dist.methods.terms import StepContext, Term
from uda_dist.model.heads import resize_to


def _diga_jitter() -> StrongAugConfig:
    return StrongAugConfig(jitter_strength=0.4, jitter_p=0.5, blur_p=0.8)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillationConfig:
    """DiGA's symmetric distillation between the student and its EMA teacher over the source image x and its
    cross-domain mixture x_aug."""

    weight: float = 0.0
    """Weight of the distillation term (DiGA: 0.5 in the warm-up, 0.25 in self-training); 0 = off."""
    beta: float = 0.4
    """x_aug = beta * jitter(x) + (1 - beta) * x on half of the label's classes (DiGA: 0.4 in the warm-up, 0.3
    in self-training); the target-styled x (Fourier domain adaptation) on the others."""
    fda_beta: float = 0.01
    """Fourier domain adaptation's window: the frequencies below this share of the shorter side take the
    target's amplitude (FDA: 0.01)."""
    jitter: StrongAugConfig = dataclasses.field(default_factory=_diga_jitter)
    """jitter(x): colour jitter 0.4 with probability 0.5 and Gaussian blur with probability 0.8 (DiGA's
    kornia jitter, without its grayscale and sharpness steps)."""

    def __post_init__(self) -> None:
        if self.weight < 0 or not 0.0 <= self.beta <= 1.0 or not 0.0 <= self.fda_beta < 0.5:
            raise ValueError(f"distillation needs weight >= 0, beta in [0, 1] and fda_beta in [0, 0.5), got "
                             f"{self.weight}, {self.beta}, {self.fda_beta}")


class Distillation(Term):
    """weight * [H(T(x), S(x_aug)) + 0.5 H(T(x_aug), S(x))] on the source image and its cross-domain mixture."""

    uses_teacher = True

    def __init__(self, cfg: DistillationConfig):
        self.cfg = cfg

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        image_B3HW, label_BHW = ctx.source["image"], ctx.source["label"]
        mask_BHW = class_mix_masks(label_BHW, num_classes=ctx.student.cfg.num_classes, generator=ctx.generator)
        mask_BHW = mask_BHW | (label_BHW == IGNORE_INDEX)
        styled_B3HW = fourier_style(image_B3HW, resize_to(ctx.target["image"], image_B3HW.shape[-2:]),
                                    beta=cfg.fda_beta)
        jittered_B3HW = strong_photometric(image_B3HW, generator=ctx.generator, cfg=cfg.jitter)
        aug_B3HW = cross_domain_mixture(image_B3HW, jittered_B3HW, styled_B3HW, mask_BHW, beta=cfg.beta)
        logits_aug_BKHW = ctx.student.segment(aug_B3HW)
        teacher_x, teacher_aug = ctx.teacher_view(image_B3HW), ctx.teacher_view(aug_B3HW)
        ctx.selector.observe_source(teacher_aug, label_BHW)
        return {"source.distillation": cfg.weight * symmetric_distillation(
            teacher_x.logits_BKHW, ctx.logits_src_BKHW, teacher_aug.logits_BKHW, logits_aug_BKHW)}
