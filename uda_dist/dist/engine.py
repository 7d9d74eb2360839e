"""The only DeepSpeed code: a DeepSpeed engine over the student with the project's client AdamW.

``DeepSpeedEngine`` has the interface of ``uda_dist.optim.LocalEngine`` (``module``, ``backward``, ``step``,
``lr``, ``autocast``, ``state_dict``/``load_state_dict`` for one process; ``save``/``load`` for a checkpoint
directory), so step.py and the methods do not know which one runs.

- The optimiser is a CLIENT torch AdamW (uda_dist.optim.build_optimizer: the head learning-rate groups, no
  decay on norms, fused kernel) and the client LambdaLR schedule, both handed to deepspeed.initialize. A
  DeepSpeed "optimizer" block would JIT-compile fused_adam (~56 s on CPU) and lose the groups' lr_mult.
- Its config is derived from the typed configs: train_micro_batch_size_per_gpu = the loader's batch size,
  gradient_accumulation_steps, gradient_clipping = optim.grad_clip, zero_optimization.stage 0/1/2.
- Precision: fp32 parameters, gradients and all-reduce always; ``precision="bf16"`` (the "auto" choice on
  GPU) runs the forward passes under torch.autocast(bfloat16), entered by step.py around the method's losses
  (the methods call the student module directly, so DeepSpeed's own forward-wrapping autocast would not
  apply). On this CPU bf16 is 10-17x slower than fp32 (no AVX512-BF16), hence fp32 for "auto" on CPU.
- What DeepSpeed compiles on CPU: only its shared-memory comm op, built by ninja at the first
  deepspeed.initialize of a machine (35-75 s measured, cached in ~/.cache/torch_extensions; rebuilt when a
  different ninja binary runs, so the launcher puts the venv's bin first on the workers' PATH).
- After every optimiser step the student's BatchNorm buffers are averaged over ranks (collectives.py), so
  the EMA teacher outside the engine stays identical on every rank.
- Checkpoints: ``save`` writes DeepSpeed's files under directory/tag (mp_rank_00_model_states.pt: module,
  schedule, stage-0 optimizer, counters, ds_config; with ZeRO 1/2 also zero_pp_rank_<r>_mp_rank_00_optim_states.pt
  per rank). ``load`` reads every one of them through ``SafeCheckpointLoader``, installed as the engine's
  checkpoint_engine: torch.load(weights_only=True) with a three-class allowlist instead of DeepSpeed's
  full torch.load, so a file that would run code on unpickling is refused (CheckpointError,
  nothing executed). Not covered, and not used by this config: DeepSpeed's universal-checkpoint loading
  (checkpoint.load_universal), ZeRO-3 and NVMe offload, which read files with torch.load directly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Literal

import torch
from torch import nn

from uda_dist.dist import collectives
from uda_dist.optim import LocalEngine, OptimConfig, build_optimizer_and_schedule
from uda_dist.safe_load import load_tensors


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How the student is optimised: in this process (local) or by a DeepSpeed engine."""

    backend: Literal["auto", "local", "deepspeed"] = "auto"
    """"local" (torch AdamW in this process), "deepspeed" (a DeepSpeed engine; needs a process group) or
    "auto" (deepspeed when a process group exists, i.e. on the launcher's Ray Train workers; local otherwise)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1 (optimizer state sharded) or 2 (+ gradients)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """"fp32", "bf16" (autocast forwards, fp32 weights and gradients) or "auto" (bf16 on GPU, fp32 on CPU)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step (DeepSpeed gradient_accumulation_steps): each of the train.iterations
    optimiser steps draws this many batches per worker; the teacher and every schedule advance once per step."""

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "local", "deepspeed"):
            raise ValueError(f"EngineConfig.backend must be 'auto', 'local' or 'deepspeed', got {self.backend!r}")
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"EngineConfig.zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"EngineConfig.precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.grad_accum < 1:
            raise ValueError(f"EngineConfig.grad_accum must be >= 1, got {self.grad_accum}")

    def resolved_precision(self, device: torch.device) -> str:
        if self.precision == "auto":
            return "bf16" if device.type == "cuda" else "fp32"
        return self.precision


def deepspeed_config(cfg: EngineConfig, optim: OptimConfig, *, micro_batch: int) -> dict:
    """The DeepSpeed JSON config, derived from the typed configs (no optimizer/scheduler blocks: client ones)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": float(optim.grad_clip),
        "zero_optimization": {"stage": cfg.zero_stage},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def build_engine(model: nn.Module, cfg: EngineConfig, optim: OptimConfig, *, total_steps: int, micro_batch: int,
                 device: torch.device):
    """The engine the config asks for: LocalEngine or DeepSpeedEngine (see EngineConfig.backend)."""
    grouped = collectives.has_process_group()
    backend = cfg.backend if cfg.backend != "auto" else ("deepspeed" if grouped else "local")
    if backend == "local":
        if collectives.rank_and_world_size()[1] > 1:
            raise ValueError("engine.backend='local' cannot train on several workers (gradients would not be "
                             "averaged); use 'deepspeed' or 'auto'")
        if cfg.precision == "bf16" or cfg.grad_accum != 1 or cfg.zero_stage != 0:
            raise ValueError("engine.precision/grad_accum/zero_stage need the DeepSpeed engine "
                             "(engine.backend='deepspeed', on the launcher's workers)")
        return LocalEngine(model, optim, total_steps=total_steps)
    if not grouped:
        raise ValueError("engine.backend='deepspeed' needs a process group: run through the launcher "
                         "(--set launch.workers=N)")
    return DeepSpeedEngine(model, cfg, optim, total_steps=total_steps, micro_batch=micro_batch, device=device)


