"""Run tracking in MLflow (the only MLflow code), from rank 0; every other rank gets a tracker that does nothing.

A run is one MLflow run in ``tracking.experiment``: params are the flattened resolved config (every --set
key), tags the recipe (config name), the git commit of the code and the run name; metrics are the logged
history (losses, learning rate, pseudo-label confidence ratio, samples/s, skipped data) at their step and
every evaluation's mIoU and per-class IoU (``val.miou``, ``val.iou.<class>``); artifacts the resolved config,
after every evaluation a confusion-matrix plot, a per-class IoU bar chart and a few target predictions
overlaid in the Cityscapes palette (replaced by the next), and at the end the run's summary, with the
checkpoint location as a tag. The MLflow run is found again by its run name (tag ``uda_dist.run_name``), so
a resumed run (Ray's restart, or a relaunch under the same name) continues the same MLflow run instead of
making a second one. Through MlflowClient with an explicit
tracking URI (no process-global active run), so it works the same in one process and in a Ray worker.

A sweep (tune/) is a parent run (ParentRun) with one nested run per trial (tag mlflow.parentRunId, set from
``tracking.parent_run_id``), and so is a staged run (uda_dist.pipeline) with one nested run per stage; ``list_runs`` reads runs back for the comparison command (uda_dist.compare).

Store: ``tracking.uri``; "" means $MLFLOW_TRACKING_URI, else a SQLite file ``mlflow.db`` in the working
directory of the driver. ``prepare`` runs on the driver before any worker starts: it fixes the store to an
absolute URI, checks that a tracking server answers (a short timeout, naming tracking.uri when it does not),
and makes the experiment there, so its artifact location is resolved next to the store (``mlruns/<experiment>``
beside a SQLite file; the server's own choice for an ``mlflow server``), never in a worker's working
directory (Ray's session temp folder). Credentials in the URI (``http://user:password@host``) are handed to
MLflow through ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` in the process that talks to the server,
and MLflow is given the URI without them, so neither the URL MLflow prints nor anything recorded (params,
config.json, summary.json, tags) carries them (uda_dist.redact).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from uda_dist.errors import RunError
from uda_dist.redact import redact, redact_values, split_credentials

if TYPE_CHECKING:
    from uda_dist.config import RunConfig

RUN_NAME_TAG = "uda_dist.run_name"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
SWEEP_TAG = "uda_dist.sweep"  # on a sweep's parent run: its search space (params "space.<key>")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
HEALTH_TIMEOUT_S = 10.0  # how long prepare() waits for a tracking server's answer


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    enabled: bool = True
    """Record the run in MLflow (rank 0 only)."""
    uri: str = ""
    """Tracking URI (http://host:port of an `mlflow server`, sqlite:///path.db, ...); "" = $MLFLOW_TRACKING_URI,
    else sqlite:///<working directory>/mlflow.db."""
    experiment: str = "uda_dist"
    """MLflow experiment the run goes to (made if missing)."""
    parent_run_id: str = ""
    """MLflow run this run is nested under (a sweep sets its parent run for every trial); "" = none."""


def resolve(cfg: TrackingConfig) -> TrackingConfig:
    """The config with its store fixed to an absolute URI (call on the driver)."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath('mlflow.db')}"
    return dataclasses.replace(cfg, uri=uri)


def prepare(cfg: TrackingConfig) -> TrackingConfig:
    """On the driver, before any worker starts: the resolved config, its server checked and its experiment
    made (artifacts next to the store). Raises RunError naming tracking.uri when the store cannot be used."""
    resolved = resolve(cfg)
    if not resolved.enabled:
        return resolved
    _check_server(resolved.uri)
    try:
        _experiment_id(client(resolved.uri), resolved)
    except Exception as e:  # noqa: BLE001 - any MLflow/store failure becomes one line naming the setting
        raise RunError(f"tracking.uri {redact(resolved.uri)}: {_first_line(e)} (or set tracking.enabled=false)") from None
    return resolved


def client(uri: str) -> Any:
    """An MlflowClient for ``uri``; credentials in it go to MLflow's environment variables, not its URL (and
    those set here for an earlier URI are taken back when this one has none)."""
    from mlflow.tracking import MlflowClient

    plain, user, password = split_credentials(uri)
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is not None:
            os.environ[name] = _credentials_set[name] = value
        elif name in _credentials_set and os.environ.get(name) == _credentials_set.pop(name):
            del os.environ[name]
    return MlflowClient(tracking_uri=plain)


_credentials_set: dict[str, str] = {}
"""The MLflow credential variables client() set from a URI (never a user's own)."""


def end_run(cfg: TrackingConfig, name: str, *, status: str) -> None:
    """The run named ``name`` set to ``status`` (FAILED or KILLED) if it is still RUNNING: the driver's word
    for a run whose workers were stopped before they could say it themselves."""
    if not cfg.enabled:
        return
    mlflow_client = client(cfg.uri)
    run_id = _find(mlflow_client, cfg.experiment, name)
    if run_id and mlflow_client.get_run(run_id).info.status == "RUNNING":
        mlflow_client.set_terminated(run_id, status=status)


def _check_server(uri: str) -> None:
    """An http(s) store must answer /health within HEALTH_TIMEOUT_S (MLflow's own client retries a refused
    connection for minutes)."""
    plain, _, _ = split_credentials(uri)
    if urllib.parse.urlsplit(plain).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(plain.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # something answered; the experiment look-up says whether it is an MLflow server
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise RunError(f"tracking.uri {redact(uri)}: no tracking server answered within {HEALTH_TIMEOUT_S:.0f} s "
                       f"({redact(str(reason))}); start it, fix tracking.uri / MLFLOW_TRACKING_URI, or set "
                       f"tracking.enabled=false") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return redact(text[0] if text else type(error).__name__)


def open_tracker(cfg: RunConfig, *, rank: int, name: str, params: dict[str, Any]) -> NullTracker:
    """An MLflow tracker for the run named ``name`` on rank 0 when tracking is enabled, else a NullTracker.
    ``params`` are the run's flattened config (every --set key), recorded when the MLflow run is made."""
    if rank != 0 or not cfg.tracking.enabled:
        return NullTracker()
    return MlflowTracker(cfg, name, params)


class NullTracker:
    """Tracks nothing (ranks other than 0, or tracking.enabled=false)."""

    run_id = ""
    records = False
    """Whether anything is recorded (callers skip making artifacts for a NullTracker)."""

    def log_history(self, entry: dict[str, Any]) -> None: ...

    def log_evaluation(self, record: dict[str, Any], classes: tuple[str, ...]) -> None: ...

    def log_artifacts(self, paths: list[str]) -> None: ...

    def finish(self, *, artifacts: list[str], checkpoint: str | None, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    """The run's MLflow run: made, or found again by its run name and continued."""

    records = True

    def __init__(self, cfg: RunConfig, name: str, params: dict[str, Any]):
        tracking = resolve(cfg.tracking)
        self.client = client(tracking.uri)
        tags = {"recipe": cfg.name, "git_commit": _git_commit(),
                **({PARENT_TAG: tracking.parent_run_id} if tracking.parent_run_id else {})}
        self.run_id, made = _find_or_create(self.client, tracking, name, tags)
        if made:
            flat = redact_values(params)
            _log_params(self.client, self.run_id, flat)
            self._log_json("config.json", flat)

    def log_history(self, entry: dict[str, Any]) -> None:
        """One log step of the history: every numeric value but the step itself, at that step."""
        from mlflow.entities import Metric

        step, now = int(entry["step"]), int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in entry.items()
                   if key != "step" and isinstance(value, (int, float))]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_evaluation(self, record: dict[str, Any], classes: tuple[str, ...]) -> None:
        values = {"val.miou": record["miou"], **{f"val.{k}": v for k, v in record.items() if k.startswith("miou")},
                  **{f"val.iou.{c.replace(' ', '_')}": v for c, v in zip(classes, record["iou"])}}
        self.log_history({"step": record["step"], **values})

    def log_artifacts(self, paths: list[str]) -> None:
        """Files as run artifacts, replacing earlier ones of the same name."""
        _log_artifacts(self.client, self.run_id, paths)

    def finish(self, *, artifacts: list[str], checkpoint: str | None, status: str = "FINISHED") -> None:
        """Artifacts, the checkpoint location, and the run's end: FINISHED, FAILED (an error) or KILLED
        (Ctrl-C, SIGTERM)."""
        self.log_artifacts(artifacts)
        if checkpoint:
            self.client.set_tag(self.run_id, "checkpoint", redact(checkpoint))
        self.client.set_terminated(self.run_id, status=status)

    def _log_json(self, name: str, value: Any) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, name)
            with open(path, "w") as f:
                json.dump(value, f, indent=1, default=str)
            self.client.log_artifact(self.run_id, path)


class ParentRun:
    """A parent MLflow run with runs nested under it (their tracking.parent_run_id is ``run_id``): a sweep's
    (its trials) or a staged run's (its stages). Found again by its name, so a resumed sweep or a relaunched
    staged run continues it; nested itself under tracking.parent_run_id when that is set (a staged run that
    is a sweep's trial)."""

    def __init__(self, tracking: TrackingConfig, name: str, *, tags: dict[str, str], params: dict[str, Any]):
        self.client = client(tracking.uri)
        self.experiment = tracking.experiment
        tags = {"git_commit": _git_commit(), **tags,
                **({PARENT_TAG: tracking.parent_run_id} if tracking.parent_run_id else {})}
        self.run_id, made = _find_or_create(self.client, tracking, name, tags)
        if made:
            _log_params(self.client, self.run_id, redact_values(params))

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def mark_stopped(self, names: list[str]) -> None:
        """The runs named here, ended by a sweep's scheduler (their processes killed), set KILLED with tag
        uda_dist.early_stopped=true, and so are the runs still RUNNING under them (a staged trial's stage)."""
        experiment = self.client.get_experiment_by_name(self.experiment).experiment_id
        for name in names:
            run_id = _find(self.client, self.experiment, name)
            if not run_id:
                continue
            children = self.client.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}' "
                                                                           f"and attributes.status = 'RUNNING'")
            for run in [self.client.get_run(run_id), *children]:
                self.client.set_tag(run.info.run_id, "uda_dist.early_stopped", "true")
                self.client.set_terminated(run.info.run_id, status="KILLED")

    def finish(self, *, metrics: dict[str, float], tags: dict[str, str], artifacts: list[str],
               status: str = "FINISHED", step: int = 0) -> None:
        """Its final metrics and tags (a sweep's best trial), artifacts (the sweep's table and plot), its end."""
        self.log_metrics(metrics, step=step)
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)
        _log_artifacts(self.client, self.run_id, artifacts)
        self.client.set_terminated(self.run_id, status=status)


