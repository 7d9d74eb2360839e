"""Staged runs and offline pseudo-labels in one process (the Ray side is in test_distributed.py): a model
labels the tiny target train split into shards and a manifest that the reader trains on, a complete manifest
is not written again, the confidence threshold; FADA's staged recipe from the command line, and its rerun."""
import dataclasses
import os

import numpy as np
import torch

from uda_dist.data.schema import IGNORE_INDEX, decode_image, decode_label, read_manifest
from uda_dist.data.reading import _range_members
from uda_dist.data.sources import load_manifest
from uda_dist.data.webdataset import train_loader
from uda_dist.model.segmentor import build_segmentor
from uda_dist.pseudo_labels import LabelConfig, label_target


def test_a_model_labels_every_target_sample_once_and_the_reader_trains_on_it(tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, label=LabelConfig(enabled=True, out=str(tmp_path / "labels"),
                                                             max_per_shard=10))
    torch.manual_seed(0)
    model = build_segmentor(cfg.model).eval()
    location = label_target(model, cfg, torch.device("cpu"))
    assert location == str(tmp_path / "labels" / "synthetic-target-train-pseudo.manifest.json")
    written, target = read_manifest(location), load_manifest(cfg.data.target, cfg.data.synthetic)
    assert [s.num_samples for s in written.shards] == [10, 10, 4] and written.labeled
    assert [s.key for sh in written.shards for s in sh.samples] == [s.key for sh in target.shards for s in sh.samples]
    # each sample: the target image as stored, labelled with the model's arg-max on the whole image
    shard, sample = written.shards[1], written.shards[1].samples[3]
    members = _range_members(os.path.join(os.path.dirname(location), shard.url), sample.key, sample.offset, sample.size)
    source = next(s for sh in target.shards for s in sh.samples if s.key == sample.key)
    original = _range_members(target.urls()[0], source.key, source.offset, source.size)
    image = decode_image(members["png"])
    assert np.array_equal(image, decode_image(original["png"]))
    with torch.no_grad():
        probs = model.segment(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255).softmax(1)
    expected = probs.argmax(1)[0]
    assert np.array_equal(decode_label(members["label.png"]), expected.numpy())
    assert sum(written.class_pixels) == 24 * 32 * 64
    batch = next(iter(train_loader(written, cfg=cfg.data.loader, labeled=True, seed=0)))
    assert batch["label"].shape == (4, 32, 64)

    # complete: not labelled again (the manifest is the one written before)
    before = os.stat(location).st_mtime_ns
    assert label_target(model, cfg, torch.device("cpu")) == location and os.stat(location).st_mtime_ns == before

    # a threshold (this model's median confidence on that image): pixels under it are ignore
    median = float(probs.max(1).values.median())
    strict = dataclasses.replace(cfg, label=dataclasses.replace(cfg.label, out=str(tmp_path / "strict"),
                                                                threshold=median))
    unsure = read_manifest(label_target(model, strict, torch.device("cpu")))
    assert 0 < sum(unsure.class_pixels) < sum(written.class_pixels)
    shard = next(s for s in unsure.shards if any(x.key == sample.key for x in s.samples))
    index = next(x for x in shard.samples if x.key == sample.key)
    members = _range_members(os.path.join(str(tmp_path / "strict"), shard.url), index.key, index.offset, index.size)
    label = decode_label(members["label.png"])
    confidence = probs.max(1).values[0].numpy()
    kept, dropped = confidence > median + 1e-5, confidence < median - 1e-5  # clear of float noise (batched here)
    assert np.array_equal(label[kept], expected.numpy()[kept]) and (label[dropped] == IGNORE_INDEX).all()
    assert kept.sum() > 100 and dropped.sum() > 100


