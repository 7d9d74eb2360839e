"""Shard reader: endless augmented training streams with a fixed epoch length, and exact evaluation passes.

Built from webdataset's pieces (ResampledShards, tarfile_to_samples, shuffle, map, batched, with_epoch;
https://github.com/webdataset/webdataset) in the shape its docs recommend for multi-node training:
resampled shards and an explicit epoch length, so every rank runs the same number of steps however the
shards divide. Differences from the usual recipe, on purpose:
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
- Shards are read by reading.read_samples (local paths and s3:// alike; bad-data policy; one shard at a
  time), and each batch carries "bad_data": the counts of what this worker skipped since its last batch.
- With rcs_temperature > 0 the source stream draws single samples by rare class sampling from the manifest's
  per-sample index (reading.rare_class_sampler) instead of resampling whole shards, and, as DAFormer does,
  re-draws the crop (up to 10 times) until it holds more than rcs_min_pixels * rcs_min_crop_ratio pixels of
  the drawn class.

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
from uda_dist.data.augment import CAT_MAX_RETRIES as CROP_RETRIES, paired_scale_crop_flip
from uda_dist.data.reading import BAD_DATA_POLICIES, BadData, decoded, rare_class_sampler, read_samples, recorded_size


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
    bad_data: str = "fail"
    """A shard that breaks or a sample that does not decode: "fail" stops the run naming it, "skip" warns,
    counts it (metrics data.skipped_samples, data.broken_shards) and goes on."""
    rcs_temperature: float = 0.0
    """Rare class sampling of the SOURCE stream with this temperature (DAFormer: 0.01); 0 = off (shards are
    resampled whole). Needs a manifest written by `python -m shards build` (per-sample class histograms)."""
    rcs_min_pixels: int = 3000
    """A sample qualifies for a class with more than this many pixels of it, counted in the labels as stored
    in the shards (DAFormer's 3000 at GTA5's 1914x1052 is about 1375 at 1280x720)."""
    rcs_min_crop_ratio: float = 0.5
    """Re-draw the crop (up to 10 times) until it holds more than rcs_min_pixels * this of the drawn class."""

    def __post_init__(self) -> None:
        if self.bad_data not in BAD_DATA_POLICIES:
            raise ValueError(f"bad_data must be one of {BAD_DATA_POLICIES}, got {self.bad_data!r}")
        if self.rcs_temperature < 0 or self.rcs_min_pixels < 0 or self.rcs_min_crop_ratio < 0:
            raise ValueError(f"rcs_temperature, rcs_min_pixels and rcs_min_crop_ratio must be >= 0, got "
                             f"{self.rcs_temperature}, {self.rcs_min_pixels}, {self.rcs_min_crop_ratio}")
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
                               crop_size=cfg.target_crop_size or cfg.crop_size, rcs_temperature=0.0)


class TrainLoader(torch.utils.data.DataLoader):
    """A DataLoader over a resampled shard stream: len() == cfg.epoch_batches, each iteration a new epoch."""

    def __iter__(self):
        self.dataset.epoch += 1  # read by this epoch's (fresh, non-persistent) workers
        return super().__iter__()

    @property
    def epoch(self) -> int:
        """The epoch last started (first_epoch - 1 before the first iteration)."""
        return self.dataset.epoch


def train_loader(split: list[str] | schema.Manifest, *, cfg: LoaderConfig, labeled: bool, seed: int, rank: int = 0,
                 world_size: int = 1, first_epoch: int = 0, day_pairs: bool = False) -> TrainLoader:
    """Endless augmented batches cut into epochs of cfg.epoch_batches: dicts with "image" float32
    [B, 3, crop_H, crop_W] in [0, 1], "label" int64 [B, crop_H, crop_W] (255 = ignore; only when labeled;
    with labeled=False label members are not even decoded), "key" list[str] and "bad_data" (counts, see
    reading.BadData). With day_pairs, "day_image" float32 [B, 3, crop_H, crop_W]: each sample's paired daytime
    image under the same resize, crop and flip (a sample without one falls under the bad-data policy). ``split`` is a manifest or its shard URLs (rare class sampling needs the manifest).
    Deterministic given (split, cfg, seed, rank, num_workers); ranks and workers draw different streams."""
    urls = split.urls() if isinstance(split, schema.Manifest) else split
    _check_args(urls, rank, world_size)
    if seed < 0 or first_epoch < 0:
        raise ValueError(f"seed and first_epoch must be >= 0, got {seed} and {first_epoch}")
    sampler = None
    if cfg.rcs_temperature > 0:
        if not isinstance(split, schema.Manifest) or not labeled:
            raise ValueError("rare class sampling (rcs_temperature > 0) needs a labeled split given as a Manifest")
        sampler = rare_class_sampler(split, temperature=cfg.rcs_temperature, min_pixels=cfg.rcs_min_pixels)
    stream = _TrainStream(list(urls), cfg=cfg, labeled=labeled, seed=seed, rank=rank, epoch=first_epoch - 1,
                          sampler=sampler, day_pairs=day_pairs)
    return TrainLoader(stream, batch_size=None, num_workers=cfg.num_workers, persistent_workers=False,
                       pin_memory=torch.cuda.is_available())


def eval_loader(urls: list[str], *, cfg: LoaderConfig, rank: int = 0, world_size: int = 1,
                labeled: bool = True) -> torch.utils.data.DataLoader:
    """Full-size, un-augmented batches of this rank's share of the split: "image" float32 [B, 3, H, W] in
    [0, 1], "label" int64 [B, H', W'] (as stored: the image's size, or the published resolution of an image
    the shards hold resized), "key" list[str], "valid" bool [B], "relpath" list[str] (the image's path in its
    dataset, the key when unrecorded), "orig_size" list[(H, W)] (its published size, before any resize at
    build time). Every sample is valid on exactly one
    rank; every rank yields the same number of batches (padded items have valid=False: leave them out of
    metrics). Each iteration is a fresh pass in shard order. Raises schema.SchemaError for a sample
    without a label; with labeled=False no label is read and batches have none (labelling a split)."""
    _check_args(urls, rank, world_size)
    dataset = _EvalPass(list(urls), cfg=cfg, rank=rank, world_size=world_size, labeled=labeled)
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
                 epoch: int, sampler: Any = None, day_pairs: bool = False):
        super().__init__()
        self.urls, self.cfg, self.labeled, self.seed, self.rank, self.epoch = urls, cfg, labeled, seed, rank, epoch
        self.sampler, self.day_pairs = sampler, day_pairs

    def __len__(self) -> int:
        return self.cfg.epoch_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker_info()
        num_batches = self.cfg.epoch_batches // num_workers + (worker < self.cfg.epoch_batches % num_workers)
        if num_batches == 0:  # more workers than batches; with_epoch(0) would mean "no limit"
            return iter(())
        shard_seq, shuffle_seq, augment_seq = np.random.SeedSequence(
            [self.seed, self.rank, worker, max(self.epoch, 0)]).spawn(3)
        bad = BadData(self.cfg.bad_data)
        stages = [self._sources(shard_seq), functools.partial(read_samples, bad=bad)]
        if self.cfg.shuffle_buffer > 1:
            shuffle_rng = random.Random(int(shuffle_seq.generate_state(1)[0]))
            stages.append(wds.shuffle(self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=shuffle_rng))
        augment = functools.partial(_train_samples, rng=np.random.default_rng(augment_seq), cfg=self.cfg,
                                    labeled=self.labeled, bad=bad, day_pairs=self.day_pairs)
        stages += [augment, wds.batched(self.cfg.batch_size, collation_fn=_collate, partial=False),
                   functools.partial(_with_counts, bad=bad)]
        return iter(wds.DataPipeline(*stages).with_epoch(nbatches=num_batches))

    def _sources(self, seq: np.random.SeedSequence) -> Any:
        seed = int(seq.generate_state(1)[0])
        if self.sampler is None:
            return wds.ResampledShards(self.urls, seed=seed, worker_seed=_no_worker_seed, deterministic=True)
        return functools.partial(_endless_draws, self.sampler, np.random.default_rng(seed))


def _endless_draws(sampler: Any, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    while True:
        yield sampler.draw(rng)


def _train_samples(raws: Iterator[dict[str, Any]], *, rng: np.random.Generator, cfg: LoaderConfig,
                   labeled: bool, bad: BadData, day_pairs: bool = False) -> Iterator[dict[str, Any]]:
    """Decoded, augmented samples (with their day pairs when asked); unusable ones go to the bad-data policy."""
    for raw in raws:
        try:
            image_HW3, label_HW, _ = decoded(raw, labeled=labeled)
            day_HW3 = schema.decode_day(raw, image_HW3.shape[:2]) if day_pairs else None
        except Exception as exc:  # noqa: BLE001 - any decoding failure falls under the policy
            bad.bad_sample(raw.get("__key__", "?"), raw.get("__url__", "?"), exc)
            continue
        bad.good()
        rcs_class = raw.get("__rcs_class__")
        for _ in range(CROP_RETRIES + 1 if rcs_class is not None else 1):  # DAFormer: 10 re-draws
            crop_HW3, crop_HW, day_crop_HW3 = paired_scale_crop_flip(image_HW3, label_HW, day_HW3, rng=rng, cfg=cfg)
            if rcs_class is None or (crop_HW == rcs_class).sum() > cfg.rcs_min_pixels * cfg.rcs_min_crop_ratio:
                break
        sample = {"key": raw["__key__"], "image": crop_HW3, "label": crop_HW}
        if day_pairs:
            sample["day"] = day_crop_HW3
        yield sample


def _with_counts(batches: Iterator[dict[str, Any]], *, bad: BadData) -> Iterator[dict[str, Any]]:
    for batch in batches:
        batch["bad_data"] = bad.take()
        yield batch


class _EvalPass(torch.utils.data.IterableDataset):
    """One rank's share of an evaluation split, read in shard order, padded to the common length."""

    def __init__(self, urls: list[str], *, cfg: LoaderConfig, rank: int, world_size: int, labeled: bool = True):
        super().__init__()
        self.urls, self.cfg, self.rank, self.world_size, self.labeled = urls, cfg, rank, world_size, labeled

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker_info()
        share = functools.partial(_eval_share, rank=self.rank, world_size=self.world_size, worker=worker,
                                  num_workers=num_workers, batch_size=self.cfg.eval_batch_size)
        bad = BadData(self.cfg.bad_data)
        return iter(wds.DataPipeline(
            wds.SimpleShardList(self.urls), functools.partial(read_samples, bad=bad), share,
            wds.map(functools.partial(_eval_sample, bad=bad, labeled=self.labeled)),
            wds.batched(self.cfg.eval_batch_size, collation_fn=_collate, partial=True),
            functools.partial(_with_counts, bad=bad)))


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


