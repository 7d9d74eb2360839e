"""Weight files in the layouts the papers start from, renamed to timm's names (pure: no files, no models).

The format is recognised by the file's keys (``detect_format``), because a user points model.pretrained at a
published file and nothing else says what it is; ``to_timm(state, fmt)`` also takes the format explicitly.
The renamed names are those of the FULL timm model (``stages.1.downsample``); ``backbone.load_backbone_weights``
matches them to its ``features_only`` names (``stages_1.downsample``) and, for every format except "timm",
loads strictly: every backbone tensor must come from the file with its shape, and every file entry but the
format's classifier must be used. BatchNorm's ``num_batches_tracked`` counter may be absent (files saved
before PyTorch 0.4.1 lack it; it only matters for momentum=None BatchNorm, which no backbone here uses).

segformer_mit: SegFormer's ImageNet MiT checkpoints (NVlabs/SegFormer, ``mit_b0.pth`` .. ``mit_b5.pth``;
  DAFormer, SePiCo and PGPC start from ``mit_b5.pth``) in the names of SegFormer's
  mmseg/models/backbones/mix_transformer.py, onto timm's ``pvt_v2_*`` (timm/models/pvt_v2.py):
      patch_embed1.{proj,norm}.*           -> patch_embed.{proj,norm}.*
      patch_embed{i}.{proj,norm}.* (i=2-4) -> stages.{i-1}.downsample.{proj,norm}.*
      block{i}.{j}.*                       -> stages.{i-1}.blocks.{j}.*  (norm1, attn.q, attn.kv, attn.sr,
                                              attn.norm, attn.proj, norm2, mlp.fc1, mlp.fc2 keep their names)
      block{i}.{j}.mlp.dwconv.dwconv.*     -> stages.{i-1}.blocks.{j}.mlp.dwconv.*
      norm{i}.*                            -> stages.{i-1}.norm.*
      head.*                                  the ImageNet classifier, not used
  Checked against the sources: SegFormer's mit_b5 is depths (3, 6, 40, 3), widths (64, 128, 320, 512), heads
  (1, 2, 5, 8), MLP ratio 4, SR ratios (8, 4, 2, 1), qkv bias, block and stage norms LayerNorm eps 1e-6,
  patch-embed and SR norms eps 1e-5, 7x7/4 then 3x3/2 overlapping patch convs, MixFFN fc1 -> 3x3 depthwise
  conv -> GELU -> fc2, q and kv projections with kv from the SR conv + LayerNorm when the SR ratio > 1, each
  stage ending in its norm; timm's pvt_v2_b5 is the same in every one of these (and in the per-block linear
  drop-path schedule), so the mapping is exact. timm's own pvt_v2.checkpoint_filter_fn applies the same
  renames to the original PVTv2 files (whai362/PVT), which share these names: they load as this format too.
  tests/unit/test_weights.py builds SegFormer's module structure and compares its features with timm's.
mmseg_resnet_v1c: open-mmlab's ImageNet ResNetV1c (``open-mmlab://resnet101_v1c`` =
  ``resnet101_v1c-e67eebb6.pth``, SePiCo's and DAFormer's DeepLab-V2 start), in the names of mmseg's
  mmseg/models/backbones/resnet.py (deep_stem=True, as BIT-DA/SePiCo's copy), onto timm's ``resnet*c``:
      stem.0 (3x3/2 conv 3->32) -> conv1.0      stem.1 (BN) -> conv1.1
      stem.3 (3x3 conv 32->32)  -> conv1.3      stem.4 (BN) -> conv1.4
      stem.6 (3x3 conv 32->64)  -> conv1.6      stem.7 (BN) -> bn1
      layer{1-4}.*                 as they are (conv1/bn1/conv2/bn2/conv3/bn3, downsample.0/1: the same
                                   Bottleneck, stride on the 3x3 conv, style="pytorch", avg_down=False)
      fc.*                         the ImageNet classifier, not used
  The dilated layout matches too: mmseg's dilations (1, 1, 2, 4) with contract_dilation=True give the first
  block of layer3/layer4 dilation 1/2, as timm's output_stride=8 does (timm/models/resnet.py make_blocks).
torchvision_resnet: torchvision's ImageNet ResNets (``resnet101-5d3b4d8f.pth`` in JDAI-CV/FADA's configs;
  torchvision's current ResNet101_Weights.IMAGENET1K_V1 is ``resnet101-63fe2227.pth``, the file timm's own
  ``resnet101.tv_in1k`` points at) onto timm's plain-stem ``resnet*``, the same architecture with the same
  names: no renames; ``fc.*`` is the classifier, not used.
  torchvision's replace_stride_with_dilation=[False, True, True] (FADA) is timm's output_stride=8.
timm: anything else, taken as timm's own names; loaded leniently (see backbone.load_backbone_weights).

Refused: DeepLab-V2's Caffe-converted ResNet-101 (AdaptSegNet's ``DeepLab_resnet_pretrained_init-f81d91e8.pth``,
keys ``Scale.conv1.weight`` .., ``Scale.layer5.*``; ASANet's and DiGA's start). Its names fit timm's resnet101,
but its blocks stride in the first 1x1 conv, its max-pool rounds up, layer3/layer4 dilate their first block
too, and it expects Caffe's BGR mean-subtracted 0-255 input: no timm ResNet computes what it was trained for.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

import torch

_MIT_FORWARD = (
    (r"^patch_embed1\.", "patch_embed."),
    (r"^patch_embed([2-4])\.", lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (r"^block([1-4])\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^norm([1-4])\.", lambda m: f"stages.{int(m[1]) - 1}.norm."),
)
_MIT_INVERSE = (
    (r"^patch_embed\.", "patch_embed1."),
    (r"^stages\.([1-3])\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}."),
    (r"^stages\.([0-3])\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (r"\.mlp\.dwconv\.", ".mlp.dwconv.dwconv."),
    (r"^stages\.([0-3])\.norm\.", lambda m: f"norm{int(m[1]) + 1}."),
)
_STEM = {"0": "conv1.0", "1": "conv1.1", "3": "conv1.3", "4": "conv1.4", "6": "conv1.6", "7": "bn1"}
_MMSEG_FORWARD = ((r"^stem\.([013467])\.", lambda m: f"{_STEM[m[1]]}."),)
_MMSEG_INVERSE = ((r"^(conv1\.[01346]|bn1)\.", lambda m: f"stem.{_inverse_stem(m[1])}."),)


def _inverse_stem(timm_name: str) -> str:
    return next(key for key, name in _STEM.items() if name == timm_name)


@dataclasses.dataclass(frozen=True)
class Format:
    """One file layout: its description, its renames to timm's names and back, its classifier prefixes."""

    description: str
    forward: tuple = ()
    inverse: tuple = ()
    classifier: tuple[str, ...] = ()
    strict: bool = True


