"""Running per-class feature statistics of every source pixel seen since step 0 (SePiCo's class Gaussians).

Paper: Xie et al., "SePiCo", TPAMI 2023. Reference: BIT-DA/SePiCo
mmseg/models/utils/proto_estimator.py (ProtoEstimator: Ave, CoVariance, Amount). Differences on purpose:
- running (count, sum, sumsq) in float64 instead of (mean, variance, count); mean and variance are derived
  (stats/moments.py shows this equals the reference's recursive update);
- each update reduces the batch's packed moments ONCE through an injected ``reducer`` (an all-reduce under
  several workers, the identity by default), called on every update even when no class is present, so every
  rank holds bit-identical statistics; the reduced batch moments are returned so that the memory bank is fed
  from the same sums;
- the sums are persistent buffers: they are in state_dict and survive a resume (the reference never saves
  them with the checkpoint).

Legend: N pixels, D feature dim, K classes.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from uda_dist.losses.segmentation import IGNORE_INDEX
from uda_dist.stats.moments import Moments, class_moments, mean_var, pack, unpack


def _identity(flat_F: torch.Tensor) -> torch.Tensor:
    return flat_F


class ClassStatistics(nn.Module):
    """Cumulative per-class count, sum and sum of squares of features (float64 buffers)."""

    def __init__(self, num_classes: int, dim: int, *,
                 reducer: Callable[[torch.Tensor], torch.Tensor] | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.num_classes, self.dim, self.ignore_index = num_classes, dim, ignore_index
        self.reducer = reducer if reducer is not None else _identity
        self.register_buffer("count_K", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("sum_KD", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("sumsq_KD", torch.zeros(num_classes, dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, feat_ND: torch.Tensor, label_N: torch.Tensor) -> Moments:
        """Add this batch (all ranks' batches, after the reducer) and return its reduced moments."""
        local = class_moments(feat_ND.detach(), label_N, num_classes=self.num_classes,
                              ignore_index=self.ignore_index)
        batch = unpack(self.reducer(pack(local)), self.num_classes, self.dim)
        self.count_K += batch.count_K
        self.sum_KD += batch.sum_KD
        self.sumsq_KD += batch.sumsq_KD
        return batch

    @property
    def moments(self) -> Moments:
        return Moments(self.count_K, self.sum_KD, self.sumsq_KD)

    @property
    def mean_KD(self) -> torch.Tensor:
        return mean_var(self.moments)[0]

    @property
    def var_KD(self) -> torch.Tensor:
        return mean_var(self.moments)[1]

    @property
    def seen_K(self) -> torch.Tensor:
        """Classes with at least one pixel so far (bool)."""
        return self.count_K > 0
