"""The published on-disk layouts of GTA5, SYNTHIA, Cityscapes, Dark Zurich and ACDC (../../shared/DATASETS.md)
as lists of samples (image path, label path, how to decode the label), and their loading.

Keys are unique within a split and dot-free (the shard contract): GTA5 and SYNTHIA the file stem,
Cityscapes "{city}_{seq}_{frame}", Dark Zurich and ACDC "{condition}-{stem}" (so an all-conditions split
stays unique). A split without public labels (Cityscapes test, Dark Zurich train, ACDC test) is unlabeled.
Files beside the labels that are not labels to train on (Cityscapes *_color, *_instanceIds, *_polygons.json;
ACDC *_labelColor, *_labelIds, *_invIds; Dark Zurich corresp/) are never matched.
"""
from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
from PIL import Image

from shards import labels

LAYOUTS = ("gta5", "synthia", "cityscapes", "darkzurich", "acdc")
_SPLITS = {"gta5": ("train",), "synthia": ("train",), "cityscapes": ("train", "val", "test"),
           "darkzurich": ("train", "val"), "acdc": ("train", "val", "test")}
_CONDITIONS = {"darkzurich": ("night", "twilight", "day"), "acdc": ("fog", "night", "rain", "snow")}
_UNLABELED = {("cityscapes", "test"), ("darkzurich", "train"), ("acdc", "test")}
_DECODERS = {"gta5": labels.gta5_label, "synthia": labels.synthia_label, "cityscapes": labels.cityscapes_label,
             "trainid": labels.trainid_label}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceSample:
    key: str
    image: str
    label: str | None
    decoder: str
    """How to read ``label``: one of "gta5", "synthia", "cityscapes", "trainid"."""
    relpath: str
    """The image path relative to the dataset root (kept in the shard's json)."""


def splits(layout: str) -> tuple[str, ...]:
    _check_layout(layout)
    return _SPLITS[layout]


def conditions(layout: str) -> tuple[str, ...]:
    _check_layout(layout)
    return _CONDITIONS.get(layout, ())


def dataset_name(layout: str, condition: str | None = None) -> str:
    """"gta5", "cityscapes", "darkzurich-night", "acdc" (all conditions), ..."""
    return layout if condition is None else f"{layout}-{condition}"


def list_samples(layout: str, root: str, split: str, *, condition: str | None = None,
                 labels: bool = True) -> list[SourceSample]:
    """The split's samples sorted by key; ValueError naming the path for anything that breaks the layout."""
    _check_layout(layout)
    if split not in _SPLITS[layout]:
        raise ValueError(f"{layout} has splits {_SPLITS[layout]}, not {split!r}")
    if condition is not None and condition not in _CONDITIONS.get(layout, ()):
        raise ValueError(f"{layout} has conditions {_CONDITIONS.get(layout, ())}, not {condition!r}")
    if not os.path.isdir(root):
        raise ValueError(f"dataset root {root!r} is not a folder")
    samples = _LISTERS[layout](os.path.abspath(root), split, condition)
    if not labels or (layout, split) in _UNLABELED:
        samples = [dataclasses.replace(s, label=None) for s in samples]
    if not samples:
        raise ValueError(f"no {layout} {split} images under {root!r} (condition {condition})")
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{layout} {split}: duplicate keys {sorted({k for k in keys if keys.count(k) > 1})[:5]}")
    return sorted(samples, key=lambda s: s.key)


