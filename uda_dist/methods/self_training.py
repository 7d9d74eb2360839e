"""DAFormer-style mean-teacher self-training (DACS): EMA teacher, confidence-weighted pseudo-labels, ClassMix.

Paper: Tranheden et al., "DACS", WACV 2021; Hoyer et al., "DAFormer", CVPR 2022. Reference: lhoyer/DAFormer
mmseg/models/uda/dacs.py and mmseg/models/utils/dacs_transforms.py.

Parts a recipe chooses (each a config field; no method subclasses another):
- where a target pixel's pseudo-label comes from (``pseudo_source``): the teacher at each step, or the
  offline pseudo-labels an earlier stage wrote (the target stream then carries them as its labels);
- how the pseudo-labels are weighted or selected (``pseudo_selection``, uda_dist.methods.labelers): DAFormer's
  confidence weight, or DiGA's agreement with the nearest target feature centroid;
- SePiCo's day/night fusion (``day_night``, uda_dist.methods.labelers): the teacher's prediction on each night
  image's daytime pair fused into its pseudo-labels, and per-class weights (``class_weight``, SePiCo's class
  prior on Dark Zurich) on the fused scores and the cross-entropies;
- plug-in loss terms (uda_dist.methods.terms), each off by default: DiGA's symmetric distillation
  (``distillation``, uda_dist.methods.distillation; with ``pseudo_weight=0`` there is no target term: DiGA's
  source-only warm-up), SePiCo's pixel contrast (``sepico``, uda_dist.methods.sepico), PGPC's pseudo-label
  guided pixel contrast (``pgpc``, uda_dist.methods.pgpc), FADA's class-level adversarial term (``fada``,
  uda_dist.methods.fada) and ASANet's affinity-space adaptation (``asanet``, uda_dist.methods.asanet), the
  last two with a discriminator each. Terms that read class statistics share ONE ClassStatistics, fed once
  per step (one packed all-reduce), however many of them are on. FADA's and ASANet's methods are this
  method with their term and ``pseudo_weight=0`` (uda_dist.methods.presets, with DiGA's stages).

One step, top to bottom (``losses``):
1. SePiCo's class-balanced target crop, when on;
2. the teacher's view of the un-augmented target (fused with its view of the day pair under ``day_night``) and
   the selected pseudo-labels (when anything reads them);
3. the source class statistics, BEFORE the losses, from the teacher's projection of the un-augmented source
   and the ground truth (when a term reads them): one reduce;
4. the student's source pass (on the strongly augmented source with ``strong_source``; with projection
   features when a term asks) and its cross-entropy;
5. the terms' losses on that pass (distillation, contrast, adversarial; a term reading the student's pass over
   the target makes it here, once, shared by the others; ``target_pass`` makes it with no term);
6. the ClassMix image, the student's pass over it and its weighted cross-entropy;
7. the terms' losses on the mixed pass.
The EMA teacher exists only when something reads it (``SelfTraining.reads_teacher``); a term's auxiliary modules
(a discriminator) are the method's, run by the trainer's auxiliary phase (uda_dist.step).
Differences on purpose:
- no host syncs in the step: the pseudo-label quality weight q stays a device tensor (DAFormer calls .item()),
  and ClassMix picks classes from a presence vector instead of torch.unique (uda_dist.data.class_mix);
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
from uda_dist.data.class_mix import class_balanced_windows, class_mix_masks, mix
from uda_dist.losses.segmentation import cross_entropy
from uda_dist.methods.asanet import ASANetAdaptation, ASANetConfig
from uda_dist.methods.base import Method, MethodConfig, Reducer
from uda_dist.methods.distillation import Distillation, DistillationConfig
from uda_dist.methods.fada import FADAAdversarial, FADAConfig
from uda_dist.methods.labelers import (CentroidAgreement, ConfidenceWeight, DayNightConfig, Selector, TeacherView,
                                       confidence_weight, fuse_day_night)
from uda_dist.methods.pgpc import PGPCConfig, PGPCContrast
from uda_dist.methods.sepico import SePiCoContrast, SePiCoContrastConfig
from uda_dist.methods.terms import MixedPass, StepContext, Term, grid_labels, pixels, pl_crop_rows
from uda_dist.model.heads import resize_to
from uda_dist.stats.centroids import ClassCentroids
from uda_dist.stats.class_stats import ClassStatistics


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
    strong_source: bool = False
    """The student's source pass (cross-entropy and the terms that read it) on the strongly augmented source,
    as the SePiCo paper trains it; False = the weak source image, as DAFormer."""
    class_balanced_crops: int = 0
    """SePiCo's class-balanced target crop: from each (larger) target crop, take the best of this many random
    source-sized windows by the teacher's pseudo-labels, then label the window again; 0 = off. Needs
    data.loader.target_crop_size larger than crop_size (SePiCo: 10)."""
    label_min_share: float = 0.75
    """Labels on the feature grid (statistics and contrasts): keep the majority class where its share of the
    pooled pixels is >= this (SePiCo: 0.75)."""
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
    """DiGA's symmetric distillation term (uda_dist.methods.distillation); off unless its weight is > 0."""
    sepico: SePiCoContrastConfig = dataclasses.field(default_factory=SePiCoContrastConfig)
    """SePiCo's pixel contrast term (uda_dist.methods.sepico); off unless its weight is > 0. Needs
    model.proj_dim > 0."""
    pgpc: PGPCConfig = dataclasses.field(default_factory=PGPCConfig)
    """PGPC's pseudo-label guided pixel contrast term (uda_dist.methods.pgpc); off unless its weight is > 0.
    Needs model.proj_dim > 0."""
    fada: FADAConfig = dataclasses.field(default_factory=FADAConfig)
    """FADA's class-level adversarial term and its discriminator (uda_dist.methods.fada); off unless
    adv_weight > 0."""
    asanet: ASANetConfig = dataclasses.field(default_factory=ASANetConfig)
    """ASANet's affinity-space adversarial term and cleaning loss (uda_dist.methods.asanet); off unless one of
    its weights is > 0."""
    day_night: DayNightConfig = dataclasses.field(default_factory=DayNightConfig)
    """SePiCo's day/night pseudo-label fusion (uda_dist.methods.labelers): the teacher also labels each night
    target image's daytime pair, and the two predictions are fused per class. Off unless enabled; needs a
    target split built with day pairs."""
    class_weight: tuple[float, ...] = ()
    """Per-class weights (one per class) of the source and mixed cross-entropies and of the fused day/night
    pseudo-label scores: SePiCo's Cityscapes -> Dark Zurich log-frequency prior
    (labelers.log_frequency_weights); () = none."""
    target_pass: bool = False
    """Make the student's train-mode pass over the un-augmented target at every step even when no term reads it:
    its BatchNorm running statistics then follow the target. The control of the adversarial terms (their
    weights 0, this on: the same student step without the adversarial gradient)."""

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
        if self.class_balanced_crops < 0:
            raise ValueError(f"class_balanced_crops must be >= 0, got {self.class_balanced_crops}")
        if not 0.0 < self.label_min_share <= 1.0:
            raise ValueError(f"label_min_share must be in (0, 1], got {self.label_min_share}")
        object.__setattr__(self, "class_weight", tuple(float(w) for w in self.class_weight))
        if any(not w > 0 for w in self.class_weight):
            raise ValueError(f"class_weight must be positive, got {self.class_weight}")
        if self.day_night.enabled and self.pseudo_source == "offline":
            raise ValueError("day_night fuses the teacher's predictions: it needs pseudo_source='teacher'")

    @property
    def reads_day_pairs(self) -> bool:
        return self.day_night.enabled

    @property
    def reads_target_labels(self) -> bool:
        return self.pseudo_source == "offline"

    def build(self, student: nn.Module, *, seed: int, reducer: Reducer | None = None,
              total_steps: int = 0) -> "SelfTraining":
        return SelfTraining(self, student, seed=seed, reducer=reducer, total_steps=total_steps)

    def terms(self, student: nn.Module, *, total_steps: int = 0) -> tuple[Term, ...]:
        """The plug-in terms this config switches on, in the order the step runs them (``total_steps``: the
        run's optimiser steps, for terms whose weight follows the schedule)."""
        terms: list[Term] = []
        if self.distillation.weight:
            terms.append(Distillation(self.distillation))
        if self.sepico.weight:
            terms.append(SePiCoContrast(self.sepico, student))
        if self.pgpc.weight:
            terms.append(PGPCContrast(self.pgpc, student))
        if self.fada.adv_weight:
            terms.append(FADAAdversarial(self.fada, student))
        if self.asanet.on:
            terms.append(ASANetAdaptation(self.asanet, student, total_steps=total_steps))
        return tuple(terms)


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


