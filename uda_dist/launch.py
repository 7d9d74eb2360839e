"""The only Ray Train code: run the per-worker loop (uda_dist.loop.train_loop) on N Ray Train workers.

Ray 2.60 runs Ray Train V2. ``launch(cfg)`` builds a TorchTrainer over ``_worker`` with
- ScalingConfig: ``launch.workers`` workers, GPU or not, ``launch.cpus_per_worker`` CPUs each; the
  TorchConfig backend is gloo on CPU and nccl on GPU (Ray creates the process group before the loop runs;
  DeepSpeed reuses it);
- ray.train.RunConfig: the run's stable name (``run_name``: ``launch.run_name``, or the submission id of
  the ``ray job submit`` job; a relaunch with the same name resumes from its latest checkpoint),
  ``launch.storage_path`` (a local directory or s3://...; default
  {output_dir}/ray), FailureConfig(max_failures) and CheckpointConfig(num_to_keep).
It connects to the cluster named by RAY_ADDRESS (what ``ray job submit`` sets) and starts a local Ray
otherwise. The workers report {"step", "val.miou"} at every evaluation (with a checkpoint when one is due);
the final report's checkpoint also holds the run's summary.json and student.pt; ``launch`` returns the
summary and copies those files to the run's own folder, {output_dir}/{run name}.

Before any worker starts, ``prepare`` checks on the driver what a run would otherwise find out late or
never (manifests, S3 endpoint, backbone name, weight files, tracking server; then ``check_resources``: the
workers must fit on the cluster's nodes) and raises a one-line RunError naming the setting. A run that ends
by an error, Ctrl-C or SIGTERM is marked FAILED or KILLED in MLflow by the driver too (``ended_on_error``),
since dead workers cannot say it, and a worker's own one-line error comes back out of Ray's wrapper.
``train(cfg)`` is the one entry for the command line and the demo: Ray workers, or this process when
launch.workers is 0.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Any, Iterator

from uda_dist.errors import RunError
from uda_dist.naming import join_location, output_folder, run_name

if TYPE_CHECKING:
    from uda_dist.config import RunConfig
    from uda_dist.loop import RunResult
    from uda_dist.parts import Parts

RESULT_FILES = ("summary.json", "student.pt")
"""What a finished run leaves in {output_dir}/{name} and in its final Ray checkpoint."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaunchConfig:
    """Where the per-worker loop runs: this process, or Ray Train workers."""

    workers: int = 0
    """Ray Train workers (each a DeepSpeed engine); 0 = train in this process, without Ray."""
    run_name: str = ""
    """Stable Ray run name: a relaunch with the same name resumes from its latest checkpoint. "" = the job's
    submission id under `ray job submit` (resubmit with the same --submission-id to resume), otherwise a fresh
    name, {name}-{date-time}. The CLI's --run-name sets it."""
    use_gpu: bool = False
    """One GPU per worker (nccl) instead of CPU workers (gloo)."""
    cpus_per_worker: int = 1
    """CPUs reserved per worker; also its torch thread count unless train.threads is set."""
    storage_path: str = ""
    """Ray run storage: a local directory or s3://bucket/prefix; "" = {output_dir}/ray."""
    max_failures: int = 0
    """Worker-group restarts Ray Train allows before the run fails (FailureConfig.max_failures)."""
    keep_checkpoints: int = 2
    """Ray checkpoints kept (CheckpointConfig.num_to_keep)."""
    step_offset: int = 0
    """Added to the step reported to Ray (and a sweep's scheduler): a staged run sets it to the steps of its
    earlier stages, so the reported step only grows across stages."""

    def __post_init__(self) -> None:
        if (self.workers < 0 or self.cpus_per_worker < 1 or self.max_failures < 0 or self.keep_checkpoints < 1
                or self.step_offset < 0):
            raise ValueError("launch: workers >= 0, cpus_per_worker >= 1, max_failures >= 0, "
                             "keep_checkpoints >= 1 and step_offset >= 0 are required")


def launch(cfg: RunConfig, *, callbacks: tuple[Any, ...] = ()) -> dict[str, Any]:
    """Train cfg on cfg.launch.workers Ray Train workers; return the run's summary (rank 0's). ``callbacks``
    are Ray Train callbacks of the run (a sweep's trial passes Tune's TuneReportCallback, which forwards
    every report, {"step", "val.miou"} at each evaluation, to Tune)."""
    if cfg.launch.workers < 1:
        raise ValueError("launch() needs launch.workers >= 1")
    cfg = prepare(cfg)
    connect()
    check_resources(cfg.launch)
    lc = cfg.launch
    threads = cfg.train.threads or lc.cpus_per_worker
    worker_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    trainer = _trainer(_worker, {"cfg": worker_cfg}, lc, name=lc.run_name, storage=lc.storage_path,
                       callbacks=callbacks)
    # A sweep's trial (Tune's callback given) is stopped by Tune through the trial's own thread, and the sweep
    # marks its stopped trials itself (ParentRun.mark_stopped); catching that stop here kept ASHA's stops from
    # taking effect (the sweep test's lr=1e-9 trial ran to the end in 3 of 5 runs).
    with contextlib.nullcontext() if callbacks else ended_on_error(cfg):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {lc.run_name!r} reported no checkpoint")
    with result.checkpoint.as_directory() as directory:
        with open(os.path.join(directory, "summary.json")) as f:
            summary = json.load(f)
        _copy_results(directory, output_folder(cfg))
    return summary


