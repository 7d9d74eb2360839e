"""Offline pseudo-labels: a run's final student labels the whole target train split, for a later stage.

``label_target`` runs on every worker after the run's final evaluation. The split is shared out as evaluation
shares it (global sample i to rank i % world size, in shard order: every sample exactly once); each rank
predicts as evaluation does (uda_dist.inference.predict as the ``eval`` section says) at the stored image
size, takes the arg-max (pixels whose top softmax probability is under ``label.threshold`` become 255,
ignore) and writes its samples, the image as decoded (PNG) with the pseudo-label as its ``label.png``, into
shards of its own,
``{dataset}-{split}-pseudo-r{rank}-{n}.tar``. Rank 0 gathers every rank's shard index, checks that each
target sample is there exactly once, and writes the manifest, ``{dataset}-{split}-pseudo.manifest.json``,
last: its presence means complete. Shards and manifest go to ``label.out``, a local folder or an
s3://bucket/prefix (shards uploaded by boto3's managed transfer). A relaunch finds a complete manifest and
does not label again. The result is an ordinary labelled split: the existing reader (and rare class
sampling, from the histograms of the pseudo-labels) trains on it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from uda_dist.data import schema
from uda_dist.data.sources import SPLIT_SUFFIX, load_manifest
from uda_dist.data.webdataset import eval_loader
from uda_dist.inference import predict
from uda_dist.dist import collectives
from uda_dist.errors import RunError
from uda_dist.naming import join_location
from uda_dist.safe_load import exists

if TYPE_CHECKING:
    from uda_dist.config import RunConfig



@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelConfig:
    """Labelling the target train split with the run's final student (offline pseudo-labels)."""

    enabled: bool = False
    """End the run by labelling the whole target train split (data.target) with its final student."""
    out: str = ""
    """Folder or s3://bucket/prefix for the pseudo-label shards and manifest; "" = {launch.storage_path}/
    {run name}.labels (a staged run's storage, shared by its nodes)."""
    threshold: float = 0.0
    """Pixels whose top softmax probability is below this are labelled 255 (ignored); 0 = every pixel
    labelled (FADA)."""
    max_per_shard: int = 100
    """Samples per pseudo-label shard."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0 or self.max_per_shard < 1:
            raise ValueError(f"label.threshold must be in [0, 1) and label.max_per_shard >= 1, got "
                             f"{self.threshold}, {self.max_per_shard}")


def manifest_location(out: str, target: schema.Manifest) -> str:
    """Where the pseudo-labels of ``target`` written to ``out`` have their manifest."""
    return join_location(out, schema.manifest_name(target.dataset, pseudo_split(target)))


def pseudo_split(target: schema.Manifest) -> str:
    """The name of the pseudo-label split of ``target``: <split>-pseudo (relabelling a pseudo-label split,
    DiGA's second round, gives the same name, in another folder)."""
    return target.split.removesuffix(SPLIT_SUFFIX) + SPLIT_SUFFIX


@torch.no_grad()
def label_target(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> str:
    """Label cfg.data.target with ``model`` on every rank into cfg.label.out; returns the manifest's location.
    Every rank calls it; it returns on every rank once the manifest is written."""
    label = cfg.label
    if not label.out:
        raise ValueError("label.out must be set (the launcher sets it from the run storage)")
    target = load_manifest(cfg.data.target, cfg.data.synthetic)
    location = manifest_location(label.out, target)
    rank, world = collectives.rank_and_world_size()
    if _complete(location, target):
        if rank == 0:
            print(f"[{cfg.name}] pseudo-labels at {location} are complete: not labelled again", file=sys.stderr)
        return location
    split, labelled = pseudo_split(target), target.split.removesuffix(SPLIT_SUFFIX)
    loader = eval_loader(target.urls(), cfg=cfg.data.loader, rank=rank, world_size=world, labeled=False)
    was_training = model.training
    model.eval()
    samples, skipped = [], 0
    for batch in loader:
        skipped += batch.pop("bad_data", {}).get("skipped_samples", 0)
        image_B3HW = batch["image"].to(device)
        probs_BKHW = predict(model, image_B3HW, cfg.eval, image_B3HW.shape[-2:])
        confidence_BHW, pred_BHW = probs_BKHW.max(dim=1)
        if label.threshold > 0:
            pred_BHW[confidence_BHW < label.threshold] = schema.IGNORE_INDEX
        images_BHW3 = (batch["image"] * 255.0).round().byte().permute(0, 2, 3, 1).numpy()
        for key, valid, image_HW3, pred_HW in zip(batch["key"], batch["valid"].tolist(), images_BHW3,
                                                  pred_BHW.byte().cpu().numpy()):
            if valid:
                meta = {"dataset": target.dataset, "split": split, "pseudo_label_of": labelled,
                        "threshold": label.threshold}
                samples.append(schema.encode_sample(key, np.ascontiguousarray(image_HW3), pred_HW, meta))
    model.train(was_training)
    mine = _write(samples, label.out, prefix=f"{target.dataset}-{split}-r{rank:03d}", max_per_shard=label.max_per_shard)
    gathered = collectives.gather_objects(json.dumps({"shards": mine, "skipped": skipped}))
    if rank == 0:
        parts = [json.loads(text) for text in gathered]
        shards = [schema.ShardInfo(url=s["url"], num_samples=s["num_samples"],
                                   samples=tuple(schema.SampleIndex(key=k, offset=o, size=n, class_pixels=tuple(h))
                                                 for k, o, n, h in s["samples"]))
                  for part in parts for s in part["shards"]]
        _check_each_once(shards, target, skipped=sum(part["skipped"] for part in parts), policy=cfg.data.loader.bad_data)
        schema.save_manifest(schema.manifest_of(shards, dataset=target.dataset, split=split, labeled=True,
                                                location=location))
        print(f"[{cfg.name}] pseudo-labels of {sum(s.num_samples for s in shards)} target samples written: "
              f"{location}", file=sys.stderr)
    collectives.gather_objects(None)  # every rank returns once the manifest is there
    return location


def _write(samples: list[dict[str, Any]], out: str, *, prefix: str, max_per_shard: int) -> list[dict[str, Any]]:
    """This rank's samples as shards {prefix}-NNNNNN.tar in ``out`` (written locally, then uploaded for an
    s3:// out); returns their index as plain values."""
    remote = out.startswith("s3://")
    with tempfile.TemporaryDirectory() as staging:
        folder = staging if remote else out
        os.makedirs(folder, exist_ok=True)
        written, keys = [], set()
        for index in range(0, len(samples), max_per_shard):
            name = f"{prefix}-{index // max_per_shard:06d}.tar"
            chunk = samples[index:index + max_per_shard]
            written.append((name, len(chunk), schema.write_tar(chunk, os.path.join(folder, name), labeled=True,
                                                                keys=keys)))
        if remote:
            from uda_dist.data import s3

            s3.upload_files([(os.path.join(staging, name), join_location(out, name)) for name, _, _ in written])
    return [{"url": name, "num_samples": count,
             "samples": [[s.key, s.offset, s.size, list(s.class_pixels)] for s in index]}
            for name, count, index in written]


def _check_each_once(shards: list[schema.ShardInfo], target: schema.Manifest, *, skipped: int, policy: str) -> None:
    """Every target sample labelled exactly once (the ones skipped as unusable under bad_data=skip aside)."""
    keys = [s.key for shard in shards for s in shard.samples]
    if len(set(keys)) != len(keys):
        raise RunError(f"pseudo-labels: {len(keys) - len(set(keys))} target samples were labelled twice")
    if len(keys) + skipped != target.num_samples:
        raise RunError(f"pseudo-labels: {len(keys)} of the target split's {target.num_samples} samples labelled "
                       f"({skipped} skipped as unusable under data.loader.bad_data={policy})")
    expected = {s.key for shard in target.shards for s in shard.samples}
    if expected and not set(keys) <= expected:
        raise RunError(f"pseudo-labels: keys not in the target split: {sorted(set(keys) - expected)[:5]}")


def _complete(location: str, target: schema.Manifest) -> bool:
    """Whether a manifest of the pseudo-labels of every target sample is at ``location``."""
    if not exists(location):
        return False
    written = schema.read_manifest(location)
    expected = {s.key for shard in target.shards for s in shard.samples}
    keys = {s.key for shard in written.shards for s in shard.samples}
    return written.num_samples == target.num_samples and (not expected or keys == expected)
