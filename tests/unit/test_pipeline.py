"""Staged recipes as config: stage keys, the checks of a pipeline, and each stage's run config."""
import pytest

from uda_dist import train
from uda_dist.config import ConfigError, apply_overrides, to_flat_dict
from uda_dist.pipeline import eval_every, stage_run, total_iterations
from uda_dist.recipes.synthetic import synthetic_fada_pipeline


def test_a_stage_key_sets_that_stage_only_and_is_listed_by_name():
    base = synthetic_fada_pipeline()
    cfg = apply_overrides(base, ["stages.adversarial.method.fada.adv_weight=0.01", "stages.distill.train.iterations=5"])
    assert cfg.stages[1].method.fada.adv_weight == 0.01 and base.stages[1].method.fada.adv_weight == 0.001
    assert [s.train.iterations for s in cfg.stages] == [700, 700, 5]
    flat = to_flat_dict(cfg)
    assert flat["stages.adversarial.method.fada.adv_weight"] == 0.01 and flat["stages.distill.labels_from"] == "adversarial"
    assert "stages.source.name" not in flat and "seed" in flat
    assert total_iterations(cfg) == 1405 and eval_every(apply_overrides(cfg, ["stages.source.train.eval_every=50"])) == 50


@pytest.mark.parametrize("override, message", [
    ("stages.nope.seed=1", "no stages named 'nope'; valid: source, adversarial, distill"),
    ("stages.source=1", "'stages.source' is a section"),
    ("stages=1", "'stages' is a list of sections"),
    ("stages.source.name=other", "names the section"),
    ("stages.source.init=previous", "the first stage has no previous stage"),
    ("stages.adversarial.label.enabled=false", "labels_from='adversarial' must name an earlier stage with label"),
    ("stages.distill.optim.lrr=1", "'lrr' is not a field under 'stages.distill.optim'"),
])
def test_bad_stage_keys_are_one_line_errors(override, message, capsys):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        apply_overrides(synthetic_fada_pipeline(), [override])
    assert train.main(["--recipe", "synthetic_fada_pipeline", "--set", override, "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_print_config_shows_every_stage(capsys):
    assert train.main(["--recipe", "synthetic_fada_pipeline", "--print-config",
                       "--set", "stages.distill.optim.lr=0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {"# [stages.source] StageConfig", "# [stages.adversarial.method.fada] FADAConfig"} <= set(lines)
    assert any(line.startswith("stages.distill.optim.lr = 0.01 ") for line in lines)
    assert any(line.startswith("stages.source.optim.lr = 0.002 ") for line in lines)


def test_each_stage_runs_as_its_own_run_after_the_ones_before():
    cfg = apply_overrides(synthetic_fada_pipeline(), ["launch.run_name=r1", "launch.workers=2",
                                                      "launch.storage_path=s3://b/p"])
    earlier = {"source": {"final_weights": "s3://b/p/r1.source/step_00000700/student.pt"},
               "adversarial": {"final_weights": "w2", "labels": "s3://b/p/r1.adversarial.labels/m.manifest.json"}}
    source = stage_run(cfg, "source", parent_run_id="parent", earlier=earlier)
    adversarial = stage_run(cfg, "adversarial", parent_run_id="parent", earlier=earlier)
    distill = stage_run(cfg, "distill", parent_run_id="parent", earlier=earlier)
    assert [r.launch.run_name for r in (source, adversarial, distill)] == ["r1.source", "r1.adversarial", "r1.distill"]
    assert [r.launch.step_offset for r in (source, adversarial, distill)] == [0, 700, 1400]
    assert {r.tracking.parent_run_id for r in (source, adversarial, distill)} == {"parent"}
    assert source.model.init_weights == "" and distill.model.init_weights == ""  # init=config: fresh models
    assert adversarial.model.init_weights == "s3://b/p/r1.source/step_00000700/student.pt"  # from the storage
    assert distill.data.source == earlier["adversarial"]["labels"] and adversarial.label.enabled
    assert adversarial.name == "synthetic_fada_pipeline.adversarial" and adversarial.launch.workers == 2