class SafeCheckpointLoader:
    """The engine's DeepSpeed checkpoint engine with load() = torch.load(weights_only=True) (safe_load).

    Wraps the engine deepspeed.initialize made (a TorchCheckpointEngine: save/create/commit are its own) and
    replaces load(), through which DeepSpeed's load_checkpoint reads the model-states file (SDLoader) and every
    ZeRO optimizer-state file. torch's default weights-only allowlist (tensors, dict/list/OrderedDict, torch.Size,
    ...) covers mp_rank_00_model_states.pt; the ZeRO 1/2 optimizer-state files also hold, in
    ["optimizer_state_dict"], three DeepSpeed classes, allowed only during the call (their constructors store
    numbers, nothing else):
    - deepspeed.runtime.zero.config.ZeroStageEnum ("zero_stage"),
    - deepspeed.runtime.fp16.loss_scaler.LossScaler ("loss_scaler": the static scale 1 of fp32 training),
    - deepspeed.utils.tensor_fragment.fragment_address ("param_slice_mappings": numel/start per parameter).
    """

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def load(self, path: str, map_location=None):
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        return load_tensors(path, map_location=map_location, allowed=(ZeroStageEnum, LossScaler, fragment_address))


class DeepSpeedEngine:
    """deepspeed.initialize over the student with the client AdamW and LambdaLR; one backward per step."""

    def __init__(self, model: nn.Module, cfg: EngineConfig, optim: OptimConfig, *, total_steps: int,
                 micro_batch: int, device: torch.device):
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
        import deepspeed

        optimizer, scheduler = build_optimizer_and_schedule(model, optim, total_steps=total_steps)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg, optim, micro_batch=micro_batch), dist_init_required=False)
        self.engine.checkpoint_engine = SafeCheckpointLoader(self.engine.checkpoint_engine)  # see module doc
        self.module = self.engine.module
        self.precision = cfg.resolved_precision(device)
        self.device = device

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        """DeepSpeed's step: the optimiser and schedule act only at a gradient-accumulation boundary (every
        grad_accum-th micro-batch). Returns whether an optimiser step happened."""
        before = self.engine.global_steps
        self.engine.step()  # optimiser + schedule at accumulation boundaries, zero_grad
        stepped = self.engine.global_steps != before
        if stepped:
            collectives.average_buffers_(self.module)
        return stepped

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, directory: str, *, tag: str) -> None:
        """Every rank writes its engine state (model, optimizer shards, schedule) under directory/tag."""
        self.engine.save_checkpoint(directory, tag=tag, save_latest=False)

    def load(self, directory: str, *, tag: str) -> None:
        """Restores what save wrote; every file is read weights-only (SafeCheckpointLoader), a file holding
        anything else raises CheckpointError."""
        path, _ = self.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
