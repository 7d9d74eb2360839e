"""Recipes on the real benchmarks with the papers' defaults (DAFormer, SePiCo, PGPC, FADA, ASANet, DiGA).

They need the datasets as shards with manifests (built by `python -m shards build ... --out data/<folder>`,
README "Datasets as shards") and local ImageNet weights; `--print-config` resolves them anywhere. Manifest
locations default to ./data/<folder>/<dataset>-<split>.manifest.json (the builder's names); point them
elsewhere, s3:// included, with --set data.source=... . The DAFormer-style recipes sample the source by rare
class sampling (T = 0.01, 3000 px, counted in the labels as stored: build GTA5/SYNTHIA at full resolution, or
scale rcs_min_pixels with the area).
"""
from __future__ import annotations

import dataclasses

from uda_dist.config import RunConfig, TrainConfig
from uda_dist.data.sources import DataConfig
from uda_dist.data.webdataset import LoaderConfig
from uda_dist.inference import EvalConfig
from uda_dist.methods.base import MethodConfig
from uda_dist.methods.labelers import DayNightConfig, log_frequency_weights
from uda_dist.methods.presets import asanet_adaptation, diga_self_training, diga_warmup, fada_adversarial
from uda_dist.methods.self_training import SelfTrainingConfig
from uda_dist.methods.pgpc import PGPCConfig
from uda_dist.methods.sepico import SePiCoContrastConfig
from uda_dist.model.segmentor import ModelConfig
from uda_dist.optim import OptimConfig
from uda_dist.pipeline import PipelineConfig, StageConfig, sections_of
from uda_dist.pseudo_labels import LabelConfig


def _manifest(dataset: str, split: str, folder: str = "") -> str:
    return f"data/{folder or dataset}/{dataset}-{split}.manifest.json"


def gta_to_cs_daformer() -> RunConfig:
    """DAFormer on GTA5 -> Cityscapes: MiT-B5 (timm's pvt_v2_b5 is its architecture) from SegFormer's ImageNet
    mit_b5.pth, 512x512 crops, 40k it; evaluated at 1024x512, the prediction upsampled to the full label."""
    return RunConfig(
        name="gta_to_cs_daformer",
        data=DataConfig(source=_manifest("gta5", "train"), target=_manifest("cityscapes", "train"),
                        val=_manifest("cityscapes", "val"),
                        loader=LoaderConfig(batch_size=2, resize=(720, 1280), target_resize=(512, 1024),
                                            scale_range=(0.5, 2.0), crop_size=(512, 512),
                                            num_workers=4, epoch_batches=1000, eval_batch_size=1,
                                            rcs_temperature=0.01, rcs_min_pixels=3000, rcs_min_crop_ratio=0.5)),
        model=ModelConfig(backbone="pvt_v2_b5", pretrained="weights/mit_b5.pth", head="daformer",
                          embed_dim=256, drop_path=0.1),
        optim=OptimConfig(lr=6e-5, head_lr_mult=10.0, weight_decay=0.01, warmup_iters=1500),
        method=SelfTrainingConfig(pl_crop_top=15, pl_crop_bottom=120),
        train=TrainConfig(iterations=40000, eval_every=4000, log_every=50),
        eval=EvalConfig(resize=(512, 1024)),  # DAFormer's test pipeline: 1024x512
    )


SYNTHIA_EVAL = EvalConfig(resize=(512, 1024), class_sets=(16, 13))
"""SYNTHIA -> Cityscapes recipes also report mIoU over SYNTHIA's 16 and 13 classes."""


def gta_to_cs_deeplabv2() -> RunConfig:
    """DeepLab-V2 variant of gta_to_cs_daformer: ResNet-101 (deep stem, timm resnet101c) at output stride 8,
    ASPP classifier; optimiser and schedule as the DAFormer recipe."""
    base = gta_to_cs_daformer()
    return dataclasses.replace(
        base, name="gta_to_cs_deeplabv2",
        model=ModelConfig(backbone="resnet101c", pretrained="weights/resnet101c.pth", head="deeplabv2",
                          output_stride=8))


# ---------------------------------------------------------------- SePiCo (BIT-DA/SePiCo)
# Hyperparameters from BIT-DA/SePiCo experiments.py: DistCL, tau 100, lambda 1, regulariser weight 1,
# start at 3000 of 40k, projection dim 512, 640x640 crops, statistics over all source pixels from step 0.
# Switch the contrast with --set method.sepico.contrast=proto|bank.