def sweep_run(tracking: TrackingConfig, name: str, *, recipe: str, params: dict[str, Any]) -> ParentRun:
    """A sweep's parent run: its search space in tag uda_dist.sweep (from params "space.<key>")."""
    space = " ".join(f"{k.removeprefix('space.')}={v}" for k, v in params.items() if k.startswith("space."))
    return ParentRun(tracking, name, tags={"recipe": recipe, SWEEP_TAG: space}, params=params)


def list_runs(tracking: TrackingConfig, *, parent: str = "") -> list[dict[str, Any]]:
    """The runs of tracking.experiment as plain dicts {name, run_id, status, params, metrics, tags}, oldest
    first; with ``parent`` (a sweep's run name) only the runs nested under that sweep; sweep parent runs
    themselves are left out."""
    mlflow_client = client(tracking.uri)
    experiment = mlflow_client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        raise LookupError(f"no MLflow experiment {tracking.experiment!r} in {redact(tracking.uri)}")
    filters = []
    if parent:
        parent_id = _find(mlflow_client, tracking.experiment, parent)
        if not parent_id:
            raise LookupError(f"no sweep run {parent!r} in experiment {tracking.experiment!r}")
        filters.append(f"tags.`{PARENT_TAG}` = '{parent_id}'")
    runs = []
    page_token = None
    while True:
        page = mlflow_client.search_runs([experiment.experiment_id], filter_string=" and ".join(filters),
                                  order_by=["attributes.start_time ASC"], page_token=page_token)
        runs += [r for r in page if SWEEP_TAG not in r.data.tags]
        page_token = page.token
        if not page_token:
            break
    return [{"name": r.data.tags.get(RUN_NAME_TAG, r.info.run_name), "run_id": r.info.run_id,
             "status": r.info.status, "params": dict(r.data.params), "metrics": dict(r.data.metrics),
             "tags": dict(r.data.tags)} for r in runs]


