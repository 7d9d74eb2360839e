"""SePiCo: semantic-guided pixel contrast on DAFormer self-training (ProtoCL, BankCL, DistCL).

Paper: Xie et al., "SePiCo: Semantic-Guided Pixel Contrast for Domain Adaptive Semantic Segmentation",
TPAMI 2023 Reference: BIT-DA/SePiCo mmseg/models/uda/sepico.py.

One step, top to bottom:
1. the teacher labels the un-augmented target (pseudo-labels, quality weight q), as in self-training;
2. statistics BEFORE the loss: the teacher's projection features of the weak source image and the source
   ground truth (downscaled to the feature grid) update the exact cumulative class statistics (one reduce)
   and the memory bank of per-batch class means, from step 0;
3. the student on the strongly augmented source: source CE, and from ``start_step`` the contrast of its
   projection features against the class statistics (ground-truth anchors);
4. from ``start_step``: the student's projection of the strongly augmented target, contrasted with the
   teacher's pseudo-labels (unfiltered, except the PL-crop rows);
5. the DACS mixed CE (ClassMix, q-weighted), as in self-training.
Each contrastive call adds the regulariser (weight ``reg_weight``) and is weighted by ``contrast_weight``.

Differences on purpose: statistics are exact sums reduced once per step (injected reducer) and saved with the
method state (the reference keeps them per process and does not checkpoint them); classes never seen are
left out of the contrast (see uda_dist.losses.contrast); one backward of the summed terms.

Legend: B batch, K classes, D projection dim, H,W image, h,w feature grid, N pixels, M bank slots.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from uda_dist.data.augment import strong_photometric
from uda_dist.losses.contrast import (bank_contrast, contrast_regularizer, dist_contrast, downscale_labels,
                                      proto_contrast)
from uda_dist.losses.segmentation import IGNORE_INDEX, cross_entropy
from uda_dist.methods.base import Reducer
from uda_dist.methods.self_training import SelfTraining, SelfTrainingConfig, pl_crop_rows
from uda_dist.stats.class_stats import ClassStatistics
from uda_dist.stats.memory_bank import ClassMemoryBank


@dataclasses.dataclass(frozen=True, kw_only=True)
class SePiCoConfig(SelfTrainingConfig):
    """Self-training plus semantic-guided pixel contrast of the student's projection features."""

    contrast: Literal["proto", "bank", "dist"] = "dist"
    """Which contrast: ProtoCL (class means), BankCL (memory bank of batch means), DistCL (class Gaussians)."""
    contrast_weight: float = 1.0
    """lambda: weight of every contrastive term (and of its regulariser)."""
    tau: float = 100.0
    """Contrast temperature (SePiCo: 100)."""
    start_step: int = 3000
    """First step with contrastive losses; the statistics are fed from step 0."""
    reg_weight: float = 1.0
    """Weight of the regulariser inside each contrastive call (multiplied by contrast_weight)."""
    bank_size: int = 200
    """BankCL: per-class memory bank length (last M per-batch class means)."""
    label_min_share: float = 0.75
    """Labels on the feature grid: keep the majority class where its share of the pooled pixels is >= this."""
    strong_source: bool = True
    """Student's source pass (CE and source contrast) on the strongly augmented source, as the SePiCo paper
    trains it; False = the weak source image, as self-training's source CE."""
    class_balanced_crops: int = 0
    """SePiCo's class-balanced target crop: from each (larger) target crop, take the best of this many random
    source-sized windows by the teacher's pseudo-labels, then label the window again; 0 = off. Needs
    data.loader.target_crop_size larger than crop_size (SePiCo: 10)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.contrast_weight < 0 or self.reg_weight < 0 or self.start_step < 0:
            raise ValueError("contrast_weight, reg_weight and start_step must be >= 0")
        if self.bank_size < 1:
            raise ValueError(f"bank_size must be >= 1, got {self.bank_size}")
        if self.class_balanced_crops < 0:
            raise ValueError(f"class_balanced_crops must be >= 0, got {self.class_balanced_crops}")
        if not 0.0 < self.label_min_share <= 1.0:
            raise ValueError(f"label_min_share must be in (0, 1], got {self.label_min_share}")

    def build(self, student: nn.Module, *, seed: int, reducer: Reducer | None = None,
              total_steps: int = 0) -> "SePiCo":
        return SePiCo(self, student, seed=seed, reducer=reducer)


class SePiCo(SelfTraining):
    def __init__(self, cfg: SePiCoConfig, student: nn.Module, *, seed: int = 0, reducer: Reducer | None = None):
        if getattr(student, "proj_head", None) is None:
            raise ValueError("SePiCo needs a projection head: set model.proj_dim > 0 (SePiCo: 512)")
        super().__init__(cfg, student, seed=seed, reducer=reducer)
        self.cfg: SePiCoConfig = cfg
        num_classes, dim = student.cfg.num_classes, student.cfg.proj_dim
        device = next(student.parameters()).device
        self.stats = ClassStatistics(num_classes, dim, reducer=reducer).to(device)
        self.bank = ClassMemoryBank(num_classes, dim, size=cfg.bank_size).to(device)

    def losses(self, student, source, target, step):
        cfg = self.cfg
        if cfg.class_balanced_crops:
            target = self.class_balanced_target(target, size=tuple(source["image"].shape[-2:]))
        pl_BHW, pl_weight_BHW, log = self.target_pseudo_labels(target)
        self.update_statistics(source)
        contrast_on = step >= cfg.start_step
        source_B3HW = source["image"]
        if cfg.strong_source:
            source_B3HW = strong_photometric(source_B3HW, generator=self.generator, cfg=cfg.strong_aug)
        out_src = student(source_B3HW, with_proj=contrast_on)
        logits_src_BKHW = F.interpolate(out_src.logits_BKhw, size=source["label"].shape[-2:], mode="bilinear",
                                        align_corners=False)
        losses = {"source.ce": cfg.source_weight * cross_entropy(logits_src_BKHW, source["label"])}
        if cfg.distillation.weight:  # S(x) is the student's source pass (on the strong image with strong_source)
            losses["source.distillation"] = self.distillation_loss(student, source, target, logits_src_BKHW)
        if contrast_on:
            losses["source.contrast"] = self.contrast_loss(out_src.proj_BDhw, source["label"])
            target_B3HW = strong_photometric(target["image"], generator=self.generator, cfg=cfg.strong_aug)
            losses["target.contrast"] = self.contrast_loss(student.project(target_B3HW), self._pl_crop(pl_BHW))
        losses["mix.ce"] = self.mix_loss(student, source, target, pl_BHW, pl_weight_BHW)
        self._log = {**log, "stats.classes_seen": self.stats.seen_K.sum().float()}
        return losses

    def class_balanced_target(self, target: dict[str, Any], *, size: tuple[int, int]) -> dict[str, Any]:
        """The target batch cut to ``size`` at the windows whose pseudo-labels are the most class-balanced."""
        label_BHW = self.teacher_predict(target["image"]).argmax(dim=1)
        tops_B, lefts_B = class_balanced_windows(label_BHW, size=size, candidates=self.cfg.class_balanced_crops,
                                                 num_classes=self.stats.num_classes, generator=self.generator)
        h, w = size
        image_B3HW = torch.stack([img[:, t:t + h, l:l + w] for img, t, l in
                                  zip(target["image"], tops_B.tolist(), lefts_B.tolist())])
        return {**target, "image": image_B3HW}

    @torch.no_grad()
    def update_statistics(self, source: dict[str, Any]) -> None:
        """Teacher projection of the weak source + ground truth -> class statistics and memory bank."""
        feat_BDhw = self._teacher_mode().project(source["image"])
        label_Bhw = self._to_grid(source["label"], feat_BDhw)
        self.bank.push_moments(self.stats.update(_pixels(feat_BDhw), label_Bhw.reshape(-1)))

    def contrast_loss(self, proj_BDhw: torch.Tensor, label_BHW: torch.Tensor) -> torch.Tensor:
        """lambda * (contrast + reg_weight * regulariser) of projection features against the statistics."""
        cfg = self.cfg
        z_ND = _pixels(proj_BDhw)
        label_N = self._to_grid(label_BHW, proj_BDhw).reshape(-1)
        seen_K = self.stats.seen_K
        mean_KD = self.stats.mean_KD
        if cfg.contrast == "proto":
            loss = proto_contrast(z_ND, label_N, mean_KD, tau=cfg.tau, class_mask_K=seen_K)
        elif cfg.contrast == "bank":
            loss = bank_contrast(z_ND, label_N, self.bank.bank_KMD, self.bank.slot_mask_KM(), tau=cfg.tau,
                                 class_mask_K=seen_K)
        else:
            loss = dist_contrast(z_ND, label_N, mean_KD, self.stats.var_KD, tau=cfg.tau, class_mask_K=seen_K)
        reg = contrast_regularizer(z_ND, label_N, mean_KD, tau=cfg.tau, class_mask_K=seen_K)
        return cfg.contrast_weight * (loss + cfg.reg_weight * reg)

    def _to_grid(self, label_BHW: torch.Tensor, feat_BDhw: torch.Tensor) -> torch.Tensor:
        return downscale_labels(label_BHW, size=tuple(feat_BDhw.shape[-2:]), num_classes=self.stats.num_classes,
                                min_share=self.cfg.label_min_share)

    def _pl_crop(self, pl_BHW: torch.Tensor) -> torch.Tensor:
        """Pseudo-labels for the target contrast: all pixels, except the PL-crop rows (ignored)."""
        cropped_H = pl_crop_rows(pl_BHW.shape[1], top=self.cfg.pl_crop_top, bottom=self.cfg.pl_crop_bottom,
                                 device=pl_BHW.device)
        return pl_BHW.masked_fill(cropped_H.view(1, -1, 1), IGNORE_INDEX)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "stats": self.stats.state_dict(), "bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k not in ("stats", "bank")})
        self.stats.load_state_dict(state["stats"])
        self.bank.load_state_dict(state["bank"])


def class_balanced_windows(label_BHW: torch.Tensor, *, size: tuple[int, int], candidates: int, num_classes: int,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the top-left corner (tops_B, lefts_B, CPU) of the best of ``candidates`` random windows of
    ``size``, scored as in SePiCo by sum over the classes present in the window of log(pixel count); ties go to
    the first drawn window. Ignored pixels (255) do not count. Reads the best window's index on the host (one sync per
    step, only when the option is on)."""
    B, H, W = label_BHW.shape
    h, w = size
    if h > H or w > W:
        raise ValueError(f"class-balanced crop of {h}x{w} does not fit target images of {H}x{W}: set "
                         f"data.loader.target_crop_size to at least the source crop")
    tops_BC = torch.randint(0, H - h + 1, (B, candidates), generator=generator)
    lefts_BC = torch.randint(0, W - w + 1, (B, candidates), generator=generator)
    slot_BHW = torch.where(label_BHW == IGNORE_INDEX, num_classes, label_BHW)
    counts_BCK = torch.stack([
        torch.stack([torch.bincount(slot_BHW[b, t:t + h, l:l + w].reshape(-1), minlength=num_classes + 1)
                     for t, l in zip(tops_BC[b].tolist(), lefts_BC[b].tolist())])
        for b in range(B)])[..., :num_classes].double()
    scores_BC = torch.where(counts_BCK > 0, counts_BCK.log(), 0.0).sum(dim=-1)
    best_B = scores_BC.argmax(dim=1).cpu()
    rows_B = torch.arange(B)
    return tops_BC[rows_B, best_B], lefts_BC[rows_B, best_B]


def _pixels(feat_BDhw: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w] -> [B*h*w, D] in the label order of label_Bhw.reshape(-1)."""
    return feat_BDhw.permute(0, 2, 3, 1).reshape(-1, feat_BDhw.shape[1])
