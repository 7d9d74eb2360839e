"""DAFormer-style mean-teacher self-training (DACS): EMA teacher, confidence-weighted pseudo-labels, ClassMix.

Paper: Tranheden et al., "DACS", WACV 2021; Hoyer et al., "DAFormer", CVPR 2022. Reference: lhoyer/DAFormer
mmseg/models/uda/dacs.py and mmseg/models/utils/dacs_transforms.py.

Parts a recipe chooses (DiGA's self-training is this method with the other choices, uda_dist.recipes):
- where a target pixel's pseudo-label comes from (``pseudo_source``): the teacher at each step, or the
  offline pseudo-labels an earlier stage wrote (the target stream then carries them as its labels);
- how the pseudo-labels are weighted or selected (``pseudo_selection``, uda_dist.methods.labelers): DAFormer's
  confidence weight, or DiGA's agreement with the nearest target feature centroid;
- DiGA's symmetric distillation (``distillation``, off by default): the student and the teacher on the source
  image x and on its cross-domain mixture x_aug (uda_dist.data.fda), H(T(x), S(x_aug)) + 0.5 H(T(x_aug), S(x))
  (uda_dist.losses.distillation). With ``pseudo_weight=0`` there is no target term: DiGA's source-only
  warm-up (the target images only lend their style to x_aug).

One step, top to bottom: the student's source cross-entropy; the distillation term; the teacher's view of the
un-augmented target and the selected pseudo-labels; the weighted cross-entropy on the ClassMix image.
Differences on purpose:
- no host syncs in the step: the pseudo-label quality weight q stays a device tensor (DAFormer calls .item()),
  and ClassMix picks classes from a presence vector instead of torch.unique;
- ClassMix never picks the ignore label 255 as a class to paste (DAFormer's torch.unique may);
- the teacher copies the student's buffers (BatchNorm running statistics) at every EMA update instead of
  keeping stale ones, so teacher state is a function of student state (identical across ranks when the
  students are); as in DAFormer the teacher labels with dropout and drop-path off and BatchNorm in batch-
  statistics mode.

Legend: B batch, K classes, H, W image size.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from uda_dist.data.augment import StrongAugConfig, strong_photometric
from uda_dist.data.fda import cross_domain_mixture, fourier_style
from uda_dist.losses.distillation import symmetric_distillation
from uda_dist.losses.segmentation import IGNORE_INDEX, cross_entropy
from uda_dist.methods.base import Method, MethodConfig, Reducer
from uda_dist.methods.labelers import CentroidAgreement, ConfidenceWeight, Selector, TeacherView, confidence_weight
from uda_dist.model.heads import resize_to
from uda_dist.stats.centroids import ClassCentroids


def _diga_jitter() -> StrongAugConfig:
    return StrongAugConfig(jitter_strength=0.4, jitter_p=0.5, blur_p=0.8)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillationConfig:
    """DiGA's symmetric distillation between the student and its EMA teacher over the source image x and its
    cross-domain mixture x_aug."""

    weight: float = 0.0
    """Weight of the distillation term (DiGA: 0.5 in the warm-up, 0.25 in self-training); 0 = off."""
    beta: float = 0.4
    """x_aug = beta * jitter(x) + (1 - beta) * x on half of the label's classes (DiGA: 0.4 in the warm-up, 0.3
    in self-training); the target-styled x (Fourier domain adaptation) on the others."""
    fda_beta: float = 0.01
    """Fourier domain adaptation's window: the frequencies below this share of the shorter side take the
    target's amplitude (FDA: 0.01)."""
    jitter: StrongAugConfig = dataclasses.field(default_factory=_diga_jitter)
    """jitter(x): colour jitter 0.4 with probability 0.5 and Gaussian blur with probability 0.8 (DiGA's
    kornia jitter, without its grayscale and sharpness steps)."""

    def __post_init__(self) -> None:
        if self.weight < 0 or not 0.0 <= self.beta <= 1.0 or not 0.0 <= self.fda_beta < 0.5:
            raise ValueError(f"distillation needs weight >= 0, beta in [0, 1] and fda_beta in [0, 0.5), got "
                             f"{self.weight}, {self.beta}, {self.fda_beta}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelfTrainingConfig(MethodConfig):
    """Mean-teacher self-training on ClassMix images with confidence-weighted pseudo-labels (DAFormer)."""

    ema_alpha: float = 0.999
    """Upper bound of the teacher's EMA factor: alpha_t = min(1 - 1/(t+1), ema_alpha)."""
    pseudo_threshold: float = 0.968
    """Teacher confidence above which a target pixel counts towards the quality weight q."""
    pseudo_weight: float = 1.0
    """Weight of the mixed-image (pseudo-label) cross-entropy."""
    pl_crop_top: int = 0
    """Rows at the top of the target image whose pseudo-label weight is 0 (GTA->Cityscapes: 15)."""
    pl_crop_bottom: int = 0
    """Rows at the bottom of the target image whose pseudo-label weight is 0 (GTA->Cityscapes: 120)."""
    strong_aug: StrongAugConfig = dataclasses.field(default_factory=StrongAugConfig)
    pseudo_source: Literal["teacher", "offline"] = "teacher"
    """A target pixel's pseudo-label: "teacher" = the EMA teacher's arg-max on the un-augmented target image at
    each step (DAFormer); "offline" = the label stored with the target sample, an earlier stage's pseudo-labels
    (data.target a pseudo-label split; a staged run's labels_from with labels_as="target"; DiGA)."""
    pseudo_selection: Literal["confidence", "centroid_agreement"] = "confidence"
    """"confidence" = every pixel weighted by q, the share of confident teacher pixels (DAFormer);
    "centroid_agreement" = a pixel kept, weight 1, only where its pseudo-label is the class of the nearest target
    feature centroid (DiGA: no threshold)."""
    centroid_momentum: float = 1e-4
    """centroid_agreement: the centroids' momentum per per-image class mean (DiGA: 1e-4)."""
    centroid_min_pixels: int = 5
    """centroid_agreement: an image's class counts towards its centroid when it covers at least this many pixels
    of the feature grid (DiGA: 5)."""
    distillation: DistillationConfig = dataclasses.field(default_factory=DistillationConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema_alpha < 1.0:
            raise ValueError(f"ema_alpha must be in [0, 1), got {self.ema_alpha}")
        if not 0.0 <= self.pseudo_threshold <= 1.0:
            raise ValueError(f"pseudo_threshold must be in [0, 1], got {self.pseudo_threshold}")
        if self.pseudo_weight < 0 or self.pl_crop_top < 0 or self.pl_crop_bottom < 0:
            raise ValueError("pseudo_weight, pl_crop_top and pl_crop_bottom must be >= 0")
        if not 0.0 <= self.centroid_momentum <= 1.0 or self.centroid_min_pixels < 1:
            raise ValueError(f"centroid_momentum must be in [0, 1] and centroid_min_pixels >= 1, got "
                             f"{self.centroid_momentum}, {self.centroid_min_pixels}")

    @property
    def reads_target_labels(self) -> bool:
        return self.pseudo_source == "offline"

    def build(self, student: nn.Module, *, seed: int, reducer: Reducer | None = None,
              total_steps: int = 0) -> "SelfTraining":
        return SelfTraining(self, student, seed=seed, reducer=reducer)


# ---------------------------------------------------------------- pure pieces (unit-tested)

def ema_alpha(step: int, max_alpha: float) -> float:
    """DAFormer's teacher momentum at iteration `step` (the first update happens at step 1)."""
    return min(1.0 - 1.0 / (step + 1), max_alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student on parameters; buffers copied from the student."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, alpha)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - alpha)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)


def pseudo_labels(logits_BKHW: torch.Tensor, *, threshold: float, crop_top: int = 0,
                  crop_bottom: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(label_BHW, weight_BHW, q): argmax of the teacher softmax; weight = q everywhere, where q is the
    fraction of the batch's pixels with max probability >= threshold (one scalar, as DAFormer), and 0 on
    the PL-crop rows."""
    label_BHW = logits_BKHW.argmax(dim=1)
    q = confidence_weight(logits_BKHW, threshold=threshold)
    return label_BHW, without_pl_crop(q.expand(label_BHW.shape), top=crop_top, bottom=crop_bottom), q


def without_pl_crop(weight_BHW: torch.Tensor, *, top: int, bottom: int) -> torch.Tensor:
    """The pixel weights with the PL-crop rows set to 0."""
    cropped_H = pl_crop_rows(weight_BHW.shape[1], top=top, bottom=bottom, device=weight_BHW.device)
    return weight_BHW.masked_fill(cropped_H.view(1, -1, 1), 0.0)


def pl_crop_rows(height: int, *, top: int, bottom: int, device: torch.device | None = None) -> torch.Tensor:
    """bool [H]: the PL-crop rows (the first ``top`` and the last ``bottom``), whose pseudo-labels are not used."""
    rows_H = torch.arange(height, device=device)
    return (rows_H < top) | (rows_H >= height - bottom)


def class_mix_masks(label_BHW: torch.Tensor, *, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """ClassMix masks (bool BHW): per image, a random half (rounded up) of the classes present in the source
    label; the mask covers those classes' pixels. Ignore pixels are never in the mask."""
    B = label_BHW.shape[0]
    valid_BHW = label_BHW != IGNORE_INDEX
    flat_BN = torch.where(valid_BHW, label_BHW, num_classes).reshape(B, -1)
    present_BK = torch.zeros(B, num_classes + 1, dtype=torch.bool, device=label_BHW.device)
    present_BK.scatter_(1, flat_BN, True)
    present_BK = present_BK[:, :num_classes]
    scores_BK = torch.rand(B, num_classes, generator=generator).to(label_BHW.device)
    scores_BK = scores_BK.masked_fill(~present_BK, -1.0)
    ranks_BK = scores_BK.argsort(dim=1, descending=True).argsort(dim=1)
    n_pick_B1 = (present_BK.sum(dim=1, keepdim=True) + 1) // 2
    chosen_BK = present_BK & (ranks_BK < n_pick_B1)
    chosen_BK = torch.cat([chosen_BK, chosen_BK.new_zeros(B, 1)], dim=1)  # the ignore slot is never chosen
    return torch.gather(chosen_BK, 1, flat_BN).reshape(label_BHW.shape)


def mix(mask_BHW: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """Paste `inside` where the mask is set; works for images (B3HW) and per-pixel maps (BHW)."""
    mask = mask_BHW.unsqueeze(1) if inside.dim() == 4 else mask_BHW
    return torch.where(mask, inside, outside)


# ---------------------------------------------------------------- the method

class SelfTraining(Method):
    needs_target = True
    per_rank_state = ("generator",)  # seeded by rank: ClassMix classes, crops

    def __init__(self, cfg: SelfTrainingConfig, student: nn.Module, *, seed: int = 0, reducer: Reducer | None = None):
        self.cfg = cfg
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)
        self.generator = torch.Generator().manual_seed(seed)
        self.selector: Selector = ConfidenceWeight(cfg.pseudo_threshold)
        if cfg.pseudo_selection == "centroid_agreement":
            centroids = ClassCentroids(student.cfg.num_classes, student.fused_channels, momentum=cfg.centroid_momentum,
                                       min_pixels=cfg.centroid_min_pixels, reducer=reducer)
            self.selector = CentroidAgreement(centroids.to(next(student.parameters()).device))
        self._log: dict[str, torch.Tensor] = {}

    def _teacher_mode(self) -> nn.Module:
        """The teacher as it labels: dropout/drop-path off, BatchNorm on batch statistics (DAFormer)."""
        self.teacher.train()
        for m in self.teacher.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "DropPath":
                m.eval()
        return self.teacher

    def teacher_view(self, image_B3HW: torch.Tensor) -> TeacherView:
        """The teacher's logits (head grid and image size) and decoder feature."""
        with torch.no_grad():
            out = self._teacher_mode()(image_B3HW, with_features=True)
        return TeacherView(logits_BKhw=out.logits_BKhw, fused_BChw=out.fused_BChw,
                           logits_BKHW=resize_to(out.logits_BKhw, image_B3HW.shape[-2:]))

    def teacher_predict(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """Teacher logits at image size."""
        return self.teacher_view(image_B3HW).logits_BKHW

    def target_pseudo_labels(self, target: dict[str, Any]
                             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(label_BHW, weight_BHW, values to log): the teacher's arg-max on the un-augmented target image (or
        the offline pseudo-labels), weighted or selected by the pseudo-label selector, 0 on the PL-crop rows."""
        cfg = self.cfg
        view = self.teacher_view(target["image"])
        label_BHW = target["label"] if cfg.pseudo_source == "offline" else view.logits_BKHW.argmax(dim=1)
        label_BHW, weight_BHW, log = self.selector.select(label_BHW, view)
        return label_BHW, without_pl_crop(weight_BHW, top=cfg.pl_crop_top, bottom=cfg.pl_crop_bottom), log

    def mix_loss(self, student: nn.Module, source: dict[str, Any], target: dict[str, Any],
                 pl_BHW: torch.Tensor, pl_weight_BHW: torch.Tensor) -> torch.Tensor:
        """Weighted CE of the student on the strongly augmented ClassMix image (source pasted on target)."""
        mask_BHW = class_mix_masks(source["label"], num_classes=student.cfg.num_classes, generator=self.generator)
        mixed_B3HW = mix(mask_BHW, source["image"], target["image"])
        mixed_B3HW = strong_photometric(mixed_B3HW, generator=self.generator, cfg=self.cfg.strong_aug)
        mixed_label_BHW = mix(mask_BHW, source["label"], pl_BHW)
        mixed_weight_BHW = mix(mask_BHW, torch.ones_like(pl_weight_BHW), pl_weight_BHW)
        logits_mix_BKHW = student.segment(mixed_B3HW)
        return self.cfg.pseudo_weight * cross_entropy(logits_mix_BKHW, mixed_label_BHW, weight_BHW=mixed_weight_BHW)

    def distillation_loss(self, student: nn.Module, source: dict[str, Any], target: dict[str, Any],
                          logits_src_BKHW: torch.Tensor) -> torch.Tensor:
        """weight * [H(T(x), S(x_aug)) + 0.5 H(T(x_aug), S(x))] on the source image x and its cross-domain
        mixture x_aug (the target batch lends its style); the teacher's view of x_aug also feeds the
        selector's source statistics (DiGA's centroids)."""
        cfg = self.cfg.distillation
        image_B3HW, label_BHW = source["image"], source["label"]
        mask_BHW = class_mix_masks(label_BHW, num_classes=student.cfg.num_classes, generator=self.generator)
        mask_BHW = mask_BHW | (label_BHW == IGNORE_INDEX)
        styled_B3HW = fourier_style(image_B3HW, resize_to(target["image"], image_B3HW.shape[-2:]), beta=cfg.fda_beta)
        jittered_B3HW = strong_photometric(image_B3HW, generator=self.generator, cfg=cfg.jitter)
        aug_B3HW = cross_domain_mixture(image_B3HW, jittered_B3HW, styled_B3HW, mask_BHW, beta=cfg.beta)
        logits_aug_BKHW = student.segment(aug_B3HW)
        teacher_x, teacher_aug = self.teacher_view(image_B3HW), self.teacher_view(aug_B3HW)
        self.selector.observe_source(teacher_aug, label_BHW)
        return cfg.weight * symmetric_distillation(teacher_x.logits_BKHW, logits_src_BKHW, teacher_aug.logits_BKHW,
                                                   logits_aug_BKHW)

    def losses(self, student, source, target, step):
        cfg = self.cfg
        logits_src_BKHW = student.segment(source["image"])
        losses = {"source.ce": cfg.source_weight * cross_entropy(logits_src_BKHW, source["label"])}
        if cfg.distillation.weight:
            losses["source.distillation"] = self.distillation_loss(student, source, target, logits_src_BKHW)
        if cfg.pseudo_weight:
            pl_BHW, pl_weight_BHW, self._log = self.target_pseudo_labels(target)
            losses["mix.ce"] = self.mix_loss(student, source, target, pl_BHW, pl_weight_BHW)
        return losses

    def start(self, student, target_split, device):
        self.selector.start(target_split, self.teacher_view, device)

    def after_step(self, student, step):
        self.selector.after_step()
        # DAFormer updates at the start of iteration t+1 with the weights after step t: alpha(t + 1)
        ema_update(self.teacher, student, ema_alpha(step + 1, self.cfg.ema_alpha))

    def log_values(self):
        return self._log

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "generator": self.generator.get_state(),
                "selector": self.selector.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.generator.set_state(state["generator"])
        self.selector.load_state_dict(state["selector"])


# ---------------------------------------------------------------- DiGA's stages, as choices of this method

def diga_warmup(**changes: Any) -> SelfTrainingConfig:
    """DiGA's distillation warm-up: source cross-entropy + 0.5 symmetric distillation over x and its cross-domain
    mixture (beta 0.4); no target term (the target images only lend their style)."""
    return SelfTrainingConfig(pseudo_weight=0.0, distillation=DistillationConfig(weight=0.5, beta=0.4), **changes)


def diga_self_training(**changes: Any) -> SelfTrainingConfig:
    """DiGA's self-training round: source cross-entropy + cross-entropy on the ClassMix image with the offline
    pseudo-labels kept where they agree with the nearest target centroid + 0.25 distillation (beta 0.3)."""
    return SelfTrainingConfig(pseudo_source="offline", pseudo_selection="centroid_agreement",
                              distillation=DistillationConfig(weight=0.25, beta=0.3), **changes)
