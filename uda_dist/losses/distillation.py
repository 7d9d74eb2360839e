"""Knowledge distillation between the student and its EMA teacher: pure functions of logits (DiGA).

DiGA (Shen et al., "DiGA: Distil to Generalize and then Adapt for Domain Adaptive Semantic Segmentation",
CVPR 2023; reference: fy-vision/DiGA) warms the student up on the source alone with a symmetric
distillation over two views of the same image, x and its cross-domain mixture x_aug:

    H(T, S) = mean over pixels of -sum_c softmax(T)_c log softmax(S)_c     (the teacher's side detached)
    L_distil = H(T(x), S(x_aug)) + 0.5 H(T(x_aug), S(x))

weighted by the method (0.5 in the warm-up, 0.25 in self-training).

Legend: B batch, K classes, H, W the pixels averaged over.
"""
from __future__ import annotations

import torch

from uda_dist.losses.adversarial import soft_label_cross_entropy


def distillation_cross_entropy(teacher_logits_BKHW: torch.Tensor, student_logits_BKHW: torch.Tensor) -> torch.Tensor:
    """H(T, S): the student's log-probabilities against the teacher's probabilities (no gradient to T)."""
    teacher_p = torch.softmax(teacher_logits_BKHW.detach().float(), dim=1)
    return soft_label_cross_entropy(student_logits_BKHW, teacher_p)


def symmetric_distillation(teacher_x: torch.Tensor, student_x: torch.Tensor, teacher_aug: torch.Tensor,
                           student_aug: torch.Tensor) -> torch.Tensor:
    """H(T(x), S(x_aug)) + 0.5 H(T(x_aug), S(x)), all four logits at the same size."""
    return (distillation_cross_entropy(teacher_x, student_aug)
            + 0.5 * distillation_cross_entropy(teacher_aug, student_x))
