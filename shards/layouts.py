"""The published on-disk layouts of GTA5, SYNTHIA, Cityscapes, Dark Zurich and ACDC as
sorted lists of samples (image path, label path, how to decode the label), and their loading.

  gta5        images/{stem}.png + labels/{stem}.png (palette)                     key "{stem}"
  synthia     RGB/{stem}.png + GT/LABELS/{stem}.png (16-bit RGB)                  key "{stem}"
  cityscapes  leftImg8bit/{split}/{city}/{id}_leftImg8bit.png
              + gtFine/{split}/{city}/{id}_gtFine_labelIds.png                    key "{city}_{seq}_{frame}"
  darkzurich  one folder per archive, as downloaded:
              Dark_Zurich_train_anon/rgb_anon/train/{cond}/{seq}/{id}_rgb_anon.png (unlabeled),
              Dark_Zurich_val_anon/rgb_anon/val/night/{seq}/{id}_rgb_anon.png
              + Dark_Zurich_val_anon/gt/val/night/{seq}/{id}_gt_labelTrainIds.png key "{cond}-{id}"
              or unpacked into one folder (mmsegmentation's data/dark_zurich):
              rgb_anon/{train,val}/{cond}/{seq}/{id}_rgb_anon.png
              + gt/val/night/{seq}/{id}_gt_labelTrainIds.png                      key "{cond}-{id}"
              --day-pairs: corresp/train/night/*.csv (beside rgb_anon/) pairs each night train image
              with a daytime image, stored with it (rows "train/night/{seq}/{id},train/day/{seq}/{id}")
  acdc        rgb_anon/{cond}/{split}/{seq}/{id}_rgb_anon.png
              + gt/{cond}/{split}/{seq}/{id}_gt_labelTrainIds.png                 key "{cond}-{id}"
Keys are unique within a split and dot-free (the shard contract); the condition in Dark Zurich / ACDC keys
keeps an all-conditions split unique. A Dark Zurich root's layout is told by its top folders:
Dark_Zurich_{train,val}_anon/ (per archive) or rgb_anon/ and gt/ (unpacked); both or neither is an error
naming what was looked for. Either way the keys are the same (only the recorded relpath differs).
"All conditions" (condition None) means the condition folders present, so a partial download (say ACDC fog
and night only) works; a condition asked for by name must be there.
Dark Zurich's night train images can be listed with their daytime images (``day_pairs=True``, SePiCo's
day/night pseudo-label fusion after DANNet): the csv files under corresp/train/night/ (next to rgb_anon/,
in either layout) hold one row per night image, "train/night/{seq}/{id},train/day/{seq}/{id}", paths under
rgb_anon/ without the "_rgb_anon.png" suffix (a leading "/" or the suffix is accepted too); each night image
gets the day image of its row. A night image without a row, two rows that disagree, or a day image that is
not there raises ValueError naming it.
Cityscapes test, Dark Zurich train and ACDC test have no public labels: they are listed unlabeled. Only files
with the suffixes above, exactly that many folders down, are matched, so the siblings that are not labels to
train on (Cityscapes *_color / *_instanceIds / *_polygons.json and its dummy test labels, ACDC / Dark Zurich
*_labelColor / *_labelIds / *_invIds, ACDC *_ref folders, Dark Zurich corresp/, gps/ and val_ref/) are never
read. Anything else that breaks the layout (a missing folder, an image without its label or the reverse, a
dot in a key, a duplicate key, an empty split) raises ValueError naming the path; so does an image or label
file that cannot be decoded to its last pixel (empty, truncated, not an image): load_sample decodes fully.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from shards import labels as label_files

LAYOUTS = ("gta5", "synthia", "cityscapes", "darkzurich", "acdc")
_SPLITS = {"gta5": ("train",), "synthia": ("train",), "cityscapes": ("train", "val", "test"),
           "darkzurich": ("train", "val"), "acdc": ("train", "val", "test")}
_CONDITIONS = {"darkzurich": ("night", "twilight", "day"), "acdc": ("fog", "night", "rain", "snow")}
_SPLIT_CONDITIONS = {("darkzurich", "val"): ("night",)}
"""Splits that hold only some of their layout's conditions."""
_UNLABELED = {("cityscapes", "test"), ("darkzurich", "train"), ("acdc", "test")}
RGB_ANON, TRAINIDS = "_rgb_anon.png", "_gt_labelTrainIds.png"
DARKZURICH_ARCHIVES = ("Dark_Zurich_train_anon", "Dark_Zurich_val_anon")
"""Top folders of a Dark Zurich root kept one folder per archive."""
DARKZURICH_UNPACKED = ("rgb_anon", "gt")
"""Top folders of a Dark Zurich root unpacked into one folder (mmsegmentation's data/dark_zurich)."""
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error)
"""What Pillow (and shards.labels) raise for a file that is missing, empty, truncated or not an image."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceSample:
    key: str
    """Unique within the split and dot-free: "00001", "aachen_000000_000019", "night-GOPR0356_frame_000321"."""
    image: str
    """Absolute path of the RGB image."""
    label: str | None
    """Absolute path of the label file; None for unlabeled splits (or when listed with labels=False)."""
    decoder: str
    """How to read `label`: one of "gta5", "synthia", "cityscapes", "trainid" (shards.labels.DECODERS)."""
    relpath: str
    """The image path relative to the dataset root (recorded in the shard's json)."""
    day: str | None = None
    """Absolute path of the paired daytime image (Dark Zurich night train listed with day_pairs=True)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Folder:
    """One folder of a layout: images (and their labels, same relative path) `depth` subfolders down."""

    key_prefix: str
    images: str
    image_suffix: str
    labels: str | None
    label_suffix: str
    depth: int
    decoder: str


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")


def splits(layout: str) -> tuple[str, ...]:
    _check_layout(layout)
    return _SPLITS[layout]


def conditions(layout: str) -> tuple[str, ...]:
    """Dark Zurich and ACDC conditions (Dark Zurich val holds night only); () for the other layouts."""
    _check_layout(layout)
    return _CONDITIONS.get(layout, ())


def dataset_name(layout: str, condition: str | None = None) -> str:
    """"gta5", "cityscapes", "darkzurich-night", "acdc-fog"; "acdc" / "darkzurich" mean all conditions."""
    _check_condition(layout, None, condition)
    return layout if condition is None else f"{layout}-{condition}"


def _check_condition(layout: str, split: str | None, condition: str | None) -> tuple[str | None, ...]:
    """The conditions to list for (layout, split, condition): (condition,), the split's all, or (None,)."""
    _check_layout(layout)
    valid = _SPLIT_CONDITIONS.get((layout, split), _CONDITIONS.get(layout, ()))
    if condition is None:
        return valid or (None,)
    if condition not in valid:
        where = f"{layout} {split}" if split and valid != conditions(layout) else layout
        raise ValueError(f"unknown condition {condition!r} for {where}; valid conditions: "
                         f"{', '.join(valid) if valid else f'none ({layout} has no conditions)'}")
    return (condition,)


def list_samples(layout: str, root: str, split: str, *, condition: str | None = None,
                 labels: bool = True, day_pairs: bool = False) -> list[SourceSample]:
    """The split's samples, sorted by key. `condition` (Dark Zurich, ACDC) picks one condition, None all of
    them; labels=False lists the images only (label None) even for a labeled split; day_pairs=True (Dark
    Zurich night train only) gives every sample its daytime image through the correspondence files."""
    _check_layout(layout)
    if day_pairs and (layout, split, condition) != ("darkzurich", "train", "night"):
        raise ValueError("day pairs exist for Dark Zurich's night train images only: give layout darkzurich, "
                         f"split train, condition night (got {layout} {split} {condition or 'all conditions'})")
    if split not in _SPLITS[layout]:
        raise ValueError(f"unknown split {split!r} for {layout}; valid splits: {', '.join(_SPLITS[layout])}")
    wanted = _check_condition(layout, split, condition)
    if not os.path.isdir(root):
        raise ValueError(f"dataset root {root!r} is not a folder: point it at the {layout} dataset root "
                         f"(the folder that holds the published layout: python -m shards build --help)")
    labeled, root = labels and (layout, split) not in _UNLABELED, os.path.abspath(root)
    folders = [_folder(layout, root, split, cond) for cond in wanted]
    if condition is None and len(folders) > 1:
        present = [f for f in folders if os.path.isdir(f.images)]
        if not present:
            raise ValueError(f"{layout} {split}: none of the condition folders exists: "
                             f"{', '.join(f.images for f in folders)}")
        folders = present
    samples: dict[str, SourceSample] = {}
    for folder in folders:
        for sample in _folder_samples(folder if labeled else dataclasses.replace(folder, labels=None), root):
            if sample.key in samples:
                raise ValueError(f"duplicate key {sample.key!r} in {layout} {split}: {samples[sample.key].image} "
                                 f"and {sample.image}")
            samples[sample.key] = sample
    if not samples:
        raise ValueError(f"{layout} {split}: no images (*{folders[0].image_suffix}) in "
                         f"{', '.join(f.images for f in folders)}")
    listed = [samples[key] for key in sorted(samples)]
    return _with_day_images(listed, _darkzurich_base(root, split)) if day_pairs else listed


def _darkzurich_base(root: str, split: str) -> str:
    """The folder holding a Dark Zurich split's rgb_anon/, gt/ and corresp/ (the root itself when unpacked)."""
    return root if darkzurich_layout(root) == "unpacked" else os.path.join(root, f"Dark_Zurich_{split}_anon")


def correspondences(base: str) -> dict[str, str]:
    """{night image path under rgb_anon/ without suffix: its day image's}, read from every csv under
    {base}/corresp/train/night/ (Dark Zurich's GPS-matched pairs)."""
    import csv

    folder = os.path.join(base, "corresp", "train", "night")
    if not os.path.isdir(folder):
        raise ValueError(f"day pairs need Dark Zurich's correspondence files: {folder} is missing (it comes "
                         f"with the train archive, beside rgb_anon/)")
    pairs: dict[str, tuple[str, str]] = {}
    for dirpath, _, names in sorted(os.walk(folder)):
        for name in sorted(n for n in names if n.endswith(".csv")):
            path = os.path.join(dirpath, name)
            with open(path, newline="") as f:
                for line, row in enumerate(csv.reader(f), start=1):
                    if not row or not "".join(row).strip():
                        continue
                    if len(row) != 2:
                        raise ValueError(f"{path}:{line}: expected 'night image,day image', got {','.join(row)!r}")
                    night, day = (_corresp_path(cell) for cell in row)
                    where = f"{path}:{line}"
                    if night in pairs and pairs[night][0] != day:
                        raise ValueError(f"{where}: night image {night} is paired with {day} here and with "
                                         f"{pairs[night][0]} at {pairs[night][1]}")
                    pairs[night] = (day, where)
    if not pairs:
        raise ValueError(f"no correspondence rows in the csv files under {folder}")
    return {night: day for night, (day, _) in pairs.items()}


def _corresp_path(cell: str) -> str:
    """A correspondence file's image path as "train/{cond}/{seq}/{id}" (leading "/" and suffix dropped)."""
    path = cell.strip().lstrip("/")
    for suffix in (RGB_ANON, RGB_ANON[:-len(".png")]):
        if path.endswith(suffix):
            return path[:-len(suffix)]
    return path


def _with_day_images(samples: list[SourceSample], base: str) -> list[SourceSample]:
    pairs, images = correspondences(base), os.path.join(base, "rgb_anon")
    paired = []
    for sample in samples:
        night = os.path.relpath(sample.image, images)[:-len(RGB_ANON)].replace(os.sep, "/")
        if night not in pairs:
            raise ValueError(f"night image {sample.image} has no row in the correspondence files under "
                             f"{os.path.join(base, 'corresp', 'train', 'night')}")
        day = os.path.join(images, *pairs[night].split("/")) + RGB_ANON
        if not os.path.isfile(day):
            raise ValueError(f"day image {day}, paired with {sample.image} by the correspondence files, is missing")
        paired.append(dataclasses.replace(sample, day=day))
    return paired


def _folder(layout: str, root: str, split: str, cond: str | None) -> _Folder:
    """Where (layout, split, condition) keeps its images and labels."""
    j = os.path.join
    if layout in ("gta5", "synthia"):
        images, labels = ("images", "labels") if layout == "gta5" else ("RGB", j("GT", "LABELS"))
        return _Folder(key_prefix="", images=j(root, images), image_suffix=".png", labels=j(root, labels),
                       label_suffix=".png", depth=0, decoder=layout)
    if layout == "cityscapes":
        return _Folder(key_prefix="", images=j(root, "leftImg8bit", split), image_suffix="_leftImg8bit.png",
                       labels=j(root, "gtFine", split), label_suffix="_gtFine_labelIds.png", depth=1,
                       decoder="cityscapes")
    if layout == "darkzurich":
        base = _darkzurich_base(root, split)
        images, labels = j(base, "rgb_anon", split, cond), j(base, "gt", split, cond)
    else:
        images, labels = j(root, "rgb_anon", cond, split), j(root, "gt", cond, split)
    return _Folder(key_prefix=f"{cond}-", images=images, image_suffix=RGB_ANON, labels=labels,
                   label_suffix=TRAINIDS, depth=1, decoder="trainid")


def darkzurich_layout(root: str) -> str:
    """"archives" (Dark_Zurich_{train,val}_anon/ under root) or "unpacked" (rgb_anon/, gt/ under root);
    ValueError naming the folders looked for when root holds both or neither."""
    def present(names: tuple[str, ...]) -> list[str]:
        return [f"{name}/" for name in names if os.path.isdir(os.path.join(root, name))]

    archives, unpacked = present(DARKZURICH_ARCHIVES), present(DARKZURICH_UNPACKED)
    if archives and unpacked:
        raise ValueError(f"darkzurich root {root} holds both layouts: {' and '.join(archives)} (one folder per "
                         f"archive) and {' and '.join(unpacked)} (unpacked); keep one of them")
    if not archives and not unpacked:
        raise ValueError(f"darkzurich root {root} holds neither Dark_Zurich_train_anon/ or Dark_Zurich_val_anon/ "
                         f"(one folder per archive) nor rgb_anon/ and gt/ (unpacked, as mmsegmentation's "
                         f"data/dark_zurich)")
    return "archives" if archives else "unpacked"


def _folder_samples(folder: _Folder, root: str) -> list[SourceSample]:
    """Pairs images with labels by relative path; an image without a label or a label without an image is
    an error (never a silent skip)."""
    images = _find(folder.images, folder.image_suffix, folder.depth)
    found = {} if folder.labels is None else _find(folder.labels, folder.label_suffix, folder.depth)
    orphans = sorted(found.keys() - images.keys())
    if orphans:
        raise ValueError(f"label {found[orphans[0]]} has no image (expected "
                         f"{os.path.join(folder.images, orphans[0] + folder.image_suffix)}); "
                         f"{len(orphans)} labels without images")
    samples = []
    for stem, image in sorted(images.items()):
        if folder.labels is not None and stem not in found:
            raise ValueError(f"image {image} has no label file "
                             f"{os.path.join(folder.labels, stem + folder.label_suffix)}")
        key = folder.key_prefix + os.path.basename(stem)
        if "." in key or not key:
            raise ValueError(f"image {image} gives the sample key {key!r}; keys must be non-empty and dot-free")
        samples.append(SourceSample(key=key, image=image, label=found.get(stem), decoder=folder.decoder,
                                    relpath=os.path.relpath(image, root)))
    return samples


def _find(top: str, suffix: str, depth: int) -> dict[str, str]:
    """{relative path without suffix: path} of the files named *{suffix} exactly `depth` folders below top."""
    if not os.path.isdir(top):
        raise ValueError(f"expected folder {top} is missing (the published layouts: python -m shards build --help)")
    folders = [""]
    for _ in range(depth):
        folders = [os.path.join(rel, entry.name) for rel in folders for entry in os.scandir(os.path.join(top, rel))
                   if entry.is_dir()]
    return {os.path.join(rel, entry.name[:-len(suffix)]): entry.path
            for rel in folders for entry in os.scandir(os.path.join(top, rel))
            if entry.is_file() and entry.name.endswith(suffix) and len(entry.name) > len(suffix)}


def load_sample(sample: SourceSample) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(image uint8 HxWx3, trainIds uint8 HxW or None, meta). A label whose size differs from its image's
    (some GTA5 pairs) is resized to the image with nearest; meta["label_resized_from"] = its [H, W]. Every
    other label keeps its published size. A file that cannot be decoded raises ValueError naming it."""
    image_HW3 = _decoded(sample.image, "image", read_image)
    meta: dict = {"relpath": sample.relpath}
    if sample.label is None:
        return image_HW3, None, meta
    if sample.decoder not in label_files.DECODERS:
        raise ValueError(f"sample {sample.key!r}: unknown label decoder {sample.decoder!r}; valid: "
                         f"{', '.join(label_files.DECODERS)}")
    label_HW = _decoded(sample.label, "label", label_files.DECODERS[sample.decoder])
    if label_HW.shape != image_HW3.shape[:2]:
        meta["label_resized_from"] = [int(n) for n in label_HW.shape]
        height, width = image_HW3.shape[:2]
        label_HW = np.array(Image.fromarray(label_HW).resize((width, height), Image.NEAREST))
    return image_HW3, label_HW, meta


def load_day_image(sample: SourceSample, size_hw: tuple[int, int]) -> np.ndarray:
    """The sample's paired day image as uint8 HxWx3 at ``size_hw`` (its night image's size; bilinear when it
    differs); ValueError naming the file when it cannot be decoded."""
    day_HW3 = _decoded(sample.day, "day image", read_image)
    if day_HW3.shape[:2] != tuple(size_hw):
        day_HW3 = np.asarray(Image.fromarray(day_HW3).resize((size_hw[1], size_hw[0]), Image.BILINEAR))
    return day_HW3


def read_image(path: str) -> np.ndarray:
    """The image as uint8 HxWx3, decoded to its last pixel (Pillow decodes lazily: load() forces it, so a
    truncated file fails here rather than later, or not at all)."""
    with Image.open(path) as image:
        image.load()
        return np.array(image.convert("RGB"))


def _decoded(path: str, kind: str, read) -> np.ndarray:
    """read(path); a file that cannot be decoded -> one-line ValueError "{kind} {path} cannot be decoded: why"."""
    try:
        return read(path)
    except _DECODE_ERRORS as exc:
        if isinstance(exc, ValueError) and path in str(exc):
            raise  # shards.labels' refusals (a converting mode, not a PNG) name the file already
        if not os.path.isfile(path):
            reason = "the file is missing"
        elif os.path.getsize(path) == 0:
            reason = "the file is empty (0 bytes)"
        elif isinstance(exc, UnidentifiedImageError):
            reason = "not an image file Pillow can identify"
        else:
            reason = (str(exc).replace(repr(path), "").strip().splitlines() or [""])[0] or type(exc).__name__
        raise ValueError(f"{kind} {path} cannot be decoded: {reason}") from exc
