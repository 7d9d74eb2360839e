"""`verify` (decode everything, check it against the manifest) and `stats` (class histograms, RCS) of a split.

verify reads every shard with the standard library's tarfile (stream mode, through webdataset's gopen, so
s3:// works as in training), groups members by key, and checks per sample: the schema (one image, the label
iff the split is labeled, json, the paired day image iff the manifest lists it), that it decodes, that the image has the size its json records, that the label
histogram equals the manifest's, and that the key and byte range equal the manifest's index; per shard, the
sample count. Shards are checked in parallel processes; every problem is listed, not only the first.

A split is complete when its manifest is there: a build removes it before writing any shard and writes it
last. verify and stats given a location without a manifest (a split never built, or whose last build did not
finish) or a folder raise a one-line ValueError saying so, with the shards and manifests found beside it.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import tarfile

import numpy as np
from webdataset.gopen import gopen
from tqdm import tqdm

from uda_dist.data import reading, schema  # reading registers the s3 gopen handler


def verify(location: str, *, workers: int = 0) -> list[str]:
    """Problems found in the split whose manifest is at ``location`` (empty = everything checks out)."""
    manifest = read_manifest(location)
    jobs = list(zip(manifest.urls(), manifest.shards))
    check = functools.partial(_check_shard, labeled=manifest.labeled, day=schema.DAY in manifest.extra_members)
    with multiprocessing.get_context("spawn").Pool(min(workers or os.cpu_count() or 1, len(jobs))) as pool:
        results = list(tqdm(pool.imap(check, jobs), total=len(jobs), unit="shard", desc="verify"))
    problems = [p for shard_problems in results for p in shard_problems]
    total = np.sum([s.class_pixels for shard in manifest.shards for s in shard.samples if s.class_pixels], axis=0)
    if manifest.labeled and list(total) != list(manifest.class_pixels):
        problems.append(f"manifest: class_pixels {list(manifest.class_pixels)} != sum of its samples {list(total)}")
    return problems


def read_manifest(location: str) -> schema.Manifest:
    """The manifest at ``location`` (a local path or s3:// URL); a missing one is a ValueError telling an
    unbuilt or unfinished split (a local folder's shards and manifests are named)."""
    if location.startswith("s3://"):
        from uda_dist.data import s3

        if not s3.exists(location):
            raise ValueError(f"no manifest at {location}: the split was never built or its last build did not "
                             f"finish (a build writes the manifest last); rebuild it with python -m shards build")
        return schema.read_manifest(location)
    if os.path.isdir(location):
        found = sorted(n for n in os.listdir(location) if n.endswith(schema.MANIFEST_SUFFIX))
        raise ValueError(f"{location} is a folder: give a split's manifest, "
                         f"{'one of ' + ', '.join(found) if found else 'none is there'}")
    if not os.path.isfile(location):
        stem = os.path.basename(location).removesuffix(schema.MANIFEST_SUFFIX)
        folder = os.path.dirname(location) or "."
        shards = [n for n in os.listdir(folder) if n.startswith(f"{stem}-") and n.endswith(".tar")] \
            if os.path.isdir(folder) else []
        raise ValueError(f"no manifest at {location}: " + (
            f"{len(shards)} shards of the split are there without it, so its last build did not finish; "
            if shards else "the split was never built there; ") + "rebuild it with python -m shards build")
    return schema.read_manifest(location)


def _check_shard(job: tuple[str, schema.ShardInfo], *, labeled: bool, day: bool = False) -> list[str]:
    url, info = job
    try:
        found = _read_tar(url)
    except Exception as exc:  # noqa: BLE001 - any read failure is a finding
        return [f"{url}: cannot be read: {exc!r}"]
    problems = []
    if len(found) != info.num_samples:
        problems.append(f"{url}: {len(found)} samples, manifest says {info.num_samples}")
    for position, (key, offset, size, members) in enumerate(found):
        expected = info.samples[position] if position < len(info.samples) else None
        if expected is not None and (expected.key, expected.offset, expected.size) != (key, offset, size):
            problems.append(f"{url}: sample {position} is {key!r} at [{offset}, +{size}), manifest index says "
                            f"{expected.key!r} at [{expected.offset}, +{expected.size})")
        problems += [f"{url}: {p}" for p in _check_sample(key, members, labeled=labeled, expected=expected, day=day)]
    return problems


def _check_sample(key: str, members: dict[str, bytes], *, labeled: bool,
                  expected: schema.SampleIndex | None, day: bool = False) -> list[str]:
    if "json" not in members:
        return [f"sample {key!r}: no json member"]
    try:
        image_HW3, label_HW, _ = reading.decoded({"__key__": key, **members}, labeled=labeled)
        if day:
            schema.decode_day({"__key__": key, **members}, image_HW3.shape[:2])
    except Exception as exc:  # noqa: BLE001
        return [f"sample {key!r}: {exc}"]
    if not labeled and schema.LABEL_EXT in members:
        return [f"sample {key!r}: has a label but the manifest says the split is unlabeled"]
    if labeled and expected is not None and tuple(schema.class_histogram(label_HW)) != expected.class_pixels:
        return [f"sample {key!r}: label histogram differs from the manifest's"]
    return []


def _read_tar(url: str) -> list[tuple[str, int, int, dict[str, bytes]]]:
    """(key, byte offset, byte size, {extension: bytes}) per sample, in shard order."""
    samples: list[tuple[str, int, int, dict[str, bytes]]] = []
    with gopen(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if not samples or samples[-1][0] != key:
                samples.append((key, member.offset, 0, {}))
            last = samples[-1]
            samples[-1] = (key, last[1], end - last[1], last[3])
            if ext in last[3]:
                raise schema.SchemaError(f"sample {key!r}: member {member.name!r} twice")
            last[3][ext] = tar.extractfile(member).read()
    return samples


def stats(location: str, *, rcs_temperature: float = 0.01, rcs_min_pixels: int = 3000) -> str:
    """A table of the split's classes: pixel share, samples holding the class, samples above the rare class
    sampling threshold, and the RCS probability at the given temperature."""
    manifest = read_manifest(location)
    lines = [f"{manifest.dataset}/{manifest.split}: {manifest.num_samples} samples in {len(manifest.shards)} shards, "
             f"{'labeled' if manifest.labeled else 'unlabeled'}"]
    pixels_NK = np.array([s.class_pixels for shard in manifest.shards for s in shard.samples if s.class_pixels],
                         dtype=np.int64).reshape(-1, schema.NUM_CLASSES)
    if not manifest.labeled or not len(pixels_NK):
        return "\n".join(lines)
    total_K = pixels_NK.sum(axis=0)
    classes, probs = reading.rcs_class_probs(total_K, temperature=rcs_temperature)
    rcs = dict(zip(classes, probs))
    lines.append(f"{'class':<14} {'pixels %':>9} {'samples':>8} {f'>{rcs_min_pixels}px':>9} "
                 f"{f'RCS P(T={rcs_temperature:g})':>14}")
    for c, name in enumerate(schema.CLASSES):
        lines.append(f"{name:<14} {100 * total_K[c] / max(total_K.sum(), 1):>9.3f} {(pixels_NK[:, c] > 0).sum():>8} "
                     f"{(pixels_NK[:, c] > rcs_min_pixels).sum():>9} {rcs.get(c, 0.0):>14.4f}")
    return "\n".join(lines)