def _find(client: Any, experiment_name: str, name: str) -> str:
    """The id of the run named ``name`` (tag uda_dist.run_name) in the experiment, "" if there is none."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return ""
    found = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'",
                               max_results=1)
    return found[0].info.run_id if found else ""


def _find_or_create(client: Any, tracking: TrackingConfig, name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """(run id, made now): the run named ``name`` set RUNNING again, or a new one with ``tags`` (the
    experiment made if missing)."""
    run_id = _find(client, tracking.experiment, name)
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id, False
    experiment_id = _experiment_id(client, tracking)
    return client.create_run(experiment_id, run_name=name, tags={RUN_NAME_TAG: name, **tags}).info.run_id, True


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
"""The tag MLflow 3's UI reads to tell a training experiment from a GenAI one: with it, an experiment opens on
its runs instead of the traces page."""


def _experiment_id(client: Any, tracking: TrackingConfig) -> str:
    """The experiment's id, made if missing with its artifacts next to the store; marked as an experiment of
    training runs (EXPERIMENT_KIND_TAG), an older one too unless someone chose its kind (the UI's own guesses
    end in "_inferred")."""
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        return client.create_experiment(tracking.experiment, artifact_location=artifact_location(tracking),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if experiment.tags.get(EXPERIMENT_KIND_TAG, "_inferred").endswith("_inferred"):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def artifact_location(tracking: TrackingConfig) -> str | None:
    """Where a new experiment's artifacts go: ``mlruns/<experiment>`` beside a SQLite store's file; None (the
    store's own choice: an `mlflow server`'s artifact root) otherwise. MLflow's default for a database store,
    ./mlruns of the process that makes the experiment, is a Ray worker's temp folder when a worker makes it."""
    if not tracking.uri.startswith("sqlite:///"):
        return None
    folder = os.path.dirname(os.path.abspath(tracking.uri[len("sqlite:///"):]))
    return os.path.join(folder, "mlruns", urllib.parse.quote(tracking.experiment, safe=""))


def _log_artifacts(client: Any, run_id: str, paths: list[str]) -> None:
    for path in paths:
        client.log_artifact(run_id, path)


def _log_params(client: Any, run_id: str, flat: dict[str, Any]) -> None:
    from mlflow.entities import Param

    params = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in sorted(flat.items())]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params[start:start + 100])


def _git_commit() -> str:
    """The commit of the code being run ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
