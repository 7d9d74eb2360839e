"""SePiCo: semantic-guided pixel contrast (ProtoCL, BankCL, DistCL), a plug-in term of self-training.

Paper: Xie et al., "SePiCo: Semantic-Guided Pixel Contrast for Domain Adaptive Semantic Segmentation",
TPAMI 2023 Reference: BIT-DA/SePiCo mmseg/models/uda/sepico.py. The formulas are in uda_dist.losses.contrast,
the statistics in uda_dist.stats.

What the term adds to the self-training step (uda_dist.methods.self_training runs it top to bottom):
- the exact cumulative class statistics, fed from step 0 BEFORE the loss with the teacher's projection of the
  un-augmented source and the source ground truth (the method's one statistics update, one reduce), and the
  memory bank of per-batch class means fed from the same reduced sums;
- from ``start_step``: the contrast of the student's source projection (its source pass of the step, on the
  strongly augmented source with ``method.strong_source``) against the statistics, ground-truth anchors;
- from ``start_step``: the student's projection of the strongly augmented target, contrasted with the
  teacher's pseudo-labels (unfiltered, except the PL-crop rows).
Each contrastive call adds the regulariser (weight ``reg_weight``) and is weighted by ``weight``.

Differences on purpose: statistics are exact sums reduced once per step (injected reducer) and saved with the
method state (the reference keeps them per process and does not checkpoint them); classes never seen are
left out of the contrast (see uda_dist.losses.contrast); one backward of the summed terms.

Legend: B batch, K classes, D projection dim, H,W image, h,w feature grid, N pixels, M bank slots.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from uda_dist.data.augment import strong_photometric
from uda_dist.losses.contrast import bank_contrast, contrast_regularizer, dist_contrast, proto_contrast
from uda_dist.methods.terms import ContrastTerm, StepContext, pixels
from uda_dist.stats.memory_bank import ClassMemoryBank
from uda_dist.stats.moments import Moments


@dataclasses.dataclass(frozen=True, kw_only=True)
class SePiCoContrastConfig:
    """SePiCo's pixel contrast of the student's projection features against the source class statistics."""

    weight: float = 0.0
    """lambda: weight of every contrastive term (and of its regulariser); 0 = off (SePiCo: 1)."""
    contrast: Literal["proto", "bank", "dist"] = "dist"
    """Which contrast: ProtoCL (class means), BankCL (memory bank of batch means), DistCL (class Gaussians)."""
    tau: float = 100.0
    """Contrast temperature (SePiCo: 100)."""
    start_step: int = 3000
    """First step with contrastive losses; the statistics are fed from step 0."""
    reg_weight: float = 1.0
    """Weight of the regulariser inside each contrastive call (multiplied by weight)."""
    bank_size: int = 200
    """BankCL: per-class memory bank length (last M per-batch class means)."""

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.weight < 0 or self.reg_weight < 0 or self.start_step < 0:
            raise ValueError("the contrast's weight, reg_weight and start_step must be >= 0")
        if self.bank_size < 1:
            raise ValueError(f"bank_size must be >= 1, got {self.bank_size}")


class SePiCoContrast(ContrastTerm):
    """Source (ground truth) and target (pseudo-label) pixel contrast against the class statistics."""

    def __init__(self, cfg: SePiCoContrastConfig, student: nn.Module):
        super().__init__(cfg, student, method="SePiCo")
        self.bank = ClassMemoryBank(student.cfg.num_classes, student.cfg.proj_dim, size=cfg.bank_size).to(
            next(student.parameters()).device)

    def on_statistics(self, batch: Moments) -> None:
        self.bank.push_moments(batch)

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if not self.on(ctx.step):
            return {}
        target_B3HW = strong_photometric(ctx.target["image"], generator=ctx.generator, cfg=ctx.strong_aug)
        return {"source.contrast": self.contrast_loss(ctx, ctx.source_out.proj_BDhw, ctx.source["label"]),
                "target.contrast": self.contrast_loss(ctx, ctx.student.project(target_B3HW),
                                                      ctx.contrast_pseudo_labels())}

    def contrast_loss(self, ctx: StepContext, proj_BDhw: torch.Tensor, label_BHW: torch.Tensor) -> torch.Tensor:
        """lambda * (contrast + reg_weight * regulariser) of projection features against the statistics."""
        cfg, stats = self.cfg, ctx.stats
        z_ND = pixels(proj_BDhw)
        label_N = ctx.grid_labels(label_BHW, proj_BDhw).reshape(-1)
        seen_K, mean_KD = stats.seen_K, stats.mean_KD
        if cfg.contrast == "proto":
            loss = proto_contrast(z_ND, label_N, mean_KD, tau=cfg.tau, class_mask_K=seen_K)
        elif cfg.contrast == "bank":
            loss = bank_contrast(z_ND, label_N, self.bank.bank_KMD, self.bank.slot_mask_KM(), tau=cfg.tau,
                                 class_mask_K=seen_K)
        else:
            loss = dist_contrast(z_ND, label_N, mean_KD, stats.var_KD, tau=cfg.tau, class_mask_K=seen_K)
        reg = contrast_regularizer(z_ND, label_N, mean_KD, tau=cfg.tau, class_mask_K=seen_K)
        return cfg.weight * (loss + cfg.reg_weight * reg)

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])
