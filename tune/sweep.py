"""Sweeps: `python -m tune.sweep --recipe R --space NAME [--param KEY=DIST] [--set KEY=VALUE ...] [options]`

Ray Tune in the Ray Train V2 pattern: Tune runs one driver function per trial (``_trial``), which applies the
trial's values to the recipe's config with the same override code as the CLI and trains it with
uda_dist.launch.launch, i.e. one TorchTrainer of ``launch.workers`` DeepSpeed workers, named by the sweep
and the trial id (``{sweep}-{trial_id}``) so that a retried trial resumes from its own checkpoints and
continues its own MLflow run. Tune's TuneReportCallback forwards the workers' reports ({"step", "val.miou"}
at every evaluation) to Tune. ASHA stops trials early on target mIoU (``train.eval_every`` sets the
evaluation cadence; rungs start at --grace steps); the searcher is Optuna's TPE where optuna is installed,
HyperOpt where that is, random search otherwise. Trials run with the trainer's resources (workers x CPUs,
GPUs); the trial's driver itself reserves none; --max-concurrent caps the trials at once (default: as many
as the cluster's CPUs, or GPUs, hold).

In MLflow the sweep is a parent run (named by the sweep) with one nested run per trial; trials stopped early
are marked KILLED. At the end it prints a table of the trials and the best trial as the exact
`python -m uda_dist.train --recipe R --set ...` line that reproduces it, and records both, with a plot of
mIoU against the first swept parameter, on the parent run. Relaunching with the same --name resumes an
interrupted sweep (unfinished and errored trials continue from their checkpoints).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import shlex
import sys
import time
from typing import Any

from tune.spaces import has_grid, resolve_space, to_tune
from uda_dist.config import ConfigError, apply_overrides
from uda_dist.errors import run_cli
from uda_dist.redact import redact

METRIC = "val.miou"
DRIVER_MEMORY = 2 ** 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepOptions:
    name: str
    trials: int = 4
    search: str = "auto"
    scheduler: str = "asha"
    grace: int = 0
    reduction: int = 2
    max_concurrent: int = 0
    max_failures: int = 0
    storage: str = ""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    from uda_dist.recipes import recipe

    base = recipe(args.recipe)
    name = args.name or f"{args.recipe}-{args.space or 'params'}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = SweepOptions(name=name, trials=args.trials, search=args.search, scheduler=args.scheduler,
                           grace=args.grace, reduction=args.reduction, max_concurrent=args.max_concurrent,
                           max_failures=args.max_failures, storage=args.storage)
    base = apply_overrides(base, args.overrides)
    space = resolve_space(base, args.space, args.params)
    _check(base, options)
    searcher_name(options.search, space)  # --search optuna with grid(...) values is an error here
    rows = run_sweep(base, space, options, recipe=args.recipe, overrides=args.overrides)
    return 0 if any(row["status"] == "FINISHED" for row in rows) else 1


def run_sweep(base: Any, space: dict[str, str], options: SweepOptions, *, recipe: str,
              overrides: list[str]) -> list[dict[str, Any]]:
    """Run the sweep; print and return its trials as rows {name, status, params, metrics, tags}."""
    from ray import tune

    from uda_dist.launch import connect
    from uda_dist.pipeline import prepare, total_iterations
    from uda_dist.tracking import sweep_run

    # Trials keep the driver's working directory (relative data paths, ./mlflow.db), and a report without
    # val.miou (a checkpoint between evaluations) is not an error for the scheduler.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    base, storage = _trial_base(base, options)
    prepare(base)  # one-line errors before Ray starts
    connect()
    parent = None
    if base.tracking.enabled:
        parent = sweep_run(base.tracking, options.name, recipe=recipe, params=_sweep_params(recipe, space, options,
                                                                                          overrides))
        base = apply_overrides(base, {"tracking.parent_run_id": parent.run_id})
    # The trial's driver only waits on its trainer: no CPU (Tune's default 1 CPU would leave the trainers of
    # concurrent trials short), a token of memory (a placement group needs a non-zero bundle).
    trainable = tune.with_resources(tune.with_parameters(_trial, base=base, sweep=options.name),
                                    {"CPU": 0, "memory": DRIVER_MEMORY})
    path = f"{storage.rstrip('/')}/{options.name}"
    if tune.Tuner.can_restore(path):
        print(f"[sweep] resuming {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=to_tune(space), tune_config=_tune_config(base, space, options),
                           run_config=tune.RunConfig(name=options.name, storage_path=storage,
                                                     failure_config=tune.FailureConfig(options.max_failures)))
    rows = _rows(tuner.fit(), total_iterations(base))
    _report(rows, base, parent, options, recipe=recipe, overrides=overrides, space=space)
    return rows


def _trial(params: dict[str, Any], *, base: Any, sweep: str) -> None:
    """One trial (Tune's driver function): the trial's values on the base config, trained by launch()."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from uda_dist.pipeline import train

    trial_id = tune.get_context().get_trial_id()
    cfg = apply_overrides(base, params)
    cfg = apply_overrides(cfg, {"launch.run_name": f"{sweep}-{trial_id}",
                                "output_dir": os.path.join(base.output_dir, sweep)})
    train(cfg, callbacks=(TuneReportCallback(),))


def _trial_base(base: Any, options: SweepOptions) -> tuple[Any, str]:
    """The config every trial starts from (at least one worker, absolute output folder, the tracking store
    fixed on this driver, trainer runs under the sweep's storage) and the sweep's storage."""
    output_dir = os.path.abspath(base.output_dir)
    storage = options.storage or os.path.join(output_dir, "ray")
    base = apply_overrides(base, {"output_dir": output_dir, "launch.workers": max(1, base.launch.workers),
                                  "launch.storage_path": f"{storage.rstrip('/')}/{options.name}/train"})
    from uda_dist.tracking import resolve

    return dataclasses.replace(base, tracking=resolve(base.tracking)), storage


def _check(base: Any, options: SweepOptions) -> None:
    from uda_dist.pipeline import eval_every, total_iterations

    if options.trials < 1 or options.reduction < 2 or options.grace < 0 or options.max_concurrent < 0:
        raise ConfigError("--trials >= 1, --reduction >= 2, --grace >= 0 and --max-concurrent >= 0 are required")
    if options.scheduler == "asha" and not eval_every(base):
        raise ConfigError("ASHA stops trials on their evaluations during training: set train.eval_every "
                          "(e.g. --set train.eval_every=100; a staged run's stages.<stage>.train.eval_every), or "
                          "use --scheduler fifo")
    if options.grace > total_iterations(base):
        raise ConfigError(f"--grace {options.grace} is beyond the run's {total_iterations(base)} steps")


def _tune_config(base: Any, space: dict[str, str], options: SweepOptions) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from uda_dist.pipeline import eval_every, total_iterations

    scheduler = FIFOScheduler()
    if options.scheduler == "asha":
        # stop_last_trials=False: a trial reaching the last step finishes by itself (its final report comes
        # before the run's artifacts are recorded; stopping it there would cut them off). A staged run's
        # steps run on across its stages (launch.step_offset).
        scheduler = ASHAScheduler(time_attr="step", max_t=total_iterations(base),
                                  grace_period=options.grace or eval_every(base),
                                  reduction_factor=options.reduction, stop_last_trials=False)
    concurrent = options.max_concurrent or _fitting_trials(base)
    searcher = _searcher(options.search, space, base.seed, max_concurrent=concurrent)
    return tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                           num_samples=options.trials,
                           max_concurrent_trials=None if isinstance(searcher, BasicVariantGenerator) else concurrent)


