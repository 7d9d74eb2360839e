"""ASANet's affinity space and its losses: pure functions of tensors, no module state, no host syncs.

ASANet (Zhou et al., "Affinity Space Adaptation for Semantic Segmentation Across Domains", TIP 2020;
reference: idealwei/ASANet utils/utils.py, utils/loss.py) adapts not each pixel's prediction but how the
predictions of neighbouring pixels go together. For a softmax map p (K classes) and each of the 8 neighbours
d of a pixel x (the image border replicated), the co-occurrence q_d(x) = p(x + d) * p(x), per class, is
compared with p(x) by a per-class binary KL divergence; the 8 maps of K channels, concatenated, are the
affinity space A(p) (8K channels):

    A_d,c(x) = q log(q / p) + (1 - q) log((1 - q) / (1 - p)),   q = q_d,c(x), p = p_c(x)

with q, p, 1 - q and 1 - p clamped to [1e-4, 1] (as the reference). The neighbours are ordered row by row,
d = (dy, dx) for dy, dx in (-1, 0, 1), the centre skipped (``NEIGHBOURS``).

- Adversarial affinity space alignment: a discriminator D tells A(p_source) from A(p_target) (binary, source
  0 and target 1 as in the reference); the generator term pushes the target's affinity towards the source
  label, ``asa_generator_loss``; the method weights it by lambda (1 - t/T).
- Affinity space cleaning (ASC): the mean over pixels and the 8 neighbours of 1 - sum_c p_c(x) p_c(x + d),
  low when neighbours agree confidently, ``affinity_cleaning_loss``.

Legend: B batch, K classes, H, W the grid the affinity space is computed on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
"""The 8 neighbour offsets (dy, dx), row by row: the order of the affinity space's groups of K channels."""
EPS = 1e-4
SOURCE, TARGET = 0.0, 1.0
"""The discriminator's labels of the two domains (the reference's)."""


def neighbours(p_BKHW: torch.Tensor) -> list[torch.Tensor]:
    """p(x + d) for each d of NEIGHBOURS, at every pixel x, the border replicated (8 maps like p_BKHW)."""
    H, W = p_BKHW.shape[-2:]
    padded = F.pad(p_BKHW, (1, 1, 1, 1), mode="replicate")
    return [padded[:, :, 1 + dy:1 + dy + H, 1 + dx:1 + dx + W] for dy, dx in NEIGHBOURS]


def affinity_group(shifted_BKHW: torch.Tensor, p_BKHW: torch.Tensor) -> torch.Tensor:
    """One neighbour's K channels of the affinity space: the binary KL between q = p(x + d) * p(x) and p(x)."""
    p_c, not_p = p_BKHW.clamp(EPS, 1.0), (1.0 - p_BKHW).clamp(EPS, 1.0)
    q_BKHW = shifted_BKHW * p_BKHW
    not_q, q_BKHW = (1.0 - q_BKHW).clamp(EPS, 1.0), q_BKHW.clamp(EPS, 1.0)
    return q_BKHW * torch.log(q_BKHW / p_c) + not_q * torch.log(not_q / not_p)


def affinity_space(p_BKHW: torch.Tensor) -> torch.Tensor:
    """The affinity space A(p) of a softmax map: 8K channels (neighbour-major), float32.

    When a gradient will flow back to p, each neighbour's group is checkpointed (recomputed in the backward
    pass, one group at a time) instead of keeping its dozen intermediate maps for all 8 groups at once: the
    values and gradients are the same, the memory held for the backward pass about 2 K-channel maps per group
    instead of about 12 (tests/benchmarks/affinity_memory.py measures it)."""
    p_BKHW = p_BKHW.float()
    if torch.is_grad_enabled() and p_BKHW.requires_grad:
        from torch.utils.checkpoint import checkpoint

        groups = [checkpoint(affinity_group, shifted, p_BKHW, use_reentrant=False) for shifted in neighbours(p_BKHW)]
    else:
        groups = [affinity_group(shifted, p_BKHW) for shifted in neighbours(p_BKHW)]
    return torch.cat(groups, dim=1)


def affinity_cleaning_loss(p_BKHW: torch.Tensor) -> torch.Tensor:
    """ASC: mean over pixels and neighbours of 1 - sum_c p_c(x) p_c(x + d)."""
    p_BKHW = p_BKHW.float()
    agreement_B8HW = torch.stack([(shifted * p_BKHW).sum(dim=1) for shifted in neighbours(p_BKHW)], dim=1)
    return (1.0 - agreement_B8HW).mean()


def domain_loss(d_logits: torch.Tensor, domain: float) -> torch.Tensor:
    """Binary cross-entropy of the discriminator's logits against one domain's label, averaged."""
    d_logits = d_logits.float()
    return F.binary_cross_entropy_with_logits(d_logits, torch.full_like(d_logits, domain))


def asa_generator_loss(d_target: torch.Tensor) -> torch.Tensor:
    """The segmentor's adversarial term: the target's affinity space should look like the source's."""
    return domain_loss(d_target, SOURCE)


def asa_discriminator_loss(d_source: torch.Tensor, d_target: torch.Tensor) -> torch.Tensor:
    """The discriminator's term: each domain's affinity space on its own label, half the weight each."""
    return 0.5 * domain_loss(d_source, SOURCE) + 0.5 * domain_loss(d_target, TARGET)
