"""Dataset tree -> shards + manifest, in a local folder or under s3://bucket/prefix.

Samples are listed by shards.layouts (sorted keys), loaded and encoded in a process pool (``imap`` keeps the
order, so the output does not depend on the number of processes), and written by
uda_dist.data.schema.write_shards, whose fixed member order and mtime make a rebuild byte-identical.

Resolution: ``resize`` (H, W) resizes the IMAGES only (bilinear); labels keep their published size (Cityscapes
2048x1024, ...), the resolution the papers score at, so a resized image's label is larger than it. With
``resize_labels`` the labels are resized too (nearest, as DAFormer's pipelines do at load time: a training
split at less disk and IO). Each sample's json records what was done: "orig_size" is the image's published
[H, W]; "size" the image's as stored; "label_size" the label's as stored, present only where it differs from
the image's; "label_resized_from" the label file's [H, W], present only where the stored label is not at its
file's size (--resize-labels, or a size-mismatched GTA5 pair fitted to its image by shards.layouts).

Completeness: a (re)build first removes the split's manifest from the output (local or s3://), before any
shard is written, and writes the manifest last, so only a build that finished leaves one: a build that fails
midway leaves shards without a manifest (shards verify says so), never an old manifest beside replaced
shards. A file that cannot be decoded (empty, truncated, not an image) ends the build with a ValueError
naming it, raised in the pool's worker and re-raised here. For an s3:// destination every shard is uploaded
as soon as it is complete (boto3's managed transfer: multipart, concurrent, retried) from a staging folder
and deleted there, so the local disk holds only a few shards at a time.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import shutil
import tempfile
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from shards import layouts
from uda_dist.data import s3, schema, synthetic
from uda_dist.errors import RunError

SYNTHETIC = "synthetic"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuildConfig:
    layout: str
    """One of shards.layouts.LAYOUTS or "synthetic"."""
    root: str = ""
    """The dataset's root folder as published (not used by "synthetic")."""
    split: str = "train"
    condition: str | None = None
    """Dark Zurich / ACDC condition (None = all); for "synthetic" the domain (source, target, night)."""
    out: str
    """A local folder or s3://bucket/prefix."""
    resize: tuple[int, int] | None = None
    """(H, W) every image is resized to (bilinear); None keeps the published size. Labels keep theirs."""
    resize_labels: bool = False
    """Resize the labels to ``resize`` too (nearest); needs ``resize``."""
    image_format: str = "png"
    """"png" (lossless) or "jpg" (quality 95)."""
    samples_per_shard: int = 100
    workers: int = 0
    """Encoding processes; 0 = one per CPU core."""
    labels: bool = True
    """False writes a labeled split without its labels (e.g. a target's train split)."""
    staging: str = ""
    """Local folder for shards on their way to s3:// ("" = the system's temporary folder)."""
    count: int = 0
    """Only the first ``count`` samples in key order (0 = all): a quick trial build of a large split."""
    day_pairs: bool = False
    """Dark Zurich night train: store each night image's daytime image (corresp/) as its {key}.day member,
    resized as the image (SePiCo's day/night pseudo-label fusion reads it)."""

    def __post_init__(self) -> None:
        if self.layout not in (*layouts.LAYOUTS, SYNTHETIC):
            raise ValueError(f"unknown layout {self.layout!r}; valid: {', '.join((*layouts.LAYOUTS, SYNTHETIC))}")
        if self.layout != SYNTHETIC and not os.path.isdir(self.root):
            raise ValueError(f"--root {self.root!r} is not a folder: point it at the {self.layout} dataset root")
        if self.image_format not in schema.IMAGE_EXTS:
            raise ValueError(f"image_format must be one of {schema.IMAGE_EXTS}, got {self.image_format!r}")
        if self.samples_per_shard < 1 or self.workers < 0 or self.count < 0:
            raise ValueError("samples_per_shard must be >= 1, workers and count >= 0")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 1):
            raise ValueError(f"resize must be two positive ints (H W), got {self.resize}")
        if self.resize_labels and self.resize is None:
            raise ValueError("--resize-labels resizes labels to the --resize H W size: give --resize too")


def build(cfg: BuildConfig) -> schema.Manifest:
    """Write the split's shards and manifest to cfg.out; returns the manifest (location = where it lies)."""
    dataset, items, labeled, encode = _plan(cfg)
    extra_members = (schema.DAY,) if cfg.day_pairs else ()
    items = items[: cfg.count or None]
    processes = cfg.workers or os.cpu_count() or 1
    remote = cfg.out.startswith("s3://")
    remove_manifest(cfg.out, schema.manifest_name(dataset, cfg.split))  # first: the split is incomplete now
    out_dir = tempfile.mkdtemp(prefix="shards-", dir=cfg.staging or None) if remote else cfg.out
    try:
        with multiprocessing.get_context("spawn").Pool(processes) as pool, \
                _Uploader(cfg.out if remote else None) as uploader, \
                tqdm(pool.imap(encode, items, chunksize=1), total=len(items), unit="img",
                     desc=f"{dataset}/{cfg.split}", disable=None) as samples:  # a bar on a terminal only
            manifest = schema.write_shards(samples, out_dir, dataset=dataset, split=cfg.split, labeled=labeled,
                                           max_per_shard=cfg.samples_per_shard, on_shard=uploader.submit,
                                           extra_members=extra_members)
        if not remote:
            return manifest
        url = f"{cfg.out.rstrip('/')}/{schema.manifest_name(dataset, cfg.split)}"
        s3.write_bytes(url, manifest.to_json().encode())  # last: its presence means complete
        return dataclasses.replace(manifest, location=url)
    finally:
        if remote:
            shutil.rmtree(out_dir, ignore_errors=True)


