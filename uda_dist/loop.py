"""The per-worker training loop: build the parts from a RunConfig, train, evaluate, save.

`train_loop(cfg)` is the function Ray Train's workers call (uda_dist.launch), and what a run without Ray
runs in one process. It builds its own parts (data streams, student, method, engine), runs
cfg.train.iterations steps with a progress bar whose loss/speed are synced to the host only at log cadence,
evaluates the student on the target validation split (confusion matrix on the device, read once per
evaluation), and writes the final student weights and a summary in the run's own folder,
{output_dir}/{run name}. Before the first step it checks that a step's input batch fits in the memory it
has, and it prints the first step's start and, after it, its time and peak memory.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from tqdm import tqdm

from uda_dist import report
from uda_dist.config import RunConfig, to_flat_dict
from uda_dist.data.schema import CLASSES, IGNORE_INDEX, NUM_CLASSES
from uda_dist.data.sources import load_manifest
from uda_dist.data.webdataset import eval_loader, target_loader_config, train_loader
from uda_dist.dist import collectives
from uda_dist.dist.engine import build_engine
from uda_dist.errors import RunError, raise_if_stopped
from uda_dist.launch import output_folder, run_name
from uda_dist.metrics import confusion_matrix, iou_per_class, mean_iou
from uda_dist.model.segmentor import build_segmentor
from uda_dist.redact import redact_values
from uda_dist.safe_load import load_tensors
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

    def summary(self, cfg: RunConfig) -> dict[str, Any]:
        """What summary.json holds: the resolved config (credentials masked), the classes and this result."""
        return {"config": redact_values(to_flat_dict(cfg)), "classes": list(CLASSES), **dataclasses.asdict(self)}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Stream:
    """Endless batches from an epoch-sized TrainLoader (each pass is a fresh epoch), with its position
    (epoch, batches taken in it) so that a resumed run continues the same stream."""

    def __init__(self, loader: Any, bad_data: collections.Counter):
        self.loader, self.bad_data = loader, bad_data
        self.position = 0
        self._it: Iterator[dict[str, Any]] | None = None

    def __next__(self) -> dict[str, Any]:
        for _ in range(2):
            if self._it is None:
                self._it, self.position = iter(self.loader), 0
            batch = next(self._it, None)
            if batch is not None:
                self.position += 1
                self.bad_data.update(batch.pop("bad_data", {}))
                return batch
            self._it = None  # the epoch ended: the next pass is a new epoch
        raise RuntimeError("the training stream yielded no batch in a whole epoch")

    def state(self) -> dict[str, int]:
        return {"epoch": self.loader.epoch, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        """Re-enter epoch state["epoch"] and skip the batches already taken (decoded and augmented again, so
        the augmentation randomness is where it was)."""
        self.loader.dataset.epoch = state["epoch"] - 1
        self._it, self.position = iter(self.loader), 0
        counted = collections.Counter(self.bad_data)
        for _ in range(state["position"]):
            next(self)
        self.bad_data.clear()  # the replayed batches' skips were counted before the restart
        self.bad_data.update(counted)


def _to_device(batch: dict[str, Any] | None, device: torch.device) -> dict[str, Any] | None:
    if batch is None:
        return None
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, *, device: torch.device, max_batches: int = 0,
             bad_data: collections.Counter | None = None) -> np.ndarray:
    """Confusion matrix of the model's predictions over the loader (whole-image inference); the loader's
    bad-data counts are added to ``bad_data``."""
    was_training = model.training
    model.eval()
    confusion_KK = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64, device=device)
    for index, batch in enumerate(loader):
        if max_batches and index >= max_batches:
            break
        counts = batch.pop("bad_data", {})
        if bad_data is not None:
            bad_data.update(counts)
        batch = _to_device(batch, device)
        pred_BHW = model.segment(batch["image"]).argmax(dim=1)
        label_BHW = batch["label"].masked_fill(~batch["valid"].view(-1, 1, 1), IGNORE_INDEX)  # padding items
        confusion_KK += confusion_matrix(pred_BHW, label_BHW, num_classes=NUM_CLASSES)
    model.train(was_training)
    return collectives.all_reduce_sum_(confusion_KK).cpu().numpy()  # every rank's share, reduced once


GIB = 1024 ** 3


def check_batch_memory(cfg: RunConfig, device: torch.device) -> None:
    """A step's source batch (float32 images and int64 labels, times the batches the DataLoader workers keep
    in flight) must fit in the memory this worker has, or the run stops here with a RunError naming
    data.loader.batch_size, before anything is allocated. This is a lower bound (the target batch and the
    model's activations take many times more): the first step prints its start and peak memory."""
    loader = cfg.data.loader
    in_flight = 1 + loader.num_workers * 2  # the batch in use and the DataLoader's default prefetch of 2 each
    needed = loader.batch_size * loader.crop_size[0] * loader.crop_size[1] * (3 * 4 + 8) * in_flight
    available = _available_memory(device)
    if needed > available:
        raise RunError(f"data.loader.batch_size={loader.batch_size} with {loader.crop_size[0]}x{loader.crop_size[1]} "
                       f"crops needs {needed / GIB:.1f} GiB for one step's source batch alone ({in_flight} in flight) "
                       f"and this worker has {available / GIB:.1f} GiB available"
                       f"{' on its GPU' if device.type == 'cuda' else ''}: lower "
                       f"data.loader.batch_size or data.loader.crop_size")


def _available_memory(device: torch.device) -> int:
    import psutil

    host = psutil.virtual_memory().available
    return min(host, torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else host


def _peak_memory(device: torch.device) -> str:
    """This process's peak memory so far: CUDA allocations on a GPU, else the resident set's high-water mark."""
    import resource

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / GIB:.2f} GiB on the GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB:.2f} GiB resident"


