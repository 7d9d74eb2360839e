"""The segmentation model: timm encoder + DAFormer or DeepLab-V2 decode head (+ SePiCo projection head).

Shapes: B batch, H,W image, h,w the head's grid, K classes, D projection dim.

Recipes: DAFormer (Hoyer et al., CVPR 2022) = MiT-B5 (here timm ``pvt_v2_b5``, see backbone.py) + DAFormerHead
(embed 256); DeepLab-V2 (as in DAFormer/SePiCo) = ResNet-101 at output stride 8 + ASPP classifier
(dilations 6/12/18/24); SePiCo (Xie et al., TPAMI 2023) adds the projection head with D = 512.
Differences on purpose:
- The image comes in [0, 1]; the normalisation the backbone's weights expect (timm's pretrained_cfg mean/std,
  ImageNet's for every family used here) is applied inside, from non-persistent buffers.
- ``param_groups``: heads (decode and projection) at lr * head_lr_mult, as DAFormer's ``custom_keys
  head lr_mult=10``. Weight decay 0 for every normalisation layer, in the backbone AND the heads (BatchNorm,
  LayerNorm, GroupNorm by module type; other leaf modules whose class name contains "norm", e.g. timm's
  RmsNorm) and for position embeddings (parameter names containing "pos_embed" or "pos_block"). DAFormer
  matches the substring "norm" in parameter names, which misses mmcv's head BN layers (named "bn");
  matching by type is what it meant. Biases keep weight decay, as in DAFormer.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from uda_dist.model.backbone import Backbone, LoadReport, load_backbone_weights
from uda_dist.safe_load import exists, load_tensors
from uda_dist.model.heads import DAFormerHead, DeepLabV2Head, ProjectionHead

HEADS = ("daformer", "deeplabv2")
_NO_DECAY_NAMES = ("pos_embed", "pos_block")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Encoder, heads and classes of the segmentation model (one source of truth for the architecture)."""

    backbone: str = "resnet18"
    """Any timm model name that supports features_only; its last 4 feature levels are used."""
    pretrained: str = ""
    """Local weight file (.pth/.pt/.safetensors) for the backbone; "" = random init. Never downloaded."""
    init_weights: str = ""
    """Whole-model state dict to start from (e.g. a source-only run's outputs/<name>/student.pt, to adapt a
    source-trained model); heads the file lacks (a new projection head) keep their fresh init. "" = none."""
    output_stride: int = 32
    """Stride of the last encoder level: 8, 16 or 32 (8 for DeepLab-V2's ResNet-101; CNN backbones only)."""
    head: str = "daformer"
    """Decode head: "daformer" (context-aware fusion at the first level's stride) or "deeplabv2" (ASPP on the
    last level; any output_stride is accepted, DeepLab-V2 proper uses 8)."""
    embed_dim: int = 256
    """DAFormer head: per-level embedding and fusion width (DAFormer: 256). Unused by the deeplabv2 head."""
    fusion_dilations: tuple[int, ...] = (1, 6, 12, 18)
    """DAFormer head: dilations of the separable-ASPP fusion branches (1 = plain 1x1 conv)."""
    aspp_dilations: tuple[int, ...] = (6, 12, 18, 24)
    """DeepLab-V2 head: dilations of the summed 3x3 classifier convs."""
    dropout: float = 0.1
    """DAFormer head: Dropout2d before the classifier, in [0, 1). The deeplabv2 head has none."""
    drop_path: float = 0.0
    """Stochastic depth rate passed to the backbone (timm drop_path_rate), in [0, 1); 0 = not passed."""
    proj_dim: int = 0
    """SePiCo projection-head output dim D (SePiCo: 512); 0 = no projection head."""
    proj_hidden: int = 0
    """Projection head's hidden width; 0 = the reference's (input channels // concatenated levels: 256 for
    MiT-B5, 2048 for ResNet-101's layer4)."""
    num_classes: int = 19
    """Number of segmentation classes K."""

    def __post_init__(self) -> None:
        for name in ("fusion_dilations", "aspp_dilations"):
            value = tuple(getattr(self, name))
            object.__setattr__(self, name, value)
            if not value or any(not isinstance(d, int) or d < 1 for d in value):
                raise ValueError(f"ModelConfig.{name} must be a non-empty tuple of positive ints, got {value!r}")
        if not self.backbone:
            raise ValueError("ModelConfig.backbone must name a timm model, got ''")
        if self.head not in HEADS:
            raise ValueError(f"ModelConfig.head must be one of {list(HEADS)}, got {self.head!r}")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"ModelConfig.output_stride must be 8, 16 or 32, got {self.output_stride}")
        if self.embed_dim <= 0:
            raise ValueError(f"ModelConfig.embed_dim must be > 0, got {self.embed_dim}")
        if self.proj_hidden < 0:
            raise ValueError(f"ModelConfig.proj_hidden must be >= 0 (0 = the reference width), got {self.proj_hidden}")
        if self.proj_dim < 0:
            raise ValueError(f"ModelConfig.proj_dim must be >= 0 (0 = no projection head), got {self.proj_dim}")
        if self.num_classes < 1:
            raise ValueError(f"ModelConfig.num_classes must be >= 1, got {self.num_classes}")
        for name in ("dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclasses.dataclass
class SegOutput:
    """What ``Segmentor.forward`` returns."""

    logits_BKhw: torch.Tensor
    """Class logits at the head's grid (DAFormer: first level's stride; DeepLab-V2: the output stride)."""
    proj_BDhw: torch.Tensor | None = None
    """L2-normalised projection features at the same grid; None without a projection head or when not asked."""
    features: list[torch.Tensor] | None = None
    """The encoder's feature levels [feat_BChw per level], finest first (FADA's discriminator reads the last);
    None unless asked."""
    fused_BChw: torch.Tensor | None = None
    """The decode head's fused feature, the one its classifier reads (DAFormer: the fused embedding at the
    first level's grid; DeepLab-V2: the last encoder level); None unless asked."""


class Segmentor(nn.Module):
    """Encoder + decode head (+ projection head). Takes images in [0, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, output_stride=cfg.output_stride, drop_path=cfg.drop_path)
        self.load_report: LoadReport | None = None
        if cfg.pretrained:
            self.load_report = load_backbone_weights(self.backbone, cfg.pretrained)
        channels = self.backbone.channels
        if cfg.head == "daformer":
            self.decode_head: nn.Module = DAFormerHead(
                channels, embed_dim=cfg.embed_dim, dilations=cfg.fusion_dilations, dropout=cfg.dropout,
                num_classes=cfg.num_classes,
            )
        else:
            self.decode_head = DeepLabV2Head(channels[-1], dilations=cfg.aspp_dilations, num_classes=cfg.num_classes)
        self.proj_head: ProjectionHead | None = None
        if cfg.proj_dim > 0:
            self.proj_head = ProjectionHead(channels, proj_dim=cfg.proj_dim, hidden=cfg.proj_hidden,
                                            concat_levels=cfg.head == "daformer")
        if cfg.init_weights:
            load_model_weights(self, cfg.init_weights)
        self.register_buffer("mean_3", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std_3", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)

    @property
    def fused_channels(self) -> int:
        """Channels of the decode head's fused feature (``SegOutput.fused_BChw``)."""
        return self.cfg.embed_dim if self.cfg.head == "daformer" else self.backbone.channels[-1]

    @property
    def head_stride(self) -> int:
        """Stride of the logits (and projection) grid relative to the input image."""
        return self.backbone.strides[0] if self.cfg.head == "daformer" else self.backbone.strides[-1]

    def forward(self, image_B3HW: torch.Tensor, *, with_proj: bool = False, with_features: bool = False) -> SegOutput:
        """Image in [0, 1] -> logits at the head's grid (+ projection features when asked and configured; + the
        encoder levels and the decoder's fused feature when ``with_features``)."""
        feats = self._features(image_B3HW)
        fused_BChw = self.decode_head.fuse(feats)
        logits_BKhw = self.decode_head.classify(fused_BChw)
        proj_BDhw = self.proj_head(feats) if with_proj and self.proj_head is not None else None
        if not with_features:
            return SegOutput(logits_BKhw=logits_BKhw, proj_BDhw=proj_BDhw)
        return SegOutput(logits_BKhw=logits_BKhw, proj_BDhw=proj_BDhw, features=list(feats), fused_BChw=fused_BChw)

    def project(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """Projection features only (encoder + projection head, no decode head): proj_BDhw."""
        if self.proj_head is None:
            raise ValueError("this model has no projection head: set model.proj_dim > 0")
        return self.proj_head(self._features(image_B3HW))

    def _features(self, image_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature levels of an image in [0, 1] (normalised with the backbone's mean and std)."""
        return self.backbone((image_B3HW - self.mean_3) / self.std_3)

    def segment(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """logits_BKHW bilinearly resized (align_corners=False) to the input size (inference with resizing,
        scales, flips and windows: uda_dist.inference.predict)."""
        return F.interpolate(self.forward(image_B3HW).logits_BKhw, size=image_B3HW.shape[-2:], mode="bilinear",
                             align_corners=False)

    def param_groups(self, *, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict]:
        """Optimizer groups "backbone", "backbone_no_decay", "head", "head_no_decay" (empty ones left out)."""
        heads = [m for m in (self.decode_head, self.proj_head) if m is not None]
        groups = []
        for part, modules, part_lr in (("backbone", [self.backbone], lr), ("head", heads, lr * head_lr_mult)):
            decay, no_decay = _split_by_decay(modules)
            for name, params, wd in ((part, decay, weight_decay), (f"{part}_no_decay", no_decay, 0.0)):
                if params:
                    groups.append({"name": name, "params": params, "lr": part_lr, "weight_decay": wd})
        return groups


def _split_by_decay(modules: list[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters of ``modules``: (with weight decay, without: norm layers and position embeddings)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for root in modules:
        for module_name, module in root.named_modules():
            is_norm = isinstance(module, _NORM_TYPES) or _is_leaf_norm(module)
            for param_name, param in module.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                full_name = f"{module_name}.{param_name}"
                if is_norm or any(key in full_name for key in _NO_DECAY_NAMES):
                    no_decay.append(param)
                else:
                    decay.append(param)
    return decay, no_decay


def _is_leaf_norm(module: nn.Module) -> bool:
    """A normalisation layer that is not a torch subclass (e.g. timm's RmsNorm): by class name, leaf only."""
    return "norm" in type(module).__name__.lower() and next(module.children(), None) is None


def load_model_weights(model: nn.Module, path: str, *, fresh_prefixes: tuple[str, ...] = ("proj_head.",),
                       setting: str = "model.init_weights") -> None:
    """Load a whole-model state dict: every entry must fit by name and shape, and every model entry must be in
    the file except those under ``fresh_prefixes`` (heads a warm start adds, which keep their init). Errors
    name the file as ``setting`` (the key or flag that gave it)."""
    if not exists(path):
        raise FileNotFoundError(f"{setting} {path!r} does not exist (a student.pt written by an earlier "
                                f"run: outputs/<name>/student.pt)")
    state = load_tensors(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"not a checkpoint: {path} ({setting} must be a state dict of tensors, such as "
                         f"a run's student.pt)")
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(fresh_prefixes))
    if unexpected or misshaped or missing:
        raise ValueError(f"{setting} {path!r} does not fit this model: unexpected {unexpected[:5]}, "
                         f"different shape {misshaped[:5]}, missing {missing[:5]}")
    model.load_state_dict(state, strict=False)


def check_model(cfg: ModelConfig) -> None:
    """What the driver checks before any worker builds the model: the backbone is a timm model and the weight
    files are checkpoints (RunError naming the setting otherwise)."""
    from uda_dist.errors import RunError
    from uda_dist.model.backbone import check_backbone_name, read_state_dict

    try:
        check_backbone_name(cfg.backbone)
        if cfg.pretrained:
            read_state_dict(cfg.pretrained)
        if cfg.init_weights:
            if not exists(cfg.init_weights):
                raise ValueError(f"model.init_weights {cfg.init_weights!r} does not exist")
            load_tensors(cfg.init_weights)
    except ValueError as e:
        raise RunError(str(e)) from None


def build_segmentor(cfg: ModelConfig) -> Segmentor:
    """The model described by ``cfg`` (backbone weights from ``cfg.pretrained`` when set)."""
    return Segmentor(cfg)
