"""The per-worker training loop: the cadence of a run (steps, logs, evaluations, checkpoints) and its result.

`train_loop(cfg)` is the function Ray Train's workers call (uda_dist.launch), and what a run without Ray
runs in one process. It builds its parts (uda_dist.parts: data streams, student, method, engine), runs
(after the method's own start on a fresh run: DiGA's centroid pass) cfg.train.iterations optimiser steps, each of engine.grad_accum micro-batches (uda_dist.step), with a
progress bar whose loss/speed are synced to the host only at log cadence, evaluates the student on the
target validation split (uda_dist.evaluation) every train.eval_every steps and at the end, hands resumable
state to its Checkpointer (the format is uda_dist.checkpoint's), and writes the final student weights and a
summary in the run's own folder, {output_dir}/{run name}. It prints the first step's start and, after it, its time and peak memory.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import sys
import time
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from tqdm import tqdm

from uda_dist.config import RunConfig, to_flat_dict
from uda_dist.data.schema import CLASSES
from uda_dist.dist import collectives
from uda_dist.errors import raise_if_stopped
from uda_dist.evaluation import evaluate, evaluation_record, pictures
from uda_dist.naming import output_folder, run_name
from uda_dist.parts import GIB, Parts, available_memory, check_batch_memory, peak_memory, resolve_device, to_device
from uda_dist.pseudo_labels import label_target
from uda_dist.redact import redact_values
from uda_dist.step import train_step
from uda_dist.tracking import NullTracker, open_tracker


@dataclasses.dataclass
class RunResult:
    name: str
    miou: float
    iou: list[float]
    confusion: list[list[int]]
    steps: int
    seconds: float
    weights: str
    evaluations: list[dict[str, Any]]
    losses: list[dict[str, float]]
    run_name: str = ""
    outputs: str = ""
    """The run's own folder (weights, summary, pictures)."""
    checkpoints: str = ""
    """Where its Ray checkpoints are ("" in one process without Ray)."""
    mlflow_run_id: str = ""
    labels: str = ""
    """The manifest of the pseudo-labels it wrote of the target train split ("" = none; label.enabled)."""
    class_mious: dict[str, float] = dataclasses.field(default_factory=dict)
    """mIoU over the class subsets of eval.class_sets: {"miou16": ..., "miou13": ...} (SYNTHIA sources)."""

    def summary(self, cfg: RunConfig) -> dict[str, Any]:
        """What summary.json holds: the resolved config (credentials masked), the classes and this result."""
        return {"config": redact_values(to_flat_dict(cfg)), "classes": list(CLASSES), **dataclasses.asdict(self)}


class Checkpointer(Protocol):
    """Where resumable state and progress go (the launcher's Ray checkpoints and reports); the loop decides
    when. Every rank calls save and report at the same steps. ``metrics`` are {"step", and after an
    evaluation "val.miou"}: what a sweep's scheduler reads."""

    def restore(self, parts: Parts) -> dict[str, Any] | None: ...

    def save(self, parts: Parts, step: int, history: dict[str, Any], final: RunResult | None, *,
             metrics: dict[str, float]) -> None: ...

    def report(self, metrics: dict[str, float]) -> None: ...


