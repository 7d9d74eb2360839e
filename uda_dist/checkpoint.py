"""The checkpoint format of a run: what every rank writes and reads to resume exactly where it stopped.

A checkpoint directory holds ``engine/`` (the engine's own files: DeepSpeed's model, optimizer shards and
schedule, or the local engine's state.pt), ``rank<r>.pt`` per rank (its RNG states, data-stream positions
and the method state that differs by rank) and, from rank 0, ``run.pt`` (the step, the method state that is
the same on every rank, the auxiliary modules' weights, optimisers and schedules, the logged history).
Where such directories go is the loop's Checkpointer (the launcher's Ray checkpoints); when, the loop's
cadence.
"""
from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from uda_dist.safe_load import load_tensors

if TYPE_CHECKING:
    from uda_dist.parts import Parts


ENGINE_TAG = "state"


def save_state(parts: Parts, directory: str, step: int, history: dict[str, Any]) -> None:
    """Every rank: its engine state (DeepSpeed: model, optimizer shard, schedule) under directory/engine and
    its own RNG states and data-stream positions in rank{r}.pt; rank 0 adds run.pt: the step, the method
    state (EMA teacher, class statistics, memory bank, mixing generator), the auxiliary modules with their
    optimisers and schedules (identical on every rank, by name) and the logged history."""
    parts.engine.save(os.path.join(directory, "engine"), tag=ENGINE_TAG)
    streams = {"source": parts.source.state(), "target": parts.target.state() if parts.target else None}
    rng = {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()}
    method_state = parts.method.state_dict()
    own = {key: method_state[key] for key in parts.method.per_rank_state}
    torch.save({"streams": streams, "rng": rng, "method": own}, os.path.join(directory, f"rank{parts.rank}.pt"))
    if parts.rank == 0:
        torch.save({"step": step, "method": method_state, "auxiliaries": parts.auxiliaries.state_dict(),
                    "history": history}, os.path.join(directory, "run.pt"))


def load_state(parts: Parts, directory: str) -> dict[str, Any]:
    """Inverse of save_state; returns {"step", "history"}. Every rank reads rank 0's run.pt (the method state
    is identical on every rank, except the keys in method.per_rank_state, such as the mixing generator, which
    each rank restores from its own file). Every file is read with weights_only=True (safe_load): a file
    that holds anything but tensors and plain values is refused before anything of it runs."""
    run = load_tensors(os.path.join(directory, "run.pt"))
    mine = load_tensors(os.path.join(directory, f"rank{parts.rank}.pt"))
    parts.engine.load(os.path.join(directory, "engine"), tag=ENGINE_TAG)
    parts.method.load_state_dict({**run["method"], **mine["method"]})
    parts.auxiliaries.load_state_dict(run.get("auxiliaries", {}))
    parts.source.restore(mine["streams"]["source"])
    if parts.target is not None:
        parts.target.restore(mine["streams"]["target"])
    torch.set_rng_state(mine["rng"]["torch"])
    np.random.set_state(_numpy_rng_from(mine["rng"]["numpy"]))
    random.setstate(mine["rng"]["python"])
    return {"step": run["step"], "history": run["history"]}


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as a tensor and plain values (what weights_only=True loads)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_rng_from(state: dict[str, Any]) -> tuple:
    return (state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
            state["cached_gaussian"])
