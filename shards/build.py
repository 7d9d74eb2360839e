"""Dataset tree -> shards + manifest, in a local folder or under s3://bucket/prefix.

Samples are listed by shards.layouts (sorted keys), loaded and encoded in a process pool (``imap`` keeps the
order, so the output does not depend on the number of processes), optionally resized (image bilinear, label
nearest, as DAFormer's pipelines do at load time), and written by uda_dist.data.schema.write_shards, whose fixed
member order and mtime make a rebuild byte-identical. For an s3:// destination every shard is uploaded as
soon as it is complete (boto3's managed transfer: multipart, concurrent, retried) from a staging folder and
deleted there, so the local disk holds only a few shards at a time; the manifest is uploaded last, so its
presence means the split is complete.
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
    """(H, W) every image is resized to (label with nearest); None keeps the published size."""
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


def build(cfg: BuildConfig) -> schema.Manifest:
    """Write the split's shards and manifest to cfg.out; returns the manifest (location = where it lies)."""
    dataset, items, labeled, encode = _plan(cfg)
    items = items[: cfg.count or None]
    processes = cfg.workers or os.cpu_count() or 1
    remote = cfg.out.startswith("s3://")
    out_dir = tempfile.mkdtemp(prefix="shards-", dir=cfg.staging or None) if remote else cfg.out
    try:
        with multiprocessing.get_context("spawn").Pool(processes) as pool, \
                _Uploader(cfg.out if remote else None) as uploader:
            samples = tqdm(pool.imap(encode, items, chunksize=1), total=len(items), unit="img",
                           desc=f"{dataset}/{cfg.split}")
            manifest = schema.write_shards(samples, out_dir, dataset=dataset, split=cfg.split, labeled=labeled,
                                           max_per_shard=cfg.samples_per_shard, on_shard=uploader.submit)
        if not remote:
            return manifest
        url = f"{cfg.out.rstrip('/')}/{schema.manifest_name(dataset, cfg.split)}"
        s3.write_bytes(url, manifest.to_json().encode())  # last: its presence means complete
        return dataclasses.replace(manifest, location=url)
    finally:
        if remote:
            shutil.rmtree(out_dir, ignore_errors=True)


def _plan(cfg: BuildConfig) -> tuple[str, list[Any], bool, Any]:
    """(dataset name, work items, labeled, picklable encode function of one item)."""
    if cfg.layout == SYNTHETIC:
        domain = cfg.condition or "source"
        syn = synthetic.SyntheticConfig()
        items = list(range(syn.count(cfg.split)))
        synthetic.check_name(domain, cfg.split)
        encode = functools.partial(_encode_synthetic, domain=domain, split=cfg.split, syn=syn, cfg=cfg)
        return f"synthetic-{domain}", items, cfg.labels, encode
    samples = layouts.list_samples(cfg.layout, cfg.root, cfg.split, condition=cfg.condition, labels=cfg.labels)
    labeled = all(s.label is not None for s in samples)
    dataset = layouts.dataset_name(cfg.layout, cfg.condition)
    return dataset, samples, labeled, functools.partial(_encode_tree, dataset=dataset, cfg=cfg)


def _encode_tree(sample: layouts.SourceSample, *, dataset: str, cfg: BuildConfig) -> dict[str, Any]:
    image_HW3, label_HW, meta = layouts.load_sample(sample)
    return _encode(sample.key, image_HW3, label_HW, dict(meta, dataset=dataset, split=cfg.split), cfg)


def _encode_synthetic(index: int, *, domain: str, split: str, syn: synthetic.SyntheticConfig,
                      cfg: BuildConfig) -> dict[str, Any]:
    image_HW3, label_HW = synthetic.render_scene(domain, index, split, cfg=syn)
    meta = {"relpath": f"{synthetic.PREFIX}{domain}/{split}/{index}", "dataset": f"synthetic-{domain}",
            "split": split}
    return _encode(f"{domain}-{split}-{index:06d}", image_HW3, label_HW if cfg.labels else None, meta, cfg)


def _encode(key: str, image_HW3: np.ndarray, label_HW: np.ndarray | None, meta: dict[str, Any],
            cfg: BuildConfig) -> dict[str, Any]:
    meta["orig_size"] = list(image_HW3.shape[:2])
    if cfg.resize is not None and tuple(cfg.resize) != image_HW3.shape[:2]:
        height, width = cfg.resize
        image_HW3 = np.asarray(Image.fromarray(image_HW3).resize((width, height), Image.BILINEAR))
        if label_HW is not None:
            label_HW = np.asarray(Image.fromarray(label_HW).resize((width, height), Image.NEAREST))
    return schema.encode_sample(key, image_HW3, label_HW, meta, image_format=cfg.image_format)


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
            raise RuntimeError(f"{len(errors)} shard uploads failed, the first: {errors[0]!r}") from errors[0]

