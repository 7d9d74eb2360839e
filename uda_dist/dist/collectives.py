"""The only torch.distributed code: every collective of a run, each one flat tensor per call.

In one process (no process group) each function is the identity, so the same code path runs everywhere.
Under Ray Train the gloo (CPU) or nccl (GPU) group already exists when the per-worker loop starts.

- ``all_reduce_sum_``: in place; the SePiCo class statistics of a step are packed into ONE float64 vector by
  ClassStatistics and reduced here once per step by every rank; the evaluation confusion matrix once per
  evaluation.
- ``average_buffers_``: the student's floating buffers (BatchNorm running mean/var) averaged across ranks in
  ONE packed all-reduce after each optimiser step. Parameters are identical on every rank (gradients are
  averaged by the engine), and with this the buffers are too, so the EMA teacher, which takes parameters by
  EMA and buffers by copy, is identical on every rank without being wrapped by the engine.
- ``average_gradients_``: the auxiliary modules' gradients (a discriminator outside the DeepSpeed engine)
  averaged across ranks in ONE packed all-reduce per optimiser step, so they stay identical on every rank.
- ``mean_for_log``: loss values averaged across ranks, called only at log cadence.
- ``gather_objects``: every rank's small plain value (the index of the shards it wrote) on every rank, once
  at the end of labelling a split.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def has_process_group() -> bool:
    """True on the launcher's workers (Ray Train created the group), False in a plain process."""
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    return has_process_group() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if has_process_group() else (0, 1)


def all_reduce_sum_(tensor_N: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; returns the tensor (the identity in one process)."""
    if is_distributed():
        dist.all_reduce(tensor_N, op=dist.ReduceOp.SUM)
    return tensor_N


def average_buffers_(module: torch.nn.Module) -> None:
    """Average the module's floating-point buffers over ranks in place (one packed all-reduce). Integer
    buffers (BatchNorm's num_batches_tracked) advance identically on every rank and are left alone."""
    if not is_distributed():
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def average_gradients_(params: list[torch.nn.Parameter]) -> None:
    """Average the parameters' gradients over ranks in place, in ONE packed all-reduce (the auxiliary modules'
    gradients, which live outside the DeepSpeed engine). A parameter without a gradient counts as zeros, so
    every rank packs the same layout."""
    if not is_distributed() or not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float32)
                      for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        value = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = value.clone()
        else:
            p.grad.copy_(value)
        offset += p.numel()


def mean_for_log(values_N: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a vector of logged values (a copy; the identity in one process)."""
    if not is_distributed():
        return values_N
    out = values_N.detach().to(torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def gather_objects(value: object) -> list[object]:
    """[rank 0's value, rank 1's, ...] on every rank (torch's all_gather_object; [value] in one process)."""
    if not is_distributed():
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
