"""Target feature centroids and DiGA's threshold-free pseudo-label selection.

DiGA (Shen et al., CVPR 2023; reference: fy-vision/DiGA) keeps a target pixel's pseudo-label only where it
agrees with the class of the nearest class centroid of the target features: no confidence threshold. The
soft assignment is softmax(-||f - c_k||) over the classes k; the hard one its arg-max, the nearest centroid.

``ClassCentroids`` holds the centroids c_k (the teacher's decoder feature, the one its classifier reads):
- initialised from one pass of the model over the target train split: per image and class k predicted on
  >= ``min_pixels`` pixels of the feature grid, the mean feature of those pixels; c_k is the mean of these
  per-image means over the whole split (the reference's running mean over its pass). The pass runs the
  teacher as it runs in training (BatchNorm on batch statistics), one image at a time; the reference runs it
  with BatchNorm in eval mode, on the source's running statistics, unlike its teacher in training;
- moved online at every optimiser step by the per-image class means of the step's images, taken only over
  pixels where the label (the selected pseudo-label on the target, the ground truth on the source) agrees with
  the teacher's own prediction: c_k <- (1 - m)^n_k c_k + (1 - (1 - m)^n_k) v_k, m = 1e-4, where v_k is the mean
  of the n_k per-image means of class k in the step, over every worker. The reference applies
  c <- (1 - m) c + m v once per per-image mean, one after the other in its batch order; this is the same to
  first order in m, and it does not depend on the order, so one packed all-reduce per step of (n_k, sum of
  the means) gives every rank the same centroids. A class first seen online takes v_k itself (the reference
  would start it from a zero vector);
- classes never seen are left out of the nearest-centroid choice (the reference lets their zero vectors win).

Legend: B batch, D feature dim, K classes, h, w the feature grid, H, W the image.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uda_dist.losses.segmentation import IGNORE_INDEX


def centroid_distances(feat_BDhw: torch.Tensor, centroids_KD: torch.Tensor) -> torch.Tensor:
    """||f - c_k|| per pixel and class (B, K, h, w), in float32."""
    f_BDhw, c_KD = feat_BDhw.float(), centroids_KD.float()
    squared = ((f_BDhw ** 2).sum(dim=1, keepdim=True) - 2 * torch.einsum("bdhw,kd->bkhw", f_BDhw, c_KD)
               + (c_KD ** 2).sum(dim=1)[None, :, None, None])
    return squared.clamp_min(0.0).sqrt()


def nearest_centroid(feat_BDhw: torch.Tensor, centroids_KD: torch.Tensor, *, class_mask_K: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the nearest centroid's class per pixel (B, h, w), the soft assignment softmax(-distance) (B, K, h, w));
    classes outside ``class_mask_K`` (bool) get probability 0 and are never the nearest."""
    distance_BKhw = centroid_distances(feat_BDhw, centroids_KD)
    if class_mask_K is not None:
        distance_BKhw = distance_BKhw.masked_fill(~class_mask_K.view(1, -1, 1, 1), float("inf"))
    return distance_BKhw.argmin(dim=1), torch.softmax(-distance_BKhw, dim=1)


