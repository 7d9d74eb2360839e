"""Shard reader: endless augmented training streams with a fixed epoch length, and exact evaluation passes.

Built from webdataset's pieces (ResampledShards, tarfile_to_samples, shuffle, map, batched, with_epoch;
https://github.com/webdataset/webdataset) in the shape its docs recommend for multi-node training:
resampled shards and an explicit epoch length, so every rank runs the same number of steps however the
shards divide (../../shared/DESIGN.md, boundary 4). Differences from the usual recipe, on purpose:
- Raw tar members are decoded by schema.decode_sample, never by webdataset's autodecoder (its image
  decoders convert modes and so destroy labels) and never as pickle.
- The pipeline is built inside each DataLoader worker when an epoch starts, seeded from
  (seed, rank, worker id, epoch) with numpy's SeedSequence: shard resampling, the shuffle buffer and the
  geometric augmentation each get their own stream. webdataset's default seeds (pid, time, or
  rank * 1000 + worker read from the environment) are not used, so a run is reproducible from the
  arguments alone and each rank/worker draws a different stream.
- The epoch length is per rank, not per worker: cfg.epoch_batches is split over the DataLoader workers
  (with_epoch in each worker), so len(loader) == cfg.epoch_batches whatever cfg.num_workers is.
- Iterating a train loader again starts the next epoch (new seeds). The epoch counter lives in the main
  process and workers are not persistent, so each epoch's workers start from it; first_epoch resumes a
  run at an epoch boundary.
- Evaluation reads every shard in order on every rank and worker and decodes only its share (global
  sample i goes to rank i % world_size; within the rank, batches go round-robin to the workers), then pads
  each rank to ceil(N / world_size) samples with a copy of the last sample marked valid=False, so every
  rank yields the same number of batches. Reading is therefore repeated per reader (decoding is not):
  cheap for local files and evaluation-sized splits; a shard-level split from manifest counts can replace
  it if remote reads ever dominate.
Only local paths (and webdataset's own pipe:/file: URLs) are handled here; s3:// needs a gopen handler.

Tensor legend: B batch, H, W image height and width.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds

from uda_dist.data import schema
from uda_dist.data.augment import random_scale_crop_flip


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """How shards become batches, for training (augmented) and evaluation (full size)."""

    batch_size: int = 2
    """Images per domain per step per rank (batching happens in the DataLoader worker)."""
    crop_size: tuple[int, int] = (128, 256)
    """(H, W) training crop; smaller (resized) images are padded at the bottom/right (image 0, label 255)."""
    resize: tuple[int, int] | None = None
    """(H, W) base size each training image is resized to before random scaling; None keeps its own size."""
    target_resize: tuple[int, int] | None = None
    """(H, W) base size of the TARGET domain's training images when it differs from the source's (DAFormer:
    GTA5 720x1280, Cityscapes 512x1024); None = ``resize``."""
    target_crop_size: tuple[int, int] | None = None
    """(H, W) training crop of the TARGET domain when it differs from ``crop_size`` (SePiCo's class-balanced
    crop draws source-sized windows from a larger target crop); None = ``crop_size``."""
    scale_range: tuple[float, float] = (1.0, 1.0)
    """Random rescale factor ~ U(low, high) applied to the base size (mmseg ratio_range)."""
    cat_max_ratio: float = 0.75
    """mmseg RandomCrop: redraw (up to 10 times) a crop in which one class covers this share of the labeled
    pixels or more; 1.0 disables. Only labeled samples are checked."""
    flip: bool = True
    """Horizontal flip with probability 0.5."""
    num_workers: int = 2
    """DataLoader worker processes (0 = decode in the training process)."""
    epoch_batches: int = 100
    """Batches per epoch per rank (shards are resampled), so every rank runs the same number of steps."""
    shuffle_buffer: int = 100
    """Samples held by the shuffle buffer of each worker (raw bytes, before decoding); 0 or 1 = no shuffle."""
    eval_batch_size: int = 4
    """Images per evaluation batch per rank; evaluation images are full size, so a batch needs equal sizes."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "epoch_batches", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "shuffle_buffer"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self._set_pair("crop_size", int)
        for name in ("resize", "target_resize", "target_crop_size"):
            if getattr(self, name) is not None:
                self._set_pair(name, int)
        self._set_pair("scale_range", float)
        if self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with low <= high, got {self.scale_range}")
        if not 0.0 < self.cat_max_ratio <= 1.0:
            raise ValueError(f"cat_max_ratio must be in (0, 1] (1.0 disables), got {self.cat_max_ratio}")

    def _set_pair(self, name: str, kind: type) -> None:
        """Check a positive pair and store it as a tuple (overrides may hand in lists)."""
        value = getattr(self, name)
        if len(value) != 2 or any(kind(v) != v or v <= 0 for v in value):
            raise ValueError(f"{name} must be two positive {kind.__name__}s, got {value!r}")
        object.__setattr__(self, name, (kind(value[0]), kind(value[1])))


