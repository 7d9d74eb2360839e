"""Predictions of a split for the benchmark servers, from a run's weights:

  python -m uda_dist.predict --recipe gta_to_cs_daformer --weights outputs/run1/student.pt \\
      --split s3://bucket/cityscapes/cityscapes-test.manifest.json --format cityscapes --out s3://bucket/preds

Each image's prediction is one 8-bit PNG at the image's published size (the size before any resize when its
shards were built), written under ``--out`` at the image's path in its dataset with the extension .png
(``leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png``): the file names the servers match.
``--format cityscapes`` writes Cityscapes labelIds (the Cityscapes server; trainId 0 -> 7, ..., 18 -> 33),
``--format trainids`` writes trainIds 0-18 (Dark Zurich, ACDC). The model predicts as the recipe's ``eval``
section says (inference size, scales, flip, sliding windows; ``--set eval.flip=true`` ...). With
``--set launch.workers=N`` the split is shared over N Ray Train workers (every image exactly once, as
evaluation shares it); 0 predicts in this process. Rank 0 writes ``predictions.json`` (count, format, weights,
split) last, after every rank finished: its presence means the folder is complete; a rerun removes it first.
Zip the folder's contents for an upload. Weights load with weights_only=True and must fit the recipe's model.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from uda_dist.data import s3, schema
from uda_dist.data.sources import load_manifest
from uda_dist.data.webdataset import eval_loader
from uda_dist.dist import collectives
from uda_dist.errors import RunError
from uda_dist.inference import predict
from uda_dist.naming import join_location

CITYSCAPES_TRAINID_TO_LABELID = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33],
                                         dtype=np.uint8)
"""trainId -> Cityscapes labelId, what the Cityscapes server scores."""
FORMATS = ("cityscapes", "trainids")
INDEX = "predictions.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictJob:
    weights: str
    """The student's weights (a run's student.pt, local or s3://)."""
    split: str
    """The split's manifest (local, s3://, or synthetic:<domain>/<split>)."""
    out: str
    """A local folder or s3://bucket/prefix."""
    format: str = "cityscapes"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {FORMATS}, got {self.format!r}")


def predict_split(cfg: Any, job: PredictJob, device: torch.device) -> int:
    """This rank's share of the split predicted and written; rank 0 writes the index last. Returns the count of
    images written over all ranks."""
    rank, world = collectives.rank_and_world_size()
    if rank == 0:
        s3.remove(join_location(job.out, INDEX))
    model = _model(cfg, job.weights, device)
    manifest = load_manifest(job.split, cfg.data.synthetic)
    loader = eval_loader(manifest.urls(), cfg=dataclasses.replace(cfg.data.loader, eval_batch_size=1),
                         rank=rank, world_size=world, labeled=False)
    written = 0
    for batch in loader:
        if not batch["valid"][0]:
            continue
        probs_BKHW = predict(model, batch["image"].to(device), cfg.eval, batch["orig_size"][0])
        s3.put(join_location(job.out, _png_name(batch["relpath"][0])), _encode(probs_BKHW[0], job.format))
        written += 1
    total = sum(collectives.gather_objects(written))
    if rank == 0:
        index = {"count": total, "format": job.format, "weights": job.weights, "split": job.split,
                 "samples_in_split": manifest.num_samples}
        s3.put(join_location(job.out, INDEX), json.dumps(index, indent=1).encode())
    return total


def _model(cfg: Any, weights: str, device: torch.device) -> torch.nn.Module:
    from uda_dist.model.segmentor import build_segmentor, load_model_weights

    model = build_segmentor(dataclasses.replace(cfg.model, pretrained="", init_weights=""))
    try:
        load_model_weights(model, weights, fresh_prefixes=(), setting="--weights")
    except ValueError as e:
        raise RunError(str(e)) from None
    return model.to(device).eval()


def _png_name(relpath: str) -> str:
    stem, _ = os.path.splitext(relpath.replace("\\", "/").lstrip("/"))
    if ".." in stem.split("/"):
        raise schema.SchemaError(f"sample path {relpath!r} leaves the output folder")
    return stem + ".png"


def _encode(probs_KHW: torch.Tensor, fmt: str) -> bytes:
    pred_HW = probs_KHW.argmax(dim=0).byte().cpu().numpy()
    if fmt == "cityscapes":
        pred_HW = CITYSCAPES_TRAINID_TO_LABELID[pred_HW]
    return schema.encode_png(pred_HW)


def _worker(config: dict[str, Any]) -> None:
    """A Ray Train worker: its share of the split (Ray made the process group)."""
    cfg, job = config["cfg"], config["job"]
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.launch.use_gpu else torch.device("cpu")
    torch.set_num_threads(cfg.launch.cpus_per_worker)
    predict_split(cfg, job, device)


def run(cfg: Any, job: PredictJob) -> dict[str, Any]:
    """Predict on cfg.launch.workers Ray Train workers, or in this process when that is 0; the index."""
    load_manifest(job.split, cfg.data.synthetic)  # a clear error now; the synthetic benchmark made once, here
    if cfg.launch.workers:
        from uda_dist.launch import run_on_workers

        name = f"{cfg.name}-predict-{time.strftime('%Y%m%d-%H%M%S')}"
        run_on_workers(_worker, {"cfg": cfg, "job": job}, cfg.launch, name=name,
                       storage=os.path.abspath(os.path.join(cfg.output_dir, "ray")))
    else:
        device = torch.device("cuda" if cfg.launch.use_gpu else "cpu")
        predict_split(cfg, job, device)
    location = join_location(job.out, INDEX)
    if location.startswith("s3://"):
        return json.loads(s3.read_bytes(location))
    with open(location, "rb") as f:
        return json.load(f)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m uda_dist.predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="the recipe the weights were trained with (its model, eval)")
    p.add_argument("--weights", required=True, help="the student's weights: a run's student.pt")
    p.add_argument("--split", required=True, help="the split's manifest (local, s3://, synthetic:<domain>/<split>)")
    p.add_argument("--out", required=True, help="a local folder or s3://bucket/prefix")
    p.add_argument("--format", choices=FORMATS, default="cityscapes",
                   help="cityscapes: labelIds (Cityscapes server); trainids: 0-18 (Dark Zurich, ACDC)")
    p.add_argument("--stage", default="", help="a staged recipe's stage whose model to use (default: the last)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides (eval.flip=true, launch.workers=2, ...)")
    return p


def main(argv: list[str] | None = None) -> int:
    from uda_dist.errors import run_cli

    args = _parser().parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    from uda_dist.config import RunConfig, apply_overrides
    from uda_dist.errors import ConfigError
    from uda_dist.pipeline import PipelineConfig, sections_of
    from uda_dist.recipes import recipe

    cfg = recipe(args.recipe)
    if args.stage and not isinstance(cfg, PipelineConfig):
        raise ConfigError(f"--stage {args.stage!r}: {args.recipe} is not a staged recipe")
    if isinstance(cfg, PipelineConfig):
        stages = {stage.name: stage for stage in cfg.stages}
        if args.stage and args.stage not in stages:
            raise ConfigError(f"no stage {args.stage!r} in {args.recipe}; valid: {', '.join(stages)}")
        stage = stages[args.stage] if args.stage else cfg.stages[-1]
        cfg = RunConfig(name=f"{cfg.name}.{stage.name}", output_dir=cfg.output_dir, **sections_of(stage))
    cfg = apply_overrides(cfg, args.overrides)
    index = run(cfg, PredictJob(weights=args.weights, split=args.split, out=args.out, format=args.format))
    print(f"{index['count']} predictions ({index['format']}) of {index['split']} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