# ---------------------------------------------------------------- the method

class SelfTraining(Method):
    needs_target = True
    per_rank_state = ("generator",)  # seeded by rank: ClassMix classes, crops

    def __init__(self, cfg: SelfTrainingConfig, student: nn.Module, *, seed: int = 0, reducer: Reducer | None = None,
                 total_steps: int = 0):
        self.cfg = cfg
        self.terms = cfg.terms(student, total_steps=total_steps)
        self.generator = torch.Generator().manual_seed(seed)
        device = next(student.parameters()).device
        self.class_weight_K: torch.Tensor | None = None
        if cfg.class_weight:
            if len(cfg.class_weight) != student.cfg.num_classes:
                raise ValueError(f"method.class_weight has {len(cfg.class_weight)} weights for "
                                 f"{student.cfg.num_classes} classes")
            self.class_weight_K = torch.tensor(cfg.class_weight, dtype=torch.float32, device=device)
        self.selector: Selector = ConfidenceWeight(cfg.pseudo_threshold)
        if cfg.pseudo_selection == "centroid_agreement":
            centroids = ClassCentroids(student.cfg.num_classes, student.fused_channels, momentum=cfg.centroid_momentum,
                                       min_pixels=cfg.centroid_min_pixels, reducer=reducer)
            self.selector = CentroidAgreement(centroids.to(device))
        self.stats: ClassStatistics | None = None
        if any(term.uses_statistics for term in self.terms):
            self.stats = ClassStatistics(student.cfg.num_classes, student.cfg.proj_dim, reducer=reducer).to(device)
        self.teacher: nn.Module | None = None
        if self.reads_teacher:
            self.teacher = copy.deepcopy(student).requires_grad_(False)
        self._auxiliaries = {}
        for term in self.terms:
            for name, auxiliary in term.auxiliaries().items():
                if name in self._auxiliaries:
                    raise ValueError(f"two terms declare an auxiliary module {name!r}")
                self._auxiliaries[name] = (term, auxiliary)
        self._log: dict[str, torch.Tensor] = {}

    @property
    def reads_teacher(self) -> bool:
        """Whether anything in the step reads the EMA teacher: the pseudo-labels (the mixed term, or a term
        reading them), the class statistics, the class-balanced crop, DiGA's centroids, a term of its own.
        Without it there is no teacher to keep, update or checkpoint (terms that read only the student)."""
        cfg = self.cfg
        return bool(cfg.pseudo_weight or cfg.class_balanced_crops or cfg.pseudo_selection != "confidence"
                    or self.stats is not None
                    or any(term.uses_teacher or term.needs_pseudo_labels for term in self.terms))

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

    def pseudo_view(self, target: dict[str, Any]) -> TeacherView:
        """The teacher's view of the un-augmented target image; with the day/night fusion, its scores are the
        night and day softmaxes fused (the day pair under the same crop and flip), times the class weights."""
        view = self.teacher_view(target["image"])
        if not self.cfg.day_night.enabled:
            return view
        day = self.teacher_view(target["day_image"])
        probs_BKHW = fuse_day_night(torch.softmax(day.logits_BKHW.float(), dim=1),
                                    torch.softmax(view.logits_BKHW.float(), dim=1), cfg=self.cfg.day_night,
                                    class_weight_K=self.class_weight_K)
        return dataclasses.replace(view, probs_BKHW=probs_BKHW)

    def target_pseudo_labels(self, target: dict[str, Any]
                             ) -> tuple[torch.Tensor, torch.Tensor, TeacherView, dict[str, torch.Tensor]]:
        """(label_BHW, weight_BHW, the teacher's view, values to log): the arg-max of the teacher's scores on the
        un-augmented target image (``pseudo_view``; or the offline pseudo-labels), weighted or selected by the
        pseudo-label selector, 0 on the PL-crop rows."""
        cfg = self.cfg
        view = self.pseudo_view(target)
        label_BHW = target["label"] if cfg.pseudo_source == "offline" else view.scores_BKHW().argmax(dim=1)
        label_BHW, weight_BHW, log = self.selector.select(label_BHW, view)
        return label_BHW, without_pl_crop(weight_BHW, top=cfg.pl_crop_top, bottom=cfg.pl_crop_bottom), view, log

    @torch.no_grad()
    def update_statistics(self, source: dict[str, Any]) -> None:
        """The teacher's projection of the un-augmented source + its ground truth -> the class statistics (one
        reduce), then to every term that keeps something of the step's reduced moments (SePiCo's memory bank)."""
        feat_BDhw = self._teacher_mode().project(source["image"])
        label_Bhw = grid_labels(source["label"], feat_BDhw, num_classes=self.stats.num_classes,
                                min_share=self.cfg.label_min_share)
        batch = self.stats.update(pixels(feat_BDhw), label_Bhw.reshape(-1))
        for term in self.terms:
            term.on_statistics(batch)

    def class_balanced_target(self, target: dict[str, Any], *, size: tuple[int, int]) -> dict[str, Any]:
        """The target batch cut to ``size`` at the windows whose pseudo-labels are the most class-balanced."""
        label_BHW = self.pseudo_view(target).scores_BKHW().argmax(dim=1)
        tops_B, lefts_B = class_balanced_windows(label_BHW, size=size, candidates=self.cfg.class_balanced_crops,
                                                 num_classes=self.teacher.cfg.num_classes, generator=self.generator)
        h, w = size
        windows = list(zip(tops_B.tolist(), lefts_B.tolist()))
        cropped = {name: torch.stack([img[:, t:t + h, l:l + w] for img, (t, l) in zip(target[name], windows)])
                   for name in ("image", "day_image") if name in target}
        return {**target, **cropped}

    def mixed_pass(self, student: nn.Module, source: dict[str, Any], target: dict[str, Any],
                   pl_BHW: torch.Tensor, pl_weight_BHW: torch.Tensor, *, with_proj: bool) -> MixedPass:
        """The strongly augmented ClassMix image (source pasted on target), its labels and weights (1 on the
        pasted source, the pseudo-label weight elsewhere), and the student's pass over it."""
        mask_BHW = class_mix_masks(source["label"], num_classes=student.cfg.num_classes, generator=self.generator)
        mixed_B3HW = mix(mask_BHW, source["image"], target["image"])
        mixed_B3HW = strong_photometric(mixed_B3HW, generator=self.generator, cfg=self.cfg.strong_aug)
        label_BHW = mix(mask_BHW, source["label"], pl_BHW)
        weight_BHW = mix(mask_BHW, torch.ones_like(pl_weight_BHW), pl_weight_BHW)
        out = student(mixed_B3HW, with_proj=with_proj)
        return MixedPass(image_B3HW=mixed_B3HW, mask_BHW=mask_BHW, label_BHW=label_BHW, weight_BHW=weight_BHW,
                         out=out, logits_BKHW=resize_to(out.logits_BKhw, mixed_B3HW.shape[-2:]))

    def losses(self, student, source, target, step):
        cfg, terms = self.cfg, self.terms
        if cfg.class_balanced_crops:                                                            # 1. target crop
            target = self.class_balanced_target(target, size=tuple(source["image"].shape[-2:]))
        pl_BHW = pl_weight_BHW = view = None
        if cfg.pseudo_weight or any(term.needs_pseudo_labels for term in terms):               # 2. pseudo-labels
            pl_BHW, pl_weight_BHW, view, self._log = self.target_pseudo_labels(target)
        if self.stats is not None:                                                              # 3. statistics
            self.update_statistics(source)
            self._log = {**self._log, "stats.classes_seen": self.stats.seen_K.sum().float()}
        source_B3HW = source["image"]                                                           # 4. source pass
        if cfg.strong_source:
            source_B3HW = strong_photometric(source_B3HW, generator=self.generator, cfg=cfg.strong_aug)
        out_src = student(source_B3HW, with_proj=any(term.source_projection(step) for term in terms),
                          with_features=any(term.source_features(step) for term in terms))
        logits_src_BKHW = resize_to(out_src.logits_BKhw, source["label"].shape[-2:])
        losses = {"source.ce": cfg.source_weight * cross_entropy(logits_src_BKHW, source["label"],
                                                                 class_weight_K=self.class_weight_K)}
        ctx = StepContext(step=step, student=student, source=source, source_out=out_src,
                          logits_src_BKHW=logits_src_BKHW, target=target, pseudo_label_BHW=pl_BHW,
                          pseudo_view=view, generator=self.generator,
                          teacher_view=self.teacher_view, selector=self.selector, stats=self.stats,
                          strong_aug=cfg.strong_aug, label_min_share=cfg.label_min_share,
                          pl_crop=(cfg.pl_crop_top, cfg.pl_crop_bottom))
        if cfg.target_pass:
            ctx.student_target()
        for term in terms:                                                                      # 5. terms
            losses.update(term.losses(ctx))
        mix_proj = any(term.mix_projection(step) for term in terms)
        if cfg.pseudo_weight or mix_proj:                                                       # 6. ClassMix pass
            mixed = self.mixed_pass(student, source, target, pl_BHW, pl_weight_BHW, with_proj=mix_proj)
            if cfg.pseudo_weight:
                losses["mix.ce"] = cfg.pseudo_weight * cross_entropy(mixed.logits_BKHW, mixed.label_BHW,
                                                                     weight_BHW=mixed.weight_BHW,
                                                                     class_weight_K=self.class_weight_K)
            for term in terms:                                                                  # 7. terms on it
                losses.update(term.mix_losses(ctx, mixed))
        return losses

    def start(self, student, target_split, device):
        self.selector.start(target_split, self.teacher_view, device)

    def after_step(self, student, step):
        self.selector.after_step()
        if self.teacher is not None:
            # DAFormer updates at the start of iteration t+1 with the weights after step t: alpha(t + 1)
            ema_update(self.teacher, student, ema_alpha(step + 1, self.cfg.ema_alpha))

    def auxiliaries(self):
        return {name: auxiliary for name, (_, auxiliary) in self._auxiliaries.items()}

    def auxiliary_losses(self, name):
        if name not in self._auxiliaries:
            return super().auxiliary_losses(name)
        return self._auxiliaries[name][0].auxiliary_losses(name)

    def log_values(self):
        values = dict(self._log)
        for term in self.terms:
            values.update(term.log_values())
        return values

    def state_dict(self) -> dict[str, Any]:
        state = {"generator": self.generator.get_state(), "selector": self.selector.state_dict()}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        if self.stats is not None:
            state["stats"] = self.stats.state_dict()
        for term in self.terms:
            term_state = term.state_dict()
            if term_state.keys() & state.keys():
                raise ValueError(f"{type(term).__name__} keeps state under keys already taken: "
                                 f"{sorted(term_state.keys() & state.keys())}")
            state.update(term_state)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.generator.set_state(state["generator"])
        self.selector.load_state_dict(state["selector"])
        if self.stats is not None:
            self.stats.load_state_dict(state["stats"])
        for term in self.terms:
            term.load_state_dict({key: state[key] for key in term.state_dict()})