def agreement_selection(pseudo_BHW: torch.Tensor, nearest_BHW: torch.Tensor, *,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The pseudo-labels where they agree with the nearest centroid's class, ignore_index elsewhere."""
    return torch.where(pseudo_BHW == nearest_BHW, pseudo_BHW, torch.full_like(pseudo_BHW, ignore_index))


def image_class_means(feat_BDhw: torch.Tensor, pred_Bhw: torch.Tensor, *, num_classes: int, min_pixels: int,
                      label_Bhw: torch.Tensor | None = None, valid_B: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(count_K, sum_KD), float64: per image and class k, the mean feature over the pixels predicted k (and
    labelled k, when labels are given), kept where those pixels number >= min_pixels; count_K is how many
    per-image means of class k were kept, sum_KD their sum. Images outside ``valid_B`` (padding) count for
    nothing."""
    B, D = feat_BDhw.shape[:2]
    slot_Bhw = pred_Bhw if label_Bhw is None else torch.where(pred_Bhw == label_Bhw, pred_Bhw, num_classes)
    if valid_B is not None:
        slot_Bhw = torch.where(valid_B.view(-1, 1, 1), slot_Bhw, num_classes)
    onehot_BKN = F.one_hot(slot_Bhw.reshape(B, -1), num_classes + 1)[..., :num_classes].transpose(1, 2).double()
    pixels_BK = onehot_BKN.sum(dim=2)
    sums_BKD = torch.einsum("bkn,bdn->bkd", onehot_BKN, feat_BDhw.reshape(B, D, -1).double())
    kept_BK = pixels_BK >= min_pixels
    means_BKD = sums_BKD / pixels_BK.clamp_min(1.0).unsqueeze(-1)
    return kept_BK.sum(dim=0).double(), (means_BKD * kept_BK.unsqueeze(-1)).sum(dim=0)


def momentum_update(centroids_KD: torch.Tensor, seen_K: torch.Tensor, count_K: torch.Tensor, sum_KD: torch.Tensor,
                    *, momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids, seen) after a step's n_k = count_K per-image means summing to sum_KD:
    c_k <- (1 - m)^n_k c_k + (1 - (1 - m)^n_k) mean_k; a class not seen before takes mean_k."""
    mean_KD = sum_KD / count_K.clamp_min(1.0).unsqueeze(-1)
    keep_K = torch.where(seen_K, (1.0 - momentum) ** count_K, torch.zeros_like(count_K)).unsqueeze(-1)
    moved_KD = keep_K * centroids_KD + (1.0 - keep_K) * mean_KD
    fed_K = count_K > 0
    return torch.where(fed_K.unsqueeze(-1), moved_KD, centroids_KD), seen_K | fed_K


def _identity(flat_F: torch.Tensor) -> torch.Tensor:
    return flat_F


class ClassCentroids(nn.Module):
    """Class centroids of the teacher's features (float64 buffers, identical on every rank), the step's local
    contributions, and their one packed reduce per optimiser step (``commit``)."""

    def __init__(self, num_classes: int, dim: int, *, momentum: float = 1e-4, min_pixels: int = 5,
                 reducer: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.num_classes, self.dim, self.momentum, self.min_pixels = num_classes, dim, momentum, min_pixels
        self.reducer = reducer if reducer is not None else _identity
        self.register_buffer("centroid_KD", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("seen_K", torch.zeros(num_classes, dtype=torch.bool))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def assignment(self, feat_BDhw: torch.Tensor) -> torch.Tensor:
        """softmax(-||f - c_k||) over the classes seen (B, K, h, w)."""
        return nearest_centroid(feat_BDhw, self.centroid_KD, class_mask_K=self.seen_K)[1]

    def nearest(self, feat_BDhw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The nearest centroid's class per pixel at ``size``: the soft assignment resized bilinearly (as the
        reference), then its arg-max (B, H, W)."""
        soft_BKhw = self.assignment(feat_BDhw)
        return F.interpolate(soft_BKhw, size=size, mode="bilinear", align_corners=False).argmax(dim=1)

    @torch.no_grad()
    def contribute(self, feat_BDhw: torch.Tensor, logits_BKhw: torch.Tensor, label_BHW: torch.Tensor) -> None:
        """Add this micro-batch's per-image class means where ``label_BHW`` (nearest-resized to the feature
        grid) agrees with the teacher's prediction; applied at the next ``commit``."""
        label_Bhw = F.interpolate(label_BHW[:, None].float(), size=feat_BDhw.shape[-2:], mode="nearest")[:, 0].long()
        local = image_class_means(feat_BDhw, logits_BKhw.argmax(dim=1), num_classes=self.num_classes,
                                  min_pixels=self.min_pixels, label_Bhw=label_Bhw)
        if self._pending is not None:
            local = (self._pending[0] + local[0], self._pending[1] + local[1])
        self._pending = local

    @torch.no_grad()
    def commit(self) -> None:
        """Every rank, once per optimiser step: reduce the step's contributions (ONE packed all-reduce, also
        when there are none) and move the centroids."""
        count_K, sum_KD = self._pending if self._pending is not None else self._zeros()
        self._pending = None
        count_K, sum_KD = self._reduce(count_K, sum_KD)
        centroid_KD, seen_K = momentum_update(self.centroid_KD, self.seen_K, count_K, sum_KD, momentum=self.momentum)
        self.centroid_KD.copy_(centroid_KD)
        self.seen_K.copy_(seen_K)

    @torch.no_grad()
    def initialise(self, batches: Callable[[], Any],
                   features: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
        """c_k = the mean over the split of its per-image class means under ``features`` (image -> (fused_BDhw,
        logits_BKhw)); ``batches()`` yields this rank's share of the split (eval_loader); one reduce at the end.
        Each image goes through ``features`` alone, so that its features (under batch-statistics BatchNorm, as the
        teacher runs) do not depend on which images share its batch, nor on how the split is shared out."""
        count_K, sum_KD = self._zeros()
        for batch in batches():
            for image_3HW, valid in zip(batch["image"], batch["valid"].tolist()):
                if not valid:  # padding of a rank's share
                    continue
                feat_BDhw, logits_BKhw = features(image_3HW[None].to(device))
                c, s = image_class_means(feat_BDhw, logits_BKhw.argmax(dim=1), num_classes=self.num_classes,
                                         min_pixels=self.min_pixels)
                count_K, sum_KD = count_K + c, sum_KD + s
        count_K, sum_KD = self._reduce(count_K, sum_KD)
        self.centroid_KD.copy_(sum_KD / count_K.clamp_min(1.0).unsqueeze(-1))
        self.seen_K.copy_(count_K > 0)
        self._pending = None

    def _zeros(self) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.centroid_KD.device
        return (torch.zeros(self.num_classes, dtype=torch.float64, device=device),
                torch.zeros(self.num_classes, self.dim, dtype=torch.float64, device=device))

    def _reduce(self, count_K: torch.Tensor, sum_KD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self.reducer(torch.cat([count_K, sum_KD.reshape(-1)]))
        return flat[:self.num_classes], flat[self.num_classes:].view(self.num_classes, self.dim)
