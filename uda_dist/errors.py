"""The errors a user fixes by changing the run's inputs or its environment, and how a command reports them:
one line, no traceback (``run_cli``)."""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any


class RunError(RuntimeError):
    """The run cannot start or go on because of what it was given: a setting naming something that is not
    there or not reachable (a tracking server, an S3 endpoint, a weight file), a cluster too small for the
    request, a batch too large for the memory. The message is one line that names the setting to change;
    the command line prints it without a traceback."""


class ConfigError(ValueError):
    """A bad override or config value; the message names the key and what is valid."""


class SchemaError(ValueError):
    """A sample or manifest that breaks the shard contract."""


class CheckpointError(RunError, ValueError):
    """A file that should hold tensors (a weight file, a checkpoint) does not, or holds code."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``ray job stop``, a scheduler ending the job), raised where Ctrl-C would be, so the run ends
    the same way: marked KILLED, nothing partial left looking complete."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors whose message is all a user needs (no traceback): bad config, bad inputs, missing files."""
    return (ConfigError, RunError, SchemaError, FileNotFoundError)


def run_cli(main: Callable[[], int]) -> int:
    """A command's ``main()`` with its user errors printed as one line (exit status 2), Ctrl-C (130) and
    SIGTERM (143) as one line each; any other error keeps its traceback (a bug to report)."""
    from uda_dist.redact import redact

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    try:
        return main()
    except user_errors() as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        print(f"error: {redact(lines[0])}", file=sys.stderr)
        return 2
    except Terminated:
        print("stopped: SIGTERM", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("stopped: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output went away (`--print-config | head`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail too
        return 141


_requested: list[int] = []
"""The stop signal received, if any (its exception may have been raised where Python drops it)."""


def _stop(signum: int, frame: Any) -> None:
    _requested.append(signum)
    raise_if_stopped()


def raise_if_stopped() -> None:
    """Raise Terminated (SIGTERM) or KeyboardInterrupt (Ctrl-C) if one was received. The handler raises it
    at once, but Python drops an exception raised inside a finaliser or a garbage-collection callback, which
    is where a signal can land; the training loop calls this every step, so a stop is never lost."""
    if _requested:
        raise Terminated() if _requested[0] == signal.SIGTERM else KeyboardInterrupt()
