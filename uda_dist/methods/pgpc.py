"""PGPC's pseudo-label guided pixel contrast as a plug-in term of self-training (the loss:
uda_dist.losses.pgpc, where every choice is written down).

What the term adds to the self-training step (uda_dist.methods.self_training runs it top to bottom), from
``start_step``, the class statistics being fed from step 0:
- on the student's source pass (its projection features): the contrast of the source pixels, ground truth,
  every pixel reliable, weight 1;
- on the student's ClassMix pass, the same forward that gives the mixed cross-entropy: the contrast of the
  mixed image's pixels, pasted source pixels with their ground truth, target pixels with their pseudo-label,
  reliable where the teacher's confidence on the target is >= ``threshold``, unreliable elsewhere (pushed
  from the prototypes outside their teacher's top ``candidates`` classes), each weighted by the mixed image's
  pixel weight (1 on the source, q on the target, 0 on the PL-crop rows).
Both are weighted by ``weight``. The prototypes are the statistics SePiCo reads: with both terms on, one
statistics update, one reduce. Logged: ``pgpc.reliable_ratio``, the share of the target's pixels that are
reliable.

Legend: B batch, K classes, D projection dim, H, W image, h, w feature grid.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from uda_dist.data.class_mix import mix
from uda_dist.losses.pgpc import pgpc_contrast, to_grid, top_classes
from uda_dist.methods.terms import ContrastTerm, MixedPass, StepContext, pixels


@dataclasses.dataclass(frozen=True, kw_only=True)
class PGPCConfig:
    """PGPC's pixel contrast of reliable and unreliable pixels against the exact class prototypes."""

    weight: float = 0.0
    """Weight of both PGPC terms (source and ClassMix image); 0 = off (the recipes: 0.1)."""
    tau: float = 0.1
    """Temperature of the pixel-to-prototype similarities (the recipes: 0.1, the usual pixel-contrast value)."""
    threshold: float = 0.968
    """A target pixel is reliable where the teacher's max probability is >= this (DAFormer's q threshold)."""
    unreliable_weight: float = 1.0
    """Weight of an unreliable pixel's term relative to a reliable one's; 0 = reliable pixels only."""
    candidates: int = 3
    """An unreliable pixel is pushed from every prototype outside its teacher's top this-many classes (U2PL: 3)."""
    start_step: int = 3000
    """First step with the PGPC terms; the statistics are fed from step 0."""

    def __post_init__(self) -> None:
        if self.weight < 0 or self.tau <= 0 or self.unreliable_weight < 0 or self.start_step < 0:
            raise ValueError(f"pgpc needs weight >= 0, tau > 0, unreliable_weight >= 0 and start_step >= 0, got "
                             f"{self.weight}, {self.tau}, {self.unreliable_weight}, {self.start_step}")
        if not 0.0 <= self.threshold <= 1.0 or self.candidates < 1:
            raise ValueError(f"pgpc needs threshold in [0, 1] and candidates >= 1, got {self.threshold}, "
                             f"{self.candidates}")


class PGPCContrast(ContrastTerm):
    """PGPC on the source pass and on the ClassMix pass."""

    def __init__(self, cfg: PGPCConfig, student: nn.Module):
        super().__init__(cfg, student, method="PGPC")
        self._log: dict[str, torch.Tensor] = {}

    def mix_projection(self, step: int) -> bool:
        return self.on(step)

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if not self.on(ctx.step):
            return {}
        label_BHW = ctx.source["label"]
        K = ctx.student.cfg.num_classes
        every_BHW = torch.ones_like(label_BHW, dtype=torch.bool)
        none_BKHW = torch.zeros((label_BHW.shape[0], K, *label_BHW.shape[1:]), dtype=torch.bool,
                                device=label_BHW.device)
        return {"source.pgpc": self._contrast(ctx, ctx.source_out.proj_BDhw, label_BHW, every_BHW,
                                              every_BHW.float(), none_BKHW)}

    def mix_losses(self, ctx: StepContext, mixed: MixedPass) -> dict[str, torch.Tensor]:
        if not self.on(ctx.step):
            return {}
        teacher_BKHW = ctx.pseudo_view.scores_BKHW()
        confident_BHW = ctx.pseudo_view.confidence_BHW() >= self.cfg.threshold
        self._log = {"pgpc.reliable_ratio": confident_BHW.float().mean()}
        reliable_BHW = mix(mixed.mask_BHW, torch.ones_like(confident_BHW), confident_BHW)
        pasted_BKHW = F.one_hot(torch.where(mixed.mask_BHW, mixed.label_BHW, 0), teacher_BKHW.shape[1]).permute(
            0, 3, 1, 2).bool()  # a pasted pixel's one candidate is its ground truth
        candidates_BKHW = mix(mixed.mask_BHW, pasted_BKHW, top_classes(teacher_BKHW, self.cfg.candidates))
        return {"mix.pgpc": self._contrast(ctx, mixed.out.proj_BDhw, mixed.label_BHW, reliable_BHW,
                                           mixed.weight_BHW, candidates_BKHW)}

    def log_values(self) -> dict[str, torch.Tensor]:
        return self._log

    def _contrast(self, ctx: StepContext, proj_BDhw: torch.Tensor, label_BHW: torch.Tensor,
                  reliable_BHW: torch.Tensor, weight_BHW: torch.Tensor, candidates_BKHW: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        label_N, reliable_N, weight_N, candidates_NK = to_grid(
            label_BHW, reliable_BHW, weight_BHW, candidates_BKHW, size=tuple(proj_BDhw.shape[-2:]),
            num_classes=ctx.student.cfg.num_classes, min_share=ctx.label_min_share)
        return cfg.weight * pgpc_contrast(pixels(proj_BDhw), label_N, reliable_N, candidates_NK, weight_N,
                                          ctx.stats.mean_KD, tau=cfg.tau, unreliable_weight=cfg.unreliable_weight,
                                          class_mask_K=ctx.stats.seen_K)