class _Parts:
    """Everything a run builds from its config."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        data = cfg.data
        self.rank, world = collectives.rank_and_world_size()
        shards = {"rank": self.rank, "world_size": world}
        source = load_manifest(data.source, data.synthetic)
        self.bad_data: collections.Counter = collections.Counter()  # skipped data since the last log
        self.val = eval_loader(load_manifest(data.val, data.synthetic).urls(), cfg=data.loader, **shards)
        seed_everything(cfg.seed)  # the same initial student on every rank
        student = build_segmentor(cfg.model).to(device)
        # rank 0 keeps the single-process seed; the other ranks draw their own mixing/cropping randomness
        self.reduce_timer = _ReduceTimer(device) if cfg.train.time_stats_reduce else None
        self.method = cfg.method.build(student, seed=cfg.seed + 7919 * self.rank,
                                       reducer=self.reduce_timer or collectives.all_reduce_sum_)
        self.samples_per_step = world * data.loader.batch_size
        self.engine = build_engine(student, cfg.engine, cfg.optim, total_steps=cfg.train.iterations,
                                   micro_batch=data.loader.batch_size, device=device)
        self.source = _Stream(train_loader(source, cfg=data.loader, labeled=True, seed=cfg.seed, **shards),
                              self.bad_data)
        self.target = None
        if self.method.needs_target:
            target = load_manifest(data.target, data.synthetic)
            self.target = _Stream(train_loader(target, cfg=target_loader_config(data.loader), labeled=False,
                                               seed=cfg.seed + 1, **shards), self.bad_data)


class _ReduceTimer:
    """collectives.all_reduce_sum_ with the wall time spent in it (waiting for the slowest rank included)."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds = 0.0

    def __call__(self, tensor_N: torch.Tensor) -> torch.Tensor:
        self.sync()
        start = time.perf_counter()
        collectives.all_reduce_sum_(tensor_N)
        self.sync()
        self.seconds += time.perf_counter() - start
        return tensor_N

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class Checkpointer(Protocol):
    """Where resumable state and progress go (the launcher's Ray checkpoints and reports); the loop decides
    when. Every rank calls save and report at the same steps. ``metrics`` are {"step", and after an
    evaluation "val.miou"}: what a sweep's scheduler reads."""

    def restore(self, parts: _Parts) -> dict[str, Any] | None: ...

    def save(self, parts: _Parts, step: int, history: dict[str, Any], final: RunResult | None, *,
             metrics: dict[str, float]) -> None: ...

    def report(self, metrics: dict[str, float]) -> None: ...


ENGINE_TAG = "state"


