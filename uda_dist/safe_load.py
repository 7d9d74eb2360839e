"""Loading what a user hands a run (weight files, the run's own checkpoints): tensors and plain containers
only, through torch.load(weights_only=True), so a file that would run code when unpickled is refused unread.

The trust boundary: nothing a run loads is trusted to be code. Weight files (model.pretrained,
model.init_weights) and the project's checkpoint files (run.pt, rank{r}.pt, the local engine's state) hold
only tensors, numbers, strings and lists/tuples/dicts of them; DeepSpeed's own checkpoint files are read
through uda_dist.dist.engine's checkpoint engine with the same rule.
"""
from __future__ import annotations

import pickle
import re
from typing import Any

import torch

from uda_dist.errors import CheckpointError


def load_tensors(path: str, *, map_location: Any = "cpu", allowed: tuple[type, ...] = ()) -> Any:
    """torch.load(path, weights_only=True); CheckpointError "not a checkpoint: PATH (...)" for a file that is
    not a torch file, or that holds anything but tensors, plain containers and the ``allowed`` classes
    (allowed during this call only; nothing else in the file is run). A missing file stays FileNotFoundError."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # what torch's weights-only unpickler refused first
        reason = (f"it holds {found[1]}, not only tensors and plain values; refused, nothing in it was run"
                  if found else "not a torch checkpoint")
        raise CheckpointError(f"not a checkpoint: {path} ({reason})") from None
    except Exception:  # noqa: BLE001 - arbitrary bytes fail anywhere in torch's reader (IndexError, KeyError, ...)
        raise CheckpointError(f"not a checkpoint: {path} (not a torch checkpoint)") from None
