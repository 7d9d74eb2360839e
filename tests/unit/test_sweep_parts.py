"""Pure parts of the sweep and comparison commands: search-space text, its checks against the config, the
reproducing --set line, the best trial, and the comparison table."""
import math
import shlex

import pytest

from tune.spaces import SPACES, parse, resolve_space, to_tune
from tune.sweep import best_row, set_line
from uda_dist.compare import compare, format_table, sort_runs, varied_params
from uda_dist.config import ConfigError, apply_overrides
from uda_dist.recipes.synthetic import synthetic_self_training, synthetic_sepico_distcl


def test_distributions_parse_numbers_and_words():
    assert parse("loguniform(25, 400)") == ("loguniform", [25, 400])
    assert parse(" choice(proto, dist) ") == ("choice", ["proto", "dist"])
    assert parse("grid(0.5, 1e-3)") == ("grid", [0.5, 1e-3])
    for bad, words in [("normal(0, 1)", "write one of"), ("uniform(1)", "two numbers"),
                       ("uniform(2, 1)", "low < high"), ("loguniform(0, 1)", "low > 0"), ("grid()", "at least")]:
        with pytest.raises(ConfigError, match=words):
            parse(bad)


def test_every_named_space_fits_the_sepico_recipe_and_becomes_tune_domains():
    cfg = synthetic_sepico_distcl()
    for name in SPACES:
        space = resolve_space(cfg, name, [])
        domains = to_tune(space)
        assert set(domains) == set(SPACES[name])
        for key, domain in domains.items():  # a drawn value goes through the config's own checks
            apply_overrides(cfg, {key: domain.sample()})


def test_space_keys_are_checked_by_the_override_code():
    with pytest.raises(ConfigError, match=r"'method.sepico.tau'.*the sepico term is off.*method.sepico.weight=0"):
        resolve_space(synthetic_self_training(), "temperature", [])  # self-training's contrast term is off
    assert resolve_space(synthetic_self_training(), "contrast", [])  # ... unless its weight is swept too
    with pytest.raises(ConfigError, match="'method.taux'.*unknown config key"):
        resolve_space(synthetic_self_training(), "", ["method.taux=uniform(1, 2)"])
    with pytest.raises(ConfigError, match="method.sepico.taux"):
        resolve_space(synthetic_sepico_distcl(), "", ["method.sepico.taux=uniform(1, 2)"])
    with pytest.raises(ConfigError, match="optim.lr"):  # the config rejects lr <= 0 at the lower bound
        resolve_space(synthetic_sepico_distcl(), "", ["optim.lr=uniform(0, 0.1)"])
    with pytest.raises(ConfigError, match="unknown search space 'temp'; valid: contrast, pgpc, pseudo"):
        resolve_space(synthetic_sepico_distcl(), "temp", [])
    with pytest.raises(ConfigError, match="nothing to sweep"):
        resolve_space(synthetic_sepico_distcl(), "", [])
    space = resolve_space(synthetic_sepico_distcl(), "temperature", ["method.sepico.tau=choice(50, 100)",
                                                                     "optim.lr=grid(0.001, 0.002)"])
    assert space == {"method.sepico.tau": "choice(50, 100)", "optim.lr": "grid(0.001, 0.002)"}


def test_the_set_line_reproduces_the_trial_exactly():
    tau = 1 / 3 * 300
    line = set_line("synthetic_sepico_distcl", ["train.iterations=300", "output_dir=my runs"],
                    {"method.sepico.tau": tau, "method.sepico.contrast": "bank"})
    words = shlex.split(line)
    assert words[:6] == ["python", "-m", "uda_dist.train", "--recipe", "synthetic_sepico_distcl", "--set"]
    cfg = apply_overrides(synthetic_sepico_distcl(), words[6:])
    assert cfg.method.sepico.tau == tau and cfg.method.sepico.contrast == "bank"
    assert cfg.output_dir == "my runs" and cfg.train.iterations == 300


def _row(name, status, miou=None, **params):
    return {"name": name, "status": status, "params": params, "tags": {},
            "metrics": {} if miou is None else {"val.miou": miou}}


def test_the_best_trial_is_the_best_finished_one():
    rows = [_row("a", "STOPPED", 0.9), _row("b", "FINISHED", 0.4), _row("c", "FINISHED", 0.5),
            _row("d", "ERROR")]
    assert best_row(rows)["name"] == "c"
    assert best_row([_row("a", "STOPPED", 0.2), _row("b", "STOPPED", math.nan)])["name"] == "a"
    assert best_row([_row("d", "ERROR")]) is None


def test_comparison_shows_what_varies_sorted_by_the_metric(tmp_path):
    runs = [_row("r1", "FINISHED", 0.30, **{"method.sepico.tau": "50", "seed": "0", "output_dir": "x/1"}),
            _row("r2", "FINISHED", 0.35, **{"method.sepico.tau": "100", "seed": "0", "output_dir": "x/2"}),
            _row("r3", "RUNNING", None, **{"method.sepico.tau": "200", "seed": "0", "output_dir": "x/3"})]
    runs[0]["tags"]["uda_dist.early_stopped"] = "true"
    assert varied_params(runs) == ["method.sepico.tau"]  # output folders differ but are not a choice
    assert [r["name"] for r in sort_runs(runs, "val.miou")] == ["r2", "r1", "r3"]
    assert [r["name"] for r in sort_runs(runs, "val.miou", mode="min")] == ["r1", "r2", "r3"]
    table, plot = compare(runs, metric="val.miou", plot=str(tmp_path / "p.png"))
    lines = table.splitlines()
    assert lines[0].split() == ["run", "status", "method.sepico.tau", "val.miou"]
    assert [line.split() for line in lines[2:]] == [["r2", "FINISHED", "100", "0.3500"],
                                                    ["r1", "KILLED", "50", "0.3000"],
                                                    ["r3", "RUNNING", "200", "-"]]
    with open(plot, "rb") as f:
        assert f.read(4) == b"\x89PNG"
    assert format_table(runs[:1], [], ["step"]).splitlines()[2].split() == ["r1", "KILLED", "-"]
    with pytest.raises(ValueError, match="no runs"):
        compare([], metric="val.miou")


def test_comparison_shows_synthias_class_subsets_when_runs_have_them():
    runs = [_row("r1", "FINISHED", 0.30, seed="0"), _row("r2", "FINISHED", 0.35, seed="1")]
    runs[1]["metrics"].update({"val.miou16": 0.4, "val.miou13": 0.45})
    lines = compare(runs, metric="val.miou", plot="")[0].splitlines()
    assert lines[0].split() == ["run", "status", "seed", "val.miou", "val.miou16", "val.miou13"]
    assert lines[2].split() == ["r2", "FINISHED", "1", "0.3500", "0.4000", "0.4500"]