def remove_manifest(out: str, name: str) -> None:
    """Remove the manifest ``name`` (and a leftover temporary copy) from the output folder or s3:// prefix
    ``out``, if there; an s3 endpoint that cannot be reached or refuses is a RunError naming it."""
    if out.startswith("s3://"):
        s3.remove(f"{out.rstrip('/')}/{name}")
        return
    for path in (os.path.join(out, name), os.path.join(out, name + ".tmp")):
        s3.remove(path)


def _plan(cfg: BuildConfig) -> tuple[str, list[Any], bool, Any]:
    """(dataset name, work items, labeled, picklable encode function of one item)."""
    if cfg.layout == SYNTHETIC:
        if cfg.day_pairs:
            raise ValueError("--day-pairs is for Dark Zurich's night train split (--layout darkzurich)")
        domain = cfg.condition or "source"
        syn = synthetic.SyntheticConfig()
        items = list(range(syn.count(cfg.split)))
        synthetic.check_name(domain, cfg.split)
        encode = functools.partial(_encode_synthetic, domain=domain, split=cfg.split, syn=syn, cfg=cfg)
        return f"synthetic-{domain}", items, cfg.labels, encode
    samples = layouts.list_samples(cfg.layout, cfg.root, cfg.split, condition=cfg.condition, labels=cfg.labels,
                                   day_pairs=cfg.day_pairs)
    labeled = all(s.label is not None for s in samples)
    dataset = layouts.dataset_name(cfg.layout, cfg.condition)
    return dataset, samples, labeled, functools.partial(_encode_tree, dataset=dataset, cfg=cfg)


def _encode_tree(sample: layouts.SourceSample, *, dataset: str, cfg: BuildConfig) -> dict[str, Any]:
    image_HW3, label_HW, meta = layouts.load_sample(sample)
    meta = dict(meta, dataset=dataset, split=cfg.split)
    day_HW3 = None
    if sample.day is not None:
        day_HW3 = layouts.load_day_image(sample, image_HW3.shape[:2])
        meta["day_relpath"] = os.path.relpath(sample.day, cfg.root)
    return _encode(sample.key, image_HW3, label_HW, meta, cfg, day_HW3=day_HW3)


def _encode_synthetic(index: int, *, domain: str, split: str, syn: synthetic.SyntheticConfig,
                      cfg: BuildConfig) -> dict[str, Any]:
    image_HW3, label_HW = synthetic.render_scene(domain, index, split, cfg=syn)
    meta = {"relpath": f"{synthetic.PREFIX}{domain}/{split}/{index}", "dataset": f"synthetic-{domain}",
            "split": split}
    return _encode(f"{domain}-{split}-{index:06d}", image_HW3, label_HW if cfg.labels else None, meta, cfg)


def _encode(key: str, image_HW3: np.ndarray, label_HW: np.ndarray | None, meta: dict[str, Any],
            cfg: BuildConfig, *, day_HW3: np.ndarray | None = None) -> dict[str, Any]:
    """Resize as configured (the image and its day pair to cfg.resize; its label only with cfg.resize_labels),
    then encode."""
    meta["orig_size"] = list(image_HW3.shape[:2])
    if cfg.resize is not None:
        image_HW3 = _resized(image_HW3, cfg.resize, Image.BILINEAR)
        day_HW3 = None if day_HW3 is None else _resized(day_HW3, cfg.resize, Image.BILINEAR)
        if label_HW is not None and cfg.resize_labels and label_HW.shape != tuple(cfg.resize):
            meta.setdefault("label_resized_from", [int(n) for n in label_HW.shape])
            label_HW = _resized(label_HW, cfg.resize, Image.NEAREST)
    return schema.encode_sample(key, image_HW3, label_HW, meta, image_format=cfg.image_format, day_HW3=day_HW3)


def _resized(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """The array at (H, W) = size with Pillow's `resample` filter (as it is when already that size)."""
    height, width = size
    if array.shape[:2] == (height, width):
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), resample))


class _Uploader:
    """Uploads finished shards to s3 in the background and deletes the local copy; no-op for local output."""

    def __init__(self, prefix: str | None, concurrency: int = 4):
        self.prefix = prefix.rstrip("/") if prefix else None
        self.pool = concurrent.futures.ThreadPoolExecutor(concurrency) if prefix else None
        self.futures: list[concurrent.futures.Future] = []

    def submit(self, path: str) -> None:
        if self.pool is not None:
            self.futures.append(self.pool.submit(self._upload, path))

    def _upload(self, path: str) -> None:
        s3.upload_files([(path, f"{self.prefix}/{os.path.basename(path)}")])
        os.remove(path)

    def __enter__(self) -> "_Uploader":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is None:
            return
        self.pool.shutdown(wait=True)
        errors = [f.exception() for f in self.futures if f.exception() is not None]
        if errors and exc[0] is None:
            raise OSError(f"{len(errors)} shard uploads failed, the first: {errors[0]}") from errors[0]