def _sepico(base: RunConfig, name: str, *, pl_crop: bool) -> RunConfig:
    loader = dataclasses.replace(base.data.loader, crop_size=(640, 640))
    return dataclasses.replace(
        base, name=name, data=dataclasses.replace(base.data, loader=loader),
        eval=dataclasses.replace(base.eval, resize=(640, 1280)),  # SePiCo's test pipeline: 1280x640
        model=dataclasses.replace(base.model, proj_dim=512),
        method=SelfTrainingConfig(
            strong_source=True, pl_crop_top=15 if pl_crop else 0, pl_crop_bottom=120 if pl_crop else 0,
            sepico=SePiCoContrastConfig(weight=1.0, contrast="dist", tau=100.0, reg_weight=1.0, start_step=3000)))


def gta_to_cs_sepico_daformer() -> RunConfig:
    """SePiCo (DistCL) on GTA5 -> Cityscapes, DAFormer-style on pvt_v2_b5 (paper: 70.3 mIoU with MiT-B5)."""
    return _sepico(gta_to_cs_daformer(), "gta_to_cs_sepico_daformer", pl_crop=True)


def gta_to_cs_sepico_deeplabv2() -> RunConfig:
    """SePiCo (DistCL) on GTA5 -> Cityscapes, DeepLab-V2 on ResNet-101 OS8, projection on layer4 (paper: 61.0)."""
    return _sepico(gta_to_cs_deeplabv2(), "gta_to_cs_sepico_deeplabv2", pl_crop=True)


def synthia_to_cs_sepico_daformer() -> RunConfig:
    """SePiCo (DistCL) on SYNTHIA -> Cityscapes, DAFormer-style (paper: 64.3 mIoU over SYNTHIA's 16 classes;
    reported beside the 19-class table, as the 13, ``miou16``, ``miou13``)."""
    base = gta_to_cs_daformer()
    data = dataclasses.replace(base.data, source=_manifest("synthia", "train"),
                               loader=dataclasses.replace(base.data.loader, resize=(760, 1280)))  # SYNTHIA 760x1280
    return _sepico(dataclasses.replace(base, data=data, eval=SYNTHIA_EVAL), "synthia_to_cs_sepico_daformer",
                   pl_crop=False)


CITYSCAPES_CLASS_FREQUENCY = (
    0.36869696, 0.06084986, 0.22824049, 0.00655399, 0.00877272, 0.01227341, 0.00207795, 0.0055127, 0.15928651,
    0.01157818, 0.04018982, 0.01218957, 0.00135122, 0.06994545, 0.00267456, 0.00235192, 0.00232904, 0.00098658,
    0.00413907)
"""Share of the Cityscapes train pixels per trainId, the table SePiCo's (and DANNet's) class prior is drawn from."""


def cs_to_darkzurich_sepico_daformer() -> RunConfig:
    """SePiCo (DistCL) on Cityscapes -> Dark Zurich (night), DAFormer-style, with the day/night pseudo-label
    fusion and the class prior (paper: 54.2 on the Dark Zurich test set). As BIT-DA/SePiCo's experiment 8: the
    fusion of each night image's daytime pair (day_ratio 0.8 on road .. fence and vegetation .. sky), the class
    prior (log-frequency weights of the Cityscapes classes, spread 0.05) on the fused scores and the
    cross-entropies; Cityscapes at 1280x640 and Dark Zurich at 1280x720 without random scaling, the class-balanced 640x640 target crop (best of 10) labelled
    again on the window, 60k iterations. The target split must be built with --day-pairs. Evaluated on Dark
    Zurich val at 1280x720 (the test pipeline's size)."""
    base = gta_to_cs_daformer()
    data = dataclasses.replace(base.data, source=_manifest("cityscapes", "train"),
                               target=_manifest("darkzurich-night", "train", "darkzurich"),
                               val=_manifest("darkzurich-night", "val", "darkzurich"),
                               loader=dataclasses.replace(base.data.loader, resize=(640, 1280),
                                                          target_resize=(720, 1280), scale_range=(1.0, 1.0),
                                                          target_crop_size=(720, 1280)))
    cfg = _sepico(dataclasses.replace(base, data=data), "cs_to_darkzurich_sepico_daformer", pl_crop=False)
    method = dataclasses.replace(cfg.method, class_balanced_crops=10, day_night=DayNightConfig(enabled=True),
                                 class_weight=log_frequency_weights(CITYSCAPES_CLASS_FREQUENCY, spread=0.05))
    return dataclasses.replace(cfg, method=method, train=dataclasses.replace(cfg.train, iterations=60000),
                               eval=dataclasses.replace(cfg.eval, resize=(720, 1280)))


