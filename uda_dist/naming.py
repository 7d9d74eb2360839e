"""A run's name and its own folder: the two things every part of a run agrees on (the launcher names the run
and resumes it by name; the loop writes into its folder; MLflow finds its run by it)."""
from __future__ import annotations

import json
import os
import secrets
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uda_dist.config import RunConfig


def run_name(cfg: RunConfig) -> str:
    """launch.run_name, else the `ray job submit` submission id, else a fresh {name}-{date-time}-{4 hex}."""
    if cfg.launch.run_name:
        return cfg.launch.run_name
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    submission_id = job.get("metadata", {}).get("job_submission_id")
    if submission_id:
        return submission_id
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def join_location(folder: str, *names: str) -> str:
    """A path under a local folder or a URL under an s3://bucket/prefix (a run's storage)."""
    if "://" in folder:
        return "/".join([folder.rstrip("/"), *names])
    return os.path.join(folder, *names)


def output_folder(cfg: RunConfig) -> str:
    """The run's own folder, {output_dir}/{run name}: its weights, summary and pictures, never another's."""
    return os.path.join(cfg.output_dir, cfg.launch.run_name or cfg.name)