def _eval_sample(item: tuple[dict[str, Any], bool], *, bad: BadData, labeled: bool = True) -> dict[str, Any]:
    """A decoded evaluation sample. Under bad_data="skip" an unusable one becomes a placeholder of its recorded
    size that counts nowhere (valid=False), so every rank still yields the same number of batches."""
    raw, valid = item
    meta: dict[str, Any] = {}
    try:
        image_HW3, label_HW, meta = decoded(raw, labeled=labeled)
    except Exception as exc:  # noqa: BLE001
        size = recorded_size(raw)
        if valid:  # a padding copy of an unusable last sample was counted by its owner
            bad.bad_sample(raw.get("__key__", "?"), raw.get("__url__", "?"), exc)
        if size is None:
            raise schema.SchemaError(f"evaluation sample {raw.get('__key__')!r} in {raw.get('__url__')} is unusable "
                                     f"and records no size to stand in for it: {exc!r}") from exc
        image_HW3 = np.zeros((*size, 3), dtype=np.uint8)
        label_size = recorded_size(raw, "label_size")
        label_HW, valid = np.full(label_size, schema.IGNORE_INDEX, dtype=np.uint8) if labeled else None, False
    else:
        bad.good()
    published = meta.get("orig_size", image_HW3.shape[:2])
    return {"key": raw["__key__"], "image": image_HW3, "label": label_HW, "valid": valid,
            "relpath": str(meta.get("relpath", raw["__key__"])), "orig_size": (int(published[0]), int(published[1]))}


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded samples: uint8 HxWx3 images -> float32 [B, 3, H, W] / 255, uint8 labels -> int64."""
    keys = [s["key"] for s in samples]
    sizes = sorted({s["image"].shape[:2] for s in samples})
    if len(sizes) > 1:
        raise ValueError(f"cannot batch images of different sizes {sizes} (keys {keys}); "
                         f"use eval_batch_size=1 for splits with mixed image sizes")
    batch: dict[str, Any] = {"image": _stacked_images([s["image"] for s in samples]), "key": keys}
    if "day" in samples[0]:
        batch["day_image"] = _stacked_images([s["day"] for s in samples])
    if samples[0]["label"] is not None:
        batch["label"] = torch.from_numpy(np.stack([s["label"] for s in samples])).long()
    if "valid" in samples[0]:
        batch["valid"] = torch.tensor([s["valid"] for s in samples], dtype=torch.bool)
        batch["relpath"] = [s["relpath"] for s in samples]
        batch["orig_size"] = [s["orig_size"] for s in samples]
    return batch


def _stacked_images(images_HW3: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images -> float32 [B, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.stack(images_HW3)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