FORMATS: dict[str, Format] = {
    "segformer_mit": Format("SegFormer MiT names", _MIT_FORWARD, _MIT_INVERSE, ("head.",)),
    "mmseg_resnet_v1c": Format("mmseg ResNetV1c names", _MMSEG_FORWARD, _MMSEG_INVERSE, ("fc.",)),
    "torchvision_resnet": Format("torchvision ResNet names", classifier=("fc.",)),
    "timm": Format("timm names", strict=False),
}

CAFFE_DEEPLAB_REFUSED = (
    "is DeepLab-V2's Caffe-converted ResNet-101 (AdaptSegNet's DeepLab_resnet_pretrained_init, ASANet's and "
    "DiGA's start): its blocks stride in the 1x1 conv, its max-pool rounds up and it expects BGR 0-255 input, "
    "which no timm ResNet reproduces; use torchvision's ImageNet resnet101 file with backbone 'resnet101'"
)


@dataclasses.dataclass(frozen=True)
class Converted:
    """A state dict renamed to timm's (full-model) names."""

    format: str
    tensors: dict[str, torch.Tensor]
    """timm name -> tensor, the classifier left out."""
    origin: dict[str, str]
    """timm name -> the key it had in the file (for messages)."""
    classifier: tuple[str, ...]
    """File keys of the classifier, not used."""


def detect_format(keys: Iterable[str]) -> str:
    """The format whose marker keys the file has (see the module docstring); "timm" when none.
    ValueError (without the path) for a Caffe DeepLab file, which is refused."""
    keys = set(keys)
    if any(k.startswith("Scale.") or k.startswith("layer5.conv2d_list.") for k in keys):
        raise ValueError(CAFFE_DEEPLAB_REFUSED)
    if "patch_embed1.proj.weight" in keys and any(k.startswith("block1.") for k in keys):
        return "segformer_mit"
    if "stem.0.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "mmseg_resnet_v1c"
    if {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight"} <= keys:
        return "torchvision_resnet"
    return "timm"


def _apply(rules: tuple, name: str) -> str:
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def to_timm(state: Mapping[str, torch.Tensor], fmt: str | None = None) -> Converted:
    """``state`` renamed to timm's names (format ``fmt``, or detected from the keys), classifier left out."""
    fmt = fmt or detect_format(state)
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    classifier = tuple(k for k in state if k.startswith(spec.classifier)) if spec.classifier else ()
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in state.items():
        if key in classifier:
            continue
        name = _apply(spec.forward, key)
        if name in origin:
            raise ValueError(f"has keys {origin[name]!r} and {key!r} that both become {name!r} ({spec.description})")
        tensors[name], origin[name] = tensor, key
    return Converted(format=fmt, tensors=tensors, origin=origin, classifier=classifier)


def file_name(fmt: str, timm_name: str) -> str:
    """The key a (full-model) timm name has in a file of format ``fmt``: the inverse of ``to_timm``'s renames."""
    return _apply(FORMATS[fmt].inverse, timm_name)
