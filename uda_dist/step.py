"""One explicit UDA training step, top to bottom, per micro-batch.

1. generator phase, with every auxiliary module frozen (a discriminator the student's losses pass through
   gets no gradient): the method's forwards and loss terms -> ONE backward of their sum -> engine.step(),
   which is an optimiser step only at a gradient-accumulation boundary (engine.grad_accum micro-batches);
2. auxiliary phase, per auxiliary module (none for most methods): its losses, from tensors the method cached
   detached in phase 1 -> one backward of their sum;
3. only at an optimiser-step boundary: the auxiliaries' step (one packed all-reduce of their gradients, then
   each optimiser and schedule) and the method's state update (the EMA teacher).
Only this module calls backward() and step(). Nothing here syncs with the host: the returned values are
device tensors, read by the loop only at log cadence.
"""
from __future__ import annotations

from typing import Any

import torch

from uda_dist.auxiliary import Auxiliaries
from uda_dist.methods.base import Method

_NONE = Auxiliaries({}, total_steps=1)


def train_step(engine: Any, method: Method, source: dict[str, Any], target: dict[str, Any] | None, step: int,
               auxiliaries: Auxiliaries = _NONE) -> tuple[dict[str, torch.Tensor], bool]:
    """One micro-batch of optimiser step ``step``: (the logged device values, whether the optimiser stepped)."""
    with auxiliaries.frozen(), engine.autocast():
        losses = method.losses(engine.module, source, target, step)
    total = torch.stack(list(losses.values())).sum()
    engine.backward(total)
    stepped = engine.step()
    logged = {"loss": total.detach()}
    logged.update({name: value.detach() for name, value in losses.items()})
    for name in auxiliaries.names:
        with engine.autocast():
            terms = method.auxiliary_losses(name)
        auxiliaries.backward(torch.stack(list(terms.values())).sum())
        logged.update({term: value.detach() for term, value in terms.items()})
    if stepped:
        if auxiliaries:
            auxiliaries.step()
        method.after_step(engine.module, step)
    logged.update(method.log_values())
    return logged, stepped