def target_loader_config(cfg: LoaderConfig) -> LoaderConfig:
    """The loader config of the target domain's training stream: its own base size and crop when set."""
    return dataclasses.replace(cfg, resize=cfg.target_resize or cfg.resize,
                               crop_size=cfg.target_crop_size or cfg.crop_size)


class TrainLoader(torch.utils.data.DataLoader):
    """A DataLoader over a resampled shard stream: len() == cfg.epoch_batches, each iteration a new epoch."""

    def __iter__(self):
        self.dataset.epoch += 1  # read by this epoch's (fresh, non-persistent) workers
        return super().__iter__()

    @property
    def epoch(self) -> int:
        """The epoch last started (first_epoch - 1 before the first iteration)."""
        return self.dataset.epoch


def train_loader(urls: list[str], *, cfg: LoaderConfig, labeled: bool, seed: int, rank: int = 0,
                 world_size: int = 1, first_epoch: int = 0) -> TrainLoader:
    """Endless augmented batches cut into epochs of cfg.epoch_batches: dicts with "image" float32
    [B, 3, crop_H, crop_W] in [0, 1], "label" int64 [B, crop_H, crop_W] (255 = ignore; only when labeled;
    with labeled=False label members are not even decoded) and "key" list[str]. Deterministic given
    (urls, cfg, seed, rank, num_workers); ranks and workers draw different streams."""
    _check_args(urls, rank, world_size)
    if seed < 0 or first_epoch < 0:
        raise ValueError(f"seed and first_epoch must be >= 0, got {seed} and {first_epoch}")
    stream = _TrainStream(list(urls), cfg=cfg, labeled=labeled, seed=seed, rank=rank, epoch=first_epoch - 1)
    return TrainLoader(stream, batch_size=None, num_workers=cfg.num_workers, persistent_workers=False,
                       pin_memory=torch.cuda.is_available())


def eval_loader(urls: list[str], *, cfg: LoaderConfig, rank: int = 0,
                world_size: int = 1) -> torch.utils.data.DataLoader:
    """Full-size, un-augmented batches of this rank's share of the split: "image" float32 [B, 3, H, W] in
    [0, 1], "label" int64 [B, H, W], "key" list[str], "valid" bool [B]. Every sample is valid on exactly one
    rank; every rank yields the same number of batches (padded items have valid=False: leave them out of
    metrics). Each iteration is a fresh pass in shard order. Raises schema.SchemaError for a sample
    without a label."""
    _check_args(urls, rank, world_size)
    dataset = _EvalPass(list(urls), cfg=cfg, rank=rank, world_size=world_size)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers,
                                       pin_memory=torch.cuda.is_available())


