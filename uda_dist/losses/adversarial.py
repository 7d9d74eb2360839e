"""Adversarial losses: pure functions of tensors (FADA's fine-grained, class-level domain adversarial terms).

FADA (Wang et al., "Classes Matter: A Fine-grained Adversarial Approach to Cross-domain Semantic
Segmentation", ECCV 2020). The discriminator D has 2K outputs per pixel, [source-class-k | target-class-k],
so it tells domains apart per class; its targets are soft class-level domain encodings from the
segmentation logits:
    p = min(softmax(logits / T), clip)   (detached; T = 1.8, clip = 0.9)
    a_s = [p_s, 0],  a_t = [0, p_t]
    l(D, a) = mean over pixels of -sum_j a_j log softmax(D)_j
Generator (the student, D frozen):      L_adv = l(D(f_t), [p_t, 0])        (weighted 0.001 by the method)
Discriminator (on detached features):   L_D = 0.5 l(D(f_s), [p_s, 0]) + 0.5 l(D(f_t), [0, p_t])
The clipped encodings are not renormalised (as in the reference).

Legend: B batch, K classes, H, W the pixels the loss is averaged over.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_label_cross_entropy(logits_BCHW: torch.Tensor, soft_BCHW: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of -sum_c soft_c * log softmax(logits)_c (soft targets need not sum to 1)."""
    log_prob_BCHW = F.log_softmax(logits_BCHW.float(), dim=1)
    return -(soft_BCHW.float() * log_prob_BCHW).sum(dim=1).mean()


def class_domain_encoding(logits_BKHW: torch.Tensor, *, temperature: float = 1.8,
                          clip: float = 0.9) -> torch.Tensor:
    """p_BKHW = min(softmax(logits / temperature), clip), detached (a target, not a path for gradients)."""
    return torch.softmax(logits_BKHW.detach().float() / temperature, dim=1).clamp_max(clip)


def as_source(p_BKHW: torch.Tensor) -> torch.Tensor:
    """[p, 0]: the encoding placed on the discriminator's source-class outputs (2K channels)."""
    return torch.cat([p_BKHW, torch.zeros_like(p_BKHW)], dim=1)


def as_target(p_BKHW: torch.Tensor) -> torch.Tensor:
    """[0, p]: the encoding placed on the discriminator's target-class outputs (2K channels)."""
    return torch.cat([torch.zeros_like(p_BKHW), p_BKHW], dim=1)


def fada_generator_loss(d_target_B2KHW: torch.Tensor, p_target_BKHW: torch.Tensor) -> torch.Tensor:
    """The student's adversarial term: target features should look like source features of the same class."""
    return soft_label_cross_entropy(d_target_B2KHW, as_source(p_target_BKHW))


def fada_discriminator_loss(d_source_B2KHW: torch.Tensor, p_source_BKHW: torch.Tensor,
                            d_target_B2KHW: torch.Tensor, p_target_BKHW: torch.Tensor) -> torch.Tensor:
    """The discriminator's term: each domain's features on its own class outputs, half the weight each."""
    return (0.5 * soft_label_cross_entropy(d_source_B2KHW, as_source(p_source_BKHW))
            + 0.5 * soft_label_cross_entropy(d_target_B2KHW, as_target(p_target_BKHW)))
