"""Per-class memory bank of the last M per-batch class means (SePiCo's BankCL keys).

Paper: Xie et al., "SePiCo", TPAMI 2023, centroid-aware pixel contrast with a memory bank
Reference: BIT-DA/SePiCo mmseg/models/utils/proto_estimator.py
(ProtoEstimator.MemoryBank: one deque(maxlen=memory_length) per class, appended for each class in
torch.unique(labels)). Differences on purpose:
- one ring buffer tensor [K, M, D] with per-class fill counts and write positions, updated for all classes
  at once (torch.where + advanced indexing with arange(K)): no torch.unique, no host sync, and it is a
  persistent buffer (checkpointed; the reference's deques are not);
- a class's bank starts EMPTY; the reference seeds each deque with the initial zero mean, which then acts as
  a key until it is pushed out;
- fed with the class means of the reduced (all-rank) batch moments, so every rank holds the same bank.

Legend: K classes, M slots per class, D feature dim.
"""
from __future__ import annotations

import torch
from torch import nn

from uda_dist.stats.moments import Moments, mean_var


class ClassMemoryBank(nn.Module):
    """Ring buffer per class: bank_KMD (float32), size_K (filled slots, <= M), next_K (next write slot)."""

    def __init__(self, num_classes: int, dim: int, *, size: int = 200):
        """``size``: M, the slots per class (the reference's memory_length); size_K counts the filled ones."""
        super().__init__()
        self.slots = size
        self.register_buffer("bank_KMD", torch.zeros(num_classes, size, dim))
        self.register_buffer("size_K", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("next_K", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, batch_mean_KD: torch.Tensor, present_K: torch.Tensor) -> None:
        """Write each present class's batch mean at its ring position; absent classes are untouched."""
        k_K = torch.arange(self.bank_KMD.shape[0], device=self.bank_KMD.device)
        old_KD = self.bank_KMD[k_K, self.next_K]
        new_KD = torch.where(present_K[:, None], batch_mean_KD.to(self.bank_KMD.dtype), old_KD)
        self.bank_KMD[k_K, self.next_K] = new_KD
        step_K = present_K.long()
        self.next_K.copy_((self.next_K + step_K) % self.slots)
        self.size_K.copy_((self.size_K + step_K).clamp_max(self.slots))

    def push_moments(self, batch: Moments) -> None:
        """Push the means of the classes present in one batch's (reduced) moments."""
        self.push(mean_var(batch)[0], batch.count_K > 0)

    def slot_mask_KM(self) -> torch.Tensor:
        """[K, M] bool: the filled slots (a ring fills slots 0, 1, ... in order, so the first size_K)."""
        slots_M = torch.arange(self.slots, device=self.size_K.device)
        return slots_M[None, :] < self.size_K[:, None]
