"""Auxiliary modules: what a method trains beside the student with an optimiser of its own (a discriminator).

Who owns what:
- the method owns each module and its math: it declares them (``Method.auxiliaries()``: name ->
  ``Auxiliary(module, optim)``, the optimiser config a field of the method's config) and computes their losses
  from tensors it cached *detached* during the generator phase (``Method.auxiliary_losses(name)``);
- the trainer owns the phases (uda_dist.step): the generator phase runs with every auxiliary frozen
  (``Auxiliaries.frozen``: no gradient reaches them), then one backward per auxiliary of its summed losses,
  and at an optimiser-step boundary one packed all-reduce of all the auxiliaries' gradients
  (collectives.average_gradients_) and one step of each optimiser and schedule;
- ``Auxiliaries`` holds the optimisers and schedules, outside the DeepSpeed engine (ZeRO partitions only the
  student), so the modules are identical on every rank; its state (modules, optimisers, schedules) is saved
  once, in rank 0's run.pt (uda_dist.checkpoint), by name: a method with two auxiliaries needs no new format.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import torch
from torch import nn

from uda_dist.dist import collectives
from uda_dist.optim import AuxOptimConfig, build_aux_optimizer_and_schedule


@dataclasses.dataclass(frozen=True)
class Auxiliary:
    """A module a method trains beside the student, with its optimiser config."""

    module: nn.Module
    optim: AuxOptimConfig


class Auxiliaries:
    """The method's auxiliary modules with their Adam optimisers and poly schedules (empty for most methods)."""

    def __init__(self, declared: dict[str, Auxiliary], *, total_steps: int, grad_accum: int = 1):
        self.modules = {name: aux.module for name, aux in declared.items()}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedules: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        for name, aux in declared.items():
            self.optimizers[name], self.schedules[name] = build_aux_optimizer_and_schedule(
                aux.module, aux.optim, total_steps=total_steps)
        self.grad_accum = grad_accum

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.modules)

    def __bool__(self) -> bool:
        return bool(self.modules)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Every auxiliary's parameters without requires_grad for the block (the generator phase): a loss
        through them reaches the student, never them."""
        params = [p for module in self.modules.values() for p in module.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one auxiliary's loss (divided by grad_accum, as the engine does)."""
        (loss / self.grad_accum if self.grad_accum > 1 else loss).backward()

    def step(self) -> None:
        """At an optimiser-step boundary: the gradients of every auxiliary averaged over ranks in one packed
        all-reduce, then each optimiser and schedule steps and its gradients are cleared."""
        collectives.average_gradients_([p for params in self.parameter_groups().values() for p in params])
        for name, optimizer in self.optimizers.items():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self.schedules[name].step()

    def lr(self, name: str) -> float:
        return self.optimizers[name].param_groups[0]["lr"]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{owner: the parameters its optimiser holds} for the one-optimiser-each check."""
        return {f"auxiliary {name}": [p for group in optimizer.param_groups for p in group["params"]]
                for name, optimizer in self.optimizers.items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: {"module": self.modules[name].state_dict(), "optimizer": self.optimizers[name].state_dict(),
                       "schedule": self.schedules[name].state_dict()} for name in self.names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.names):
            raise ValueError(f"the checkpoint's auxiliary modules {sorted(state)} are not this method's "
                             f"{sorted(self.names)}")
        for name, entry in state.items():
            self.modules[name].load_state_dict(entry["module"])
            self.optimizers[name].load_state_dict(entry["optimizer"])
            self.schedules[name].load_state_dict(entry["schedule"])


def check_one_optimizer_each(trainable: dict[str, nn.Module], groups: dict[str, list[nn.Parameter]]) -> None:
    """Every trainable parameter of the ``trainable`` modules sits in exactly one optimiser of ``groups``, and
    no optimiser holds anything else: raises naming the parameters otherwise (a method's bug, found at build)."""
    owners: dict[int, list[str]] = {}
    for owner, params in groups.items():
        for p in params:
            owners.setdefault(id(p), []).append(owner)
    problems = []
    known: set[int] = set()
    for module_name, module in trainable.items():
        for name, p in module.named_parameters():
            known.add(id(p))
            if not p.requires_grad:
                continue
            held = owners.get(id(p), [])
            if len(held) != 1:
                problems.append(f"{module_name}.{name} is in {len(held)} optimisers {held}")
    strays = sum(1 for key in owners if key not in known)
    if strays:
        problems.append(f"{strays} optimised parameters belong to no trained module")
    if problems:
        raise RuntimeError("every trainable parameter must belong to exactly one optimiser: " + "; ".join(problems[:5]))
