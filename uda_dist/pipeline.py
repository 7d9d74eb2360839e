"""Staged runs: a recipe that is a sequence of named stages (FADA: source-only -> adversarial -> label the
target -> self-distillation), run as one resumable, trackable, sweepable run.

A ``PipelineConfig`` holds what its stages share (name, seed, output folder, launch, tracking) and the stages,
each a ``StageConfig`` with its own data, model, optimiser, method, iterations, engine and labelling, and how
its student starts: ``init="previous"`` takes the previous stage's final weights, ``init="config"`` builds it
as its model section says (a fresh model: ``model.pretrained`` backbone weights, or ``model.init_weights``).
``labels_from`` names an earlier stage that ended by labelling the target train split
(``label.enabled``, uda_dist.pseudo_labels): its pseudo-labels replace ``data.source`` (FADA's
self-distillation trains on them as a labelled split), or with ``labels_as="target"`` ``data.target`` (DiGA's
self-training reads them as the target's offline pseudo-labels, ``method.pseudo_source="offline"``). ``--set
stages.<stage>.<key>=value`` addresses one stage (uda_dist.config), and --print-config shows them all.

The per-worker loop stays single-stage: each stage is a run of its own, ``<run>.<stage>``, with its own Ray
checkpoints, output folder ({output_dir}/<run>.<stage>) and MLflow run, nested under one parent MLflow run
named <run>. A relaunch with the same run name skips every stage whose final checkpoint (with its summary)
is in the run storage and resumes the first unfinished one from its latest checkpoint, exactly as a single
run resumes. A stage's inputs from earlier stages, their final weights ({storage}/<run>.<stage>/step_N/
student.pt) and their pseudo-labels ({storage}/<run>.<stage>.labels/), are read from the run storage, local
or s3://, since the nodes of a cluster share no disk. Each stage reports its steps after the earlier stages'
(launch.step_offset), so a sweep's scheduler sees one step counter that only grows. Without Ray
(launch.workers=0) the stages run one after another in this process and a finished stage is one whose
{output_dir}/<run>.<stage>/summary.json exists.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
from typing import Any, Literal

from uda_dist.config import NAME_PATTERN, TRAINING_SECTIONS, RunConfig, TrainingSections, to_flat_dict
from uda_dist.errors import RunError
from uda_dist.launch import LaunchConfig, checkpoint_name
from uda_dist.naming import join_location, run_name
from uda_dist.redact import redact_values
from uda_dist.safe_load import exists
from uda_dist.tracking import TrackingConfig

STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
PIPELINE_TAG = "uda_dist.pipeline"  # on a staged run's parent MLflow run: its stages, in order
SECTIONS = TRAINING_SECTIONS
"""A stage's own sections: those of a RunConfig that are not shared by the stages."""


