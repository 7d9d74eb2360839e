"""Discriminators that adversarial methods train beside the student (as auxiliary modules, uda_dist.auxiliary).

FADA's fine-grained discriminator (JDAI-CV/FADA core/models/discriminator.py, PixelDiscriminator with
mid width 256): conv3x3 -> hidden -> LeakyReLU(0.2) -> conv3x3 -> hidden/2 -> LeakyReLU(0.2), then two 3x3
heads of K outputs each, concatenated to 2K: [source-class-k | target-class-k]. No normalisation layers, so
its output for one image does not depend on the others in the batch.
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
