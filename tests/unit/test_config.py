"""Config: typed overrides, their errors, the CLI's handling of them, and every recipe resolving."""
import dataclasses
import re

import pytest

from uda_dist import train
from uda_dist.config import ConfigError, RunConfig, apply_overrides, format_config, to_flat_dict
from uda_dist.recipes import all_recipes, first_sentence
from uda_dist.recipes.synthetic import synthetic_self_training


def test_overrides_coerce_to_field_types_and_leave_original_untouched():
    base = synthetic_self_training()
    cfg = apply_overrides(base, ["optim.lr=1e-4", "train.iterations=12", "data.loader.flip=false",
                                 "data.loader.crop_size=64,96", "method.pseudo_threshold=0.9",
                                 "data.loader.resize=none", "method.strong_aug.blur_p=0"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.iterations == 12 and isinstance(cfg.train.iterations, int)
    assert cfg.data.loader.flip is False
    assert cfg.data.loader.crop_size == (64, 96)
    assert cfg.data.loader.resize is None
    assert cfg.method.pseudo_threshold == 0.9
    assert cfg.method.strong_aug.blur_p == 0.0
    assert base.optim.lr != 1e-4 and base.train.iterations != 12


def test_every_flat_key_round_trips_through_overrides():
    cfg = synthetic_self_training()
    flat = to_flat_dict(cfg)
    assert "optim.lr" in flat and "data.synthetic.seed" in flat and "method.ema_alpha" in flat
    as_strings = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in flat.items()]
    assert apply_overrides(cfg, as_strings) == cfg
    assert apply_overrides(cfg, flat) == cfg  # the dict form a sweep uses


@pytest.mark.parametrize("override, expected", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("optim.lrr=1", "valid: betas, grad_clip, head_lr_mult, lr"),
    ("nope=1", "valid: data, engine, eval, label, launch, method, model, name, optim, output_dir, seed, tracking, train"),
    ("optim.lr=fast", "bad value for 'optim.lr': 'fast' is not float"),
    ("train.iterations=2.5", "bad value for 'train.iterations'"),
    ("data.loader.flip=maybe", "is not a bool"),
    ("data.loader.crop_size=64", "expected 2 comma-separated values"),
    ("optim.lr=-1", "invalid value for 'optim.lr'"),
    ("optim=1", "'optim' is a section"),
    ("optim.lr.x=1", "is a value, not a section"),
    ("optim.lr", "not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=None) as info:
        apply_overrides(RunConfig(), [override])
    assert expected in str(info.value)


def test_cli_reports_config_errors_without_traceback(capsys):
    code = train.main(["--recipe", "synthetic_source_only", "--set", "optim.lrr=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown config key 'optim.lrr'" in err and "Traceback" not in err
    assert train.main(["--recipe", "no_such_recipe"]) == 2
    assert "valid: " in capsys.readouterr().err


def test_cli_lists_recipes_and_prints_every_one_resolved(capsys):
    assert train.main(["--list-recipes"]) == 0
    listed = capsys.readouterr().out
    recipes = all_recipes()
    assert {"synthetic_source_only", "synthetic_self_training", "synthetic_oracle", "gta_to_cs_daformer"} <= set(recipes)
    assert all(len(line) <= 120 for line in listed.splitlines())
    entries = re.split(r"\n(?=\S)", listed.strip())  # one entry per recipe, its continuation lines indented
    assert sorted(entry.split()[0] for entry in entries) == sorted(recipes)
    for entry in entries:  # the docstring's first sentence, whole: it ends the entry with its full stop
        name, sentence = entry.split(None, 1)
        assert " ".join(sentence.split()) == first_sentence(recipes[name].__doc__) and sentence.endswith(".")
    assert first_sentence("A (b. c) e.g. d. E.") == "A (b. c) e.g. d."
    for name in recipes:
        assert train.main(["--recipe", name, "--print-config", "--set", "seed=3"]) == 0
        out = capsys.readouterr().out
        assert "seed = 3" in out and "optim.lr = " in out
        undocumented = [line for line in out.splitlines() if " = " in line and "  # " not in line]
        assert not undocumented, f"{name}: config fields without help text: {undocumented}"  # inherited too
    assert train.main(["--print-config"]) == 0  # the demo's runs
    assert "synthetic_self_training" in capsys.readouterr().out


def test_format_config_shows_field_help():
    text = format_config(RunConfig())
    assert "optim.head_lr_mult = 10.0" in text
    assert "# Learning-rate multiplier of the decode and projection heads." in text


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().seed = 3


def test_demo_overrides_go_to_the_runs_that_have_the_key(capsys):
    from uda_dist import demo
    so, st, dist = demo._configs(["seed=4", "method.ema_alpha=0.9"])
    assert so.seed == st.seed == dist.seed == 4 and st.method.ema_alpha == dist.method.ema_alpha == 0.9
    assert not hasattr(so.method, "ema_alpha") and dist.method.sepico.contrast == "dist" and dist.method.sepico.weight == 1.0
    # on 2 Ray Train workers with the recipes' global batch
    assert {cfg.launch.workers for cfg in (so, st, dist)} == {2} and so.data.loader.batch_size == 2
    assert train.main(["--set", "method.ema_alfa=0.9"]) == 2
    assert "unknown config key 'method.ema_alfa'" in capsys.readouterr().err


def test_missing_manifest_is_a_clear_error(capsys, tmp_path):
    code = train.main(["--recipe", "gta_to_cs_daformer", "--set", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "manifest 'data/gta5/gta5-train.manifest.json' does not exist" in err
    assert "Traceback" not in err
