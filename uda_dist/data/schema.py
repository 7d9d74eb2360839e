"""The shard contract: the one place that says what a sample and a manifest are.

A sample is consecutive tar members sharing a key (the conventions below):
  {key}.png or {key}.jpg   the RGB image
  {key}.label.png          single-channel 8-bit trainIds, 255 = ignore (absent for unlabeled data), at the
                           image's size or another: a split built with its images resized keeps its labels
                           at the published resolution, which the papers score at (label_size in the json)
  {key}.day.png or .jpg    optional: the paired daytime image of a night image, at the image's size (Dark
                           Zurich night train built with --day-pairs; the manifest lists "day" in
                           extra_members when every sample of the split carries one)
  {key}.json               dataset, split, original path, size [H, W] of the image, label_size [H, W] when the
                           label's differs, class pixel histogram (of the label as stored)
Shards are plain tar files written by webdataset's TarWriter with a fixed mtime and a fixed member order,
so a rebuild is byte-identical. A manifest (JSON) per dataset split lists the shards (URLs relative to the
manifest's folder, or absolute), their sample counts, the split's class pixel histogram and, per sample, its
key, the byte range of its tar members in the shard and its class pixel histogram: rare class sampling picks
samples from the histograms and reads just their byte ranges. Manifests and shards may live in a local folder
or under s3://bucket/prefix (read through uda_dist.data.s3). Nothing here decodes pickle.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from uda_dist.errors import SchemaError

NUM_CLASSES = 19
IGNORE_INDEX = 255
CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
PALETTE = np.array([  # the Cityscapes colours of the 19 trainIds
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)
SHARD_MTIME = 0.0  # fixed tar member mtime: rebuilt shards are byte-identical
IMAGE_EXTS = ("png", "jpg")
LABEL_EXT = "label.png"
DAY = "day"
"""The optional paired daytime image: member {key}.day.png or {key}.day.jpg, listed in Manifest.extra_members."""
MANIFEST_SUFFIX = ".manifest.json"


def class_histogram(label_HW: np.ndarray) -> list[int]:
    """Pixel count per trainId (ignore excluded)."""
    counts = np.bincount(label_HW.reshape(-1), minlength=256)
    return [int(c) for c in counts[:NUM_CLASSES]]


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_sample(key: str, image_HW3: np.ndarray, label_HW: np.ndarray | None,
                  meta: dict[str, Any], *, image_format: str = "png", day_HW3: np.ndarray | None = None
                  ) -> dict[str, Any]:
    """Build the member dict for TarWriter.write. Member order is fixed by TarWriter (sorted keys). ``day_HW3``
    (a night image's paired daytime image, the image's size) becomes the {key}.day.<image_format> member."""
    if not key or "." in key:
        raise SchemaError(f"sample key {key!r} must be non-empty and dot-free: readers split member names "
                          f"at the first dot ({key!r}.{LABEL_EXT} would not group with its image)")
    if image_HW3.dtype != np.uint8 or image_HW3.ndim != 3 or image_HW3.shape[2] != 3:
        raise SchemaError(f"sample {key!r}: image must be uint8 HxWx3, got {image_HW3.dtype} {image_HW3.shape}")
    meta = dict(meta, size=[int(image_HW3.shape[0]), int(image_HW3.shape[1])])
    if image_format not in IMAGE_EXTS:
        raise SchemaError(f"image_format must be one of {IMAGE_EXTS}, got {image_format!r}")
    sample = {"__key__": key, image_format: _encode_image(image_HW3, image_format)}
    if day_HW3 is not None:
        if day_HW3.dtype != np.uint8 or day_HW3.shape != image_HW3.shape:
            raise SchemaError(f"sample {key!r}: the day image must be uint8 {image_HW3.shape} as the image, got "
                              f"{day_HW3.dtype} {day_HW3.shape}")
        sample[f"{DAY}.{image_format}"] = _encode_image(day_HW3, image_format)
    if label_HW is not None:
        check_label_size(key, label_HW, image_HW3.shape[:2])
        if label_HW.shape != image_HW3.shape[:2]:
            meta["label_size"] = [int(label_HW.shape[0]), int(label_HW.shape[1])]
        sample[LABEL_EXT] = encode_png(label_HW)
        meta["class_hist"] = class_histogram(label_HW)
    sample["json"] = json.dumps(meta, sort_keys=True).encode()
    return sample


def _encode_image(image_HW3: np.ndarray, image_format: str) -> bytes:
    if image_format == "png":
        return encode_png(image_HW3)
    buf = io.BytesIO()
    Image.fromarray(image_HW3).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def decode_day(sample: dict[str, Any], size_hw: tuple[int, int]) -> np.ndarray:
    """The paired daytime image (uint8 HxWx3) from raw tar members; SchemaError when the sample has none or its
    size is not ``size_hw`` (its image's)."""
    key = sample.get("__key__", "?")
    members = [f"{DAY}.{ext}" for ext in IMAGE_EXTS if f"{DAY}.{ext}" in sample]
    if len(members) != 1:
        raise SchemaError(f"sample {key!r}: expected one paired day image member ({DAY}.png or {DAY}.jpg), got "
                          f"{sorted(k for k in sample if not k.startswith('__'))}")
    day_HW3 = decode_image(sample[members[0]])
    if day_HW3.shape[:2] != tuple(size_hw):
        raise SchemaError(f"sample {key!r}: day image is {day_HW3.shape[:2]}, its image {tuple(size_hw)}")
    return day_HW3


def decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def decode_label(data: bytes) -> np.ndarray:
    """Raw single-channel values; a label that is not 8-bit single-channel is refused, never converted."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "L":
            raise SchemaError(f"label PNG must be 8-bit single-channel ('L'), got mode {img.mode!r}")
        return np.asarray(img)


def decode_sample(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(image uint8 HxWx3, label uint8 HxW or None, meta) from raw tar members (bytes)."""
    key = sample.get("__key__", "?")
    exts = [e for e in IMAGE_EXTS if e in sample]
    if len(exts) != 1:
        raise SchemaError(f"sample {key!r}: expected exactly one image member of {IMAGE_EXTS}, got {sorted(sample)}")
    image = decode_image(sample[exts[0]])
    label = decode_label(sample[LABEL_EXT]) if LABEL_EXT in sample else None
    meta = json.loads(sample["json"]) if "json" in sample else {}
    if label is not None:
        check_label_size(key, label, image.shape[:2])
        if list(label.shape) != list(meta.get("label_size", image.shape[:2])):
            raise SchemaError(f"sample {key!r}: label is {label.shape}, its json says {meta.get('label_size')}")
    return image, label, meta


def check_label_size(key: str, label_HW: np.ndarray, image_hw: tuple[int, int]) -> None:
    """A label is uint8 HxW, at the image's size or at another (the published resolution of a resized image:
    training resizes it to the image, scoring upsamples the prediction to it)."""
    if label_HW.dtype != np.uint8 or label_HW.ndim != 2 or min(label_HW.shape) < 1:
        raise SchemaError(f"sample {key!r}: label must be uint8 HxW, got {label_HW.dtype} {label_HW.shape} "
                          f"(image {tuple(image_hw)})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleIndex:
    """Where one sample lies in its shard: its tar members are the bytes [offset, offset + size)."""

    key: str
    offset: int
    size: int
    class_pixels: tuple[int, ...] = ()
    """Pixels per trainId in the stored label (empty for unlabeled samples)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardInfo:
    url: str
    num_samples: int
    samples: tuple[SampleIndex, ...] = ()
    """The per-sample index (empty in manifests written before it existed)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    dataset: str
    split: str
    labeled: bool
    shards: tuple[ShardInfo, ...]
    class_pixels: tuple[int, ...]
    location: str = ""  # where the manifest was read from; shard URLs resolve relative to its folder
    extra_members: tuple[str, ...] = ()
    """Optional members every sample of the split carries: ("day",) for night images with their day pairs."""

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def urls(self) -> list[str]:
        base = os.path.dirname(self.location)
        return [s.url if ("://" in s.url or os.path.isabs(s.url) or not base) else os.path.join(base, s.url)
                for s in self.shards]

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("location")
        if not self.extra_members:
            d.pop("extra_members")  # manifests without extras read as before
        d["num_samples"] = self.num_samples
        for shard in d["shards"]:  # one line per sample keeps a 25k-sample manifest readable and small
            shard["samples"] = [[s["key"], s["offset"], s["size"], s["class_pixels"]] for s in shard["samples"]]
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, location: str = "") -> "Manifest":
        try:
            d = json.loads(text)
            shards = tuple(ShardInfo(url=s["url"], num_samples=int(s["num_samples"]),
                                     samples=tuple(_sample_index(*row) for row in s.get("samples", ())))
                           for s in d["shards"])
            return cls(dataset=d["dataset"], split=d["split"], labeled=bool(d["labeled"]), shards=shards,
                       class_pixels=tuple(int(c) for c in d["class_pixels"]), location=location,
                       extra_members=tuple(str(m) for m in d.get("extra_members", ())))
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(f"manifest {location or '<text>'} is malformed: {e!r}") from e


def _sample_index(key: str, offset: int, size: int, class_pixels: list[int]) -> SampleIndex:
    return SampleIndex(key=str(key), offset=int(offset), size=int(size),
                       class_pixels=tuple(int(c) for c in class_pixels))


def read_manifest(location: str) -> Manifest:
    """A manifest from a local path or an s3:// URL."""
    if location.startswith("s3://"):
        from uda_dist.data import s3

        return Manifest.from_json(s3.read_bytes(location).decode(), location=location)
    with open(location) as f:
        return Manifest.from_json(f.read(), location=location)


def manifest_name(dataset: str, split: str) -> str:
    return f"{dataset}-{split}{MANIFEST_SUFFIX}"


def write_shards(samples: Iterable[dict[str, Any]], out_dir: str, *, dataset: str, split: str,
                 labeled: bool, max_per_shard: int = 100,
                 on_shard: Callable[[str], None] | None = None, extra_members: tuple[str, ...] = ()) -> Manifest:
    """Write encoded samples (from encode_sample) to {out_dir}/{dataset}-{split}-NNNNNN.tar and the manifest
    {out_dir}/{dataset}-{split}.manifest.json (written last, atomically, so its presence means complete).
    ``on_shard(path)`` is called as each shard is complete (the shard builder uploads it from there).
    ``extra_members`` (("day",)): members every sample must carry, recorded in the manifest."""
    os.makedirs(out_dir, exist_ok=True)
    shards: list[ShardInfo] = []
    keys: set[str] = set()
    for index, chunk in enumerate(_chunks(samples, max_per_shard)):
        name = f"{dataset}-{split}-{index:06d}.tar"
        shards.append(ShardInfo(url=name, num_samples=len(chunk),
                                samples=write_tar(chunk, os.path.join(out_dir, name), labeled=labeled, keys=keys,
                                                  extra_members=extra_members)))
        if on_shard is not None:
            on_shard(os.path.join(out_dir, name))
    if not shards:
        raise SchemaError(f"{dataset}/{split}: no samples to write")
    path = os.path.join(out_dir, manifest_name(dataset, split))
    manifest = dataclasses.replace(manifest_of(shards, dataset=dataset, split=split, labeled=labeled, location=path),
                                   extra_members=tuple(extra_members))
    save_manifest(manifest)
    return manifest


def manifest_of(shards: Iterable[ShardInfo], *, dataset: str, split: str, labeled: bool, location: str) -> Manifest:
    """The manifest of written shards: the split's class pixels summed from its samples' histograms."""
    shards = tuple(shards)
    class_pixels = np.zeros(NUM_CLASSES, dtype=np.int64)
    for sample in (s for shard in shards for s in shard.samples if s.class_pixels):
        class_pixels += sample.class_pixels
    return Manifest(dataset=dataset, split=split, labeled=labeled, shards=shards,
                    class_pixels=tuple(int(c) for c in class_pixels), location=location)


def save_manifest(manifest: Manifest) -> None:
    """Write the manifest at its location, a local path (to a temporary name, then renamed) or an s3:// URL
    (one PUT): write it after its shards, so its presence means the split is complete."""
    from uda_dist.data import s3

    s3.put(manifest.location, manifest.to_json().encode())


def write_tar(chunk: list[dict[str, Any]], path: str, *, labeled: bool, keys: set[str],
              extra_members: tuple[str, ...] = ()) -> tuple[SampleIndex, ...]:
    """One shard, written to a temporary name and renamed; returns the index of its samples. The byte range
    of a sample comes from the tar writer's own offset before and after it (tarfile pads members to 512 B)."""
    import webdataset as wds

    index = []
    with open(path + ".tmp", "wb") as stream, wds.TarWriter(stream, mtime=SHARD_MTIME) as writer:
        for sample in chunk:
            key = sample["__key__"]
            if labeled != (LABEL_EXT in sample):
                raise SchemaError(f"sample {key!r}: labeled={labeled} but label member "
                                  f"{'missing' if labeled else 'present'}")
            for extra in extra_members:
                if not any(member.split(".")[0] == extra for member in sample if not member.startswith("__")):
                    raise SchemaError(f"sample {key!r}: no {extra!r} member, which every sample of the split carries")
            if key in keys:
                raise SchemaError(f"sample key {key!r} appears twice in the split")
            keys.add(key)
            start = writer.tarstream.offset
            writer.write(sample)
            hist = json.loads(sample["json"]).get("class_hist", []) if labeled else []
            index.append(SampleIndex(key=key, offset=start, size=writer.tarstream.offset - start,
                                     class_pixels=tuple(int(c) for c in hist)))
    os.replace(path + ".tmp", path)
    return tuple(index)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