def test_the_staged_recipe_runs_from_the_command_line_and_a_rerun_skips_its_stages(tiny_data_dir, tmp_path, capsys):
    from tests.helpers import for_every_stage, tiny_overrides
    from uda_dist import train
    from uda_dist.recipes.synthetic import synthetic_fada_pipeline

    sets = for_every_stage(synthetic_fada_pipeline(), tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=3"])
    argv = ["--recipe", "synthetic_fada_pipeline", "--run-name", "p1", "--set", *sets]
    assert train.main(argv) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("class"))
    assert header.split() == ["class", "source", "adversarial", "distill"]  # one column per stage
    assert next(line for line in lines if line.startswith("mIoU")).count(".") == 3
    assert "pseudo-labels of 24 target samples written" in err
    with open(tmp_path / "p1" / "summary.json") as f:
        summary = __import__("json").load(f)
    assert [row["run_name"] for row in summary["stages"]] == ["p1.source", "p1.adversarial", "p1.distill"]
    assert summary["stages"][1]["final_weights"] == str(tmp_path / "p1.adversarial" / "student.pt")
    assert train.main(argv) == 0  # the same run name: every stage finished, none trains again
    err = capsys.readouterr().err
    assert err.count("finished earlier") == 3 and "step 1" not in err


def diga_self_training_stage(tiny_data_dir, tmp_path, run_name, *extra):
    """The tiny synthetic_diga's warm-up stage run (3 steps, its labelling of the target) and the RunConfig of
    its first self-training stage, which reads those pseudo-labels as the target's."""
    from tests.helpers import for_every_stage, tiny_overrides
    from uda_dist.config import apply_overrides
    from uda_dist.pipeline import prepare_pipeline, run_pipeline, stage_run
    from uda_dist.recipes.synthetic import synthetic_diga

    cfg = synthetic_diga()
    cfg = apply_overrides(cfg, for_every_stage(cfg, tiny_overrides(tiny_data_dir, str(tmp_path)) + [
        "train.iterations=3", *extra]) + [f"launch.run_name={run_name}", "stages.self_training.train.iterations=6"])
    warmup = run_pipeline(dataclasses.replace(cfg, stages=cfg.stages[:1]))["stages"][0]
    return stage_run(prepare_pipeline(cfg), "self_training", earlier={"warmup": warmup})


def test_diga_self_training_reads_the_offline_labels_and_resumes_mid_round_exactly(tiny_data_dir, tmp_path):
    """The staged DiGA recipe's self-training round, checkpointed at step 3 of 6 and resumed: student, teacher,
    the centroids and the ClassMix generator equal those of the uninterrupted round; the resumed round does not
    run the centroids' initial pass again (its state comes from the checkpoint)."""
    from tests.helpers import assert_same_state
    from uda_dist.checkpoint import load_state, save_state
    from uda_dist.loop import _optimizer_step
    from uda_dist.parts import Parts

    cpu = torch.device("cpu")
    cfg = diga_self_training_stage(tiny_data_dir, tmp_path, "diga1")
    assert cfg.data.target.endswith("synthetic-target-train-pseudo.manifest.json")

    def states(parts):
        method = parts.method
        return {"student": parts.engine.module.state_dict(), "teacher": method.teacher.state_dict(),
                "centroids": method.selector.centroids.state_dict(), "generator": method.generator.get_state()}

    straight = Parts(cfg, cpu)
    batch = next(straight.target)
    assert batch["label"].shape == batch["image"][:, 0].shape  # the target stream carries the pseudo-labels
    straight.start_method(cpu)
    initial = {k: v.clone() for k, v in straight.method.selector.centroids.state_dict().items()}
    assert initial["seen_K"].sum() >= 2
    for step in range(3):
        _optimizer_step(straight, cpu, step)
    save_state(straight, str(tmp_path / "ckpt"), 3, {"evaluations": [], "losses": []})
    for step in range(3, 6):
        logged = _optimizer_step(straight, cpu, step)
    assert {"source.distillation", "mix.ce", "pseudo.agreement_ratio"} <= logged.keys()
    assert 0 < float(logged["pseudo.agreement_ratio"]) <= 1
    expected = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in states(straight).items()}
    assert not torch.equal(expected["centroids"]["centroid_KD"], initial["centroid_KD"])  # moved online

    resumed = Parts(cfg, cpu)
    assert load_state(resumed, str(tmp_path / "ckpt"))["step"] == 3
    for step in range(3, 6):
        _optimizer_step(resumed, cpu, step)
    assert_same_state(states(resumed), expected)
