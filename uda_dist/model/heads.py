"""Decode heads (DAFormer, DeepLab-V2) and SePiCo's projection head, on four encoder levels.

Shapes: B batch, L levels (4), C channels of one level, E embed dim, K classes, D projection dim,
h,w feature grid (for the DAFormer head and the concatenating projection head: that of the first level).

DAFormerHead -- Hoyer, Dai, Van Gool, "DAFormer", CVPR 2022, Sec. 3.2 "context-aware feature fusion";
reference lhoyer/DAFormer mmseg/models/decode_heads/daformer_head.py with the published config
(embed_dims 256, embed_cfg/embed_neck_cfg mlp without norm or activation, fusion_cfg aspp sep=True,
dilations (1, 6, 12, 18), pool=False, BN + ReLU):
  e_i = Linear_i(F_i) (a 1x1 conv with bias), bilinearly resized to the first level's grid;
  branches on cat(e_1..e_4) (4E channels): dilation 1 -> 1x1 conv-BN-ReLU to E; dilation d > 1 ->
  depthwise 3x3 (dilation d) conv-BN-ReLU then pointwise 1x1 conv-BN-ReLU to E (mmcv's
  DepthwiseSeparableConvModule); cat of the branches -> 3x3 conv-BN-ReLU to E (a PLAIN 3x3 conv, as
  DAFormer's ASPPWrapper bottleneck is a ConvModule even with sep=True) -> Dropout2d -> 1x1 conv to K.
  Convs followed by BN have no bias.
DeepLabV2Head -- Chen et al., "DeepLab", TPAMI 2018 (ASPP-L); reference DAFormer/SePiCo dlv2_head.py:
  logits = sum_d conv3x3_d(F_4) with dilations (6, 12, 18, 24), each straight to K (with bias, no norm,
  no dropout), weights ~ N(0, 0.01^2), biases 0 (the reference's init_cfg).
ProjectionHead -- Xie et al., "SePiCo", TPAMI 2023; reference BIT-DA/SePiCo
  mmseg/models/decode_heads/proj_head.py (ProjHead, num_convs=2, kernel 1, norm BN, act ReLU):
  x = cat of all levels resized to the first level's grid (DAFormer) or the last level (DeepLab-V2);
  z = normalize( ReLU(BN(conv1x1( ReLU(BN(conv1x1(x))) ))) ) over channels, as SePiCo's paper (Sec. 3)
  states. Hidden width: in_channels // number of concatenated levels (the reference's mid_channels: 256
  for MiT-B5's 1024, 2048 for ResNet-101's layer4), or ``hidden`` when given (a CPU-sized option). Because
  of the final ReLU, z >= 0 elementwise; a pixel whose D channels are all 0 stays the zero vector
  (F.normalize's eps), not a unit vector.
Differences on purpose: the DAFormer fusion input's lowest stride is that of the first used level (see
backbone.py), and initialisation follows mmcv's defaults only approximately (Kaiming normal, fan_out, for
convs followed by BN; N(0, 0.01^2) for classifiers; PyTorch's default for the embedding layers).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x_BChw: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) to ``size``; a no-op when already that size."""
    if tuple(x_BChw.shape[-2:]) == tuple(size):
        return x_BChw
    return F.interpolate(x_BChw, size=tuple(size), mode="bilinear", align_corners=False)


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, *, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    """conv (no bias, 'same' padding) -> BatchNorm2d -> ReLU, as mmcv's ConvModule with BN and ReLU."""
    conv = nn.Conv2d(
        in_ch, out_ch, kernel, padding=dilation * (kernel // 2), dilation=dilation, groups=groups, bias=False
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _classifier(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=dilation * (kernel // 2), dilation=dilation)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


class DAFormerHead(nn.Module):
    """Per-level 1x1 embeddings, concat at the first level's grid, separable-ASPP fusion, classifier."""

    def __init__(
        self, in_channels: Sequence[int], *, embed_dim: int, dilations: Sequence[int], dropout: float,
        num_classes: int,
    ):
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        fused = embed_dim * len(in_channels)
        self.branches = nn.ModuleList(self._branch(fused, embed_dim, d) for d in dilations)
        self.bottleneck = conv_bn_relu(embed_dim * len(dilations), embed_dim, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = _classifier(embed_dim, num_classes)

    @staticmethod
    def _branch(in_ch: int, out_ch: int, dilation: int) -> nn.Sequential:
        if dilation == 1:
            return conv_bn_relu(in_ch, out_ch, 1)
        depthwise = conv_bn_relu(in_ch, in_ch, 3, dilation=dilation, groups=in_ch)
        return nn.Sequential(*depthwise, *conv_bn_relu(in_ch, out_ch, 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """[feat_BChw per level] -> logits_BKhw at the first level's grid."""
        return self.classify(self.fuse(feats))

    def fuse(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """[feat_BChw per level] -> the fused feature fused_BEhw the classifier reads (first level's grid)."""
        size = feats[0].shape[-2:]
        embed_BLEhw = torch.cat([resize_to(emb(f), size) for emb, f in zip(self.embed, feats)], dim=1)
        context_BEhw = torch.cat([branch(embed_BLEhw) for branch in self.branches], dim=1)
        return self.bottleneck(context_BEhw)

    def classify(self, fused_BEhw: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(fused_BEhw))


class DeepLabV2Head(nn.Module):
    """ASPP classifier: sum of dilated 3x3 convs on the last level, each straight to K classes."""

    def __init__(self, in_channels: int, *, dilations: Sequence[int], num_classes: int):
        super().__init__()
        self.branches = nn.ModuleList(_classifier(in_channels, num_classes, 3, d) for d in dilations)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """[feat_BChw per level] -> logits_BKhw at the last level's grid."""
        return self.classify(self.fuse(feats))

    def fuse(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The feature the ASPP classifier reads: the last level itself (DeepLab-V2 fuses in logit space)."""
        return feats[-1]

    def classify(self, feat_BChw: torch.Tensor) -> torch.Tensor:
        logits_BKhw = self.branches[0](feat_BChw)
        for branch in self.branches[1:]:
            logits_BKhw = logits_BKhw + branch(feat_BChw)
        return logits_BKhw


class ProjectionHead(nn.Module):
    """SePiCo projection: conv1x1-BN-ReLU -> conv1x1-BN-ReLU to D -> L2-normalise over channels."""

    def __init__(self, in_channels: Sequence[int], *, proj_dim: int, concat_levels: bool, hidden: int = 0):
        super().__init__()
        self.concat_levels = concat_levels
        in_ch = sum(in_channels) if concat_levels else in_channels[-1]
        mid_ch = hidden or (in_ch // len(in_channels) if concat_levels else in_ch)
        self.proj = nn.Sequential(*conv_bn_relu(in_ch, mid_ch), *conv_bn_relu(mid_ch, proj_dim))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """[feat_BChw per level] -> proj_BDhw, unit L2 norm over D (first level's grid, or the last's).

        With the levels concatenated (SePiCo's resize_concat), the first 1x1 conv runs on each level at its own
        grid and the results are resized and summed: a 1x1 conv acts per pixel, and bilinear resizing mixes
        pixels with weights that sum to 1, so this is the conv of the resized concatenation (to float round-off,
        tested) while resizing mid_ch channels instead of every level's (measured at the synthetic recipes' size, one
        thread: the head's forward 31 -> 6 ms, a SePiCo DistCL step 863 -> 737 ms)."""
        if not self.concat_levels:
            return F.normalize(self.proj(feats[-1]), p=2, dim=1)
        size = feats[0].shape[-2:]
        weights = torch.split(self.proj[0].weight, [f.shape[1] for f in feats], dim=1)
        x_BMhw = sum(resize_to(F.conv2d(f, w), size) for f, w in zip(feats, weights))
        return F.normalize(self.proj[1:](x_BMhw), p=2, dim=1)

    def reference_forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The head as the reference computes it (the levels resized, concatenated, then the first conv): the
        check of ``forward``."""
        x_BChw = torch.cat([resize_to(f, feats[0].shape[-2:]) for f in feats], dim=1) if self.concat_levels \
            else feats[-1]
        return F.normalize(self.proj(x_BChw), p=2, dim=1)
