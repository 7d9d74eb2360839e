"""Loading what a user hands a run (weight files, the run's own checkpoints): tensors and plain containers
only, through torch.load(weights_only=True), so a file that would run code when unpickled is refused unread.

The trust boundary: nothing a run loads is trusted to be code. Weight files (model.pretrained,
model.init_weights) and the project's checkpoint files (run.pt, rank{r}.pt, the local engine's state) hold
only tensors, numbers, strings and lists/tuples/dicts of them; DeepSpeed's own checkpoint files are read
through uda_dist.dist.engine's checkpoint engine with the same rule.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any

import torch

from uda_dist.errors import CheckpointError


def exists(path: str) -> bool:
    """Whether a weight file is there: a local path, or an s3:// URL (a staged run's storage)."""
    if path.startswith("s3://"):
        from uda_dist.data import s3

        return s3.exists(path)
    return os.path.isfile(path)


def load_tensors(path: str, *, map_location: Any = "cpu", allowed: tuple[type, ...] = ()) -> Any:
    """torch.load(path, weights_only=True); CheckpointError "not a checkpoint: PATH (...)" for a file that is
    not a torch file, or that holds anything but tensors, plain containers and the ``allowed`` classes
    (allowed during this call only; nothing else in the file is run). A missing file stays FileNotFoundError.
    An s3:// path is read from the bucket (AWS_ENDPOINT_URL_S3) into memory first."""
    source: Any = path
    if path.startswith("s3://"):
        from uda_dist.data import s3

        if not s3.exists(path):
            raise FileNotFoundError(f"{path} does not exist in the bucket")
        source = io.BytesIO(s3.read_bytes(path))
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # what torch's weights-only unpickler refused first
        reason = (f"it holds {found[1]}, not only tensors and plain values; refused, nothing in it was run"
                  if found else "not a torch checkpoint")
        raise CheckpointError(f"not a checkpoint: {path} ({reason})") from None
    except Exception:  # noqa: BLE001 - arbitrary bytes fail anywhere in torch's reader (IndexError, KeyError, ...)
        raise CheckpointError(f"not a checkpoint: {path} (not a torch checkpoint)") from None