def _trainer(fn: Any, loop_config: dict[str, Any], lc: LaunchConfig, *, name: str, storage: str,
             callbacks: tuple[Any, ...] = ()) -> Any:
    """A TorchTrainer running ``fn(loop_config)`` on lc.workers workers (gloo on CPU, nccl on GPU)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        fn, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=lc.workers, use_gpu=lc.use_gpu,
                                     resources_per_worker={"CPU": lc.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if lc.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=lc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=lc.keep_checkpoints),
                             callbacks=list(callbacks)))


def run_on_workers(fn: Any, loop_config: dict[str, Any], lc: LaunchConfig, *, name: str, storage: str) -> None:
    """``fn(loop_config)`` on lc.workers Ray Train workers, each in the process group Ray makes (a job other
    than training: predictions for a server); a worker's one-line error comes back as that error."""
    connect()
    check_resources(lc)
    try:
        _trainer(fn, loop_config, lc, name=name, storage=storage).fit()
    except BaseException as e:
        user = _user_error(e)
        if user is e:
            raise
        raise user from None


def train(cfg: RunConfig) -> dict[str, Any]:
    """Train cfg on cfg.launch.workers Ray Train workers, or in this process when that is 0; return the
    run's summary (what summary.json holds)."""
    if cfg.launch.workers:
        return launch(cfg)
    from uda_dist.loop import train_loop

    cfg = prepare(cfg)
    with ended_on_error(cfg):
        # through JSON, as a Ray run's summary comes back from summary.json (tuples as lists)
        return json.loads(json.dumps(train_loop(cfg).summary(cfg), default=str))


def prepare(cfg: RunConfig) -> RunConfig:
    """What the driver settles before any worker starts, each with a one-line RunError naming the setting
    when it is wrong: every manifest (generating the synthetic benchmark once here instead of by several
    workers at once), the model (backbone name, weight files), the tracking store (reachable, experiment
    made next to it), and the run's name and storage. Returns cfg with those resolved."""
    from uda_dist.model.segmentor import check_model
    from uda_dist.tracking import prepare as prepare_tracking

    prepare_data(cfg)
    check_model(cfg.model)
    tracking = prepare_tracking(cfg.tracking)
    lc = cfg.launch
    output_dir = os.path.abspath(cfg.output_dir)  # a Ray worker's working directory is Ray's temp folder
    storage = lc.storage_path or os.path.join(output_dir, "ray")
    # decided once here: the workers' output folder and MLflow run are found again by it
    launch_cfg = dataclasses.replace(lc, run_name=run_name(cfg), storage_path=storage)
    label = cfg.label
    if label.enabled and not label.out:  # in the run storage: every node of a cluster reaches it
        label = dataclasses.replace(label, out=join_location(storage, f"{launch_cfg.run_name}.labels"))
    return dataclasses.replace(cfg, output_dir=output_dir, launch=launch_cfg, tracking=tracking, label=label)


@contextlib.contextmanager
def ended_on_error(cfg: RunConfig) -> Iterator[None]:
    """The run's MLflow run marked KILLED (Ctrl-C, SIGTERM) or FAILED (an error) when training does not end
    normally, even where its workers were stopped before they could say so (the tracker on rank 0 marks it
    when it can; this is the driver's word for the other cases)."""
    try:
        yield
    except BaseException as e:
        from uda_dist.tracking import end_run

        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception):
            end_run(cfg.tracking, cfg.launch.run_name, status=status)
        user = _user_error(e)
        if user is e:
            raise
        raise user from None


def _user_error(e: BaseException) -> BaseException:
    """A worker's own one-line error (errors.user_errors: bad input, a missing file, malformed data) out of
    Ray's wrapper, so the command line prints it as it would in one process; any other error as it is."""
    from uda_dist.errors import user_errors

    for failure in getattr(e, "worker_failures", {}).values():
        if isinstance(failure, user_errors()):
            return failure
    return e


