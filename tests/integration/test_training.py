"""Short end-to-end runs in one process: the loss falls, self-training runs its full step, outputs exist."""
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
    summary = json.load(open(os.path.join(tiny_config.output_dir, tiny_config.name, "summary.json")))
    assert summary["config"]["train.iterations"] == 40 and len(summary["iou"]) == 19


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
    picture = os.path.join(tmp_path, "demo_predictions.png")
    assert os.path.isfile(picture) and picture in out


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
