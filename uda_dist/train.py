"""Command line: `python -m uda_dist.train [--recipe NAME] [--set key=value ...]`.

With no arguments it runs the embedded default (uda_dist.demo): the synthetic benchmark, source-only,
self-training and SePiCo DistCL on 2 Ray Train workers, a target mIoU table and a picture of predictions.
"""
from __future__ import annotations

import argparse
import sys

from uda_dist.config import ConfigError, apply_overrides, format_config


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
    from uda_dist.recipes import all_recipes
    recipes = all_recipes()
    if args.list_recipes:
        for name, fn in sorted(recipes.items()):
            print(f"{name:<28} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.recipe is None:
        from uda_dist import demo
        return demo.main(args.overrides, print_only=args.print_config)
    if args.recipe not in recipes:
        print(f"error: unknown recipe {args.recipe!r}; valid: {', '.join(sorted(recipes))}", file=sys.stderr)
        return 2
    try:
        overrides = args.overrides + ([f"launch.run_name={args.run_name}"] if args.run_name else [])
        cfg = apply_overrides(recipes[args.recipe](), overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(format_config(cfg))
        return 0
    from uda_dist.data.schema import SchemaError
    from uda_dist.launch import train_iou
    from uda_dist.report import format_iou_table
    try:
        iou = train_iou(cfg)
    except (FileNotFoundError, SchemaError) as e:  # missing manifests/weights, malformed shards: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_iou_table({cfg.name: iou}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