def check_resources(lc: LaunchConfig) -> None:
    """launch.workers workers of launch.cpus_per_worker CPUs (and a GPU each with launch.use_gpu) must fit on
    the cluster's nodes: a RunError now instead of Ray retrying forever. An autoscaling cluster that can grow
    to fit them is waited for, with a line saying what is pending."""
    import ray
    from ray._private.state import state

    need = {"CPU": float(lc.cpus_per_worker), **({"GPU": 1.0} if lc.use_gpu else {})}
    wanted = ", ".join(f"{v:g} {k}" for k, v in need.items())
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    fit = sum(int(min(res.get(key, 0.0) // amount for key, amount in need.items())) for res in nodes)
    if fit >= lc.workers:
        return
    have = ", ".join(f"{sum(res.get(k, 0.0) for res in nodes):g} {k}" for k in need)
    ceiling = state.get_max_resources_from_cluster_config()  # set on clusters with an autoscaler
    if ceiling and all(ceiling.get(key, 0) >= amount * lc.workers for key, amount in need.items()):
        print(f"[launch] waiting for the cluster to grow: {lc.workers} workers of {wanted} each requested, "
              f"{fit} fit on its {len(nodes)} node(s) now ({have})", file=sys.stderr, flush=True)
        return
    raise RunError(f"launch.workers={lc.workers} workers of {wanted} each (launch.cpus_per_worker"
                   f"{', launch.use_gpu' if lc.use_gpu else ''}) cannot fit on this Ray cluster: its "
                   f"{len(nodes)} node(s) have {have} and hold {fit} such workers; lower launch.workers or "
                   f"launch.cpus_per_worker, or add nodes")


def connect(*, env: dict[str, str] | None = None, **init_kwargs: Any) -> None:
    """Join the Ray cluster named by RAY_ADDRESS (what `ray job submit` sets), else start a local Ray that
    listens on loopback only (``env``: more environment variables for its workers; ``init_kwargs`` go to
    ray.init); nothing when Ray is already initialised (a Tune trial)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        # An existing cluster: keep the job's runtime env. Passing one here would replace it, and the job's
        # working_dir (the driver's cwd) would be deleted.
        ray.init()
        return
    # A local Ray. The workers get this interpreter's bin directory first on PATH so that DeepSpeed's JIT ops
    # are built by the same ninja as in a shell with the venv, and its cache is not rebuilt (cluster/local.sh
    # does the same for the nodes it starts).
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), **(env or {})}
    _loopback_only()
    ray.init(runtime_env={"env_vars": env}, _node_ip_address="127.0.0.1", **init_kwargs)


def _loopback_only() -> None:
    """Ray binds its servers (GCS, raylet, object manager, workers, agents, metrics) to 127.0.0.1 only when
    the node IP is 127.0.0.1, and replaces that IP by the machine's routable one unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (on Linux that flag does nothing else for a one-node Ray). It is read
    when ray is imported, so the constant it set is changed too (the environment variable is for the
    processes Ray starts)."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _copy_results(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for name in RESULT_FILES:
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def prepare_data(cfg: RunConfig, *, target_labels_later: bool = False) -> None:
    """Read every manifest once on the driver: a clear error before any worker starts, and the synthetic
    benchmark generated once here instead of by several workers at the same time on this machine. A method
    that reads the target's (pseudo-)labels needs a pseudo-label target split, unless an earlier stage is to
    write it (``target_labels_later``)."""
    from uda_dist.data.sources import check_day_pairs, check_pseudo_label_target, load_manifest

    for key in ("source", "target", "val"):
        location = getattr(cfg.data, key)
        try:
            manifest = load_manifest(location, cfg.data.synthetic)
        except (RunError, FileNotFoundError) as e:
            raise RunError(f"data.{key}: {e}") from None
        if key == "target" and cfg.method.reads_target_labels and not target_labels_later:
            check_pseudo_label_target(manifest, location)
        if key == "target" and cfg.method.reads_day_pairs:
            check_day_pairs(manifest, location)


def _worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the per-worker loop with Ray checkpoints."""
    from uda_dist.loop import train_loop

    train_loop(config["cfg"], checkpointer=_RayCheckpointer(config["cfg"]))


class _RayCheckpointer:
    """Resumable state as Ray checkpoints: every rank writes its part into a local temporary directory and
    reports it (Ray merges the ranks' directories into one checkpoint in storage); a run restarted after a
    failure, or relaunched under the same name, starts from ray.train.get_checkpoint(). The final checkpoint
    also carries the run's summary.json and student.pt, which launch() returns and copies out."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.location = join_location(cfg.launch.storage_path, cfg.launch.run_name)  # where Ray keeps them

    def restore(self, parts: Parts) -> dict[str, Any] | None:
        import ray.train

        from uda_dist.checkpoint import load_state

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_state(parts, directory)

    def save(self, parts: Parts, step: int, history: dict[str, Any], final: RunResult | None, *,
             metrics: dict[str, float]) -> None:
        import ray.train

        from uda_dist.checkpoint import save_state

        with tempfile.TemporaryDirectory() as directory:
            save_state(parts, directory, step, history)
            if final is not None and parts.rank == 0:
                _copy_results(output_folder(self.cfg), directory)
            ray.train.report(self._offset(metrics), checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=checkpoint_name(step))

    def report(self, metrics: dict[str, float]) -> None:
        import ray.train

        ray.train.report(self._offset(metrics))

    def _offset(self, metrics: dict[str, float]) -> dict[str, float]:
        return {**metrics, "step": metrics["step"] + self.cfg.launch.step_offset}


def checkpoint_name(step: int) -> str:
    """The folder of the checkpoint at ``step`` in the run's storage, {storage_path}/{run name}/<this>."""
    return f"step_{step:08d}"
