"""Compare tracked runs: `python -m uda_dist.compare --experiment NAME [--sweep SWEEP] [--metric val.miou] ...`

Reads the runs of an MLflow experiment (or only the trials of one sweep) through uda_dist.tracking, prints a
table of the runs with the parameters that differ between them and their final metrics, sorted by the chosen
metric, and writes a plot of that metric against a varied parameter (for example target mIoU against the
contrast temperature) to a file.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

NOT_COMPARED = ("output_dir", "launch.run_name", "launch.storage_path", "tracking.parent_run_id")
"""Config keys that differ between any two runs without being a choice (where a run writes, its names)."""


def varied_params(runs: list[dict[str, Any]]) -> list[str]:
    """Param keys whose values are not the same in every run (a key missing from a run counts as a value)."""
    keys = sorted({key for run in runs for key in run["params"]} - set(NOT_COMPARED))
    return [key for key in keys if len({run["params"].get(key) for run in runs}) > 1]


def sort_runs(runs: list[dict[str, Any]], metric: str, *, mode: str = "max") -> list[dict[str, Any]]:
    """Best first by ``metric``; runs without it last, in their original order."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(runs, key=lambda run: (metric not in run["metrics"], sign * run["metrics"].get(metric, 0.0)))


def format_table(runs: list[dict[str, Any]], params: list[str], metrics: list[str]) -> str:
    """One row per run: name, status (KILLED = stopped early by a sweep's scheduler), params, metrics."""
    header = ["run", "status", *params, *metrics]
    rows = [[run["name"], _status(run), *(_short(run["params"].get(p, "-")) for p in params),
             *(_number(run["metrics"].get(m)) for m in metrics)] for run in runs]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(f"{cell:<{w}}" for cell, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def save_plot(path: str, runs: list[dict[str, Any]], param: str, metric: str) -> str:
    """``metric`` against ``param``, one point per run (hollow: stopped early); a log x axis when the values
    are positive numbers spanning a factor of 10 or more; text values are placed as categories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for run in runs if metric in run["metrics"]]
    values = [run["params"].get(param, "-") for run in runs]
    numbers = [_as_float(v) for v in values]
    numeric = all(n is not None for n in numbers)
    categories = sorted(set(values))
    xs = numbers if numeric else [categories.index(v) for v in values]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for run, x in zip(runs, xs):
        stopped = _status(run) == "KILLED"
        ax.scatter([x], [run["metrics"][metric]], s=40, edgecolors="tab:blue",
                   facecolors="none" if stopped else "tab:blue")
        ax.annotate(run["name"].rsplit("-", 1)[-1], (x, run["metrics"][metric]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    if numeric and numbers and min(numbers) > 0 and max(numbers) >= 10 * min(numbers):
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(categories)), categories, rotation=30)
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {param} ({len(runs)} runs; hollow = stopped early)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def compare(runs: list[dict[str, Any]], *, metric: str, mode: str = "max", metrics: tuple[str, ...] = (),
            plot: str = "", x: str = "") -> tuple[str, str | None]:
    """(table text, plot path or None) for the runs: sorted by ``metric``, the varied params as columns, and
    a plot of ``metric`` against ``x`` (default: the first varied numeric param) when there is one."""
    from uda_dist.metrics import CLASS_SETS

    if not runs:
        raise ValueError("no runs to compare")
    params = varied_params(runs)
    ordered = sort_runs(runs, metric, mode=mode)
    subsets = [f"val.miou{n}" for n in sorted(CLASS_SETS, reverse=True)[1:]  # SYNTHIA's, where runs have them
               if any(f"val.miou{n}" in run["metrics"] for run in runs)]
    table = format_table(ordered, params, list(dict.fromkeys([metric, *subsets, *metrics])))
    x = x or next((p for p in params if all(_as_float(r["params"].get(p)) is not None for r in runs)), "")
    return table, (save_plot(plot, ordered, x, metric) if plot and x else None)


def _status(run: dict[str, Any]) -> str:
    return "KILLED" if run["tags"].get("uda_dist.early_stopped") == "true" else run["status"]


def _short(value: Any, width: int = 24) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "~"


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m uda_dist.compare", description=__doc__.splitlines()[0])
    p.add_argument("--experiment", required=True, help="MLflow experiment (tracking.experiment of the runs)")
    p.add_argument("--sweep", default="", help="only the trials of this sweep (its name, the parent run)")
    p.add_argument("--uri", default="", help="tracking URI; default $MLFLOW_TRACKING_URI, else ./mlflow.db")
    p.add_argument("--metric", default="val.miou", help="metric to sort by and plot (default: val.miou)")
    p.add_argument("--mode", choices=("max", "min"), default="max", help="best is the largest or smallest")
    p.add_argument("--also", nargs="*", default=["samples_per_s"], metavar="METRIC",
                   help="more metric columns (default: samples_per_s)")
    p.add_argument("--x", default="", help="param on the plot's x axis (default: the first varied number)")
    p.add_argument("--plot", default="compare.png", help="plot file (default: compare.png; '' for none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from uda_dist.tracking import TrackingConfig, list_runs, resolve

    tracking = resolve(TrackingConfig(uri=args.uri, experiment=args.experiment))
    try:
        runs = list_runs(tracking, parent=args.sweep)
        table, plot = compare(runs, metric=args.metric, mode=args.mode, metrics=tuple(args.also),
                              plot=args.plot, x=args.x)
    except (LookupError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    if plot:
        print(f"\nplot: {os.path.abspath(plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
