"""python -m shards {build, verify, stats}: dataset trees -> shards + manifests, checked and summarised.

  python -m shards build --layout gta5 --root /data/gta5 --split train --out s3://bucket/gta5 --resize 720 1280
  python -m shards build --layout cityscapes --root /data/cityscapes --split val --out data/cityscapes
  python -m shards verify s3://bucket/gta5/gta5-train.manifest.json
  python -m shards stats s3://bucket/gta5/gta5-train.manifest.json

s3:// locations use the standard AWS environment (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...).
An error the input or the environment causes (a bad argument, a broken dataset tree, a file that cannot be
decoded, a missing manifest, an unreachable endpoint) is one line on stderr, "error: ...", exit status 2.
The dataset layouts each --layout reads: python -m shards build --help.
"""
from __future__ import annotations

import argparse
import sys

from shards import check, layouts
from shards.build import SYNTHETIC, BuildConfig, build
from uda_dist.errors import RunError

_BUILD_EPILOG = "layouts (--root holds the folders on the left; keys on the right):\n" + "\n".join(
    line for line in layouts.__doc__.split("\n\n", 1)[1].splitlines() if line.startswith("  "))
_RESIZE = ("resize the images to H x W (bilinear); labels keep their published size (the resolution the "
           "papers score at) unless --resize-labels")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError, RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _build(args: argparse.Namespace) -> int:
    cfg = BuildConfig(layout=args.layout, root=args.root, split=args.split, condition=args.condition,
                      out=args.out, resize=tuple(args.resize) if args.resize else None,
                      resize_labels=args.resize_labels, image_format=args.image_format,
                      samples_per_shard=args.samples_per_shard,
                      workers=args.workers, labels=not args.no_labels, staging=args.staging, count=args.count,
                      day_pairs=args.day_pairs)
    manifest = build(cfg)
    print(f"wrote {manifest.num_samples} samples in {len(manifest.shards)} shards; manifest: {manifest.location}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    problems = check.verify(args.manifest, workers=args.workers)
    for problem in problems:
        print(problem)
    print(f"{args.manifest}: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


def _stats(args: argparse.Namespace) -> int:
    print(check.stats(args.manifest, rcs_temperature=args.rcs_temperature, rcs_min_pixels=args.rcs_min_pixels))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True, metavar="{build,verify,stats}")
    b = commands.add_parser("build", help="write a dataset split as shards + manifest", epilog=_BUILD_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="Write a dataset split as shards, then its manifest (removed first, "
                                        "so only a finished build leaves one).")
    b.add_argument("--layout", required=True, choices=(*layouts.LAYOUTS, SYNTHETIC))
    b.add_argument("--root", default="", help="the dataset root as published (layouts: below)")
    b.add_argument("--split", default="train")
    b.add_argument("--condition", default=None,
                   help="darkzurich: night/twilight/day; acdc: fog/night/rain/snow (default: all); "
                        "synthetic: source/target/night")
    b.add_argument("--out", required=True, help="a local folder or s3://bucket/prefix")
    b.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), help=_RESIZE)
    b.add_argument("--resize-labels", action="store_true",
                   help="with --resize: resize the labels too (nearest), e.g. for a training split")
    b.add_argument("--image-format", default="png", choices=("png", "jpg"))
    b.add_argument("--samples-per-shard", type=int, default=100)
    b.add_argument("--workers", type=int, default=0, help="encoding processes (0 = one per core)")
    b.add_argument("--no-labels", action="store_true", help="leave the labels out (an unlabeled target split)")
    b.add_argument("--staging", default="", help="local folder for shards on their way to s3://")
    b.add_argument("--count", type=int, default=0, help="only the first N samples (a trial build; 0 = all)")
    b.add_argument("--day-pairs", action="store_true",
                   help="darkzurich --split train --condition night: store each night image's daytime image "
                        "(from corresp/) with it, for SePiCo's day/night pseudo-label fusion")
    b.set_defaults(run=_build)
    v = commands.add_parser("verify", help="decode every sample and check it against the manifest")
    v.add_argument("manifest")
    v.add_argument("--workers", type=int, default=0)
    v.set_defaults(run=_verify)
    s = commands.add_parser("stats", help="class histograms and rare class sampling probabilities")
    s.add_argument("manifest")
    s.add_argument("--rcs-temperature", type=float, default=0.01)
    s.add_argument("--rcs-min-pixels", type=int, default=3000)
    s.set_defaults(run=_stats)
    return parser