# ---------------------------------------------------------------- PGPC (Xiang et al., Scientific Reports 2024)
# PGPC on DAFormer-style self-training (the paper's setting): DAFormer's recipe plus a 512-dim projection head
# on the concatenated encoder levels and the PGPC terms (uda_dist/losses/pgpc.py). The paper gives no weight,
# temperature or start step: weight 0.1 and tau 0.1 (the usual pixel-contrast values), the start at 3000 of 40k
# as SePiCo, reliable above DAFormer's 0.968, unreliable pixels pushed from all but their top 3 classes (U2PL).

def _pgpc(base: RunConfig, name: str) -> RunConfig:
    return dataclasses.replace(base, name=name, model=dataclasses.replace(base.model, proj_dim=512),
                               method=dataclasses.replace(base.method, pgpc=PGPCConfig(weight=0.1, tau=0.1,
                                                                                         start_step=3000)))


def gta_to_cs_pgpc_daformer() -> RunConfig:
    """PGPC on DAFormer-style self-training, GTA5 -> Cityscapes (paper: +5.1% relative mIoU over DAFormer)."""
    return _pgpc(gta_to_cs_daformer(), "gta_to_cs_pgpc_daformer")


def synthia_to_cs_pgpc_daformer() -> RunConfig:
    """PGPC on DAFormer-style self-training, SYNTHIA -> Cityscapes (paper: +4.6% relative mIoU over DAFormer);
    no PL crop, as the SYNTHIA recipes."""
    base = gta_to_cs_daformer()
    data = dataclasses.replace(base.data, source=_manifest("synthia", "train"),
                               loader=dataclasses.replace(base.data.loader, resize=(760, 1280)))  # SYNTHIA 760x1280
    method = dataclasses.replace(base.method, pl_crop_top=0, pl_crop_bottom=0)
    return _pgpc(dataclasses.replace(base, data=data, method=method, eval=SYNTHIA_EVAL),
                 "synthia_to_cs_pgpc_daformer")


# ------------------------------------------------ FADA (JDAI-CV/FADA configs/deeplabv2_r101_*.yaml)
# DeepLab-V2 ResNet-101 (OS 8, ASPP), SGD momentum 0.9, weight decay 5e-4, classifier lr x10, poly 0.9 with no
# warm-up; whole images (source resized to 720x1280, SYNTHIA 760x1280; target 512x1024), flips off, batch 4
# source + 4 target: 1 + 1 per worker, so run them with --set launch.workers=4 launch.use_gpu=true. Stages
# as separate runs: source-only (lr 5e-4, 20000 steps), then the adversarial stage from its weights (lr 2.5e-4,
# discriminator Adam 1e-4, 40000 steps). The reference's poly runs over 31250 / 62500 steps and stops at
# 20000 / 40000; here it runs to 0 over the steps trained. Its frozen BatchNorm and colour jitter are not
# reproduced. The start is the reference's: torchvision's ImageNet ResNet-101 (FADA's configs load
# resnet101-5d3b4d8f.pth into torchvision's resnet101 with replace_stride_with_dilation=[False, True, True]),
# which is timm's resnet101 (plain 7x7 stem, the same names) at output_stride=8; save that file as
# weights/resnet101-torchvision.pth (uda_dist/model/weights.py, format torchvision_resnet).

