"""Per-class sufficient statistics of pixel features: count, sum and sum of squares, in float64.

Paper: Xie et al., "SePiCo", TPAMI 2023, the class-conditional Gaussians of distribution-aware pixel contrast
Reference: BIT-DA/SePiCo mmseg/models/utils/proto_estimator.py
(ProtoEstimator.update_proto), which keeps a running mean mu, a biased diagonal variance sigma2 and a count n per
class and updates them per batch with w = n_c / (n_c + N_c):
  sigma2 <- (1-w) sigma2 + w v_c + w(1-w)(mu - m_c)^2,  mu <- (1-w) mu + w m_c,  N <- N + n_c.
That recursion is the pooled mean/variance of every pixel seen so far, i.e. exactly what (count, sum, sumsq)
give: mean = sum / n, var = sumsq / n - mean^2. Differences on purpose:
- we keep the sums, not the mean/variance: sums add, so chunks, batches and ranks merge by addition and a
  distributed version is ONE all-reduce of pack(moments) per step (the reference never synchronises ranks);
- float64 accumulation (the reference accumulates float32 means);
- O(N*D) memory: ignored pixels go to a dump row K of a (K+1)-row accumulator that is dropped, via index_add_
  over chunks of pixels; the reference materialises several N x K x D tensors (about 2 GB each at SePiCo's
  DAFormer scale, N = 51,200, K = 19, D = 512);
- no host sync (no torch.unique, no .item()), no boolean-mask indexing.
Not provided: full (non-diagonal) class covariances. Without sorting pixels by class (a host sync for the
segment sizes), sum_n onehot_nk z_n z_n^T costs N*K*D^2 flops (255 GFLOP at the scale above) for a variant
the paper does not use.

Legend: N pixels, D feature dim, K classes; F = K + 2*K*D, the length of a packed Moments.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from uda_dist.losses.segmentation import IGNORE_INDEX


class Moments(NamedTuple):
    """Per-class pixel count, feature sum and feature sum of squares, all float64."""

    count_K: torch.Tensor
    sum_KD: torch.Tensor
    sumsq_KD: torch.Tensor


def class_moments(feat_ND: torch.Tensor, label_N: torch.Tensor, *, num_classes: int,
                  ignore_index: int = IGNORE_INDEX, chunk: int = 1024) -> Moments:
    """Moments of the pixels of each class; labels must lie in [0, num_classes) or equal ignore_index.

    Features of any float dtype are accumulated in float64 ``chunk`` pixels at a time (the float64 copy of a
    chunk stays in cache); no gradient flows into the statistics."""
    K, D = num_classes, feat_ND.shape[1]
    f64 = dict(dtype=torch.float64, device=feat_ND.device)
    slot_N = torch.where(label_N == ignore_index, K, label_N).long()  # row K is the dump row of ignored pixels
    count_K1 = torch.zeros(K + 1, **f64).index_add_(0, slot_N, torch.ones(slot_N.shape, **f64))
    sum_K1D, sumsq_K1D = torch.zeros(K + 1, D, **f64), torch.zeros(K + 1, D, **f64)
    for feat_nD, slot_n in zip(feat_ND.detach().split(chunk), slot_N.split(chunk)):
        x_nD = feat_nD.to(torch.float64)
        sum_K1D.index_add_(0, slot_n, x_nD)
        sumsq_K1D.index_add_(0, slot_n, x_nD.square())  # not square_(): x may alias feat
    return Moments(count_K1[:K], sum_K1D[:K], sumsq_K1D[:K])


def merge(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two pixel sets."""
    return Moments(*(x + y for x, y in zip(a, b)))


def pack(m: Moments) -> torch.Tensor:
    """One flat float64 vector [F] = [count_K, sum_KD, sumsq_KD], for a single all-reduce."""
    return torch.cat([m.count_K, m.sum_KD.reshape(-1), m.sumsq_KD.reshape(-1)])


def unpack(flat_F: torch.Tensor, num_classes: int, dim: int) -> Moments:
    """Inverse of pack (views into flat_F)."""
    K, D = num_classes, dim
    if flat_F.shape != (K + 2 * K * D,):
        raise ValueError(f"packed moments of {K} classes x {D} dims have shape ({K + 2 * K * D},), "
                         f"got {tuple(flat_F.shape)}")
    return Moments(flat_F[:K], flat_F[K:K + K * D].view(K, D), flat_F[K + K * D:].view(K, D))


def mean_var(m: Moments) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_KD, var_KD): class means and BIASED diagonal variances (sumsq/n - mean^2, clamped at 0, as the
    reference's pooled update); a class with no pixel gets mean 0 and variance 0."""
    n_K1 = m.count_K.clamp_min(1.0)[:, None]
    mean_KD = m.sum_KD / n_K1
    var_KD = (m.sumsq_KD / n_K1 - mean_KD.square()).clamp_min(0.0)
    return mean_KD, var_KD
