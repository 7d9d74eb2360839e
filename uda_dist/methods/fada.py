"""FADA's fine-grained, class-level adversarial term as a plug-in term of self-training.

Paper: Wang et al., "Classes Matter: A Fine-grained Adversarial Approach to Cross-domain Semantic
Segmentation", ECCV 2020. Reference: JDAI-CV/FADA train_adv.py. The formulas are in
uda_dist.losses.adversarial; the discriminator in uda_dist.model.discriminator.

What the term adds to the self-training step (uda_dist.methods.self_training runs it top to bottom; the
trainer runs the discriminator's phase, uda_dist.step):
1. on the student's source pass (with its encoder levels) and its pass over the un-augmented target (shared
   with any other term that reads it): soft class-level encodings p_s, p_t = min(softmax(logits / 1.8), 0.9)
   of the logits at image size; the discriminator, frozen, on the target's last backbone level, upsampled to
   the image, gives the generator term ``fada.generator`` = adv_weight * l(D(f_t), [p_t, 0]);
2. the discriminator's phase (auxiliary "fada"): on the features cached detached in 1,
   ``fada.discriminator`` = 0.5 l(D(f_s), [p_s, 0]) + 0.5 l(D(f_t), [0, p_t]), its own backward and Adam
   step (lr 1e-4, betas 0.9/0.99, poly 0.9), gradients averaged over workers.
FADA's adversarial stage is this term on self-training with no target term of its own
(``fada_adversarial`` in uda_dist.methods.presets): source cross-entropy + the generator term. It
starts from a source-only model's weights (``model.init_weights``: a source-only run's
outputs/<name>/student.pt); FADA's third stage, self-distillation, is a separate run.

Differences on purpose:
- the source cross-entropy is on the plain logits; the reference divides the logits by the temperature
  before its cross-entropy too, which changes the loss of the source-trained model it starts from;
- logits and discriminator outputs are resized to the image with align_corners=False (the project's
  convention, as in ``Segmentor.segment``); the reference uses align_corners=True;
- source images are sampled as the data config says (rare-class sampling on the real recipes) where the
  reference samples uniformly; the student keeps the project's optimiser (uda_dist.optim), not SGD.

Legend: B batch, K classes, C feature channels, H,W image, h,w feature grid.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from uda_dist.auxiliary import Auxiliary
from uda_dist.errors import ConfigError
from uda_dist.losses.adversarial import class_domain_encoding, fada_discriminator_loss, fada_generator_loss
from uda_dist.methods.terms import StepContext, Term
from uda_dist.model.discriminator import FineGrainedDiscriminator
from uda_dist.model.heads import resize_to
from uda_dist.optim import AuxOptimConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class FADAConfig:
    """FADA's class-level adversarial term: a fine-grained discriminator on the backbone's last level, trained
    with its own Adam, against the student's generator term."""

    adv_weight: float = 0.0
    """Weight of the generator's adversarial term (FADA: 0.001); 0 = off (no discriminator)."""
    temperature: float = 1.8
    """Softmax temperature of the class-level domain encodings (FADA: 1.8)."""
    clip: float = 0.9
    """Upper bound of an encoding's entries (FADA: 0.9)."""
    disc_hidden: int = 256
    """Width of the discriminator's first conv (the second is half; FADA: 256)."""
    disc_optim: AuxOptimConfig = dataclasses.field(default_factory=AuxOptimConfig)
    """The discriminator's optimiser: Adam, lr 1e-4, betas (0.9, 0.99), poly 0.9 (FADA)."""
    from_scratch: bool = False
    """Allow a student without model.init_weights (FADA adapts a source-trained model; tests use this)."""

    def __post_init__(self) -> None:
        if self.adv_weight < 0 or self.temperature <= 0 or not 0.0 < self.clip <= 1.0 or self.disc_hidden < 2:
            raise ValueError("fada needs adv_weight >= 0, temperature > 0, clip in (0, 1] and disc_hidden >= 2, "
                             f"got {self.adv_weight}, {self.temperature}, {self.clip}, {self.disc_hidden}")


class FADAAdversarial(Term):
    """adv_weight * l(D(f_t), [p_t, 0]) for the student; FADA's discriminator loss for its auxiliary "fada"."""

    def __init__(self, cfg: FADAConfig, student: nn.Module):
        if not cfg.from_scratch and not student.cfg.init_weights:
            raise ConfigError("FADA adapts a source-trained model: set model.init_weights to a source-only run's "
                              "student.pt (outputs/<run>/student.pt), or method.fada.from_scratch=true")
        self.cfg = cfg
        device = next(student.parameters()).device
        self.discriminator = FineGrainedDiscriminator(student.backbone.channels[-1], hidden=cfg.disc_hidden,
                                                      num_classes=student.cfg.num_classes).to(device)
        self._cached: dict[str, Any] | None = None

    def source_features(self, step: int) -> bool:
        return True

    def auxiliaries(self) -> dict[str, Auxiliary]:
        return {"fada": Auxiliary(self.discriminator, self.cfg.disc_optim)}

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        tgt = ctx.student_target()
        p_src_BKHW = class_domain_encoding(ctx.logits_src_BKHW, temperature=cfg.temperature, clip=cfg.clip)
        p_tgt_BKHW = class_domain_encoding(tgt.logits_BKHW, temperature=cfg.temperature, clip=cfg.clip)
        f_tgt_BChw = tgt.out.features[-1]
        d_tgt_B2KHW = resize_to(self.discriminator(f_tgt_BChw), p_tgt_BKHW.shape[-2:])
        self._cached = {"f_src": ctx.source_out.features[-1].detach(), "p_src": p_src_BKHW,
                        "f_tgt": f_tgt_BChw.detach(), "p_tgt": p_tgt_BKHW}
        return {"fada.generator": cfg.adv_weight * fada_generator_loss(d_tgt_B2KHW, p_tgt_BKHW)}

    def auxiliary_losses(self, name: str) -> dict[str, torch.Tensor]:
        if name != "fada" or self._cached is None:
            raise RuntimeError(f"FADA's {name!r} phase runs after its generator phase, once per micro-batch")
        c, self._cached = self._cached, None
        d_src_B2KHW = resize_to(self.discriminator(c["f_src"]), c["p_src"].shape[-2:])
        d_tgt_B2KHW = resize_to(self.discriminator(c["f_tgt"]), c["p_tgt"].shape[-2:])
        return {"fada.discriminator": fada_discriminator_loss(d_src_B2KHW, c["p_src"], d_tgt_B2KHW, c["p_tgt"])}