def load_sample(sample: SourceSample) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(image uint8 HxWx3, trainIds uint8 HxW or None, meta). A label of another size than its image (some
    GTA5 pairs) is resized to the image with nearest and meta["label_resized_from"] records its size."""
    with Image.open(sample.image) as image:
        image_HW3 = np.asarray(image.convert("RGB"))
    meta: dict = {"relpath": sample.relpath}
    if sample.label is None:
        return image_HW3, None, meta
    label_HW = _DECODERS[sample.decoder](sample.label)
    if label_HW.shape != image_HW3.shape[:2]:
        meta["label_resized_from"] = list(label_HW.shape)
        height, width = image_HW3.shape[:2]
        label_HW = np.asarray(Image.fromarray(label_HW).resize((width, height), Image.NEAREST))
    return image_HW3, label_HW, meta


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")


def _need_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise ValueError(f"expected folder {path!r} (see DATASETS.md for the layout)")
    return path


def _paired(root: str, images: list[str], label_of, key_of, decoder: str, labeled: bool) -> list[SourceSample]:
    """Samples of image paths with their labels (label_of(image) -> path); a missing label is an error."""
    samples = []
    for image in images:
        label = label_of(image) if labeled else None
        if label is not None and not os.path.isfile(label):
            raise ValueError(f"image {image} has no label file {label}")
        samples.append(SourceSample(key=key_of(image), image=image, label=label, decoder=decoder,
                                    relpath=os.path.relpath(image, root)))
    return samples


def _check_orphans(label_dir: str, pattern: str, expected: set[str]) -> None:
    orphans = sorted(set(glob.glob(os.path.join(label_dir, pattern), recursive=True)) - expected)
    if orphans:
        raise ValueError(f"label {orphans[0]} has no image ({len(orphans)} labels without images)")


def _gta5_like(root: str, image_dir: str, label_dir: str, decoder: str) -> list[SourceSample]:
    images = sorted(glob.glob(os.path.join(_need_dir(os.path.join(root, image_dir)), "*.png")))
    label_root = _need_dir(os.path.join(root, label_dir))
    samples = _paired(root, images, lambda p: os.path.join(label_root, os.path.basename(p)),
                      lambda p: os.path.splitext(os.path.basename(p))[0], decoder, True)
    _check_orphans(label_root, "*.png", {s.label for s in samples})
    return samples


def _gta5(root: str, split: str, condition: str | None) -> list[SourceSample]:
    return _gta5_like(root, "images", "labels", "gta5")


def _synthia(root: str, split: str, condition: str | None) -> list[SourceSample]:
    return _gta5_like(root, "RGB", os.path.join("GT", "LABELS"), "synthia")


def _cityscapes(root: str, split: str, condition: str | None) -> list[SourceSample]:
    image_root = _need_dir(os.path.join(root, "leftImg8bit", split))
    images = sorted(glob.glob(os.path.join(image_root, "*", "*_leftImg8bit.png")))
    labeled = ("cityscapes", split) not in _UNLABELED
    label_root = os.path.join(root, "gtFine", split)
    if labeled:
        _need_dir(label_root)

    def label_of(image: str) -> str:
        rel = os.path.relpath(image, image_root)
        return os.path.join(label_root, rel.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))

    samples = _paired(root, images, label_of, lambda p: os.path.basename(p)[: -len("_leftImg8bit.png")],
                      "cityscapes", labeled)
    if labeled:
        _check_orphans(label_root, os.path.join("*", "*_gtFine_labelIds.png"), {s.label for s in samples})
    return samples


def _anon(root: str, image_root: str, label_root: str, split_labeled: bool, conds: tuple[str, ...],
          layout: str) -> list[SourceSample]:
    """Dark Zurich / ACDC: {image_root}/{cond}/GOPRxxxx/*_rgb_anon.png, labels *_gt_labelTrainIds.png."""
    samples = []
    for cond in conds:
        cond_images = os.path.join(image_root.format(cond=cond))
        if not os.path.isdir(cond_images):
            continue
        images = sorted(glob.glob(os.path.join(cond_images, "*", "*_rgb_anon.png")))
        cond_labels = label_root.format(cond=cond)
        if split_labeled:
            _need_dir(cond_labels)

        def label_of(image: str, cond_images=cond_images, cond_labels=cond_labels) -> str:
            rel = os.path.relpath(image, cond_images)
            return os.path.join(cond_labels, rel.replace("_rgb_anon.png", "_gt_labelTrainIds.png"))

        def key_of(image: str, cond=cond) -> str:
            return f"{cond}-{os.path.basename(image)[: -len('_rgb_anon.png')]}"

        found = _paired(root, images, label_of, key_of, "trainid", split_labeled)
        if split_labeled:
            _check_orphans(cond_labels, os.path.join("*", "*_gt_labelTrainIds.png"), {s.label for s in found})
        samples += found
    if not samples:
        raise ValueError(f"no {layout} images under {image_root.format(cond='{' + ','.join(conds) + '}')}")
    return samples


def _darkzurich(root: str, split: str, condition: str | None) -> list[SourceSample]:
    if split == "train":
        base = _need_dir(os.path.join(root, "Dark_Zurich_train_anon"))
        return _anon(root, os.path.join(base, "rgb_anon", "train", "{cond}"), "", False,
                     (condition,) if condition else _CONDITIONS["darkzurich"], "darkzurich")
    if condition not in (None, "night"):
        raise ValueError(f"Dark Zurich val holds night images only, not {condition!r}")
    base = _need_dir(os.path.join(root, "Dark_Zurich_val_anon"))
    return _anon(root, os.path.join(base, "rgb_anon", "val", "{cond}"), os.path.join(base, "gt", "val", "{cond}"),
                 True, ("night",), "darkzurich")


def _acdc(root: str, split: str, condition: str | None) -> list[SourceSample]:
    _need_dir(os.path.join(root, "rgb_anon"))
    return _anon(root, os.path.join(root, "rgb_anon", "{cond}", split), os.path.join(root, "gt", "{cond}", split),
                 split != "test", (condition,) if condition else _CONDITIONS["acdc"], "acdc")


_LISTERS = {"gta5": _gta5, "synthia": _synthia, "cityscapes": _cityscapes, "darkzurich": _darkzurich, "acdc": _acdc}
