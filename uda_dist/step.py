"""One explicit UDA training step, top to bottom.

forwards and loss terms (the method) -> ONE backward of their sum -> optimiser step -> method state update
(EMA teacher). Only this function calls backward() and step(). Nothing here syncs with the host: the
returned values are device tensors, read by the loop only at log cadence.
"""
from __future__ import annotations

from typing import Any

import torch

from uda_dist.methods.base import Method


def train_step(engine: Any, method: Method, source: dict[str, Any], target: dict[str, Any] | None,
               step: int) -> dict[str, torch.Tensor]:
    with engine.autocast():
        losses = method.losses(engine.module, source, target, step)
    total = torch.stack(list(losses.values())).sum()
    engine.backward(total)
    engine.step()
    method.after_step(engine.module, step)
    logged = {"loss": total.detach()}
    logged.update({name: value.detach() for name, value in losses.items()})
    logged.update(method.log_values())
    return logged
