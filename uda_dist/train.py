"""Command line: `python -m uda_dist.train [--recipe NAME] [--set key=value ...]`.

A recipe is one run, or a staged run (uda_dist.pipeline: its stages one after the other, each its own run,
a relaunch under the same --run-name skipping the finished ones); a staged run prints one column per stage.

With no arguments it runs the embedded default (uda_dist.demo): the synthetic benchmark, source-only,
self-training and SePiCo DistCL on 2 Ray Train workers, a target mIoU table and a picture of predictions.
"""
from __future__ import annotations

import argparse
import sys

from uda_dist.config import apply_overrides, format_config
from uda_dist.errors import run_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m uda_dist.train", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", help="recipe function name (see --list-recipes); default: the embedded demo")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE",
                   help="override config fields by dotted key, e.g. --set optim.lr=1e-4 train.iterations=100")
    p.add_argument("--run-name", help="stable run name on Ray (launch.run_name): the same name resumes the run")
    p.add_argument("--list-recipes", action="store_true", help="list recipes and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    from uda_dist.recipes import listing, recipe
    if args.list_recipes:
        print(listing())
        return 0
    if args.recipe is None:
        from uda_dist import demo
        return demo.main(args.overrides, print_only=args.print_config)
    overrides = args.overrides + ([f"launch.run_name={args.run_name}"] if args.run_name else [])
    cfg = apply_overrides(recipe(args.recipe), overrides)
    if args.print_config:
        print(format_config(cfg))
        return 0
    from uda_dist.pipeline import train
    from uda_dist.report import format_iou_table
    summary = train(cfg)
    if "stages" in summary:  # a staged run: one row per stage
        print(format_iou_table({row["stage"]: row["iou"] for row in summary["stages"]},
                               class_sets=cfg.stages[-1].eval.class_sets))
        print("\n".join([f"staged run {summary['run_name']}: {summary['outputs']}"]
                        + [where(row, summary["config"]) for row in summary["stages"]]))
        return 0
    print(format_iou_table({cfg.name: summary["iou"]}, class_sets=cfg.eval.class_sets))
    print(where(summary))
    return 0


def where(summary: dict, config: dict | None = None) -> str:
    """Where a finished run's outputs, checkpoints and MLflow run are (the summary's config, or the staged
    run's ``config``, has its credentials masked)."""
    config = config or summary["config"]
    lines = [f"run {summary['run_name']}", f"  outputs:     {summary['outputs']}"]
    if summary.get("checkpoints"):
        lines.append(f"  checkpoints: {summary['checkpoints']}")
    if summary.get("mlflow_run_id"):
        lines.append(f"  MLflow:      run {summary['mlflow_run_id']} in experiment "
                     f"{config['tracking.experiment']!r} at {config['tracking.uri']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