def save_state(parts: _Parts, directory: str, step: int, history: dict[str, Any]) -> None:
    """Every rank: its engine state (DeepSpeed: model, optimizer shard, schedule) under directory/engine and
    its own RNG states and data-stream positions in rank{r}.pt; rank 0 adds run.pt: the step, the method
    state (EMA teacher, class statistics, memory bank, mixing generator) and the logged history."""
    parts.engine.save(os.path.join(directory, "engine"), tag=ENGINE_TAG)
    streams = {"source": parts.source.state(), "target": parts.target.state() if parts.target else None}
    rng = {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()}
    method_state = parts.method.state_dict()
    own = {key: method_state[key] for key in parts.method.per_rank_state}
    torch.save({"streams": streams, "rng": rng, "method": own}, os.path.join(directory, f"rank{parts.rank}.pt"))
    if parts.rank == 0:
        torch.save({"step": step, "method": method_state, "history": history}, os.path.join(directory, "run.pt"))


def load_state(parts: _Parts, directory: str) -> dict[str, Any]:
    """Inverse of save_state; returns {"step", "history"}. Every rank reads rank 0's run.pt (the method state
    is identical on every rank, except the keys in method.per_rank_state, such as the mixing generator, which
    each rank restores from its own file). Every file is read with weights_only=True (safe_load): a file
    that holds anything but tensors and plain values is refused before anything of it runs."""
    run = load_tensors(os.path.join(directory, "run.pt"))
    mine = load_tensors(os.path.join(directory, f"rank{parts.rank}.pt"))
    parts.engine.load(os.path.join(directory, "engine"), tag=ENGINE_TAG)
    parts.method.load_state_dict({**run["method"], **mine["method"]})
    parts.source.restore(mine["streams"]["source"])
    if parts.target is not None:
        parts.target.restore(mine["streams"]["target"])
    torch.set_rng_state(mine["rng"]["torch"])
    np.random.set_state(_numpy_rng_from(mine["rng"]["numpy"]))
    random.setstate(mine["rng"]["python"])
    return {"step": run["step"], "history": run["history"]}


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as a tensor and plain values (what weights_only=True loads)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_rng_from(state: dict[str, Any]) -> tuple:
    return (state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
            state["cached_gaussian"])


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
    parts = _Parts(cfg, device)
    restored = checkpointer.restore(parts) if checkpointer else None
    first = restored["step"] if restored else 0
    history = restored["history"] if restored else {"evaluations": [], "losses": []}
    out_dir = output_folder(cfg)
    os.makedirs(out_dir, exist_ok=True)
    tracker = open_tracker(cfg, rank=parts.rank, name=cfg.launch.run_name)
    location = getattr(checkpointer, "location", None)
    try:
        result = _train_and_evaluate(cfg, parts, device, first, history, checkpointer, tracker, out_dir)
        result.checkpoints, result.mlflow_run_id = location or "", tracker.run_id
        if parts.rank == 0:
            _write_summary(out_dir, cfg, result)
        artifacts = _pictures(parts, np.asarray(result.confusion), out_dir, device) if tracker.records else []
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


def _train_and_evaluate(cfg: RunConfig, parts: _Parts, device: torch.device, first: int, history: dict[str, Any],
                        checkpointer: Checkpointer | None, tracker: NullTracker, out_dir: str) -> RunResult:
    start = time.perf_counter()
    _train(cfg, parts, device, first, history, checkpointer, tracker, out_dir)
    seconds = time.perf_counter() - start
    confusion_KK = evaluate(parts.engine.module, parts.val, device=device, max_batches=cfg.train.eval_max_batches)
    history["evaluations"] = [e for e in history["evaluations"] if e["step"] < cfg.train.iterations]  # a rerun
    history["evaluations"].append(_evaluation_record(cfg.train.iterations, confusion_KK))
    tracker.log_evaluation(history["evaluations"][-1], CLASSES)
    weights = os.path.join(out_dir, "student.pt")
    result = RunResult(name=cfg.name, miou=mean_iou(confusion_KK), iou=iou_per_class(confusion_KK).tolist(),
                       confusion=confusion_KK.tolist(), steps=cfg.train.iterations, seconds=seconds,
                       weights=weights, evaluations=history["evaluations"], losses=history["losses"],
                       run_name=cfg.launch.run_name, outputs=os.path.abspath(out_dir))
    if parts.rank == 0:  # the student is identical on every rank
        torch.save(parts.engine.module.state_dict(), weights)
    return result