def _fada_deeplabv2(name: str, *, source: str, source_resize: tuple[int, int], method, lr: float,
                    iterations: int) -> RunConfig:
    loader = LoaderConfig(batch_size=1, resize=source_resize, target_resize=(512, 1024), crop_size=source_resize,
                          target_crop_size=(512, 1024), scale_range=(1.0, 1.0), flip=False, num_workers=4,
                          epoch_batches=1000, eval_batch_size=1)
    return RunConfig(
        name=name,
        data=DataConfig(source=source, target=_manifest("cityscapes", "train"), val=_manifest("cityscapes", "val"),
                        loader=loader),
        model=ModelConfig(backbone="resnet101", pretrained="weights/resnet101-torchvision.pth", head="deeplabv2",
                          output_stride=8),
        optim=OptimConfig(optimizer="sgd", lr=lr, momentum=0.9, head_lr_mult=10.0, weight_decay=5e-4,
                          warmup_iters=0, poly_power=0.9),
        method=method,
        train=TrainConfig(iterations=iterations, eval_every=2000, log_every=50),
        # FADA's test transform: the image resized to 1024x512, the label kept at full size (resize_label=False)
        eval=SYNTHIA_EVAL if "synthia" in source else EvalConfig(resize=(512, 1024)),
    )


def gta_to_cs_fada_source_deeplabv2() -> RunConfig:
    """FADA's first stage on GTA5 -> Cityscapes: source-only DeepLab-V2 ResNet-101 (lr 5e-4, 20000 steps)."""
    return _fada_deeplabv2("gta_to_cs_fada_source_deeplabv2", source=_manifest("gta5", "train"),
                           source_resize=(720, 1280), method=MethodConfig(), lr=5e-4, iterations=20000)


def gta_to_cs_fada_deeplabv2() -> RunConfig:
    """FADA's adversarial stage on GTA5 -> Cityscapes (paper: ~46.9 mIoU before self-distillation, ~50.1
    after): --set model.init_weights=outputs/<gta_to_cs_fada_source_deeplabv2 run>/student.pt."""
    return _fada_deeplabv2("gta_to_cs_fada_deeplabv2", source=_manifest("gta5", "train"), source_resize=(720, 1280),
                           method=fada_adversarial(), lr=2.5e-4, iterations=40000)


def synthia_to_cs_fada_source_deeplabv2() -> RunConfig:
    """FADA's first stage on SYNTHIA -> Cityscapes: source-only DeepLab-V2 ResNet-101."""
    return _fada_deeplabv2("synthia_to_cs_fada_source_deeplabv2", source=_manifest("synthia", "train"),
                           source_resize=(760, 1280), method=MethodConfig(), lr=5e-4, iterations=20000)


def synthia_to_cs_fada_deeplabv2() -> RunConfig:
    """FADA's adversarial stage on SYNTHIA -> Cityscapes (19-class table; the paper reports 16 classes):
    --set model.init_weights=outputs/<synthia_to_cs_fada_source_deeplabv2 run>/student.pt."""
    return _fada_deeplabv2("synthia_to_cs_fada_deeplabv2", source=_manifest("synthia", "train"),
                           source_resize=(760, 1280), method=fada_adversarial(), lr=2.5e-4, iterations=40000)


# FADA as one staged run (JDAI-CV/FADA train_with_sd.sh: train_src, train_adv, test --saveres on the Cityscapes
# train split, train_self_distill). The self-distillation stage (configs/deeplabv2_r101_tgt_self_distill.yaml)
# trains a fresh ImageNet-initialised DeepLab-V2 on the hard pseudo-labels alone: 512x1024 base size, scale
# 0.5-1.5, 512x1024 crops, flips, batch 8 (2 per worker on 4), lr 5e-4, 20000 steps (the reference's poly
# runs over 31250 and stops at 20000; here it runs to 0 over the 20000). The reference labels with the
# saved soft predictions; here the labels are the hard arg-max, as its paper describes.

def _fada_pipeline(name: str, source: RunConfig, adversarial: RunConfig) -> PipelineConfig:
    distill_loader = dataclasses.replace(adversarial.data.loader, batch_size=2, resize=(512, 1024),
                                         crop_size=(512, 1024), scale_range=(0.5, 1.5), flip=True)
    distill = dataclasses.replace(source, data=dataclasses.replace(source.data, loader=distill_loader),
                                  optim=dataclasses.replace(source.optim, lr=5e-4),
                                  train=dataclasses.replace(source.train, iterations=20000))

    return PipelineConfig(name=name, stages=(
        StageConfig(name="source", init="config", **sections_of(source)),
        StageConfig(name="adversarial", **{**sections_of(adversarial), "label": LabelConfig(enabled=True)}),
        StageConfig(name="distill", init="config", labels_from="adversarial", **sections_of(distill)),
    ))


