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
summary.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

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

    def __post_init__(self) -> None:
        if self.workers < 0 or self.cpus_per_worker < 1 or self.max_failures < 0 or self.keep_checkpoints < 1:
            raise ValueError("launch: workers >= 0, cpus_per_worker >= 1, max_failures >= 0 and "
                             "keep_checkpoints >= 1 are required")


def launch(cfg: Any, *, callbacks: tuple[Any, ...] = ()) -> dict[str, Any]:
    """Train cfg on cfg.launch.workers Ray Train workers; return the run's summary (rank 0's). ``callbacks``
    are Ray Train callbacks of the run (a sweep's trial passes Tune's TuneReportCallback, which forwards
    every report, {"step", "val.miou"} at each evaluation, to Tune)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    lc = cfg.launch
    if lc.workers < 1:
        raise ValueError("launch() needs launch.workers >= 1")
    connect()
    prepare_data(cfg)
    from uda_dist.tracking import resolve

    threads = cfg.train.threads or lc.cpus_per_worker
    storage = lc.storage_path or os.path.abspath(os.path.join(cfg.output_dir, "ray"))
    name = run_name(cfg)  # decided once here: the workers' MLflow run is found again by it
    worker_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads),
                                     launch=dataclasses.replace(lc, run_name=name, storage_path=storage),
                                     tracking=resolve(cfg.tracking))
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": worker_cfg},
        scaling_config=ScalingConfig(num_workers=lc.workers, use_gpu=lc.use_gpu,
                                     resources_per_worker={"CPU": lc.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if lc.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=lc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=lc.keep_checkpoints),
                             callbacks=list(callbacks)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.name!r} reported no checkpoint")
    with result.checkpoint.as_directory() as directory:
        with open(os.path.join(directory, "summary.json")) as f:
            summary = json.load(f)
        _copy_results(directory, os.path.join(cfg.output_dir, cfg.name))
    return summary


def connect(**init_kwargs: Any) -> None:
    """Join the Ray cluster named by RAY_ADDRESS (what `ray job submit` sets), else start a local Ray
    (``init_kwargs`` go to ray.init then); nothing when Ray is already initialised (a Tune trial)."""
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
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    ray.init(runtime_env={"env_vars": env}, **init_kwargs)


def train_iou(cfg: Any) -> list[float]:
    """Per-class target IoU of cfg, trained on cfg.launch.workers Ray Train workers, or in this process when
    that is 0."""
    if cfg.launch.workers:
        return launch(cfg)["iou"]
    from uda_dist.loop import train_loop
    return train_loop(cfg).iou


def run_name(cfg: Any) -> str:
    """launch.run_name, else the `ray job submit` submission id, else a fresh {name}-{date-time}."""
    if cfg.launch.run_name:
        return cfg.launch.run_name
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    submission_id = job.get("metadata", {}).get("job_submission_id")
    if submission_id:
        return submission_id
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _copy_results(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for name in RESULT_FILES:
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def prepare_data(cfg: Any) -> None:
    """Read every manifest once on the driver: a clear error before any worker starts, and the synthetic
    benchmark generated once here instead of by several workers at the same time on this machine."""
    from uda_dist.data.sources import load_manifest

    for location in (cfg.data.source, cfg.data.target, cfg.data.val):
        load_manifest(location, cfg.data.synthetic)


def _worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the per-worker loop with Ray checkpoints."""
    from uda_dist.loop import train_loop

    train_loop(config["cfg"], checkpointer=_RayCheckpointer(config["cfg"]))


class _RayCheckpointer:
    """Resumable state as Ray checkpoints: every rank writes its part into a local temporary directory and
    reports it (Ray merges the ranks' directories into one checkpoint in storage); a run restarted after a
    failure, or relaunched under the same name, starts from ray.train.get_checkpoint(). The final checkpoint
    also carries the run's summary.json and student.pt, which launch() returns and copies out."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.location = f"{cfg.launch.storage_path.rstrip('/')}/{cfg.launch.run_name}"  # where Ray keeps them

    def restore(self, parts: Any) -> dict[str, Any] | None:
        import ray.train

        from uda_dist.loop import load_state

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_state(parts, directory)

    def save(self, parts: Any, step: int, history: dict[str, Any], final: Any, *,
             metrics: dict[str, float]) -> None:
        import ray.train

        from uda_dist.loop import save_state

        with tempfile.TemporaryDirectory() as directory:
            save_state(parts, directory, step, history)
            if final is not None and parts.rank == 0:
                _copy_results(os.path.join(self.cfg.output_dir, self.cfg.name), directory)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=f"step_{step:08d}")

    def report(self, metrics: dict[str, float]) -> None:
        import ray.train

        ray.train.report(metrics)
