"""The embedded default: `python -m uda_dist.train` with no recipe.

Generates the synthetic benchmark if missing, trains source-only, self-training and SePiCo DistCL on it, each
on 2 Ray Train CPU workers (DeepSpeed engines sharing the machine's cores, 2 images per worker: the recipes'
global batch of 4), evaluates them on the target validation split, prints a per-class IoU table and writes a
picture of target predictions. Overrides (--set) apply to every run of the demo that has the key, e.g.
--set seed=1, --set method.ema_alpha=0.999 (the adaptation runs only) or --set launch.workers=0
data.loader.batch_size=4 (in this process, without Ray).
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from uda_dist.config import apply_overrides, format_config, to_flat_dict
from uda_dist.recipes.synthetic import synthetic_self_training, synthetic_sepico_distcl, synthetic_source_only

DEMO_RECIPES = (synthetic_source_only, synthetic_self_training, synthetic_sepico_distcl)
DEMO_WORKERS = 2
"""Ray Train workers per run; each reads batch_size / DEMO_WORKERS images per step."""
PICTURE_IMAGES = 4


def main(overrides: list[str], *, print_only: bool = False) -> int:
    """The demo's runs (ConfigError for a bad override; the caller prints it as one line)."""
    configs = _configs(overrides)
    if print_only:
        print("\n\n".join(format_config(cfg) for cfg in configs))
        return 0
    from uda_dist.launch import train
    from uda_dist.report import format_iou_table
    from uda_dist.train import where
    summaries = [train(cfg) for cfg in configs]
    print("\nTarget validation IoU (%), synthetic benchmark:")
    print(format_iou_table({s["name"]: s["iou"] for s in summaries}))
    for summary in summaries:
        print(where(summary))
    picture = _picture(configs, summaries)
    print(f"\nPredictions on target images: {os.path.abspath(picture)}")
    return 0


def _configs(overrides: list[str]) -> list:
    """The demo's runs with the overrides applied; a key only some runs have (method.ema_alpha) goes to
    those runs, a key none has is an error."""
    bases = [_on_workers(recipe()) for recipe in DEMO_RECIPES]
    valid_keys = [set(to_flat_dict(cfg)) for cfg in bases]
    keys = [text.partition("=")[0].strip() for text in overrides]
    for text, key in zip(overrides, keys):
        if not any(key in valid for valid in valid_keys):
            apply_overrides(bases[-1], [text])  # raises the ConfigError that names the key
    return [apply_overrides(cfg, [t for t, k in zip(overrides, keys) if k in valid])
            for cfg, valid in zip(bases, valid_keys)]


def _on_workers(cfg):
    """The recipe on DEMO_WORKERS Ray Train workers with the same global batch, the machine's cores shared
    between them (one thread each on 2 cores)."""
    batch = cfg.data.loader.batch_size
    if batch % DEMO_WORKERS:
        raise ValueError(f"{cfg.name}: batch {batch} does not split over {DEMO_WORKERS} workers")
    cpus = max(1, (os.cpu_count() or DEMO_WORKERS) // DEMO_WORKERS)
    return apply_overrides(cfg, [f"launch.workers={DEMO_WORKERS}", f"launch.cpus_per_worker={cpus}",
                                 f"data.loader.batch_size={batch // DEMO_WORKERS}"])


def _picture(configs: list, summaries: list[dict]) -> str:
    """Grid of the first target validation images with ground truth and each run's prediction, written as
    predictions.png in a folder of its own, demo-{date-time}, beside the runs' folders."""
    from uda_dist.data.sources import load_manifest
    from uda_dist.data.webdataset import eval_loader
    from uda_dist.model.segmentor import build_segmentor
    from uda_dist.report import save_prediction_grid
    data = configs[0].data
    batch = next(iter(eval_loader(load_manifest(data.val, data.synthetic).urls(), cfg=data.loader)))
    images_B3HW = batch["image"][:PICTURE_IMAGES]
    preds = {}
    for cfg, summary in zip(configs, summaries):
        model = build_segmentor(cfg.model)
        model.load_state_dict(torch.load(summary["weights"], weights_only=True))
        with torch.no_grad():
            preds[cfg.name] = model.eval().segment(images_B3HW).argmax(1).numpy().astype(np.uint8)
    images = (images_B3HW.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    folder = os.path.join(configs[0].output_dir, f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "predictions.png")
    return save_prediction_grid(path, images, batch["label"][:PICTURE_IMAGES].numpy().astype(np.uint8), preds)
