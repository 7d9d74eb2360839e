"""ASANet's affinity-space adaptation as a plug-in term of self-training: adversarial alignment of the output's
affinity space, and affinity space cleaning.

Paper: Zhou et al., "Affinity Space Adaptation for Semantic Segmentation Across Domains", TIP 2020.
Reference: idealwei/ASANet train_gta2city.py. The formulas are in uda_dist.losses.affinity; the
discriminator in uda_dist.model.discriminator.

What the term adds to the self-training step (uda_dist.methods.self_training runs it top to bottom; the
trainer runs the discriminator's phase, uda_dist.step):
1. the student's logits on the source image (its source pass) and on the un-augmented target (its target
   pass, shared with any other term that reads it), both at image size, resized to the affinity grid
   (``affinity_scale`` of the image: 1 is the paper's) and softmaxed to p_s, p_t. The discriminator, frozen,
   on the target's affinity space A(p_t) gives ``asanet.generator`` = adv_weight * (1 - t/T) *
   BCE(D(A(p_t)), source), T the run's steps; with ``asc_weight`` > 0 the cleaning loss ``asanet.asc`` =
   asc_weight * ASC(p_t);
2. the discriminator's phase (auxiliary "asanet", when adv_weight > 0): on p_s and p_t cached detached in 1,
   ``asanet.discriminator`` = 0.5 BCE(D(A(p_s)), source) + 0.5 BCE(D(A(p_t)), target), its own backward
   and Adam step (lr 1e-4, betas 0.9/0.99, poly 0.9), gradients averaged over workers.

ASANet's method is this term on self-training with no target term of its own (``asanet_adaptation`` in
uda_dist.methods.presets). The variants are weights: ASA (adv_weight 1e-3, asc_weight 0), ASC alone
(adv_weight 0: no discriminator is built), ASA + ASC (both). The recipes start from a source-only stage's
weights.

Choices, against the reference:
- the reference trains from ImageNet weights for 250k steps; the project's recipes run a source-only stage
  first (uda_dist.pipeline) and adapt from its weights;
- the reference never calls its ASC loss in the released training script and gives no weight for it;
  ``asc_weight`` (default 0, recipes 0.01) is the project's choice, stated as such;
- the affinity space is computed on the softmax of the logits resized to ``affinity_scale`` of the image
  (align_corners=False, the project's convention; the reference upsamples to the input size with
  align_corners=True): 8K channels at 720x1280 are 560 MB per image in float32 and the generator term holds
  2.8 GiB for its backward pass (its groups checkpointed, uda_dist.losses.affinity; 8.2 GiB as one graph),
  so a lower resolution is a memory choice (README: the measured memory);
- DeepLab-V2's classifier sums all four ASPP branches here (the reference's sums two, an inherited bug).

Legend: B batch, K classes, H, W image, h, w the affinity grid.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uda_dist.auxiliary import Auxiliary
from uda_dist.errors import ConfigError
from uda_dist.losses.affinity import (affinity_cleaning_loss, affinity_space, asa_discriminator_loss,
                                      asa_generator_loss, NEIGHBOURS)
from uda_dist.methods.terms import StepContext, Term
from uda_dist.model.discriminator import AffinityDiscriminator
from uda_dist.optim import AuxOptimConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class ASANetConfig:
    """ASANet's affinity-space adaptation: an affinity-space discriminator with its own Adam against the
    student's damped adversarial term, and (optionally) affinity space cleaning on the target. Off unless a
    weight is > 0."""

    adv_weight: float = 0.0
    """lambda_adv of the generator's adversarial term, damped linearly to 0 over the run (ASANet: 1e-3);
    0 switches adversarial alignment off (no discriminator)."""
    asc_weight: float = 0.0
    """Weight of the affinity space cleaning loss on the target (0: off; the paper gives no value)."""
    affinity_scale: float = 1.0
    """The affinity space's grid as a fraction of the image size (1: the input size, as the paper)."""
    disc_width: int = 64
    """Width of the discriminator's first conv; each next one doubles it (ASANet: 64 -> 128 -> 256 -> 512)."""
    disc_optim: AuxOptimConfig = dataclasses.field(default_factory=AuxOptimConfig)
    """The discriminator's optimiser: Adam, lr 1e-4, betas (0.9, 0.99), poly 0.9 (ASANet)."""

    def __post_init__(self) -> None:
        if self.adv_weight < 0 or self.asc_weight < 0 or not 0.0 < self.affinity_scale <= 1.0 or self.disc_width < 1:
            raise ValueError("asanet needs adv_weight >= 0, asc_weight >= 0, affinity_scale in (0, 1] and "
                             f"disc_width >= 1, got {self.adv_weight}, {self.asc_weight}, {self.affinity_scale}, "
                             f"{self.disc_width}")

    @property
    def on(self) -> bool:
        return bool(self.adv_weight or self.asc_weight)


