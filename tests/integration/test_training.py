"""Short end-to-end runs in one process: the loss falls, self-training runs its full step, outputs exist."""
import glob
import json
import os

import numpy as np
import pytest

from tests.helpers import tiny_overrides
from uda_dist import demo
from uda_dist.config import apply_overrides
from uda_dist.data.reading import BadDataError
from uda_dist.data.schema import read_manifest
from uda_dist.data.sources import load_manifest
from uda_dist.loop import train_loop
from uda_dist.recipes.synthetic import synthetic_self_training


def test_source_only_loss_falls(tiny_config):
    result = train_loop(tiny_config)
    losses = [entry["loss"] for entry in result.losses]
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < 0.7 * losses[0], losses
    assert 0.0 <= result.miou <= 1.0
    summary = json.load(open(os.path.join(result.outputs, "summary.json")))
    assert summary["config"]["train.iterations"] == 40 and len(summary["iou"]) == 19
    assert os.path.dirname(result.outputs) == os.path.abspath(tiny_config.output_dir)


def test_each_run_has_its_own_output_folder(tiny_data_dir, tmp_path):
    """Regression: every run of a recipe wrote to {output_dir}/{recipe name}, so a second run left the first
    run's pictures beside its own weights. Now each run has {output_dir}/{run name}."""
    cfg = apply_overrides(synthetic_self_training(), tiny_overrides(tiny_data_dir, str(tmp_path)) +
                          ["train.iterations=2", "train.log_every=1"])
    first, second = train_loop(cfg), train_loop(cfg)
    assert first.outputs != second.outputs and first.run_name != second.run_name
    assert sorted(os.listdir(tmp_path)) == sorted([first.run_name, second.run_name])
    named = train_loop(apply_overrides(cfg, ["launch.run_name=mine"]))
    assert named.outputs == os.path.join(tmp_path, "mine") and os.path.isfile(os.path.join(named.outputs,
                                                                                         "student.pt"))


def test_self_training_runs_teacher_and_mix(tiny_data_dir, tmp_path):
    cfg = apply_overrides(synthetic_self_training(), tiny_overrides(tiny_data_dir, str(tmp_path)) +
                          ["train.iterations=20", "train.eval_every=10"])
    result = train_loop(cfg)
    last = result.losses[-1]
    assert {"loss", "source.ce", "mix.ce", "pseudo.confident_ratio"} <= set(last)
    assert np.isfinite(last["loss"]) and 0.0 <= last["pseudo.confident_ratio"] <= 1.0
    assert [e["step"] for e in result.evaluations] == [10, 20]


def test_demo_in_process_prints_table_and_writes_picture(tiny_data_dir, tmp_path, capsys):
    overrides = tiny_overrides(tiny_data_dir, str(tmp_path)) + ["train.iterations=6", "launch.workers=0",
                                                                 "model.proj_dim=8", "model.proj_hidden=8"]
    assert demo.main(overrides) == 0
    out = capsys.readouterr().out
    for name in ("synthetic_source_only", "synthetic_self_training", "synthetic_sepico_distcl", "mIoU"):
        assert name in out
    [picture] = glob.glob(os.path.join(tmp_path, "demo-*", "predictions.png"))
    assert picture in out
    for name in ("synthetic_source_only", "synthetic_self_training", "synthetic_sepico_distcl"):
        [folder] = glob.glob(os.path.join(tmp_path, f"{name}-*"))
        assert f"outputs:     {folder}" in out and os.path.isfile(os.path.join(folder, "student.pt"))


def damaged_copy(manifest_path: str, out_dir) -> str:
    """A copy of a split whose (single) shard is cut in half, with its manifest."""
    manifest = read_manifest(manifest_path)
    out_dir.mkdir()
    for url in manifest.urls():
        data = open(url, "rb").read()
        (out_dir / os.path.basename(url)).write_bytes(data[: len(data) // 2])
    copy = out_dir / os.path.basename(manifest_path)
    copy.write_text(open(manifest_path).read())
    return str(copy)


def test_a_run_skips_and_counts_bad_source_data_or_fails_by_choice(tiny_data_dir, tmp_path):
    """Rare class sampling and whole-shard reads over a half-truncated source shard: under skip the run
    trains and its log counts what was skipped; under fail it stops naming the shard's sample."""
    cfg = apply_overrides(synthetic_self_training(), tiny_overrides(tiny_data_dir, str(tmp_path)))
    source = damaged_copy(load_manifest(cfg.data.source, cfg.data.synthetic).location, tmp_path / "damaged")
    common = [f"data.source={source}", "train.iterations=10", "data.loader.rcs_temperature=0.01",
              "data.loader.rcs_min_pixels=50"]
    result = train_loop(apply_overrides(cfg, common + ["data.loader.bad_data=skip"]))
    assert sum(entry["data.skipped_samples"] for entry in result.losses) > 0
    assert np.isfinite(result.losses[-1]["loss"])
    with pytest.raises(BadDataError, match="source-train"):
        train_loop(apply_overrides(cfg, common + [f"output_dir={tmp_path / 'fail'}"]))
