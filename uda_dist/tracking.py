"""Run tracking in MLflow (the only MLflow code), from rank 0; every other rank gets a tracker that does nothing.

A run is one MLflow run in ``tracking.experiment``: params are the flattened resolved config (every --set
key), tags the recipe (config name), the git commit of the code and the run name; metrics are the logged
history (losses, learning rate, pseudo-label confidence ratio, samples/s, skipped data) at their step and
every evaluation's mIoU and per-class IoU (``val.miou``, ``val.iou.<class>``); artifacts the resolved config
and, at the end, the run's summary, a confusion-matrix plot, a per-class IoU bar chart and a few target
predictions overlaid in the Cityscapes palette, with the checkpoint location as a tag. The MLflow run is found again by
its run name (tag ``uda_dist.run_name``), so a resumed run (Ray's restart, or a relaunch under the same
name) continues the same MLflow run instead of making a second one. Through MlflowClient with an explicit
tracking URI (no process-global active run), so it works the same in one process and in a Ray worker.

Store: ``tracking.uri``; "" means $MLFLOW_TRACKING_URI, else a SQLite file ``mlflow.db`` in the working
directory of the driver (resolved there, before Ray workers with other working directories start).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
from typing import Any

RUN_NAME_TAG = "uda_dist.run_name"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    enabled: bool = True
    """Record the run in MLflow (rank 0 only)."""
    uri: str = ""
    """Tracking URI (http://host:port of an `mlflow server`, sqlite:///path.db, ...); "" = $MLFLOW_TRACKING_URI,
    else sqlite:///<working directory>/mlflow.db."""
    experiment: str = "uda_dist"
    """MLflow experiment the run goes to (made if missing)."""


def resolve(cfg: TrackingConfig) -> TrackingConfig:
    """The config with its store fixed to an absolute URI (call on the driver)."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath('mlflow.db')}"
    return dataclasses.replace(cfg, uri=uri)


def open_tracker(cfg: Any, *, rank: int) -> NullTracker:
    """An MLflow tracker for the run on rank 0 when tracking is enabled, else a NullTracker."""
    if rank != 0 or not cfg.tracking.enabled:
        return NullTracker()
    return MlflowTracker(cfg)


class NullTracker:
    """Tracks nothing (ranks other than 0, or tracking.enabled=false)."""

    run_id = ""
    records = False
    """Whether anything is recorded (callers skip making artifacts for a NullTracker)."""

    def log_history(self, entry: dict[str, Any]) -> None: ...

    def log_evaluation(self, record: dict[str, Any], classes: tuple[str, ...]) -> None: ...

    def finish(self, *, artifacts: list[str], checkpoint: str | None, failed: bool = False) -> None: ...


class MlflowTracker(NullTracker):
    """The run's MLflow run: made, or found again by its run name and continued."""

    records = True

    def __init__(self, cfg: Any):
        from mlflow.tracking import MlflowClient

        from uda_dist.config import to_flat_dict

        tracking = resolve(cfg.tracking)
        self.client = MlflowClient(tracking_uri=tracking.uri)
        name = cfg.launch.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        experiment = self.client.get_experiment_by_name(tracking.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(tracking.experiment))
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'",
                                        max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {RUN_NAME_TAG: name, "recipe": cfg.name, "git_commit": _git_commit()}
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        self._log_params(to_flat_dict(cfg))
        self._log_json("config.json", to_flat_dict(cfg))

    def log_history(self, entry: dict[str, Any]) -> None:
        """One log step of the history: every numeric value but the step itself, at that step."""
        from mlflow.entities import Metric

        step, now = int(entry["step"]), int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in entry.items()
                   if key != "step" and isinstance(value, (int, float))]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_evaluation(self, record: dict[str, Any], classes: tuple[str, ...]) -> None:
        values = {"val.miou": record["miou"], **{f"val.iou.{c.replace(' ', '_')}": v
                                                 for c, v in zip(classes, record["iou"])}}
        self.log_history({"step": record["step"], **values})

    def finish(self, *, artifacts: list[str], checkpoint: str | None, failed: bool = False) -> None:
        for path in artifacts:
            self.client.log_artifact(self.run_id, path)
        if checkpoint:
            self.client.set_tag(self.run_id, "checkpoint", checkpoint)
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

    def _log_params(self, flat: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in sorted(flat.items())]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _log_json(self, name: str, value: Any) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, name)
            with open(path, "w") as f:
                json.dump(value, f, indent=1, default=str)
            self.client.log_artifact(self.run_id, path)


def _git_commit() -> str:
    """The commit of the code being run ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