def _train(cfg: RunConfig, parts: _Parts, device: torch.device, first: int, history: dict[str, Any],
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
                      f"({parts.samples_per_step} in all); memory {_peak_memory(device)} before it, "
                      f"{_available_memory(device) / GIB:.1f} GiB available")
            started = time.perf_counter()
        source = _to_device(next(parts.source), device)
        target = _to_device(next(parts.target), device) if parts.target is not None else None
        logged = train_step(parts.engine, parts.method, source, target, step)
        done = step + 1
        if step == first and parts.rank == 0:
            bar.write(f"[{cfg.name}] step {done} took {time.perf_counter() - started:.1f} s; peak memory "
                      f"{_peak_memory(device)}")
        if done % cfg.train.log_every == 0 or done == cfg.train.iterations:
            history["losses"].append(_log(bar, step, logged, parts.engine.lr()) | window.close(done)
                                     | _bad_data_counts(parts.bad_data, device))
            tracker.log_history(history["losses"][-1])
        evaluation = None
        if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < cfg.train.iterations:
            with window.paused():
                confusion_KK = evaluate(parts.engine.module, parts.val, device=device,
                                        max_batches=cfg.train.eval_max_batches, bad_data=parts.bad_data)
            evaluation = _evaluation_record(done, confusion_KK)
            history["evaluations"].append(evaluation)
            tracker.log_evaluation(evaluation, CLASSES)
            if tracker.records:  # the plots of the latest evaluation, also for a run a sweep stops early
                with window.paused():
                    tracker.log_artifacts(_pictures(parts, confusion_KK, out_dir, device))
            if parts.rank == 0:
                bar.write(f"[{cfg.name}] step {done}: target mIoU {100 * evaluation['miou']:.2f}")
        if checkpointer:
            with window.paused():
                _checkpoint_or_report(cfg, parts, checkpointer, done, history, evaluation)
    bar.close()


def _checkpoint_or_report(cfg: RunConfig, parts: _Parts, checkpointer: Checkpointer, done: int,
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

    def __init__(self, parts: _Parts, first: int):
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


@torch.no_grad()
def _pictures(parts: _Parts, confusion_KK: np.ndarray, out_dir: str, device: torch.device) -> list[str]:
    """The tracker's plots: confusion matrix, per-class IoU bars, and the first validation batch's predictions
    overlaid on the images (this rank's share of the split)."""
    batch = _to_device(next(iter(parts.val)), device)
    batch.pop("bad_data", None)
    model = parts.engine.module
    was_training = model.training
    pred_BHW = model.eval().segment(batch["image"]).argmax(dim=1)
    model.train(was_training)
    images_BHW3 = (batch["image"].permute(0, 2, 3, 1) * 255).round().byte().cpu().numpy()
    return [report.save_confusion_plot(os.path.join(out_dir, "confusion.png"), confusion_KK),
            report.save_iou_bars(os.path.join(out_dir, "iou.png"), iou_per_class(confusion_KK).tolist()),
            report.save_overlays(os.path.join(out_dir, "predictions.png"), images_BHW3,
                                 batch["label"].byte().cpu().numpy(), pred_BHW.byte().cpu().numpy())]


def _bad_data_counts(bad_data: collections.Counter, device: torch.device) -> dict[str, float]:
    """Data skipped under bad_data="skip" since the last log, summed over ranks (at log cadence)."""
    keys = ("skipped_samples", "broken_shards")
    counts = collectives.all_reduce_sum_(torch.tensor([float(bad_data[k]) for k in keys], dtype=torch.float64,
                                                         device=device))
    bad_data.clear()
    return {f"data.{k}": float(v) for k, v in zip(keys, counts.tolist())}


def _evaluation_record(step: int, confusion_KK: np.ndarray) -> dict[str, Any]:
    return {"step": step, "miou": mean_iou(confusion_KK), "iou": iou_per_class(confusion_KK).tolist()}


def _write_summary(out_dir: str, cfg: RunConfig, result: RunResult) -> None:
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(result.summary(cfg), f, indent=1, default=str)
