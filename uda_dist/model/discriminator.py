"""Discriminators that adversarial methods train beside the student (as auxiliary modules, uda_dist.auxiliary).
None has normalisation layers, so its output for one image does not depend on the others in the batch.

FADA's fine-grained discriminator (JDAI-CV/FADA core/models/discriminator.py, PixelDiscriminator with
mid width 256): conv3x3 -> hidden -> LeakyReLU(0.2) -> conv3x3 -> hidden/2 -> LeakyReLU(0.2), then two 3x3
heads of K outputs each, concatenated to 2K: [source-class-k | target-class-k].

ASANet's affinity discriminator (idealwei/ASANet networks/discriminator.py, EightwayASADiscriminator; the
affinity space itself is computed by the method, uda_dist.losses.affinity): five 4x4 convs of stride 2 and
padding 1, 8K -> 64 -> 128 -> 256 -> 512 -> 1, LeakyReLU(0.2) after all but the last: domain logits at 1/32 of
the affinity grid.
"""
from __future__ import annotations

import torch
from torch import nn


class FineGrainedDiscriminator(nn.Module):
    """Per-pixel class-level domain logits (2K channels) at the input feature's grid."""

    def __init__(self, in_channels: int, *, hidden: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, hidden // 2, 3, padding=1), nn.LeakyReLU(0.2))
        self.source_head = nn.Conv2d(hidden // 2, num_classes, 3, padding=1)
        self.target_head = nn.Conv2d(hidden // 2, num_classes, 3, padding=1)

    def forward(self, feat_BChw: torch.Tensor) -> torch.Tensor:
        """feat_BChw -> logits_B2Khw ([source-class | target-class])."""
        x_BHhw = self.body(feat_BChw)
        return torch.cat([self.source_head(x_BHhw), self.target_head(x_BHhw)], dim=1)


class AffinityDiscriminator(nn.Module):
    """Domain logits (source 0, target 1) of an affinity space, at 1/32 of its grid."""

    MIN_SIZE = 32
    """The smallest grid side that leaves one output after five halvings."""

    def __init__(self, in_channels: int, *, width: int = 64):
        super().__init__()
        widths = [in_channels, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Conv2d(widths[-1], 1, 4, stride=2, padding=1))

    def forward(self, affinity_BAhw: torch.Tensor) -> torch.Tensor:
        """affinity_BAhw (A = 8K channels) -> logits_B1(h/32)(w/32)."""
        return self.body(affinity_BAhw)