def gta_to_cs_fada_pipeline_deeplabv2() -> PipelineConfig:
    """FADA in full on GTA5 -> Cityscapes, DeepLab-V2 ResNet-101: source-only -> adversarial -> label the
    Cityscapes train split -> self-distillation (paper: ~50.1 mIoU). Run with --set launch.workers=4
    launch.use_gpu=true and a --run-name: a relaunch with it skips finished stages."""
    return _fada_pipeline("gta_to_cs_fada_pipeline_deeplabv2", gta_to_cs_fada_source_deeplabv2(),
                          gta_to_cs_fada_deeplabv2())


def synthia_to_cs_fada_pipeline_deeplabv2() -> PipelineConfig:
    """FADA in full on SYNTHIA -> Cityscapes, DeepLab-V2 ResNet-101 (19-class table)."""
    return _fada_pipeline("synthia_to_cs_fada_pipeline_deeplabv2", synthia_to_cs_fada_source_deeplabv2(),
                          synthia_to_cs_fada_deeplabv2())


# ------------------------------------------------ ASANet (idealwei/ASANet options/gta5asa_opt.py, train_gta2city.py)
# DeepLab-V2 ResNet-101 (all four ASPP branches summed; the reference sums two), SGD lr 2.5e-4 momentum 0.9
# weight decay 5e-4, classifier lr x10, poly 0.9, one source image (GTA5 720x1280) and one target image
# (Cityscapes 512x1024) a step, whole images, lambda_adv 1e-3 damped linearly over the stage, the affinity
# discriminator's Adam 1e-4 (0.9, 0.99), the affinity space at the input size. The reference trains 250k steps
# from DeepLab-V2's initial weights (below); here, as the project runs every adversarial method, a source-only
# stage (FADA's: lr 5e-4, 20000 steps) comes first and the ASA stage adapts its weights for 40000 steps (the
# project's choice). One image a step is the paper's batch: --set launch.workers=1 launch.use_gpu=true (more
# workers multiply it). The reference's initial weights are DeepLab-V2's Caffe-converted ResNet-101
# (AdaptSegNet's DeepLab_resnet_pretrained_init-f81d91e8.pth, ImageNet + MS-COCO), whose network (stride in the
# 1x1 conv, ceil-mode max-pool, BGR 0-255 input) no timm ResNet computes: here the start is FADA's, torchvision's
# ImageNet ResNet-101 in timm's resnet101 (weights/resnet101-torchvision.pth); the loader refuses the Caffe file.

def _asanet_pipeline(name: str, source: RunConfig, adapt: RunConfig, *later: tuple[str, RunConfig]) -> PipelineConfig:
    return PipelineConfig(name=name, stages=(
        StageConfig(name="source", init="config", **sections_of(source)),
        StageConfig(name="adapt", **sections_of(adapt)),
        *(StageConfig(name=stage, **sections_of(cfg)) for stage, cfg in later)))


def _asa(name: str, source: str, source_resize: tuple[int, int]) -> RunConfig:
    return _fada_deeplabv2(name, source=_manifest(source, "train"), source_resize=source_resize,
                           method=asanet_adaptation(), lr=2.5e-4, iterations=40000)


def gta_to_cs_asanet_deeplabv2() -> PipelineConfig:
    """ASANet (adversarial affinity space alignment) on GTA5 -> Cityscapes, DeepLab-V2 ResNet-101, after a
    source-only stage (paper: 45.1 mIoU). Add ASC with --set stages.adapt.method.asanet.asc_weight=0.01."""
    name = "gta_to_cs_asanet_deeplabv2"
    return _asanet_pipeline(name, gta_to_cs_fada_source_deeplabv2(), _asa(name, "gta5", (720, 1280)))


def synthia_to_cs_asanet_deeplabv2() -> PipelineConfig:
    """ASANet on SYNTHIA -> Cityscapes (19-class table; the paper reports 41.7 over 16 classes, 49.3 over 13)."""
    name = "synthia_to_cs_asanet_deeplabv2"
    return _asanet_pipeline(name, synthia_to_cs_fada_source_deeplabv2(), _asa(name, "synthia", (760, 1280)))


