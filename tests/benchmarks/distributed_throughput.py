"""Training throughput on 1 and 2 Ray Train CPU workers (one thread each), and the share of the step time
spent in SePiCo's class-statistics all-reduce, measured side by side in one run.

Usage: .venv/bin/python tests/benchmarks/distributed_throughput.py [--recipe synthetic_sepico_distcl]
       [--steps 60] [--log-every 10] [--no-reference]

Every setup trains the same recipe for --steps steps through the real launcher (uda_dist.launch: a local Ray,
DeepSpeed engines on gloo) with ``train.time_stats_reduce=true``; the loop logs, per log window, the global
samples/s and the share of the wall time spent inside the statistics all-reduce (waiting for the slower rank
included). The first window (warm-up) is left out. The batch is per worker, so 2 workers train twice the
samples per step; one more row splits the recipe's batch over 2 workers (the same global batch, as the demo
does). The reference row is the same recipe in one process without Ray, with two torch threads (what the
demo did before it ran on Ray).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from uda_dist.config import apply_overrides, to_flat_dict  # noqa: E402
from uda_dist.recipes import all_recipes  # noqa: E402


def _speed(losses: list[dict], log_every: int, samples_per_step: int) -> tuple[float, float, float]:
    """(samples/s, ms per step, statistics all-reduce share) over the log windows after the first."""
    windows = losses[1:]
    if not windows:
        raise SystemExit("need at least two log windows: raise --steps or lower --log-every")
    seconds = [log_every * samples_per_step / w["samples_per_s"] for w in windows]
    total = sum(seconds)
    samples = len(windows) * log_every * samples_per_step
    share = sum(w.get("time.stats_reduce_share", 0.0) * s for w, s in zip(windows, seconds)) / total
    return samples / total, 1000 * total / (len(windows) * log_every), share


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="synthetic_sepico_distcl")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-reference", action="store_true", help="skip the one-process, two-thread row")
    args = p.parse_args()
    out = tempfile.mkdtemp(prefix="uda_bench_")
    recipe = all_recipes()[args.recipe]()
    # SePiCo: contrast from the first step, so that every timed step is a full SePiCo step
    contrast_now = ["method.start_step=0"] if "method.start_step" in to_flat_dict(recipe) else []
    base = apply_overrides(recipe, [
        f"train.iterations={args.steps}", f"train.log_every={args.log_every}", "train.time_stats_reduce=true",
        "train.eval_max_batches=1", f"output_dir={out}", *contrast_now])
    stamp = time.strftime("%H%M%S")
    rows = []
    from uda_dist.launch import launch
    recipe_batch = base.data.loader.batch_size
    setups = [(w, recipe_batch) for w in args.workers] + [(w, recipe_batch // w) for w in args.workers if w > 1]
    for workers, per_worker in setups:
        cfg = apply_overrides(base, [f"launch.workers={workers}", "launch.cpus_per_worker=1", "train.threads=1",
                                     f"data.loader.batch_size={per_worker}", f"name=w{workers}b{per_worker}",
                                     f"launch.run_name=bench-w{workers}b{per_worker}-{stamp}"])
        start = time.perf_counter()
        summary = launch(cfg)
        wall = time.perf_counter() - start
        batch = workers * per_worker
        rows.append((f"Ray Train, {workers} x 1 thread, {per_worker} img/worker", batch,
                     *_speed(summary["losses"], args.log_every, batch), wall))
    if not args.no_reference:
        from uda_dist.loop import train_loop
        cfg = apply_overrides(base, ["train.threads=2", "name=reference"])
        start = time.perf_counter()
        result = train_loop(cfg)
        wall = time.perf_counter() - start
        batch = cfg.data.loader.batch_size
        rows.append(("one process (no Ray), 2 threads", batch, *_speed(result.losses, args.log_every, batch), wall))
    one = rows[0][2]
    print(f"\n{args.recipe}, {args.steps} steps (first {args.log_every} left out), {os.cpu_count()} CPU cores")
    print(f"{'setup':<36} {'global batch':>12} {'samples/s':>10} {'vs 1 worker':>12} {'ms/step':>8} "
          f"{'stats all-reduce':>17} {'wall s':>7}")
    for name, batch, rate, step_ms, share, wall in rows:
        print(f"{name:<36} {batch:>12} {rate:>10.2f} {rate / one:>11.2f}x {step_ms:>8.0f} {100 * share:>16.2f}% "
              f"{wall:>7.0f}")


if __name__ == "__main__":
    main()
