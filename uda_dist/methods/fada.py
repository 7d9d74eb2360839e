"""FADA's adversarial stage: fine-grained, class-level adversarial training of a source-trained model.

Paper: Wang et al., "Classes Matter: A Fine-grained Adversarial Approach to Cross-domain Semantic
Segmentation", ECCV 2020. Reference: JDAI-CV/FADA train_adv.py. The formulas are in
uda_dist.losses.adversarial; the discriminator in uda_dist.model.discriminator.

One step, top to bottom (uda_dist.step runs the phases):
1. generator phase, the discriminator frozen: the student on the source image (cross-entropy on the label)
   and on the target image; soft class-level encodings p_s, p_t = min(softmax(logits / 1.8), 0.9) of its
   logits at image size; the discriminator on the target's last backbone level, upsampled to the image,
   gives the generator term adv_weight * l(D(f_t), [p_t, 0]). One backward of the sum, the student's step;
2. discriminator phase: on the features cached detached in 1, 0.5 l(D(f_s), [p_s, 0]) + 0.5 l(D(f_t), [0, p_t]),
   its own backward and Adam step (lr 1e-4, betas 0.9/0.99, poly 0.9), gradients averaged over workers.
The stage starts from a source-only model's weights (``model.init_weights``: a source-only run's
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
import torch.nn.functional as F
from torch import nn

from uda_dist.auxiliary import Auxiliary
from uda_dist.errors import ConfigError
from uda_dist.losses.adversarial import class_domain_encoding, fada_discriminator_loss, fada_generator_loss
from uda_dist.losses.segmentation import cross_entropy
from uda_dist.methods.base import Method, MethodConfig, Reducer
from uda_dist.model.discriminator import FineGrainedDiscriminator
from uda_dist.optim import AuxOptimConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class FADAConfig(MethodConfig):
    """FADA's adversarial stage on a source-trained student: a fine-grained discriminator on the backbone's
    last level, trained with its own Adam, against the student's class-level adversarial term."""

    adv_weight: float = 0.001
    """Weight of the generator's adversarial term (FADA: 0.001)."""
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
        super().__post_init__()
        if self.adv_weight < 0 or self.temperature <= 0 or not 0.0 < self.clip <= 1.0 or self.disc_hidden < 2:
            raise ValueError("adv_weight >= 0, temperature > 0, clip in (0, 1] and disc_hidden >= 2 are required, "
                             f"got {self.adv_weight}, {self.temperature}, {self.clip}, {self.disc_hidden}")

    def build(self, student: nn.Module, *, seed: int, reducer: Reducer | None = None,
              total_steps: int = 0) -> "FADA":
        if not self.from_scratch and not student.cfg.init_weights:
            raise ConfigError("FADA adapts a source-trained model: set model.init_weights to a source-only run's "
                              "student.pt (outputs/<run>/student.pt), or method.from_scratch=true")
        return FADA(self, student)


def _to_image(x_BChw: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x_BChw, size=size, mode="bilinear", align_corners=False)


class FADA(Method):
    needs_target = True

    def __init__(self, cfg: FADAConfig, student: nn.Module):
        self.cfg = cfg
        device = next(student.parameters()).device
        self.discriminator = FineGrainedDiscriminator(student.backbone.channels[-1], hidden=cfg.disc_hidden,
                                                      num_classes=student.cfg.num_classes).to(device)
        self._cached: dict[str, Any] | None = None

    def auxiliaries(self) -> dict[str, Auxiliary]:
        return {"discriminator": Auxiliary(self.discriminator, self.cfg.disc_optim)}

    def losses(self, student, source, target, step):
        cfg = self.cfg
        src = student(source["image"], with_features=True)
        logits_src_BKHW = _to_image(src.logits_BKhw, source["image"].shape[-2:])
        tgt = student(target["image"], with_features=True)
        logits_tgt_BKHW = _to_image(tgt.logits_BKhw, target["image"].shape[-2:])
        p_src_BKHW = class_domain_encoding(logits_src_BKHW, temperature=cfg.temperature, clip=cfg.clip)
        p_tgt_BKHW = class_domain_encoding(logits_tgt_BKHW, temperature=cfg.temperature, clip=cfg.clip)
        d_tgt_B2KHW = _to_image(self.discriminator(tgt.features[-1]), logits_tgt_BKHW.shape[-2:])
        self._cached = {"f_src": src.features[-1].detach(), "p_src": p_src_BKHW,
                        "f_tgt": tgt.features[-1].detach(), "p_tgt": p_tgt_BKHW}
        return {"source.ce": cfg.source_weight * cross_entropy(logits_src_BKHW, source["label"]),
                "adv.generator": cfg.adv_weight * fada_generator_loss(d_tgt_B2KHW, p_tgt_BKHW)}

    def auxiliary_losses(self, name: str) -> dict[str, torch.Tensor]:
        if name != "discriminator" or self._cached is None:
            raise RuntimeError(f"FADA's {name!r} phase runs after its generator phase, once per micro-batch")
        c, self._cached = self._cached, None
        d_src_B2KHW = _to_image(self.discriminator(c["f_src"]), c["p_src"].shape[-2:])
        d_tgt_B2KHW = _to_image(self.discriminator(c["f_tgt"]), c["p_tgt"].shape[-2:])
        return {"adv.discriminator": fada_discriminator_loss(d_src_B2KHW, c["p_src"], d_tgt_B2KHW, c["p_tgt"])}
