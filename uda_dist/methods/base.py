"""The method interface and the plain supervised method (source-only training, and the oracle).

A method is a small object built from its frozen config by ``config.build(student)``; the recipe picks the
config class, so there is no string registry. The trainer owns backward and the optimiser step: a method
only returns named, already weighted loss terms (``losses``) and updates its own state after the optimiser
step (``after_step``, e.g. the EMA teacher). A method that trains a module of its own (a discriminator)
declares it in ``auxiliaries`` and returns its losses from ``auxiliary_losses``; the trainer runs that phase.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from uda_dist.auxiliary import Auxiliary
from uda_dist.losses.segmentation import cross_entropy


Reducer = Callable[[torch.Tensor], torch.Tensor]
"""Sums a flat tensor over workers, in place, and returns it."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Supervised training on the source domain only (no target data); the oracle recipe points
    the source at the target's labelled train split."""

    source_weight: float = 1.0
    """Weight of the source cross-entropy."""

    def __post_init__(self) -> None:
        if self.source_weight < 0:
            raise ValueError(f"source_weight must be >= 0, got {self.source_weight}")

    @property
    def reads_target_labels(self) -> bool:
        """Whether the target stream must carry labels: offline pseudo-labels written by an earlier stage, never
        the target's own ground truth (the run checks that data.target is a pseudo-label split)."""
        return False

    @property
    def reads_day_pairs(self) -> bool:
        """Whether the target stream must carry each night image's daytime pair (SePiCo's day/night fusion)."""
        return False

    def build(self, student: nn.Module, *, seed: int, reducer: Reducer | None = None,
              total_steps: int = 0) -> "Method":
        """The method for this student. ``reducer`` sums a flat tensor over workers in place (the identity in
        one process); methods with cross-worker statistics (SePiCo) use it, the others ignore it.
        ``total_steps`` is the run's optimiser steps (train.iterations), for methods whose weights follow the
        schedule (ASANet's damped adversarial term)."""
        return SourceOnly(self)


class NoState:
    """state_dict() / load_state_dict() of a part that keeps nothing (methods, terms, selectors override them)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, but got keys {sorted(state)}")


class Method(NoState):
    """Interface of every method: named weighted losses for one step, and state updated after it."""

    needs_target: bool = False
    per_rank_state: tuple[str, ...] = ()
    """Keys of state_dict() that differ between workers (random generators seeded by rank); the rest is the
    same on every rank and is checkpointed once."""

    def losses(self, student: nn.Module, source: dict[str, Any], target: dict[str, Any] | None,
               step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def start(self, student: nn.Module, target_split: Callable[[], Any], device: torch.device) -> None:
        """Called once before the first step of a fresh run (not on resume): ``target_split()`` gives this
        rank's share of the target train split, unaugmented, as evaluation reads a split (DiGA's centroids)."""

    def after_step(self, student: nn.Module, step: int) -> None:
        """Called once after every optimiser step (not after the micro-batches that only accumulate)."""

    def auxiliaries(self) -> dict[str, Auxiliary]:
        """Modules this method trains beside the student, each with its optimiser config (a discriminator):
        the trainer freezes them during ``losses`` and steps them after it (uda_dist.auxiliary)."""
        return {}

    def auxiliary_losses(self, name: str) -> dict[str, torch.Tensor]:
        """Named losses of auxiliary ``name``, from tensors ``losses`` cached detached in this micro-batch."""
        raise NotImplementedError(f"{type(self).__name__} declares no auxiliary module {name!r}")

    def log_values(self) -> dict[str, torch.Tensor]:
        """Device tensors worth logging from the last step (synced to the host only at log cadence)."""
        return {}


class SourceOnly(Method):
    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg

    def losses(self, student, source, target, step):
        logits_BKHW = student.segment(source["image"])
        return {"source.ce": self.cfg.source_weight * cross_entropy(logits_BKHW, source["label"])}
