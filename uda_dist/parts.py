"""The parts a run builds from its RunConfig on each worker: data streams, the student, the method, its
auxiliary modules (uda_dist.auxiliary), the engine.

``Parts(cfg, device)`` is what the loop trains (uda_dist.loop), the checkpoint format saves
(uda_dist.checkpoint) and evaluation reads (uda_dist.evaluation). ``Stream`` is an endless stream of batches
that knows its position, so a resumed run continues the same data. Before anything is built,
``check_batch_memory`` checks that a step's input batch fits in the memory the worker has.
"""
from __future__ import annotations

import collections
import random
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from uda_dist.auxiliary import Auxiliaries, check_one_optimizer_each
from uda_dist.data.sources import check_day_pairs, check_pseudo_label_target, load_manifest
from uda_dist.data.webdataset import eval_loader, target_loader_config, train_loader
from uda_dist.dist import collectives
from uda_dist.dist.engine import build_engine
from uda_dist.errors import RunError
from uda_dist.model.segmentor import build_segmentor

if TYPE_CHECKING:
    from uda_dist.config import RunConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Stream:
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


def to_device(batch: dict[str, Any] | None, device: torch.device) -> dict[str, Any] | None:
    if batch is None:
        return None
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


GIB = 1024 ** 3


def check_batch_memory(cfg: RunConfig, device: torch.device) -> None:
    """A step's source batch (float32 images and int64 labels, times the batches the DataLoader workers keep
    in flight) must fit in the memory this worker has, or the run stops here with a RunError naming
    data.loader.batch_size, before anything is allocated. This is a lower bound (the target batch and the
    model's activations take many times more): the first step prints its start and peak memory."""
    loader = cfg.data.loader
    in_flight = 1 + loader.num_workers * 2  # the batch in use and the DataLoader's default prefetch of 2 each
    needed = loader.batch_size * loader.crop_size[0] * loader.crop_size[1] * (3 * 4 + 8) * in_flight
    available = available_memory(device)
    if needed > available:
        raise RunError(f"data.loader.batch_size={loader.batch_size} with {loader.crop_size[0]}x{loader.crop_size[1]} "
                       f"crops needs {needed / GIB:.1f} GiB for one step's source batch alone ({in_flight} in flight) "
                       f"and this worker has {available / GIB:.1f} GiB available"
                       f"{' on its GPU' if device.type == 'cuda' else ''}: lower "
                       f"data.loader.batch_size or data.loader.crop_size")


def available_memory(device: torch.device) -> int:
    import psutil

    host = psutil.virtual_memory().available
    return min(host, torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else host


def peak_memory(device: torch.device) -> str:
    """This process's peak memory so far: CUDA allocations on a GPU, else the resident set's high-water mark."""
    import resource

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / GIB:.2f} GiB on the GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB:.2f} GiB resident"


class Parts:
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
        self.reduce_timer = ReduceTimer(device) if cfg.train.time_stats_reduce else None
        self.method = cfg.method.build(student, seed=cfg.seed + 7919 * self.rank,
                                       reducer=self.reduce_timer or collectives.all_reduce_sum_,
                                       total_steps=cfg.train.iterations)
        self.grad_accum = cfg.engine.grad_accum
        self.samples_per_step = world * data.loader.batch_size * self.grad_accum
        self.auxiliaries = Auxiliaries(self.method.auxiliaries(), total_steps=cfg.train.iterations,
                                       grad_accum=self.grad_accum)
        student_groups = student.param_groups(lr=cfg.optim.lr, weight_decay=0.0, head_lr_mult=1.0)
        check_one_optimizer_each({"student": student, **self.auxiliaries.modules},
                                 {"student": [p for group in student_groups for p in group["params"]],
                                  **self.auxiliaries.parameter_groups()})
        self.engine = build_engine(student, cfg.engine, cfg.optim, total_steps=cfg.train.iterations,
                                   micro_batch=data.loader.batch_size, device=device)
        self.source = Stream(train_loader(source, cfg=data.loader, labeled=True, seed=cfg.seed, **shards),
                              self.bad_data)
        self.target = None
        self.target_split: Any = lambda: iter(())
        """This rank's share of the target train split as evaluation reads it (Method.start)."""
        if self.method.needs_target:
            target = load_manifest(data.target, data.synthetic)
            labeled = cfg.method.reads_target_labels
            if labeled:
                check_pseudo_label_target(target, data.target)
            if cfg.method.reads_day_pairs:
                check_day_pairs(target, data.target)
            self.target = Stream(train_loader(target, cfg=target_loader_config(data.loader), labeled=labeled,
                                               seed=cfg.seed + 1, day_pairs=cfg.method.reads_day_pairs, **shards),
                                 self.bad_data)
            self.target_split = lambda: eval_loader(target.urls(), cfg=data.loader, labeled=False, **shards)

    def start_method(self, device: torch.device) -> None:
        """Before the first step of a fresh run: the method's own preparation (DiGA's centroid pass)."""
        self.method.start(self.engine.module, self.target_split, device)


class ReduceTimer:
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
