"""Mean and spread over seeds of the synthetic recipes' target mIoU (the README's results table).

Usage: .venv/bin/python tests/benchmarks/synthetic_seeds.py [--seeds 0 1 2] [--recipes ...] [--parallel 2]
       [--set KEY=VALUE ... --tag TAG] [--init-from RECIPE --tag TAG]
Each (recipe, seed) is one `python -m uda_dist.train --recipe R --set seed=S` run with one torch thread;
`--parallel` runs that many at once; `--set` adds overrides to every run (name the variant with `--tag`, which
suffixes the run names); `--init-from R` starts each seed from recipe R's run of that seed (FADA's adversarial
stage from the source-only model). The per-run folders (summary.json, student.pt) stay in outputs/seeds/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

RECIPES = ("synthetic_source_only", "synthetic_self_training", "synthetic_sepico_protocl", "synthetic_sepico_bankcl",
           "synthetic_sepico_distcl", "synthetic_oracle")


def run(recipe: str, seed: int, out_dir: str, overrides: list[str], tag: str, init_from: str) -> float:
    name = f"{recipe}{'_' + tag if tag else ''}_seed{seed}"
    weights = os.path.join(out_dir, f"{init_from}_seed{seed}", "student.pt")
    start = [f"model.init_weights={weights}"] if init_from else []
    cmd = [sys.executable, "-m", "uda_dist.train", "--recipe", recipe, "--run-name", name, "--set", f"seed={seed}",
           f"output_dir={out_dir}", "train.threads=1", "tracking.enabled=false", *start, *overrides]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out_dir, name, "summary.json")) as f:
        return 100 * json.load(f)["miou"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", default="outputs/seeds")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for every run, e.g. method.tau=0.1")
    p.add_argument("--tag", default="", help="run-name suffix for the variant (required with --set)")
    p.add_argument("--init-from", default="", metavar="RECIPE",
                   help="start each seed from that recipe's run of the same seed (its student.pt in --out), as "
                        "FADA's adversarial stage starts from the source-only model")
    args = p.parse_args()
    if (args.overrides or args.init_from) and not args.tag:
        p.error("--set and --init-from need --tag (the runs' names must differ from the recipe's own runs)")
    jobs = [(r, s) for r in args.recipes for s in args.seeds]
    with ThreadPoolExecutor(args.parallel) as pool:
        scores = list(pool.map(lambda job: run(*job, args.out, args.overrides, args.tag, args.init_from), jobs))
    print(f"{'recipe':<26} " + " ".join(f"seed {s:>2}" for s in args.seeds) + "   mean +- std")
    for r in args.recipes:
        row = np.array([scores[jobs.index((r, s))] for s in args.seeds])
        print(f"{r:<26} " + " ".join(f"{v:7.1f}" for v in row) + f"   {row.mean():.1f} +- {row.std(ddof=1) if len(row) > 1 else 0:.1f}")


if __name__ == "__main__":
    main()