def sections_of(cfg: TrainingSections) -> dict[str, Any]:
    """{section: value} of a run's or a stage's own sections (a recipe's run as a stage: StageConfig(**...))."""
    return {name: getattr(cfg, name) for name in SECTIONS}


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageConfig(TrainingSections):
    """One stage of a staged run: a run's training sections, and where its student and data come from."""

    name: str
    """The stage's name: its run is <run>.<name>, its keys stages.<name>.<key>."""
    init: Literal["previous", "config"] = "previous"
    """The student's start: "previous" = the previous stage's final weights (from the run storage);
    "config" = as the model section says (a fresh model: model.pretrained, or model.init_weights)."""
    labels_from: str = ""
    """An earlier stage that labelled the target train split (its label.enabled): train on its
    pseudo-labels in place of data.source (or data.target: labels_as). "" = data as set."""
    labels_as: Literal["source", "target"] = "source"
    """What labels_from's pseudo-labels replace: "source" = data.source (a labelled split to train on);
    "target" = data.target (the target images with their offline pseudo-labels, method.pseudo_source=offline)."""

    def __post_init__(self) -> None:
        if not STAGE_NAME.fullmatch(self.name):
            raise ValueError(f"stage name {self.name!r} must be 1-64 letters, digits, '_' or '-' (no dots: it "
                             f"names the run <run>.<stage>)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """A staged run: what its stages share, and the stages in order."""

    name: str = "pipeline"
    """Recipe name: stage runs are named <name>.<stage> in their config and MLflow's recipe tag."""
    seed: int = 0
    """Training seed of every stage."""
    output_dir: str = "outputs"
    """Folder for run outputs: {output_dir}/<run> (the staged run's summary) and {output_dir}/<run>.<stage>."""
    stages: tuple[StageConfig, ...] = ()
    launch: LaunchConfig = dataclasses.field(default_factory=LaunchConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name) or (self.launch.run_name and
                                                     not NAME_PATTERN.fullmatch(self.launch.run_name)):
            raise ValueError(f"name {self.name!r} and launch.run_name {self.launch.run_name!r} must be 1-128 "
                             f"letters, digits, '.', '_' or '-' (they name folders)")
        if not self.stages:
            raise ValueError("a staged run needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must differ, got {names}")
        if self.stages[0].init == "previous":
            raise ValueError(f"stages.{names[0]}.init must be 'config': the first stage has no previous stage")
        for index, stage in enumerate(self.stages):
            if stage.labels_from:
                earlier = {s.name: s for s in self.stages[:index]}
                if stage.labels_from not in earlier or not earlier[stage.labels_from].label.enabled:
                    raise ValueError(f"stages.{stage.name}.labels_from={stage.labels_from!r} must name an earlier "
                                     f"stage with label.enabled=true; those are: "
                                     f"{', '.join(n for n, s in earlier.items() if s.label.enabled) or 'none'}")


def total_iterations(cfg: RunConfig | PipelineConfig) -> int:
    """The steps a run reports up to: a staged run's stages' steps, one after the other."""
    if isinstance(cfg, PipelineConfig):
        return sum(stage.train.iterations for stage in cfg.stages)
    return cfg.train.iterations


def eval_every(cfg: RunConfig | PipelineConfig) -> int:
    """The evaluation cadence a sweep's scheduler sees (a staged run's: its stages' shortest)."""
    if isinstance(cfg, PipelineConfig):
        return min((s.train.eval_every for s in cfg.stages if s.train.eval_every), default=0)
    return cfg.train.eval_every


def train(cfg: RunConfig | PipelineConfig, *, callbacks: tuple[Any, ...] = ()) -> dict[str, Any]:
    """Train a run or a staged run (the command line's, a sweep trial's and `ray job submit`'s entry);
    ``callbacks`` are Ray Train callbacks (a sweep's trial), given to every Ray run."""
    from uda_dist import launch

    if isinstance(cfg, PipelineConfig):
        return run_pipeline(cfg, callbacks=callbacks)
    return launch.launch(cfg, callbacks=callbacks) if callbacks else launch.train(cfg)


def prepare(cfg: RunConfig | PipelineConfig) -> RunConfig | PipelineConfig:
    """The driver's checks and resolved names (uda_dist.launch.prepare) for a run or a staged run."""
    from uda_dist import launch

    return prepare_pipeline(cfg) if isinstance(cfg, PipelineConfig) else launch.prepare(cfg)


def prepare_pipeline(cfg: PipelineConfig) -> PipelineConfig:
    """Its run name, storage, output folder and tracking store fixed once; every stage's data and model
    checked now (the parts that come from earlier stages, once those are there), so a typo in the last
    stage is an error before the first one trains."""
    from uda_dist import launch
    from uda_dist.model.segmentor import check_model
    from uda_dist.tracking import prepare as prepare_tracking

    output_dir = os.path.abspath(cfg.output_dir)
    storage = cfg.launch.storage_path or os.path.join(output_dir, "ray")
    lc = dataclasses.replace(cfg.launch, run_name=run_name(cfg), storage_path=storage)  # type: ignore[arg-type]
    for stage in cfg.stages:
        data = stage.data
        if stage.labels_from and stage.labels_as == "source":  # made by an earlier stage: the split it labels
            data = dataclasses.replace(data, source=data.target)
        launch.prepare_data(dataclasses.replace(stage_run(cfg, stage.name), data=data),  # type: ignore[arg-type]
                            target_labels_later=bool(stage.labels_from) and stage.labels_as == "target")
        if stage.init == "config":
            check_model(stage.model)
    return dataclasses.replace(cfg, output_dir=output_dir, launch=lc, tracking=prepare_tracking(cfg.tracking))


def stage_run(cfg: PipelineConfig, stage_name: str, *, parent_run_id: str = "",
              earlier: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """The RunConfig of one stage: its own sections, the shared ones, its run name <run>.<stage>, its step
    offset, its MLflow parent, and what it takes from the ``earlier`` stages' summaries (their final weights,
    their pseudo-labels)."""
    index = [s.name for s in cfg.stages].index(stage_name)
    stage = cfg.stages[index]
    sections = sections_of(stage)
    earlier = earlier or {}
    if stage.init == "previous" and cfg.stages[index - 1].name in earlier:
        previous = earlier[cfg.stages[index - 1].name]
        sections["model"] = dataclasses.replace(stage.model, init_weights=previous["final_weights"])
    if stage.labels_from in earlier:
        sections["data"] = dataclasses.replace(stage.data, **{stage.labels_as: earlier[stage.labels_from]["labels"]})
    run = f"{cfg.launch.run_name}.{stage.name}" if cfg.launch.run_name else ""
    launch = dataclasses.replace(cfg.launch, run_name=run,
                                 step_offset=sum(s.train.iterations for s in cfg.stages[:index]))
    tracking = dataclasses.replace(cfg.tracking, parent_run_id=parent_run_id or cfg.tracking.parent_run_id)
    return RunConfig(name=f"{cfg.name}.{stage.name}", seed=cfg.seed, output_dir=cfg.output_dir, launch=launch,
                     tracking=tracking, **sections)


def run_pipeline(cfg: PipelineConfig, *, callbacks: tuple[Any, ...] = ()) -> dict[str, Any]:
    """Run the stages in order (skipping the finished ones, resuming the current one); return the staged
    run's summary, also written to {output_dir}/<run>/summary.json."""
    from uda_dist import launch
    from uda_dist.tracking import ParentRun

    cfg = prepare_pipeline(cfg)
    name = cfg.launch.run_name
    parent = None
    if cfg.tracking.enabled:
        parent = ParentRun(cfg.tracking, name, params=to_flat_dict(cfg),
                           tags={"recipe": cfg.name, PIPELINE_TAG: " ".join(s.name for s in cfg.stages)})
    earlier: dict[str, dict[str, Any]] = {}
    # A sweep's trial is stopped by Tune through its own thread; the sweep marks it (see uda_dist.launch).
    # Otherwise the parent run is marked FAILED or KILLED as a single run is (a stage's run by its launch).
    with contextlib.nullcontext() if callbacks else launch.ended_on_error(cfg):  # type: ignore[arg-type]
        for stage in cfg.stages:
            run_cfg = stage_run(cfg, stage.name, parent_run_id=parent.run_id if parent else "", earlier=earlier)
            summary = finished_summary(run_cfg)
            if summary is not None:
                print(f"[pipeline] stage {stage.name}: finished earlier ({summary['run_name']}, target mIoU "
                      f"{100 * summary['miou']:.2f}), skipped", file=sys.stderr, flush=True)
            else:
                print(f"[pipeline] stage {stage.name}: run {run_cfg.launch.run_name}", file=sys.stderr, flush=True)
                summary = train(run_cfg, callbacks=callbacks)
            earlier[stage.name] = {**summary, "final_weights": final_weights(run_cfg)}
            if parent is not None:
                end = run_cfg.launch.step_offset + run_cfg.train.iterations
                parent.log_metrics({f"stage.{stage.name}.val.miou": summary["miou"]}, step=end)
        result = _summary(cfg, earlier, parent.run_id if parent else "")
        folder = os.path.join(cfg.output_dir, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
        if parent is not None:
            last = result["stages"][-1]
            metrics = {"val.miou": last["miou"], **{f"val.{k}": v for k, v in (last["class_mious"] or {}).items()}}
            parent.finish(metrics=metrics, tags={"final_stage": last["stage"]},
                          artifacts=[os.path.join(folder, "summary.json")], step=total_iterations(cfg))
    return result


def _summary(cfg: PipelineConfig, stages: dict[str, dict[str, Any]], parent_id: str) -> dict[str, Any]:
    keys = ("run_name", "miou", "class_mious", "iou", "steps", "seconds", "outputs", "checkpoints", "mlflow_run_id",
            "labels", "final_weights")
    rows = [{"stage": name, **{k: summary.get(k) for k in keys}} for name, summary in stages.items()]
    last = rows[-1]
    return {"config": redact_values(to_flat_dict(cfg)), "run_name": cfg.launch.run_name, "stages": rows,
            "miou": last["miou"], "class_mious": last["class_mious"] or {}, "iou": last["iou"],
            "outputs": os.path.join(cfg.output_dir, cfg.launch.run_name),
            "mlflow_run_id": parent_id, "classes": stages[last["stage"]].get("classes")}


def final_weights(run_cfg: RunConfig) -> str:
    """Where a stage's final student weights are: its final checkpoint in the run storage (Ray), or its
    output folder (one process)."""
    return _final_file(run_cfg, "student.pt")


def finished_summary(run_cfg: RunConfig) -> dict[str, Any] | None:
    """A stage's summary when it finished (its final checkpoint, or one-process output, holds it), else None."""
    from uda_dist.data import s3

    location = _final_file(run_cfg, "summary.json")
    if not exists(location):
        return None
    if location.startswith("s3://"):
        return json.loads(s3.read_bytes(location))
    with open(location) as f:
        return json.load(f)


def _final_file(run_cfg: RunConfig, name: str) -> str:
    lc = run_cfg.launch
    if not lc.run_name:
        raise RunError("a staged run's stages need its run name (prepare_pipeline sets it)")
    if lc.workers:
        return join_location(lc.storage_path, lc.run_name, checkpoint_name(run_cfg.train.iterations), name)
    return os.path.join(run_cfg.output_dir, lc.run_name, name)

