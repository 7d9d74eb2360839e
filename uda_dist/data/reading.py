"""Raw samples out of shards (local or s3://), with the bad-data policy, and rare class sampling.

- Shards are opened through webdataset's gopen (``s3://`` by the handler uda_dist.data.s3 registers, which
  streams boto3 GETs and resumes a broken stream with a Range GET) and expanded with webdataset's own
  tar_file_iterator and group_by_keys, one shard at a time: members of two shards are never grouped into one
  sample, whatever breaks.
- A source may also name one sample's byte range in its shard (from the manifest's per-sample index): rare
  class sampling reads single samples that way, and checks every member belongs to the indexed key.
- Bad data (``LoaderConfig.bad_data``): a shard that cannot be opened or read to its end, or a sample that is
  incomplete or does not decode, raises under "fail"; under "skip" it is logged as a warning, counted
  (``BadData.take`` hands the counts to the next batch, so they reach the run's metrics) and left out.
  Either way a long run of failures with no good sample in between raises (MAX_CONSECUTIVE_BAD), so an
  unreadable dataset fails the run instead of spinning on resampled shards. An incomplete sample is never
  completed with another sample's members: grouping is by key within one shard.
- Rare class sampling (DAFormer, Hoyer et al. CVPR 2022, mmseg/datasets/uda_dataset.py
  get_rcs_class_probs and get_rare_class_sample): P(c) = softmax((1 - f_c)/T)
  over the classes present, f_c the class's share of all labelled pixels; then a sample with more than
  min_pixels pixels of c, uniformly. Differences on purpose: the histograms are the manifest's (labels as
  stored in the shards, so min_pixels counts pixels at the shards' resolution), and a class with no sample
  above min_pixels is left out with a warning where DAFormer stops on an assertion.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
from typing import Any, Iterable, Iterator

import numpy as np
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_iterator

from uda_dist.data import s3, schema

BAD_DATA_POLICIES = ("fail", "skip")
MAX_CONSECUTIVE_BAD = 100
log = logging.getLogger("uda_dist.data")
s3.register()  # in every process that reads (DataLoader workers import this module too)


class BadDataError(RuntimeError):
    """Unreadable shard or sample under bad_data="fail", or too many failures in a row under "skip"."""


class BadData:
    """The bad-data policy of one reader (a DataLoader worker's pipeline), with its counts."""

    def __init__(self, policy: str):
        if policy not in BAD_DATA_POLICIES:
            raise ValueError(f"bad_data must be one of {BAD_DATA_POLICIES}, got {policy!r}")
        self.policy = policy
        self.counts = {"skipped_samples": 0, "broken_shards": 0}
        self.consecutive = 0

    def broken_shard(self, url: str, exc: BaseException) -> None:
        self._bad("broken_shards", f"shard {url} could not be read to its end: {exc!r}", exc)

    def bad_sample(self, key: str, url: str, exc: BaseException) -> None:
        self._bad("skipped_samples", f"sample {key!r} of {url} is unusable: {exc!r}", exc)

    def good(self) -> None:
        self.consecutive = 0

    def take(self) -> dict[str, int]:
        """The counts since the last take."""
        counts, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return counts

    def _bad(self, what: str, message: str, exc: BaseException) -> None:
        if self.policy == "fail":
            raise BadDataError(f"{message} (set data.loader.bad_data=skip to skip and count such data)") from exc
        self.counts[what] += 1
        self.consecutive += 1
        log.warning("skipped: %s", message)
        if self.consecutive >= MAX_CONSECUTIVE_BAD:
            raise BadDataError(f"{self.consecutive} reads in a row failed, the last: {message}") from exc


def read_samples(sources: Iterable[dict[str, Any]], bad: BadData) -> Iterator[dict[str, Any]]:
    """Raw samples (member bytes by extension, "__key__", "__url__") of each source: {"url"} for a whole
    shard, {"url", "offset", "size", ...} for one indexed sample (extra source fields are copied into it)."""
    for source in sources:
        if "offset" in source:
            sample = _range_sample(source, bad)
            if sample is not None:
                yield sample
        else:
            yield from group_by_keys(_members(source["url"], bad))


def _members(url: str, bad: BadData) -> Iterator[dict[str, Any]]:
    """The members of one shard; a shard that breaks ends early and is counted (its last sample may be
    incomplete: the decoder refuses it)."""
    try:
        with gopen(url) as stream:
            for member in tar_file_iterator(stream):
                member["__url__"] = url
                yield member
    except Exception as exc:  # noqa: BLE001 - any read failure of this shard falls under the policy
        bad.broken_shard(url, exc)


def _range_sample(source: dict[str, Any], bad: BadData) -> dict[str, Any] | None:
    url, key = source["url"], source["key"]
    try:
        sample = {"__key__": key, "__url__": url, **_range_members(url, key, source["offset"], source["size"])}
    except Exception as exc:  # noqa: BLE001
        bad.bad_sample(key, url, exc)
        return None
    sample.update({k: v for k, v in source.items() if k not in ("url", "key", "offset", "size")})
    return sample


def _range_members(url: str, key: str, offset: int, size: int) -> dict[str, bytes]:
    """{extension: bytes} of the sample the manifest places at [offset, offset + size) of its shard."""
    data = _read_range(url, offset, size)
    try:
        members = list(tar_file_iterator(io.BytesIO(data)))
    except Exception as exc:  # noqa: BLE001
        members, detail = [], repr(exc)
    else:
        detail = f"members {[m['fname'] for m in members]}"
    if not members or any(m["fname"].partition(".")[0] != key for m in members):
        raise schema.SchemaError(f"bytes [{offset}, +{size}) do not hold sample {key!r} ({detail}): the manifest "
                                 f"does not match the shard (rebuild both together)")
    return {m["fname"].partition(".")[2]: m["data"] for m in members}


def _read_range(url: str, offset: int, size: int) -> bytes:
    if url.startswith("s3://"):
        with s3.open_range(url, offset, size) as stream:
            data = stream.read()
    else:
        with open(url, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    if len(data) != size:
        raise EOFError(f"{url}: {len(data)} of {size} bytes at offset {offset}")
    return data


def decoded(raw: dict[str, Any], *, labeled: bool) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """schema.decode_sample after the checks a stream needs: an image member, the label iff labeled (an
    unlabeled read never decodes one), and the image size the sample's json recorded."""
    key = raw.get("__key__", "?")
    if not labeled:
        raw = {k: v for k, v in raw.items() if k != schema.LABEL_EXT}
    elif schema.LABEL_EXT not in raw:
        raise schema.SchemaError(f"sample {key!r}: no {schema.LABEL_EXT!r} member (labeled data; members: "
                                 f"{sorted(k for k in raw if not k.startswith('__'))})")
    image_HW3, label_HW, meta = schema.decode_sample(raw)
    if "size" in meta and list(meta["size"]) != list(image_HW3.shape[:2]):
        raise schema.SchemaError(f"sample {key!r}: image is {image_HW3.shape[:2]}, its json says {meta['size']}")
    return image_HW3, label_HW, meta


def recorded_size(raw: dict[str, Any], member: str = "size") -> tuple[int, int] | None:
    """The image size a sample's json recorded (``member="label_size"``: its label's, when that differs; else
    the image's), or None when it cannot be read."""
    try:
        meta = json.loads(raw["json"])
        height, width = meta.get(member, meta["size"])
        return int(height), int(width)
    except Exception:  # noqa: BLE001
        return None


@dataclasses.dataclass(frozen=True)
class RareClassSampler:
    """DAFormer's rare class sampling over a manifest's per-sample index."""

    classes: tuple[int, ...]
    probs: tuple[float, ...]
    samples: dict[int, tuple[tuple[str, schema.SampleIndex], ...]]

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """A source for read_samples: one sample's byte range, with the class it was drawn for."""
        c = int(rng.choice(self.classes, p=self.probs))
        candidates = self.samples[c]
        url, index = candidates[int(rng.integers(len(candidates)))]
        return {"url": url, "key": index.key, "offset": index.offset, "size": index.size, "__rcs_class__": c}


def rare_class_sampler(manifest: schema.Manifest, *, temperature: float, min_pixels: int) -> RareClassSampler:
    indexed = [(url, s) for url, shard in zip(manifest.urls(), manifest.shards) for s in shard.samples]
    if not manifest.labeled or len(indexed) != manifest.num_samples or not all(s.class_pixels for _, s in indexed):
        raise schema.SchemaError(f"rare class sampling needs a labeled manifest with a per-sample index and class "
                                 f"histograms; {manifest.location or manifest.dataset} has none (rebuild it with "
                                 f"`python -m shards build`)")
    pixels_NK = np.array([s.class_pixels for _, s in indexed], dtype=np.int64)
    classes, probs = rcs_class_probs(pixels_NK.sum(axis=0), temperature=temperature)
    samples = {c: tuple(indexed[i] for i in np.flatnonzero(pixels_NK[:, c] > min_pixels)) for c in classes}
    kept = [c for c in classes if samples[c]]
    if len(kept) < len(classes):
        log.warning("rare class sampling: classes %s have no sample with more than %d pixels; left out",
                    sorted(set(classes) - set(kept)), min_pixels)
    if not kept:
        raise schema.SchemaError(f"rare class sampling: no sample has more than {min_pixels} pixels of any class")
    kept_probs = np.array([probs[classes.index(c)] for c in kept])
    return RareClassSampler(classes=tuple(kept), probs=tuple((kept_probs / kept_probs.sum()).tolist()),
                            samples={c: samples[c] for c in kept})


def rcs_class_probs(class_pixels_K: np.ndarray, *, temperature: float) -> tuple[list[int], np.ndarray]:
    """DAFormer's get_rcs_class_probs: the classes present and softmax((1 - f_c) / T) over them."""
    present = [int(c) for c in np.flatnonzero(class_pixels_K > 0)]
    if not present:
        raise schema.SchemaError("rare class sampling: the manifest's labels hold no class pixels")
    freq_C = class_pixels_K[present] / class_pixels_K[present].sum()
    logits_C = (1.0 - freq_C) / temperature
    probs_C = np.exp(logits_C - logits_C.max())
    return present, probs_C / probs_C.sum()