def _check_args(urls: list[str], rank: int, world_size: int) -> None:
    if isinstance(urls, str) or not urls or not all(isinstance(u, str) for u in urls):
        raise ValueError(f"urls must be a non-empty list of shard paths/URLs, got {urls!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _worker_info() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _no_worker_seed() -> int:
    return 0  # the worker is already part of the seed handed to ResampledShards


class _TrainStream(torch.utils.data.IterableDataset):
    """One rank's training stream; the webdataset pipeline is built per worker and epoch in __iter__."""

    def __init__(self, urls: list[str], *, cfg: LoaderConfig, labeled: bool, seed: int, rank: int,
                 epoch: int):
        super().__init__()
        self.urls, self.cfg, self.labeled, self.seed, self.rank, self.epoch = urls, cfg, labeled, seed, rank, epoch

    def __len__(self) -> int:
        return self.cfg.epoch_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker_info()
        num_batches = self.cfg.epoch_batches // num_workers + (worker < self.cfg.epoch_batches % num_workers)
        if num_batches == 0:  # more workers than batches; with_epoch(0) would mean "no limit"
            return iter(())
        shard_seq, shuffle_seq, augment_seq = np.random.SeedSequence(
            [self.seed, self.rank, worker, max(self.epoch, 0)]).spawn(3)
        stages = [wds.ResampledShards(self.urls, seed=int(shard_seq.generate_state(1)[0]),
                                      worker_seed=_no_worker_seed, deterministic=True),
                  wds.tarfile_to_samples()]
        if self.cfg.shuffle_buffer > 1:
            shuffle_rng = random.Random(int(shuffle_seq.generate_state(1)[0]))
            stages.append(wds.shuffle(self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=shuffle_rng))
        augment = functools.partial(_train_sample, rng=np.random.default_rng(augment_seq), cfg=self.cfg,
                                    labeled=self.labeled)
        stages += [wds.map(augment), wds.batched(self.cfg.batch_size, collation_fn=_collate, partial=False)]
        return iter(wds.DataPipeline(*stages).with_epoch(nbatches=num_batches))


def _train_sample(raw: dict[str, Any], *, rng: np.random.Generator, cfg: LoaderConfig,
                  labeled: bool) -> dict[str, Any]:
    if not labeled:
        raw = {k: v for k, v in raw.items() if k != schema.LABEL_EXT}
    elif schema.LABEL_EXT not in raw:
        raise schema.SchemaError(f"sample {raw.get('__key__')!r} in {raw.get('__url__')}: labeled=True but "
                                 f"it has no {schema.LABEL_EXT!r} member")
    image_HW3, label_HW, _ = schema.decode_sample(raw)
    image_HW3, label_HW = random_scale_crop_flip(image_HW3, label_HW, rng=rng, cfg=cfg)
    return {"key": raw["__key__"], "image": image_HW3, "label": label_HW}


class _EvalPass(torch.utils.data.IterableDataset):
    """One rank's share of an evaluation split, read in shard order, padded to the common length."""

    def __init__(self, urls: list[str], *, cfg: LoaderConfig, rank: int, world_size: int):
        super().__init__()
        self.urls, self.cfg, self.rank, self.world_size = urls, cfg, rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker_info()
        share = functools.partial(_eval_share, rank=self.rank, world_size=self.world_size, worker=worker,
                                  num_workers=num_workers, batch_size=self.cfg.eval_batch_size)
        return iter(wds.DataPipeline(
            wds.SimpleShardList(self.urls), wds.tarfile_to_samples(), share, wds.map(_eval_sample),
            wds.batched(self.cfg.eval_batch_size, collation_fn=_collate, partial=True)))


def _eval_share(raw_samples: Iterator[dict[str, Any]], *, rank: int, world_size: int, worker: int,
                num_workers: int, batch_size: int) -> Iterator[tuple[dict[str, Any], bool]]:
    """(raw sample, valid) for this worker: global sample i belongs to rank i % world_size as the rank's
    item j = i // world_size, and item j to worker (j // batch_size) % num_workers, so each worker's items
    form whole batches in order. The rank is then padded to ceil(N / world_size) items (at most one pad,
    a copy of the last sample of the split, valid=False)."""
    count, last = 0, None
    for i, raw in enumerate(raw_samples):
        count, last = i + 1, raw
        j, owner = divmod(i, world_size)
        if owner == rank and (j // batch_size) % num_workers == worker:
            yield raw, True
    per_rank = -(-count // world_size)
    for j in range(len(range(rank, count, world_size)), per_rank):
        if (j // batch_size) % num_workers == worker:
            yield last, False


def _eval_sample(item: tuple[dict[str, Any], bool]) -> dict[str, Any]:
    raw, valid = item
    if schema.LABEL_EXT not in raw:
        raise schema.SchemaError(f"evaluation sample {raw.get('__key__')!r} in {raw.get('__url__')} has no "
                                 f"{schema.LABEL_EXT!r} member: evaluation needs labels")
    image_HW3, label_HW, _ = schema.decode_sample(raw)
    return {"key": raw["__key__"], "image": image_HW3, "label": label_HW, "valid": valid}


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded samples: uint8 HxWx3 images -> float32 [B, 3, H, W] / 255, uint8 labels -> int64."""
    keys = [s["key"] for s in samples]
    sizes = sorted({s["image"].shape[:2] for s in samples})
    if len(sizes) > 1:
        raise ValueError(f"cannot batch images of different sizes {sizes} (keys {keys}); "
                         f"use eval_batch_size=1 for splits with mixed image sizes")
    image_B3HW = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).contiguous()
    batch: dict[str, Any] = {"image": image_B3HW.float().div_(255.0), "key": keys}
    if samples[0]["label"] is not None:
        batch["label"] = torch.from_numpy(np.stack([s["label"] for s in samples])).long()
    if "valid" in samples[0]:
        batch["valid"] = torch.tensor([s["valid"] for s in samples], dtype=torch.bool)
    return batch
