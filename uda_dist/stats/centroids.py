"""Target feature centroids and DiGA's threshold-free pseudo-label selection: the pure parts.

DiGA (Shen et al., CVPR 2023; reference: fy-vision/DiGA) keeps a target pixel's pseudo-label only where it
agrees with the class of the nearest class centroid of the target features: no confidence threshold. The
soft assignment is softmax(-||f - c_k||) over the classes k; the hard one its arg-max, the nearest centroid.

Legend: B batch, D feature dim, K classes, h, w the feature grid.
"""
from __future__ import annotations

import torch

from uda_dist.losses.segmentation import IGNORE_INDEX


def centroid_distances(feat_BDhw: torch.Tensor, centroids_KD: torch.Tensor) -> torch.Tensor:
    """||f - c_k|| per pixel and class (B, K, h, w), in float32."""
    f_BDhw, c_KD = feat_BDhw.float(), centroids_KD.float()
    squared = ((f_BDhw ** 2).sum(dim=1, keepdim=True) - 2 * torch.einsum("bdhw,kd->bkhw", f_BDhw, c_KD)
               + (c_KD ** 2).sum(dim=1)[None, :, None, None])
    return squared.clamp_min(0.0).sqrt()


def nearest_centroid(feat_BDhw: torch.Tensor, centroids_KD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the nearest centroid's class per pixel (B, h, w), the soft assignment softmax(-distance) (B, K, h, w))."""
    distance_BKhw = centroid_distances(feat_BDhw, centroids_KD)
    return distance_BKhw.argmin(dim=1), torch.softmax(-distance_BKhw, dim=1)


def agreement_selection(pseudo_BHW: torch.Tensor, nearest_BHW: torch.Tensor, *,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The pseudo-labels where they agree with the nearest centroid's class, ignore_index elsewhere."""
    return torch.where(pseudo_BHW == nearest_BHW, pseudo_BHW, torch.full_like(pseudo_BHW, ignore_index))
