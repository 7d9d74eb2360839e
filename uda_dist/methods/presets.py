"""The other methods as configs of self-training (uda_dist.methods.self_training): each is the self-training
step with the plug-in terms and pseudo-label parts it picks; none is a class of its own.

- FADA's adversarial stage: no target term, FADA's class-level adversarial term (uda_dist.methods.fada);
- ASANet: no target term, the affinity-space adversarial term and, optionally, cleaning (uda_dist.methods.asanet);
- DiGA's warm-up: no target term, DiGA's distillation (uda_dist.methods.distillation);
- DiGA's self-training round: the offline pseudo-labels selected by centroid agreement, and distillation.
``changes`` are further SelfTrainingConfig fields (a term's config replaces the preset's).
"""
from __future__ import annotations

from typing import Any

from uda_dist.methods.asanet import ASANetConfig
from uda_dist.methods.distillation import DistillationConfig
from uda_dist.methods.fada import FADAConfig
from uda_dist.methods.self_training import SelfTrainingConfig

def fada_adversarial(**changes: Any) -> SelfTrainingConfig:
    """FADA's adversarial stage: source cross-entropy + 0.001 class-level adversarial term against a fine-grained
    discriminator (``fada``); no target term of self-training, no teacher."""
    return SelfTrainingConfig(**{"pseudo_weight": 0.0, "fada": FADAConfig(adv_weight=0.001), **changes})


def asanet_adaptation(**changes: Any) -> SelfTrainingConfig:
    """ASANet's affinity space adaptation: source cross-entropy + the damped 0.001 affinity-space adversarial
    term (``asanet``, ASA; its asc_weight adds the cleaning loss); no target term of self-training, no teacher."""
    return SelfTrainingConfig(**{"pseudo_weight": 0.0, "asanet": ASANetConfig(adv_weight=0.001), **changes})


def diga_warmup(**changes: Any) -> SelfTrainingConfig:
    """DiGA's distillation warm-up: source cross-entropy + 0.5 symmetric distillation over x and its cross-domain
    mixture (beta 0.4); no target term (the target images only lend their style)."""
    return SelfTrainingConfig(**{"pseudo_weight": 0.0, "distillation": DistillationConfig(weight=0.5, beta=0.4),
                                 **changes})


def diga_self_training(**changes: Any) -> SelfTrainingConfig:
    """DiGA's self-training round: source cross-entropy + cross-entropy on the ClassMix image with the offline
    pseudo-labels kept where they agree with the nearest target centroid + 0.25 distillation (beta 0.3)."""
    return SelfTrainingConfig(**{"pseudo_source": "offline", "pseudo_selection": "centroid_agreement",
                                 "distillation": DistillationConfig(weight=0.25, beta=0.3), **changes})