def _searcher(kind: str, space: dict[str, str], seed: int, *, max_concurrent: int = 0) -> Any:
    """The search algorithm. Random search gets the concurrency cap itself: Tune applies
    max_concurrent_trials only to a Searcher and ignores it, with a warning, for a BasicVariantGenerator
    (both trials of a --max-concurrent 1 grid ran at once, so ASHA had no finished rung to compare with)."""
    from ray.tune.search import BasicVariantGenerator

    if kind == "auto":
        kind = "random" if has_grid(space) else next(
            (k for k in ("optuna", "hyperopt") if importlib.util.find_spec(k) is not None), "random")
    if kind != "random" and has_grid(space):
        raise ConfigError(f"--search {kind} cannot take grid(...) values; use choice(...) or --search random")
    if kind == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        return OptunaSearch(seed=seed)
    if kind == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch
        return HyperOptSearch(random_state_seed=seed)
    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def searcher_name(kind: str, space: dict[str, str]) -> str:
    """What --search auto resolves to here."""
    return type(_searcher(kind, space, 0)).__name__


def _fitting_trials(base: Any) -> int:
    """Trials the cluster holds at once: its CPUs (or GPUs) over one trial's workers."""
    import ray

    resources = ray.cluster_resources()
    lc = base.launch
    if lc.use_gpu:
        return max(1, int(resources.get("GPU", 0)) // lc.workers)
    return max(1, int(resources.get("CPU", 1)) // (lc.workers * lc.cpus_per_worker))


def _rows(results: Any, iterations: int) -> list[dict[str, Any]]:
    """Tune's results as comparison rows; status FINISHED (all steps), STOPPED (by ASHA) or ERROR."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        step = metrics.get("step", 0)
        status = "ERROR" if result.error else "FINISHED" if step >= iterations else "STOPPED"
        rows.append({"name": metrics.get("trial_id") or os.path.basename(result.path), "status": status,
                     "params": dict(result.config), "tags": {},
                     "metrics": {"step": step, **({METRIC: metrics[METRIC]} if METRIC in metrics else {})}})
    return sorted(rows, key=lambda row: row["name"])


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished trial with the highest val.miou (any trial with one when none finished)."""
    for pool in ([r for r in rows if r["status"] == "FINISHED"], rows):
        scored = [r for r in pool if not math.isnan(r["metrics"].get(METRIC, math.nan))]
        if scored:
            return max(scored, key=lambda r: r["metrics"][METRIC])
    return None


def set_line(recipe: str, overrides: list[str], params: dict[str, Any]) -> str:
    """The training command that reproduces a trial: the sweep's --set overrides, then the trial's values
    (floats written with repr, which reads back to the same float)."""
    items = [*overrides, *(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in params.items())]
    return f"python -m uda_dist.train --recipe {recipe} --set " + " ".join(shlex.quote(i) for i in items)


def _report(rows: list[dict[str, Any]], base: Any, parent: Any, options: SweepOptions, *, recipe: str,
            overrides: list[str], space: dict[str, str]) -> None:
    from uda_dist.compare import compare, format_table

    table = format_table(rows, list(space), ["step", METRIC])
    best = best_row(rows)
    line = set_line(recipe, overrides, best["params"]) if best else ""
    print(f"\nSweep {options.name}: {len(rows)} trials, "
          f"{sum(r['status'] == 'STOPPED' for r in rows)} stopped early by {options.scheduler.upper()}\n{table}")
    if best:
        print(f"\nBest trial {best['name']}: {METRIC} {best['metrics'][METRIC]:.4f}\n{line}")
    if parent is None:
        return
    from uda_dist.tracking import list_runs

    folder = os.path.join(base.output_dir, options.name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "trials.txt"), "w") as f:
        f.write(table + (f"\n\nbest: {best['name']}\n{line}\n" if best else "\n"))
    parent.mark_stopped([f"{options.name}-{r['name']}" for r in rows if r["status"] == "STOPPED"])
    _, plot = compare(list_runs(base.tracking, parent=options.name), metric=METRIC,
                      plot=os.path.join(folder, "compare.png"), x=next(iter(space)))
    parent.finish(metrics={f"best.{METRIC}": best["metrics"][METRIC]} if best else {},
                  tags={"best_trial": best["name"], "best_command": line} if best else {},
                  artifacts=[os.path.join(folder, "trials.txt"), *([plot] if plot else [])],
                  status="FINISHED" if best else "FAILED")
    print(f"MLflow: experiment {base.tracking.experiment!r}, parent run {options.name!r} ({redact(base.tracking.uri)})")


def _sweep_params(recipe: str, space: dict[str, str], options: SweepOptions,
                  overrides: list[str]) -> dict[str, Any]:
    return {"sweep.recipe": recipe, "sweep.search": searcher_name(options.search, space),
            "sweep.scheduler": options.scheduler, "sweep.trials": options.trials, "sweep.metric": METRIC,
            "sweep.overrides": " ".join(overrides), **{f"space.{k}": spec for k, spec in space.items()}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="recipe to sweep (python -m uda_dist.train --list-recipes)")
    p.add_argument("--space", default="", help="named search space: temperature, contrast, pseudo, sepico, pgpc")
    p.add_argument("--param", dest="params", action="extend", nargs="+", default=[], metavar="KEY=DIST",
                   help="add or replace a swept key, e.g. method.sepico.tau='loguniform(25, 400)' or "
                        "method.pseudo_weight='choice(0.5, 1.0)'")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="fixed overrides of every trial (launch.workers, train.iterations, train.eval_every...)")
    p.add_argument("--name", default="", help="sweep name (MLflow parent run, Tune experiment); the same "
                                              "name resumes an interrupted sweep. Default: recipe-space-time")
    p.add_argument("--trials", type=int, default=4, help="trials (samples of the space; default 4)")
    p.add_argument("--search", choices=("auto", "optuna", "hyperopt", "random"), default="auto",
                   help="searcher; auto = optuna, else hyperopt, else random (whichever is installed)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha", help="early stopping (asha) or none")
    p.add_argument("--grace", type=int, default=0, help="ASHA: steps before a trial can be stopped "
                                                        "(default: train.eval_every)")
    p.add_argument("--reduction", type=int, default=2, help="ASHA reduction factor (default 2)")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="trials at once (default: as many as the cluster's CPUs or GPUs hold)")
    p.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial (it resumes)")
    p.add_argument("--storage", default="", help="Tune and trainer storage (local dir or s3://); "
                                                 "default {output_dir}/ray")
    return p


if __name__ == "__main__":
    sys.exit(main())
