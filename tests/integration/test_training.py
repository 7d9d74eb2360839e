"""Short end-to-end runs in one process: the loss falls, self-training runs its full step, outputs exist."""
import json
import os

import numpy as np

from tests.helpers import tiny_overrides
from uda_dist import demo
from uda_dist.config import apply_overrides
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
