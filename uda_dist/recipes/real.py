"""Recipes on the real benchmarks with the papers' defaults (METHODS.md section 0).

They need the datasets as shards with manifests (built by `python -m shards`, a later issue) and local
ImageNet weights; `--print-config` resolves them anywhere. Manifest locations default to
./data/<dataset>/<dataset>-<split>.manifest.json; point them elsewhere with --set data.source=... .
"""
from __future__ import annotations

import dataclasses

from uda_dist.config import RunConfig, TrainConfig
from uda_dist.data.sources import DataConfig
from uda_dist.data.webdataset import LoaderConfig
from uda_dist.methods.self_training import SelfTrainingConfig
from uda_dist.model.segmentor import ModelConfig
from uda_dist.optim import OptimConfig


def _manifest(dataset: str, split: str) -> str:
    return f"data/{dataset}/{dataset}-{split}.manifest.json"


def gta_to_cs_daformer() -> RunConfig:
    """DAFormer on GTA5 -> Cityscapes: pvt_v2_b5 (timm's closest MiT-B5 relative), 512x512 crops, 40k it."""
    return RunConfig(
        name="gta_to_cs_daformer",
        data=DataConfig(source=_manifest("gta5", "train"), target=_manifest("cityscapes", "train"),
                        val=_manifest("cityscapes", "val"),
                        loader=LoaderConfig(batch_size=2, resize=(720, 1280), crop_size=(512, 512),
                                            num_workers=4, epoch_batches=1000, eval_batch_size=1)),
        model=ModelConfig(backbone="pvt_v2_b5", pretrained="weights/pvt_v2_b5.pth", head="daformer",
                          embed_dim=256, drop_path=0.1),
        optim=OptimConfig(lr=6e-5, head_lr_mult=10.0, weight_decay=0.01, warmup_iters=1500),
        method=SelfTrainingConfig(pl_crop_top=15, pl_crop_bottom=120),
        train=TrainConfig(iterations=40000, eval_every=4000, log_every=50),
    )


def gta_to_cs_deeplabv2() -> RunConfig:
    """DeepLab-V2 variant of gta_to_cs_daformer: ResNet-101 (deep stem, timm resnet101c) at output stride 8,
    ASPP classifier; optimiser and schedule as the DAFormer recipe."""
    base = gta_to_cs_daformer()
    return dataclasses.replace(
        base, name="gta_to_cs_deeplabv2",
        model=ModelConfig(backbone="resnet101c", pretrained="weights/resnet101c.pth", head="deeplabv2",
                          output_stride=8))
