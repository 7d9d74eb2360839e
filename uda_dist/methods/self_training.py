"""DAFormer-style mean-teacher self-training (DACS): EMA teacher, confidence-weighted pseudo-labels, ClassMix.

Paper: Tranheden et al., "DACS", WACV 2021; Hoyer et al., "DAFormer", CVPR 2022. Reference: lhoyer/DAFormer
mmseg/models/uda/dacs.py and mmseg/models/utils/dacs_transforms.py.
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
from typing import Any

import torch
from torch import nn

from uda_dist.data.augment import StrongAugConfig, strong_photometric
from uda_dist.losses.segmentation import IGNORE_INDEX, cross_entropy
from uda_dist.methods.base import Method, MethodConfig, Reducer
from uda_dist.methods.labelers import ConfidenceWeight


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

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema_alpha < 1.0:
            raise ValueError(f"ema_alpha must be in [0, 1), got {self.ema_alpha}")
        if not 0.0 <= self.pseudo_threshold <= 1.0:
            raise ValueError(f"pseudo_threshold must be in [0, 1], got {self.pseudo_threshold}")
        if self.pseudo_weight < 0 or self.pl_crop_top < 0 or self.pl_crop_bottom < 0:
            raise ValueError("pseudo_weight, pl_crop_top and pl_crop_bottom must be >= 0")

    def build(self, student: nn.Module, *, seed: int, reducer: Reducer | None = None,
              total_steps: int = 0) -> "SelfTraining":
        return SelfTraining(self, student, seed=seed)


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
    label_BHW, weight_BHW, log = ConfidenceWeight(threshold).select(logits_BKHW.argmax(dim=1), logits_BKHW)
    return label_BHW, without_pl_crop(weight_BHW, top=crop_top, bottom=crop_bottom), log["pseudo.confident_ratio"]


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

    def __init__(self, cfg: SelfTrainingConfig, student: nn.Module, *, seed: int = 0):
        self.cfg = cfg
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)
        self.generator = torch.Generator().manual_seed(seed)
        self.selector = ConfidenceWeight(cfg.pseudo_threshold)
        self._log: dict[str, torch.Tensor] = {}

    def _teacher_mode(self) -> nn.Module:
        """The teacher as it labels: dropout/drop-path off, BatchNorm on batch statistics (DAFormer)."""
        self.teacher.train()
        for m in self.teacher.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "DropPath":
                m.eval()
        return self.teacher

    def teacher_predict(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """Teacher logits at image size."""
        with torch.no_grad():
            return self._teacher_mode().segment(image_B3HW)

    def target_pseudo_labels(self, target: dict[str, Any]
                             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(label_BHW, weight_BHW, values to log): the teacher's arg-max on the un-augmented target image,
        weighted by the pseudo-label selector, 0 on the PL-crop rows."""
        cfg = self.cfg
        logits_BKHW = self.teacher_predict(target["image"])
        label_BHW, weight_BHW, log = self.selector.select(logits_BKHW.argmax(dim=1), logits_BKHW)
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

    def losses(self, student, source, target, step):
        logits_src_BKHW = student.segment(source["image"])
        pl_BHW, pl_weight_BHW, self._log = self.target_pseudo_labels(target)
        return {
            "source.ce": self.cfg.source_weight * cross_entropy(logits_src_BKHW, source["label"]),
            "mix.ce": self.mix_loss(student, source, target, pl_BHW, pl_weight_BHW),
        }

    def after_step(self, student, step):
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
