"""Encoder: a timm ``features_only`` backbone by name, with weights from a local file only.

Shapes: B batch, H,W image, h,w feature grid of one level, C channels of one level.

What it provides, and what differs on purpose from the reference code:
- DAFormer (Hoyer et al., CVPR 2022; lhoyer/DAFormer) and SePiCo (BIT-DA/SePiCo) use SegFormer's MiT-B5 or
  a ResNet-101 (ResNetV1c, dilations (1, 1, 2, 4)) from mmseg. timm has no model named MiT, but its
  ``pvt_v2_b5`` is MiT-B5's architecture exactly and SegFormer's ``mit_b5.pth`` loads into it (see
  uda_dist/model/weights.py for the renames and how they were checked); mmseg's ResNetV1c is timm's
  ``resnet101c``, torchvision's ResNet-101 (FADA) timm's ``resnet101``. DeepLab-V2's output stride 8 is
  timm's ``output_stride=8``, which dilates the last two ResNet stages instead of striding them.
- Always the LAST FOUR feature levels (``out_indices=(-4, -3, -2, -1)``): ResNets, EfficientNets and
  MobileNets expose 5 levels (strides 2..32), ConvNeXt and PVTv2 expose 4 (strides 4..32). Heads see
  exactly four levels; the lowest stride is that of the first of them (4 for all families above).
- Weights never come from a hub: ``pretrained=False`` is always passed to timm, and ``load_backbone_weights``
  reads a local ``.pth``/``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors`` file. A file in a
  layout the papers publish (SegFormer MiT, mmseg ResNetV1c, torchvision ResNet; recognised by its keys) is
  renamed to timm's names and must fill the backbone exactly: every backbone tensor, every file entry but
  the classifier. Any other file is taken as timm-named: a classifier checkpoint of the same timm
  architecture loads (classifier keys reported as unexpected), and it fails loudly when less than
  ``min_loaded_fraction`` of the backbone's tensors match by name and shape (default 0.9: a half-loaded
  backbone is a silent bug, not a warning). Either way timm's ``features_only`` renames (``stages.0`` ->
  ``stages_0`` for flattened sequentials such as ConvNeXt and PVTv2; a ``model.`` prefix for getter-wrapped
  models such as ViT) are undone by trying candidate names.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from uda_dist import safe_load
from uda_dist.model import weights

from uda_dist._compat import ensure_torchvision_importable

ensure_torchvision_importable()
import timm  # noqa: E402  (must follow the torchvision fix above)

_LOG = logging.getLogger(__name__)
NUM_LEVELS = 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """timm ``features_only`` encoder returning the last four feature levels, shallowest first."""

    def __init__(self, name: str, *, output_stride: int = 32, drop_path: float = 0.0):
        super().__init__()
        self.name = name
        self.model = _create_features_model(name, output_stride=output_stride, drop_path=drop_path)
        info = self.model.feature_info
        self.channels: tuple[int, ...] = tuple(info.channels())
        self.strides: tuple[int, ...] = tuple(info.reduction())
        if len(self.channels) != NUM_LEVELS:
            raise ValueError(f"backbone {name!r} gives {len(self.channels)} feature levels; {NUM_LEVELS} are needed")
        if output_stride != 32 and self.strides[-1] != output_stride:
            raise ValueError(
                f"backbone {name!r} ignored output_stride={output_stride}: its last level has stride "
                f"{self.strides[-1]}; use output_stride=32 with this backbone"
            )
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        self.mean: tuple[float, ...] = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std: tuple[float, ...] = tuple(cfg.get("std", IMAGENET_STD))

    def forward(self, image_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """Normalised image -> [feat_BChw] for the four levels, shallowest (highest resolution) first.

        Features come back in the image's memory format: timm's ConvNeXt emits channels_last maps, which made
        the DAFormer head 1.7x slower on CPU (measured); a channels_last image keeps channels_last features.
        """
        channels_last = not image_B3HW.is_contiguous() and image_B3HW.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return [feat_BChw.contiguous(memory_format=fmt) for feat_BChw in self.model(image_B3HW)]


def check_backbone_name(name: str) -> None:
    """ValueError naming the closest timm models when ``name`` is not one."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
        raise ValueError(f"unknown timm model {name!r} for model.backbone ({hint})")