def gta_to_cs_asanet_st_deeplabv2() -> PipelineConfig:
    """An extension (the paper's ASA+ST exists only as a released checkpoint, its training not published):
    gta_to_cs_asanet_deeplabv2's two stages, then gta_to_cs_deeplabv2's DAFormer-style self-training (40k
    steps) from the ASA model's weights, on the ASA model's DeepLab-V2 (timm resnet101, not resnet101c)."""
    name = "gta_to_cs_asanet_st_deeplabv2"
    adapt = _asa(name, "gta5", (720, 1280))
    self_training = dataclasses.replace(gta_to_cs_deeplabv2(), model=adapt.model)
    return _asanet_pipeline(name, gta_to_cs_fada_source_deeplabv2(), adapt, ("self_training", self_training))


# ------------------------------------------------ DiGA (fy-vision/DiGA domain_adaptation/GTA5/train_DiGA_*.py)
# Released code: DeepLab-V2 ResNet-101, SGD lr 2.5e-4 momentum 0.9, weight decay 5e-4, poly 0.9, the source at
# 720x1280 and the target at 512x1024 (the reference adds full-resolution images to each batch: 1 + 2 in the
# warm-up, 2 + 1 in self-training; here one base size per domain), beta 0.4 / 0.3, distillation 0.5 / 0.25,
# centroid momentum 1e-4, two-scale inference (1.0 and 0.5, element-wise max of the logits) for evaluation
# and for the pseudo-labels. The reference trains 80000 steps a stage; the recipes train 40000 (the
# project's adaptation stage length; --set stages.<stage>.train.iterations=80000 for the reference's).
# Its image translator (a GAN trained separately for 50k steps) is replaced by Fourier domain adaptation.
# Its DeepLab-V2 starts, as ASANet's, from AdaptSegNet's Caffe-converted DeepLab_resnet_pretrained_init
# (ImageNet + MS-COCO), which timm cannot run (see ASANet above): here from torchvision's ImageNet ResNet-101
# in timm's resnet101, as FADA (weights/resnet101-torchvision.pth).

def _diga_pipeline(name: str, base: RunConfig) -> PipelineConfig:
    train = dataclasses.replace(base.train, iterations=40000)
    two_scales = dataclasses.replace(base.eval, scales=(1.0, 0.5), combine="max")
    sections = sections_of(dataclasses.replace(base, train=train, eval=two_scales))
    labelled = LabelConfig(enabled=True)
    return PipelineConfig(name=name, stages=(
        StageConfig(name="warmup", init="config", **{**sections, "method": diga_warmup(), "label": labelled}),
        StageConfig(name="self_training", labels_from="warmup", labels_as="target",
                    **{**sections, "method": diga_self_training(), "label": labelled}),
        StageConfig(name="self_training2", labels_from="self_training", labels_as="target",
                    **{**sections, "method": diga_self_training()}),
    ))


def _diga_deeplabv2(name: str, source: str, source_resize: tuple[int, int]) -> PipelineConfig:
    base = _fada_deeplabv2(name, source=_manifest(source, "train"), source_resize=source_resize,
                           method=MethodConfig(), lr=2.5e-4, iterations=40000)
    loader = dataclasses.replace(base.data.loader, batch_size=2, crop_size=(512, 896), target_crop_size=(512, 896),
                                 scale_range=(0.5, 1.5), flip=True)
    return _diga_pipeline(name, dataclasses.replace(base, data=dataclasses.replace(base.data, loader=loader)))


def gta_to_cs_diga_deeplabv2() -> PipelineConfig:
    """DiGA on GTA5 -> Cityscapes, DeepLab-V2 ResNet-101 (the released code): warm-up -> labels -> self-training
    -> labels -> self-training."""
    return _diga_deeplabv2("gta_to_cs_diga_deeplabv2", "gta5", (720, 1280))


def synthia_to_cs_diga_deeplabv2() -> PipelineConfig:
    """DiGA on SYNTHIA -> Cityscapes, DeepLab-V2 ResNet-101 (19-class table; the paper reports 16 classes)."""
    return _diga_deeplabv2("synthia_to_cs_diga_deeplabv2", "synthia", (760, 1280))


def gta_to_cs_diga_daformer() -> PipelineConfig:
    """DiGA's stages on the DAFormer recipe (pvt_v2_b5, AdamW 6e-5, 512x512 crops, rare class sampling), the
    setting of the paper's 74.3 headline, whose training code is not released: the project's composition of
    the released stages with gta_to_cs_daformer's optimiser, data and model."""
    return _diga_pipeline("gta_to_cs_diga_daformer", gta_to_cs_daformer())
