"""Predictions for the benchmark servers: one PNG per image at its published size, named by its path, as
labelIds (Cityscapes) or trainIds; local and s3:// output; an index written last, removed by a rerun."""
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_overrides
from uda_dist import predict
from uda_dist.config import apply_overrides
from uda_dist.data.sources import load_manifest
from uda_dist.data.webdataset import LoaderConfig, eval_loader
from uda_dist.inference import predict as predict_probs
from uda_dist.model.segmentor import build_segmentor
from uda_dist.recipes.synthetic import synthetic_source_only

SPLIT = "synthetic:target/val"


@pytest.fixture
def trained(tiny_data_dir, tmp_path):
    """A recipe's config on the tiny benchmark and a student's weights file (a fresh model's)."""
    sets = tiny_overrides(tiny_data_dir, str(tmp_path / "out"))
    cfg = apply_overrides(synthetic_source_only(), sets)
    torch.manual_seed(0)
    weights = tmp_path / "student.pt"
    torch.save(build_segmentor(cfg.model).state_dict(), weights)
    return cfg, sets, str(weights)


def _argv(sets, weights, out, fmt="cityscapes", *extra):
    return ["--recipe", "synthetic_source_only", "--weights", weights, "--split", SPLIT, "--out", out,
            "--format", fmt, "--set", *sets, *extra]


def test_predictions_are_pngs_named_as_the_images_in_the_servers_ids(trained, tmp_path, capsys):
    cfg, sets, weights = trained
    out = tmp_path / "preds"
    assert predict.main(_argv(sets, weights, str(out))) == 0
    manifest = load_manifest(SPLIT, cfg.data.synthetic)
    index = json.loads((out / "predictions.json").read_text())
    assert index["count"] == index["samples_in_split"] == manifest.num_samples == 8
    assert f"8 predictions (cityscapes) of {SPLIT}" in capsys.readouterr().out
    assert predict.main(_argv(sets, weights, str(tmp_path / "train_ids"), "trainids")) == 0

    model = build_segmentor(cfg.model)
    model.load_state_dict(torch.load(weights, weights_only=True))
    loader = eval_loader(manifest.urls(), cfg=LoaderConfig(num_workers=0, eval_batch_size=1), labeled=False)
    for batch in loader:
        name = os.path.splitext(batch["relpath"][0])[0] + ".png"
        label_ids = np.asarray(Image.open(out / name))
        train_ids = np.asarray(Image.open(tmp_path / "train_ids" / name))
        expected = predict_probs(model.eval(), batch["image"], cfg.eval, batch["orig_size"][0])[0].argmax(0)
        assert label_ids.shape == tuple(batch["orig_size"][0]) and np.array_equal(train_ids, expected.numpy())
        assert np.array_equal(label_ids, predict.CITYSCAPES_TRAINID_TO_LABELID[train_ids])
        assert set(np.unique(label_ids)) <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}


def test_a_failed_rerun_leaves_no_index_and_bad_weights_are_one_line(trained, tmp_path, capsys):
    cfg, sets, weights = trained
    out = tmp_path / "preds"
    assert predict.main(_argv(sets, weights, str(out))) == 0
    other = build_segmentor(apply_overrides(cfg, ["model.embed_dim=16"]).model)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    capsys.readouterr()
    assert predict.main(_argv(sets, str(tmp_path / "other.pt"), str(out))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "does not fit this model" in err[0]
    assert not (out / "predictions.json").exists()  # the earlier index went first: the folder is not complete
    assert predict.main(_argv(sets, weights, str(out), "cityscapes", "--stage", "x")) == 2


def test_predictions_go_to_s3(trained, s3_server):
    from uda_dist.data import s3

    cfg, sets, weights = trained
    assert predict.main(_argv(sets, weights, "s3://runs/preds")) == 0
    index = json.loads(s3.read_bytes("s3://runs/preds/predictions.json"))
    batch = next(iter(eval_loader(load_manifest(SPLIT, cfg.data.synthetic).urls(),
                                  cfg=LoaderConfig(num_workers=0, eval_batch_size=1), labeled=False)))
    png = s3.read_bytes("s3://runs/preds/" + os.path.splitext(batch["relpath"][0])[0] + ".png")
    assert index["count"] == 8 and np.asarray(Image.open(io.BytesIO(png))).shape == tuple(batch["orig_size"][0])