def _create_features_model(name: str, *, output_stride: int, drop_path: float) -> nn.Module:
    """timm.create_model(features_only) with clear errors for unsupported names / strides / drop path."""
    check_backbone_name(name)
    kwargs: dict = {}
    if output_stride != 32:
        kwargs["output_stride"] = output_stride
    if drop_path > 0:
        kwargs["drop_path_rate"] = drop_path
    try:
        return timm.create_model(
            name, pretrained=False, features_only=True, out_indices=tuple(range(-NUM_LEVELS, 0)), **kwargs
        )
    except (TypeError, AssertionError) as err:
        if "output_stride" in kwargs and ("output_stride" in str(err) or isinstance(err, AssertionError)):
            raise ValueError(
                f"backbone {name!r} does not support output_stride={output_stride} ({err!r}); "
                "timm ResNets, ConvNeXts, EfficientNets and MobileNets do, transformers such as pvt_v2 do not"
            ) from err
        if "drop_path_rate" in str(err):
            raise ValueError(f"backbone {name!r} does not support drop_path > 0 ({err!r})") from err
        raise
    except RuntimeError as err:
        raise ValueError(f"timm model {name!r} cannot be built with features_only=True: {err}") from err


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What ``load_backbone_weights`` did: counts of backbone tensors and checkpoint entries."""

    path: str
    loaded: int
    """Backbone tensors (parameters and buffers) copied from the file."""
    missing: int
    """Backbone tensors with no same-named entry in the file (they keep their random init)."""
    mismatched: int
    """Backbone tensors whose same-named entry has another shape (not loaded)."""
    unexpected: int
    """File entries no backbone tensor used (e.g. the classifier of a classification checkpoint)."""
    missing_keys: tuple[str, ...] = ()
    """Names of the missing and mismatched tensors (first 20)."""
    format: str = "timm"
    """The file's layout (``uda_dist.model.weights.FORMATS``), recognised by its keys."""


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a local ``.pth``/``.pt``/``.safetensors`` file; unwraps "state_dict"/"model", strips "module."."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weight file {path!r} does not exist (weights are never downloaded)")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"reading {path!r} needs the safetensors package") from err
        obj: object = load_file(path, device="cpu")
    elif path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        obj = safe_load.load_tensors(path)
    else:
        raise ValueError(f"pretrained weight file {path!r}: expected .pth, .pt, .bin, .ckpt or .safetensors")
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"pretrained weight file {path!r} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _candidate_names(key: str) -> Iterator[str]:
    """Names a features_only tensor may have had in the full timm model (first match wins)."""
    for name in (key, key[len("model."):] if key.startswith("model.") else None):
        if name is None:
            continue
        yield name
        head, sep, rest = name.partition(".")
        for i, char in enumerate(head):  # flattened sequential: "stages_0.x" was "stages.0.x"
            if char == "_":
                yield f"{head[:i]}.{head[i + 1:]}{sep}{rest}"


@dataclasses.dataclass(frozen=True)
class TensorMatch:
    """How a backbone's tensors pair with a timm-named state dict, by name (``_candidate_names``) and shape."""

    matched: dict[str, torch.Tensor]
    """Backbone key -> the file's tensor of the same name and shape."""
    missing: tuple[str, ...]
    """Backbone keys with no entry in the file (a BatchNorm's absent ``num_batches_tracked`` is not one)."""
    misshaped: tuple[tuple[str, str], ...]
    """(backbone key, file name) pairs of the same name and another shape."""
    unused: tuple[str, ...]
    """File names no backbone tensor took."""
    optional: int = 0
    """Backbone ``num_batches_tracked`` counters the file lacks (they keep 0; older files have none)."""


def match_tensors(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]) -> TensorMatch:
    """Pair each ``target`` (backbone state dict) entry with the ``source`` entry of its name; shapes only."""
    matched: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    misshaped: list[tuple[str, str]] = []
    taken: set[str] = set()
    optional = 0
    for key, tensor in target.items():
        found = next((name for name in _candidate_names(key) if name in source), None)
        if found is None and key.endswith(".num_batches_tracked"):
            optional += 1
        elif found is None:
            missing.append(key)
        elif source[found].shape != tensor.shape:
            misshaped.append((key, found))
        else:
            matched[key] = source[found]
        taken.add(found or "")
    unused = tuple(name for name in source if name not in taken)
    return TensorMatch(matched, tuple(missing), tuple(misshaped), unused, optional)


