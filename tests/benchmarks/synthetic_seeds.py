"""Mean and spread over seeds of the synthetic recipes' target mIoU (the README's results table).

Usage: .venv/bin/python tests/benchmarks/synthetic_seeds.py [--seeds 0 1 2] [--recipes ...] [--parallel 2]
       [--set KEY=VALUE ... --tag TAG] [--init-from RECIPE --tag TAG] [--reuse STAGE=RECIPE ...]
Each (recipe, seed) is one `python -m uda_dist.train --recipe R --set seed=S` run with one torch thread;
`--parallel` runs that many at once; `--set` adds overrides to every run (name the variant with `--tag`, which
suffixes the run names); `--init-from R` starts each seed from recipe R's run of that seed (FADA's adversarial
stage from the source-only model); a staged recipe gives one row per stage (`--set` keys go to every stage), and
`--reuse STAGE=RECIPE` lets that recipe's run of each seed stand as the finished stage. The per-run folders (summary.json, student.pt) stay in outputs/seeds/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.helpers import for_every_stage  # noqa: E402

RECIPES = ("synthetic_source_only", "synthetic_self_training", "synthetic_sepico_protocl", "synthetic_sepico_bankcl",
           "synthetic_sepico_distcl", "synthetic_oracle")


def run(recipe: str, seed: int, out_dir: str, overrides: list[str], tag: str, init_from: str,
        reuse: list[str]) -> dict[str, float]:
    """{row name: target mIoU} of one seed's run: the recipe's, or each stage's of a staged recipe."""
    from uda_dist.pipeline import PipelineConfig
    from uda_dist.recipes import all_recipes

    name = f"{recipe}{'_' + tag if tag else ''}_seed{seed}"
    weights = os.path.join(out_dir, f"{init_from}_seed{seed}", "student.pt")
    start = [f"model.init_weights={weights}"] if init_from else []
    sets = [f"seed={seed}", f"output_dir={out_dir}", "train.threads=1", "tracking.enabled=false", *start, *overrides]
    cfg = all_recipes()[recipe]()
    if isinstance(cfg, PipelineConfig):
        sets = for_every_stage(cfg, sets)
        for item in reuse:  # STAGE=RECIPE[.STAGE]: that run of this seed stands as the finished stage
            stage, _, earlier = item.partition("=")
            recipe_part, dot, stage_part = earlier.partition(".")
            folder = os.path.join(out_dir, f"{name}.{stage}")
            os.makedirs(folder, exist_ok=True)
            for file in ("summary.json", "student.pt"):
                shutil.copyfile(os.path.join(out_dir, f"{recipe_part}_seed{seed}{dot}{stage_part}", file),
                                os.path.join(folder, file))
    cmd = [sys.executable, "-m", "uda_dist.train", "--recipe", recipe, "--run-name", name, "--set", *sets]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out_dir, name, "summary.json")) as f:
        summary = json.load(f)
    if "stages" in summary:
        return {f"{recipe}.{row['stage']}": 100 * row["miou"] for row in summary["stages"]}
    return {recipe: 100 * summary["miou"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", default="outputs/seeds")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for every run, e.g. method.sepico.tau=0.1")
    p.add_argument("--tag", default="", help="run-name suffix for the variant (required with --set)")
    p.add_argument("--init-from", default="", metavar="RECIPE",
                   help="start each seed from that recipe's run of the same seed (its student.pt in --out), as "
                        "FADA's adversarial stage starts from the source-only model")
    p.add_argument("--reuse", nargs="+", default=[], metavar="STAGE=RECIPE",
                   help="staged recipes: that recipe's run (or a staged recipe's stage, RECIPE.STAGE) of each seed "
                        "(in --out) stands as the finished stage, which the staged run then skips (as a relaunch "
                        "skips a finished stage)")
    args = p.parse_args()
    if (args.overrides or args.init_from) and not args.tag:
        p.error("--set and --init-from need --tag (the runs' names must differ from the recipe's own runs)")
    jobs = [(r, s) for r in args.recipes for s in args.seeds]
    with ThreadPoolExecutor(args.parallel) as pool:
        scores = list(pool.map(lambda job: run(*job, args.out, args.overrides, args.tag, args.init_from, args.reuse),
                               jobs))
    print(f"{'recipe':<36} " + " ".join(f"seed {s:>2}" for s in args.seeds) + "   mean +- std")
    for r in args.recipes:
        for key in scores[jobs.index((r, args.seeds[0]))]:
            row = np.array([scores[jobs.index((r, s))][key] for s in args.seeds])
            spread = row.std(ddof=1) if len(row) > 1 else 0
            print(f"{key:<36} " + " ".join(f"{v:7.1f}" for v in row) + f"   {row.mean():.1f} +- {spread:.1f}")


if __name__ == "__main__":
    main()