class ASANetAdaptation(Term):
    """The damped affinity-space generator term and the cleaning loss for the student; ASANet's discriminator
    loss for its auxiliary "asanet"."""

    def __init__(self, cfg: ASANetConfig, student: nn.Module, *, total_steps: int):
        if cfg.adv_weight and total_steps < 1:
            raise ValueError(f"ASANet damps its adversarial term over the run's steps: total_steps must be >= 1, "
                             f"got {total_steps}")
        self.cfg, self.total_steps = cfg, total_steps
        self.discriminator = None
        if cfg.adv_weight:
            device = next(student.parameters()).device
            self.discriminator = AffinityDiscriminator(len(NEIGHBOURS) * student.cfg.num_classes,
                                                       width=cfg.disc_width).to(device)
        self._cached: dict[str, Any] | None = None

    def auxiliaries(self) -> dict[str, Auxiliary]:
        return {} if self.discriminator is None else {"asanet": Auxiliary(self.discriminator, self.cfg.disc_optim)}

    def _affinity_probs(self, logits_BKHW: torch.Tensor) -> torch.Tensor:
        """p on the affinity grid: softmax of the logits resized to affinity_scale of the image."""
        if self.cfg.affinity_scale != 1.0:
            H, W = logits_BKHW.shape[-2:]
            size = (max(1, round(H * self.cfg.affinity_scale)), max(1, round(W * self.cfg.affinity_scale)))
            logits_BKHW = F.interpolate(logits_BKHW, size=size, mode="bilinear", align_corners=False)
        if self.discriminator is not None and min(logits_BKHW.shape[-2:]) < AffinityDiscriminator.MIN_SIZE:
            raise ConfigError(f"ASANet's discriminator needs an affinity grid of at least "
                              f"{AffinityDiscriminator.MIN_SIZE} pixels a side, got "
                              f"{tuple(logits_BKHW.shape[-2:])}: raise method.asanet.affinity_scale or "
                              "data.loader.crop_size")
        return torch.softmax(logits_BKHW.float(), dim=1)

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        terms = {}
        p_tgt_BKhw = self._affinity_probs(ctx.student_target().logits_BKHW)
        if self.discriminator is not None:
            damping = 1.0 - ctx.step / self.total_steps
            d_tgt = self.discriminator(affinity_space(p_tgt_BKhw))
            terms["asanet.generator"] = cfg.adv_weight * damping * asa_generator_loss(d_tgt)
            self._cached = {"p_src": self._affinity_probs(ctx.logits_src_BKHW.detach()),
                            "p_tgt": p_tgt_BKhw.detach()}
        if cfg.asc_weight:
            terms["asanet.asc"] = cfg.asc_weight * affinity_cleaning_loss(p_tgt_BKhw)
        return terms

    def auxiliary_losses(self, name: str) -> dict[str, torch.Tensor]:
        if name != "asanet" or self._cached is None:
            raise RuntimeError(f"ASANet's {name!r} phase runs after its generator phase, once per micro-batch")
        c, self._cached = self._cached, None
        return {"asanet.discriminator": asa_discriminator_loss(self.discriminator(affinity_space(c["p_src"])),
                                                               self.discriminator(affinity_space(c["p_tgt"])))}
