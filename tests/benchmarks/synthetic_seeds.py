"""Mean and spread over seeds of the synthetic recipes' target mIoU (the README's results table).

Usage: .venv/bin/python tests/benchmarks/synthetic_seeds.py [--seeds 0 1 2] [--recipes ...] [--parallel 2]
Each (recipe, seed) is one `python -m uda_dist.train --recipe R --set seed=S` run with one torch thread;
`--parallel` runs that many at once. The per-run summaries stay in outputs/seeds/.
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


def run(recipe: str, seed: int, out_dir: str) -> float:
    name = f"{recipe}_seed{seed}"
    cmd = [sys.executable, "-m", "uda_dist.train", "--recipe", recipe, "--set", f"seed={seed}",
           "--set", f"name={name}", "--set", f"output_dir={out_dir}", "--set", "train.threads=1"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out_dir, name, "summary.json")) as f:
        return 100 * json.load(f)["miou"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", default="outputs/seeds")
    args = p.parse_args()
    jobs = [(r, s) for r in args.recipes for s in args.seeds]
    with ThreadPoolExecutor(args.parallel) as pool:
        scores = list(pool.map(lambda job: run(*job, args.out), jobs))
    print(f"{'recipe':<26} " + " ".join(f"seed {s:>2}" for s in args.seeds) + "   mean +- std")
    for r in args.recipes:
        row = np.array([scores[jobs.index((r, s))] for s in args.seeds])
        print(f"{r:<26} " + " ".join(f"{v:7.1f}" for v in row) + f"   {row.mean():.1f} +- {row.std(ddof=1) if len(row) > 1 else 0:.1f}")


if __name__ == "__main__":
    main()