def train_loop(cfg: RunConfig, *, checkpointer: Checkpointer | None = None) -> RunResult:
    """Train one run on this worker (or alone) and return its final target metrics. With a checkpointer
    (the launcher's), the run starts from its latest checkpoint and saves one every
    cfg.train.checkpoint_every steps and at the end."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if not cfg.launch.run_name:  # called directly, not through the launcher: a fresh name, its own folder
        cfg = dataclasses.replace(cfg, launch=dataclasses.replace(cfg.launch, run_name=run_name(cfg)))
    device = resolve_device(cfg.train.device)
    check_batch_memory(cfg, device)
    parts = Parts(cfg, device)
    restored = checkpointer.restore(parts) if checkpointer else None
    if restored is None:
        parts.start_method(device)
    first = restored["step"] if restored else 0
    history = restored["history"] if restored else {"evaluations": [], "losses": []}
    out_dir = output_folder(cfg)
    os.makedirs(out_dir, exist_ok=True)
    tracker = open_tracker(cfg, rank=parts.rank, name=cfg.launch.run_name, params=to_flat_dict(cfg))
    location = getattr(checkpointer, "location", None)
    try:
        result = _train_and_evaluate(cfg, parts, device, first, history, checkpointer, tracker, out_dir)
        result.checkpoints, result.mlflow_run_id = location or "", tracker.run_id
        if parts.rank == 0:
            _write_summary(out_dir, cfg, result)
        artifacts = pictures(parts, np.asarray(result.confusion), out_dir, device, cfg.eval) if tracker.records else []
        tracker.finish(artifacts=[os.path.join(out_dir, "summary.json"), *artifacts], checkpoint=location)
        if checkpointer:
            # Last: under a sweep the scheduler may end the trial's processes as soon as it has this report.
            checkpointer.save(parts, cfg.train.iterations, history, result,
                              metrics=_progress(cfg.train.iterations, history["evaluations"][-1]))
    except BaseException as e:
        with contextlib.suppress(Exception):  # the run's own error is the one to raise (the driver marks it too)
            tracker.finish(artifacts=[], checkpoint=None,
                           status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    return result


def _train_and_evaluate(cfg: RunConfig, parts: Parts, device: torch.device, first: int, history: dict[str, Any],
                        checkpointer: Checkpointer | None, tracker: NullTracker, out_dir: str) -> RunResult:
    start = time.perf_counter()
    _train(cfg, parts, device, first, history, checkpointer, tracker, out_dir)
    seconds = time.perf_counter() - start
    confusion_KK = evaluate(parts.engine.module, parts.val, cfg.eval, device=device,
                            max_batches=cfg.train.eval_max_batches)
    history["evaluations"] = [e for e in history["evaluations"] if e["step"] < cfg.train.iterations]  # a rerun
    final = evaluation_record(cfg.train.iterations, confusion_KK, cfg.eval.class_sets)
    history["evaluations"].append(final)
    tracker.log_evaluation(final, CLASSES)
    weights = os.path.join(out_dir, "student.pt")
    result = RunResult(name=cfg.name, miou=final["miou"], iou=final["iou"],
                       confusion=confusion_KK.tolist(), steps=cfg.train.iterations, seconds=seconds,
                       weights=weights, evaluations=history["evaluations"], losses=history["losses"],
                       run_name=cfg.launch.run_name, outputs=os.path.abspath(out_dir),
                       class_mious={f"miou{n}": final[f"miou{n}"] for n in cfg.eval.class_sets})
    if parts.rank == 0:  # the student is identical on every rank
        torch.save(parts.engine.module.state_dict(), weights)
    if cfg.label.enabled:  # before the summary and the final checkpoint: their presence means labelled
        result.labels = label_target(parts.engine.module, cfg, device)
    return result


def _train(cfg: RunConfig, parts: Parts, device: torch.device, first: int, history: dict[str, Any],
           checkpointer: Checkpointer | None, tracker: NullTracker, out_dir: str) -> None:
    # a terminal redraws one line; elsewhere (Ray forwards a worker's output line by line) every update is a line
    interval = 1.0 if sys.stderr.isatty() else 30.0
    bar = tqdm(range(first, cfg.train.iterations), desc=cfg.name, unit="it", dynamic_ncols=True,
               mininterval=interval, maxinterval=max(10.0, interval), disable=parts.rank != 0, initial=first,
               total=cfg.train.iterations)
    window = _Window(parts, first)
    for step in bar:
        raise_if_stopped()
        if step == first and parts.rank == 0:
            bar.write(f"[{cfg.name}] step {step + 1}: batch {cfg.data.loader.batch_size} per worker "
                      f"({parts.samples_per_step} in all); memory {peak_memory(device)} before it, "
                      f"{available_memory(device) / GIB:.1f} GiB available")
            started = time.perf_counter()
        logged = _optimizer_step(parts, device, step)
        done = step + 1
        if step == first and parts.rank == 0:
            bar.write(f"[{cfg.name}] step {done} took {time.perf_counter() - started:.1f} s; peak memory "
                      f"{peak_memory(device)}")
        if done % cfg.train.log_every == 0 or done == cfg.train.iterations:
            history["losses"].append(_log(bar, step, logged, parts.engine.lr()) | window.close(done)
                                     | _bad_data_counts(parts.bad_data, device))
            tracker.log_history(history["losses"][-1])
        evaluation = None
        if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < cfg.train.iterations:
            with window.paused():
                confusion_KK = evaluate(parts.engine.module, parts.val, cfg.eval, device=device,
                                        max_batches=cfg.train.eval_max_batches, bad_data=parts.bad_data)
            evaluation = evaluation_record(done, confusion_KK, cfg.eval.class_sets)
            history["evaluations"].append(evaluation)
            tracker.log_evaluation(evaluation, CLASSES)
            if tracker.records:  # the plots of the latest evaluation, also for a run a sweep stops early
                with window.paused():
                    tracker.log_artifacts(pictures(parts, confusion_KK, out_dir, device, cfg.eval))
            if parts.rank == 0:
                bar.write(f"[{cfg.name}] step {done}: target mIoU {100 * evaluation['miou']:.2f}")
        if checkpointer:
            with window.paused():
                _checkpoint_or_report(cfg, parts, checkpointer, done, history, evaluation)
    bar.close()


def _optimizer_step(parts: Parts, device: torch.device, step: int) -> dict[str, torch.Tensor]:
    """One optimiser step: engine.grad_accum micro-batches, each a train_step; the logged values averaged."""
    sums: dict[str, torch.Tensor] = {}
    for micro in range(parts.grad_accum):
        source = to_device(next(parts.source), device)
        target = to_device(next(parts.target), device) if parts.target is not None else None
        logged, stepped = train_step(parts.engine, parts.method, source, target, step, parts.auxiliaries)
        if stepped != (micro == parts.grad_accum - 1):
            raise RuntimeError(f"the engine stepped at micro-batch {micro + 1} of {parts.grad_accum}")
        sums = {k: sums[k] + v if k in sums else v for k, v in logged.items()}
    return {k: v / parts.grad_accum for k, v in sums.items()} if parts.grad_accum > 1 else sums


def _checkpoint_or_report(cfg: RunConfig, parts: Parts, checkpointer: Checkpointer, done: int,
                          history: dict[str, Any], evaluation: dict[str, Any] | None) -> None:
    """A checkpoint every cfg.train.checkpoint_every steps (before the last); an evaluation's mIoU reported
    with it, or alone."""
    metrics = _progress(done, evaluation)
    if cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0 and done < cfg.train.iterations:
        checkpointer.save(parts, done, history, None, metrics=metrics)
    elif evaluation is not None:
        checkpointer.report(metrics)


def _progress(step: int, evaluation: dict[str, Any] | None) -> dict[str, float]:
    return {"step": step, **({"val.miou": evaluation["miou"]} if evaluation is not None else {})}


class _Window:
    """Training speed over the steps between two logs: global samples/s and, when timed, the share of the
    wall time spent in the class-statistics reduce. Read after the log's host sync, so the steps are done;
    evaluation and checkpoint time (``paused``) are left out."""

    def __init__(self, parts: Parts, first: int):
        self.parts, self.first = parts, first
        self.start, self.paused_s = time.perf_counter(), 0.0

    def close(self, done: int) -> dict[str, float]:
        now = time.perf_counter()
        seconds = now - self.start - self.paused_s
        speed = {"samples_per_s": (done - self.first) * self.parts.samples_per_step / seconds}
        if self.parts.reduce_timer is not None:
            speed["time.stats_reduce_share"] = self.parts.reduce_timer.take() / seconds
        self.first, self.start, self.paused_s = done, now, 0.0
        return speed

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - start


def _log(bar: tqdm, step: int, logged: dict[str, torch.Tensor], lr: float) -> dict[str, float]:
    """The one host sync of the logged values, at log cadence."""
    stacked = collectives.mean_for_log(torch.stack([v.float() for v in logged.values()]))
    values = {name: float(v) for name, v in zip(logged, stacked.tolist())}
    bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)  # drawn at the bar's own pace
    return {"step": step + 1, "lr": lr, **values}


def _bad_data_counts(bad_data: collections.Counter, device: torch.device) -> dict[str, float]:
    """Data skipped under bad_data="skip" since the last log, summed over ranks (at log cadence)."""
    keys = ("skipped_samples", "broken_shards")
    counts = collectives.all_reduce_sum_(torch.tensor([float(bad_data[k]) for k in keys], dtype=torch.float64,
                                                         device=device))
    bad_data.clear()
    return {f"data.{k}": float(v) for k, v in zip(keys, counts.tolist())}


def _write_summary(out_dir: str, cfg: RunConfig, result: RunResult) -> None:
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(result.summary(cfg), f, indent=1, default=str)
