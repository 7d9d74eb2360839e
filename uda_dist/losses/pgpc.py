"""PGPC: pseudo-label guided pixel contrast, reliable and unreliable pixels, against exact class prototypes.

Paper: Xiang, Wan, Cao, "Pseudolabel guided pixels contrast for domain adaptive semantic segmentation",
Scientific Reports 2024 (arXiv 2501.09040). Its loss file is not public; the paper says that reliable target
pixels are pulled to their class prototype and pushed from the others, and that unreliable target pixels
still take part so that their information is not thrown away. What is built here, choice by choice:

- Features and prototypes: the student's L2-normalised projection features z (SePiCo's projection head), and
  as prototypes mu_c the exact cumulative class means of the teacher's projection of every source pixel seen
  (uda_dist.stats.class_stats: the statistics SePiCo reads, fed once per step, one all-reduce across workers).
  With s_c = z.mu_c / tau over the classes seen so far (S), classes never seen are in no denominator.
- Where: the source image (ground truth, every pixel reliable, weight 1) and the ClassMix image, as the
  reference contrasts the source and the mixed image: pasted source pixels keep their ground truth (reliable,
  weight 1), target pixels their pseudo-label and the mixed image's pixel weight (DAFormer's q).
- Reliable / unreliable: a target pixel is reliable where the teacher's max probability is >= ``threshold``
  (the confidence DAFormer's q counts; the paper ranks pixels by prediction entropy, a confidence of the same
  kind). On the feature grid a cell is reliable when at least ``min_share`` of its pixels are.
- A reliable pixel with label y is an anchor of an InfoNCE over the prototypes:
      l = -s_y + log sum_{c in S} e^{s_c}
- An unreliable pixel is never a positive: its pseudo-label is not used at all. It still contributes through
  its negatives, as in U2PL (Wang et al., CVPR 2022: an unreliable prediction is confused among its top
  classes, but sure it is none of the rest): with C = its teacher's top ``candidates`` classes (3, U2PL's r_l),
  it is pushed away from every other prototype, and pulled to no single one, by the likelihood that it
  belongs to one of its candidates:
      l = -log sum_{c in C and S} e^{s_c} + log sum_{c in S} e^{s_c}
  (0 when every class seen is a candidate). On the grid, a class is a cell's candidate when it is one for any
  pixel of the cell (a class any pixel may be is never pushed away).
- Weights: loss = sum_i w_i l_i / N, where w_i is the pixel's weight (times ``unreliable_weight`` for an
  unreliable one) and N counts every pixel that could be an anchor (label not ignored, weight > 0), reliable or
  not, as DAFormer's weighted cross-entropy averages over all pixels. ``unreliable_weight = 0`` is "reliable
  only": the same loss without the unreliable terms.
Differences from SePiCo's ProtoCL (uda_dist.losses.contrast), which the reliable part equals when every
pixel is reliable and weighted 1: per-pixel weights, the reliable/unreliable split, no regulariser.

Legend: B batch, K classes, D feature dim, H, W image, h, w feature grid, N pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from uda_dist.losses.contrast import downscale_labels
from uda_dist.losses.segmentation import IGNORE_INDEX


def top_classes(logits_BKHW: torch.Tensor, k: int) -> torch.Tensor:
    """bool [B, K, H, W]: each pixel's k most probable classes."""
    top_BkHW = logits_BKHW.topk(min(k, logits_BKHW.shape[1]), dim=1).indices
    return torch.zeros_like(logits_BKHW, dtype=torch.bool).scatter_(1, top_BkHW, True)


def to_grid(label_BHW: torch.Tensor, reliable_BHW: torch.Tensor, weight_BHW: torch.Tensor,
            candidates_BKHW: torch.Tensor, *, size: tuple[int, int], num_classes: int, min_share: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(label_N, reliable_N, weight_N, candidates_NK) on the feature grid, pixels in row-major order: the
    label downscaled as every contrast does (majority share >= min_share), a cell reliable when >= min_share of
    its pixels are, its weight their mean, its candidates the union of theirs."""
    label_Bhw = downscale_labels(label_BHW, size=size, num_classes=num_classes, min_share=min_share)
    reliable_Bhw = F.adaptive_avg_pool2d(reliable_BHW[:, None].float(), size)[:, 0] >= min_share
    weight_Bhw = F.adaptive_avg_pool2d(weight_BHW[:, None].float(), size)[:, 0]
    candidates_BKhw = F.adaptive_max_pool2d(candidates_BKHW.float(), size) > 0
    K = candidates_BKhw.shape[1]
    return (label_Bhw.reshape(-1), reliable_Bhw.reshape(-1), weight_Bhw.reshape(-1),
            candidates_BKhw.permute(0, 2, 3, 1).reshape(-1, K))


def pgpc_contrast(z_ND: torch.Tensor, label_N: torch.Tensor, reliable_N: torch.Tensor, candidates_NK: torch.Tensor,
                  weight_N: torch.Tensor, mean_KD: torch.Tensor, *, tau: float, unreliable_weight: float,
                  class_mask_K: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """sum_i w_i l_i / N (module docstring): reliable pixels pulled to their class prototype against all seen
    prototypes; unreliable pixels pushed from the prototypes outside their candidate classes."""
    K = mean_KD.shape[0]
    seen_K = torch.ones(K, dtype=torch.bool, device=z_ND.device) if class_mask_K is None else class_mask_K
    sim_NK = z_ND @ mean_KD.to(z_ND.dtype).T  # in z's dtype; the log-sum-exps in at least float32
    sim_NK = sim_NK.to(torch.promote_types(sim_NK.dtype, torch.float32)) / tau
    lowest = torch.finfo(sim_NK.dtype).min
    log_all_N = torch.logsumexp(sim_NK.masked_fill(~seen_K, lowest), dim=1)
    labelled_N = (label_N != ignore_index) & (weight_N > 0)
    safe_N = torch.where(labelled_N, label_N, 0)
    anchor_N = reliable_N & labelled_N & seen_K[safe_N]
    loss_rel_N = log_all_N - sim_NK.gather(1, safe_N[:, None])[:, 0]
    cand_NK = candidates_NK & seen_K
    unreliable_N = ~reliable_N & labelled_N & cand_NK.any(dim=1)
    loss_unrel_N = log_all_N - torch.logsumexp(sim_NK.masked_fill(~cand_NK, lowest), dim=1)
    loss_N = torch.where(anchor_N, loss_rel_N, 0.0) + unreliable_weight * torch.where(unreliable_N, loss_unrel_N, 0.0)
    return (weight_N.to(loss_N.dtype) * loss_N).sum() / labelled_N.sum().clamp_min(1).to(loss_N.dtype)
