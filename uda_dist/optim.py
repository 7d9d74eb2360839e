"""Optimiser and learning-rate schedule (DAFormer: AdamW, heads x10, linear warm-up then poly decay).

The schedule is mmseg's: poly lr = (base - min_lr) * (1 - t/T)^power + min_lr, and during the first
warmup_iters steps it is scaled by 1 - (1 - t/warmup_iters) * (1 - warmup_ratio). It is expressed as a
multiplier for torch's LambdaLR, so every parameter group (backbone, heads x10) follows it.
`LocalEngine` is the single-process trainer interface (module, autocast, backward, step -> whether an
optimiser step happened, lr, save/load);
uda_dist/dist/engine.py's DeepSpeedEngine offers the same, over the same optimiser and schedule.
``AuxOptimConfig`` is the optimiser of an auxiliary module (a discriminator, uda_dist.auxiliary): Adam and a
poly schedule, outside the engine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Literal

import torch
from torch import nn


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """The student's optimiser: "adamw" (DAFormer) or "sgd" with momentum (DeepLab-V2 era: FADA, ASANet)."""
    lr: float = 6e-5
    """Base learning rate of the backbone."""
    head_lr_mult: float = 10.0
    """Learning-rate multiplier of the decode and projection heads."""
    weight_decay: float = 0.01
    """Weight decay (AdamW: decoupled; SGD: L2), 0 for norm layers and position embeddings."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    momentum: float = 0.9
    """SGD momentum (optimizer="sgd")."""
    warmup_iters: int = 1500
    """Linear warm-up steps."""
    warmup_ratio: float = 1e-6
    """Learning-rate factor at step 0 of the warm-up."""
    poly_power: float = 1.0
    """Power of the poly decay to min_lr at the last step."""
    min_lr: float = 0.0
    """Learning rate reached at the last step (as a value, scaled per group by its multiplier)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0 = off)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.head_lr_mult <= 0:
            raise ValueError(f"lr and head_lr_mult must be > 0, got {self.lr}, {self.head_lr_mult}")
        if self.weight_decay < 0 or self.warmup_iters < 0 or self.grad_clip < 0 or self.min_lr < 0:
            raise ValueError("weight_decay, warmup_iters, grad_clip and min_lr must be >= 0")
        if not 0.0 < self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio must be in (0, 1], got {self.warmup_ratio}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuxOptimConfig:
    """Optimiser of an auxiliary module a method trains beside the student (a discriminator): Adam with its
    own poly schedule over the run's steps. A field of its term's config (``--set method.fada.disc_optim.lr=...``)."""

    lr: float = 1e-4
    """Adam learning rate at step 0 (FADA's discriminator: 1e-4)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas (FADA: 0.9, 0.99)."""
    weight_decay: float = 0.0
    """Adam's L2 weight decay."""
    poly_power: float = 0.9
    """Power of the poly decay to 0 at the last step (FADA: 0.9, the generator's)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.poly_power < 0:
            raise ValueError(f"lr must be > 0, weight_decay and poly_power >= 0, got {self.lr}, "
                             f"{self.weight_decay}, {self.poly_power}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")


def build_aux_optimizer_and_schedule(module: nn.Module, cfg: AuxOptimConfig, *, total_steps: int
                                     ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam over every trainable parameter of ``module`` and its poly LambdaLR over total_steps."""
    params = [p for p in module.parameters() if p.requires_grad]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1.0 - min(step, total_steps) / max(total_steps, 1)) ** cfg.poly_power)


def lr_factor(step: int, *, cfg: OptimConfig, total: int) -> float:
    """Multiplier of the base learning rate at `step` (0-based) of a run of `total` steps."""
    progress = min(step, total) / max(total, 1)
    min_factor = cfg.min_lr / cfg.lr
    factor = (1.0 - min_factor) * (1.0 - progress) ** cfg.poly_power + min_factor
    if step < cfg.warmup_iters:
        factor *= 1.0 - (1.0 - step / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
    return factor


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum) over the model's parameter groups; torch's fused kernel where every
    parameter is a float tensor on CPU or CUDA (same update, one kernel per step: 2x faster than the
    per-tensor loop on CPU, measured for AdamW)."""
    groups = model.param_groups(lr=cfg.lr, weight_decay=cfg.weight_decay, head_lr_mult=cfg.head_lr_mult)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused)


def build_optimizer_and_schedule(model: nn.Module, cfg: OptimConfig, *,
                                 total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser and its LambdaLR (warm-up then poly over total_steps): what every engine optimises with."""
    optimizer = build_optimizer(model, cfg)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg=cfg, total=total_steps))


class LocalEngine:
    """One process: the model, its optimiser, the schedule; backward() once per step, then step()."""

    def __init__(self, model: nn.Module, cfg: OptimConfig, *, total_steps: int):
        self.module = model
        self.cfg = cfg
        self.optimizer, self.scheduler = build_optimizer_and_schedule(model, cfg, total_steps=total_steps)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # fp32 (bf16 autocast is the DeepSpeed engine's option)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> bool:
        """One optimiser step (every micro-batch is a boundary here: no gradient accumulation); True."""
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return True

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save(self, directory: str, *, tag: str) -> None:
        os.makedirs(directory, exist_ok=True)
        torch.save(self.state_dict(), os.path.join(directory, f"{tag}.pt"))

    def load(self, directory: str, *, tag: str) -> None:
        from uda_dist.safe_load import load_tensors

        self.load_state_dict(load_tensors(os.path.join(directory, f"{tag}.pt")))
