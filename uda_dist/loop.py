"""The per-worker training loop: build the parts from a RunConfig, train, evaluate, save.

`train_loop(cfg)` is the function Ray Train's workers will call (distributed issue); today it runs in one
process. It builds its own parts (data streams, student, method, engine), runs cfg.train.iterations steps
with a progress bar whose loss/speed are synced to the host only at log cadence, evaluates the student on
the target validation split (confusion matrix on the device, read once per evaluation), and writes the final
student weights and a summary under {output_dir}/{name}.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from uda_dist.config import RunConfig, to_flat_dict
from uda_dist.data.schema import CLASSES, IGNORE_INDEX, NUM_CLASSES
from uda_dist.data.sources import load_manifest
from uda_dist.data.webdataset import eval_loader, target_loader_config, train_loader
from uda_dist.metrics import confusion_matrix, iou_per_class, mean_iou
from uda_dist.model.segmentor import build_segmentor
from uda_dist.dist import collectives
from uda_dist.dist.engine import build_engine
from uda_dist.step import train_step


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _batches(loader: Any) -> Iterator[dict[str, Any]]:
    """Endless batches from an epoch-sized loader (each pass over it is a fresh epoch)."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError("the training stream yielded no batch in a whole epoch")


def _to_device(batch: dict[str, Any] | None, device: torch.device) -> dict[str, Any] | None:
    if batch is None:
        return None
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, *, device: torch.device, max_batches: int = 0) -> np.ndarray:
    """Confusion matrix of the model's predictions over the loader (whole-image inference)."""
    was_training = model.training
    model.eval()
    confusion_KK = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64, device=device)
    for index, batch in enumerate(loader):
        if max_batches and index >= max_batches:
            break
        batch = _to_device(batch, device)
        pred_BHW = model.segment(batch["image"]).argmax(dim=1)
        label_BHW = batch["label"].masked_fill(~batch["valid"].view(-1, 1, 1), IGNORE_INDEX)  # padding items
        confusion_KK += confusion_matrix(pred_BHW, label_BHW, num_classes=NUM_CLASSES)
    model.train(was_training)
    return collectives.all_reduce_sum_(confusion_KK).cpu().numpy()  # every rank's share, reduced once


class _Parts:
    """Everything a run builds from its config."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        data = cfg.data
        self.rank, world = collectives.rank_and_world_size()
        shards = {"rank": self.rank, "world_size": world}
        source = load_manifest(data.source, data.synthetic)
        self.val = eval_loader(load_manifest(data.val, data.synthetic).urls(), cfg=data.loader, **shards)
        seed_everything(cfg.seed)  # the same initial student on every rank
        student = build_segmentor(cfg.model).to(device)
        # rank 0 keeps the single-process seed; the other ranks draw their own mixing/cropping randomness
        self.method = cfg.method.build(student, seed=cfg.seed + 7919 * self.rank,
                                       reducer=collectives.all_reduce_sum_)
        self.engine = build_engine(student, cfg.engine, cfg.optim, total_steps=cfg.train.iterations,
                                   micro_batch=data.loader.batch_size, device=device)
        self.source = _batches(train_loader(source.urls(), cfg=data.loader, labeled=True, seed=cfg.seed, **shards))
        self.target = None
        if self.method.needs_target:
            target = load_manifest(data.target, data.synthetic)
            self.target = _batches(train_loader(target.urls(), cfg=target_loader_config(data.loader), labeled=False,
                                                seed=cfg.seed + 1, **shards))


def train_loop(cfg: RunConfig) -> RunResult:
    """Train one run end to end in this process and return its final target metrics."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    parts = _Parts(cfg, device)
    out_dir = os.path.join(cfg.output_dir, cfg.name)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    evaluations, losses = _train(cfg, parts, device)
    seconds = time.perf_counter() - start
    confusion_KK = evaluate(parts.engine.module, parts.val, device=device, max_batches=cfg.train.eval_max_batches)
    evaluations.append(_evaluation_record(cfg.train.iterations, confusion_KK))
    weights = os.path.join(out_dir, "student.pt")
    result = RunResult(name=cfg.name, miou=mean_iou(confusion_KK), iou=iou_per_class(confusion_KK).tolist(),
                       confusion=confusion_KK.tolist(), steps=cfg.train.iterations, seconds=seconds,
                       weights=weights, evaluations=evaluations, losses=losses)
    if parts.rank == 0:  # the student is identical on every rank
        torch.save(parts.engine.module.state_dict(), weights)
        _write_summary(out_dir, cfg, result)
    return result


def _train(cfg: RunConfig, parts: _Parts, device: torch.device) -> tuple[list[dict], list[dict]]:
    evaluations, losses = [], []
    bar = tqdm(range(cfg.train.iterations), desc=cfg.name, unit="it", dynamic_ncols=True, mininterval=1.0,
               disable=parts.rank != 0)
    for step in bar:
        source = _to_device(next(parts.source), device)
        target = _to_device(next(parts.target), device) if parts.target is not None else None
        logged = train_step(parts.engine, parts.method, source, target, step)
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.iterations:
            losses.append(_log(bar, step, logged, parts.engine.lr()))
        if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.iterations:
            confusion_KK = evaluate(parts.engine.module, parts.val, device=device,
                                    max_batches=cfg.train.eval_max_batches)
            evaluations.append(_evaluation_record(step + 1, confusion_KK))
            if parts.rank == 0:
                bar.write(f"[{cfg.name}] step {step + 1}: target mIoU {100 * evaluations[-1]['miou']:.2f}")
    bar.close()
    return evaluations, losses


def _log(bar: tqdm, step: int, logged: dict[str, torch.Tensor], lr: float) -> dict[str, float]:
    """The one host sync of the logged values, at log cadence."""
    stacked = collectives.mean_for_log(torch.stack([v.float() for v in logged.values()]))
    values = {name: float(v) for name, v in zip(logged, stacked.tolist())}
    bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}")
    return {"step": step + 1, "lr": lr, **values}


def _evaluation_record(step: int, confusion_KK: np.ndarray) -> dict[str, Any]:
    return {"step": step, "miou": mean_iou(confusion_KK), "iou": iou_per_class(confusion_KK).tolist()}


def _write_summary(out_dir: str, cfg: RunConfig, result: RunResult) -> None:
    summary = {"config": to_flat_dict(cfg), "classes": list(CLASSES), **dataclasses.asdict(result)}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