def _file_key(fmt: str, key: str) -> str:
    """A backbone key as a file of format ``fmt`` names it, with the backbone's name when that differs."""
    for name in _candidate_names(key):
        if (inverse := weights.file_name(fmt, name)) != name:
            return f"{inverse} (backbone {key})"
    return key


def _count(items: tuple, noun: str, plural: str = "") -> str:
    return f"1 {noun}" if len(items) == 1 else f"{len(items)} {plural or noun + 's'}"


def _strict_problems(converted: weights.Converted, match: TensorMatch, target: Mapping[str, torch.Tensor]) -> str:
    """What keeps a known-format file from filling the backbone exactly ('' when nothing does)."""
    parts = []
    if match.missing:
        first = ", ".join(_file_key(converted.format, key) for key in match.missing[:3])
        parts.append(f"{_count(match.missing, 'backbone tensor')} not in the file, first: {first}")
    if match.misshaped:
        first = ", ".join(f"{converted.origin[name]} {tuple(converted.tensors[name].shape)} for {key} "
                          f"{tuple(target[key].shape)}" for key, name in match.misshaped[:3])
        parts.append(f"{_count(match.misshaped, 'file tensor')} of another shape, first: {first}")
    if match.unused:
        first = ", ".join(converted.origin[name] for name in match.unused[:3])
        parts.append(f"{_count(match.unused, 'file entry', 'file entries')} unused (not the classifier), "
                     f"first: {first}")
    return "; ".join(parts)


def fit_weights(backbone_name: str, target: Mapping[str, torch.Tensor], path: str, *,
                min_loaded_fraction: float = 0.9) -> tuple[TensorMatch, LoadReport]:
    """The tensors of ``path`` that go into a backbone whose state dict is ``target`` (tensors or meta tensors:
    only names and shapes are read), and the counts; ValueError when the file does not fit.

    A file in a known layout (``weights.FORMATS``: SegFormer MiT, mmseg ResNetV1c, torchvision ResNet) is
    renamed to timm's names and must fill the backbone exactly: every backbone tensor from the file with its
    shape, every file entry but the classifier used. Any other file is taken as timm-named and fits when
    ``min_loaded_fraction`` of the backbone's tensors match by name and shape.
    """
    state = read_state_dict(path)
    try:
        converted = weights.to_timm(state)
    except ValueError as err:
        raise ValueError(f"pretrained weight file {path!r} {err}") from None
    match = match_tensors(target, converted.tensors)
    report = LoadReport(
        path=path, loaded=len(match.matched), missing=len(match.missing), mismatched=len(match.misshaped),
        unexpected=len(match.unused) + len(converted.classifier),
        missing_keys=tuple([*match.missing, *(key for key, _ in match.misshaped)][:20]), format=converted.format,
    )
    spec = weights.FORMATS[converted.format]
    if spec.strict and (problems := _strict_problems(converted, match, target)):
        raise ValueError(f"pretrained weight file {path!r} ({spec.description}) does not fit backbone "
                         f"{backbone_name!r}: {problems}")
    if not spec.strict and len(match.matched) < min_loaded_fraction * (len(target) - match.optional):
        raise ValueError(
            f"pretrained weight file {path!r} does not fit backbone {backbone_name!r}: only {report.loaded} of "
            f"{len(target)} tensors match by name and shape ({report.mismatched} differ in shape, "
            f"{report.unexpected} file entries unused); first unmatched: {list(report.missing_keys[:5])}"
        )
    return match, report


def load_backbone_weights(backbone: Backbone, path: str, *, min_loaded_fraction: float = 0.9) -> LoadReport:
    """Copy the tensors of ``path`` into ``backbone`` (``fit_weights`` says which, or why not); the counts."""
    match, report = fit_weights(backbone.name, backbone.model.state_dict(), path,
                                min_loaded_fraction=min_loaded_fraction)
    backbone.model.load_state_dict(match.matched, strict=False)
    _LOG.info("loaded %s into %s: %s", path, backbone.name, report)
    return report
