"""Search spaces: dotted config keys (the same keys as `--set`) mapped to a distribution written as text.

A distribution is ``uniform(a, b)``, ``loguniform(a, b)``, ``randint(a, b)`` (a <= n < b), ``choice(v, ...)``
or ``grid(v, ...)`` (every value, each repeated --trials times). Named spaces below cover what users tune
per dataset pair: SePiCo's contrast temperature and weight, and the pseudo-label confidence threshold and
loss weight; ``--param KEY=DIST`` adds or replaces a key. Every key is checked with the config's own
override code (apply_overrides) at the bounds or at every listed value before any trial starts, so a typo
or a value the config rejects is an error naming the key, not a failed trial.
"""
from __future__ import annotations

import ast
import re
from typing import Any

from uda_dist.config import ConfigError, apply_overrides, to_flat_dict

SPACES: dict[str, dict[str, str]] = {
    "temperature": {"method.sepico.tau": "loguniform(25, 400)"},
    "contrast": {"method.sepico.tau": "loguniform(25, 400)", "method.sepico.weight": "loguniform(0.1, 3)"},
    "pseudo": {"method.pseudo_threshold": "uniform(0.8, 0.99)", "method.pseudo_weight": "uniform(0.5, 1.5)"},
    "sepico": {"method.sepico.tau": "loguniform(25, 400)", "method.sepico.weight": "loguniform(0.1, 3)",
               "method.pseudo_threshold": "uniform(0.8, 0.99)", "method.pseudo_weight": "uniform(0.5, 1.5)"},
    "pgpc": {"method.pgpc.tau": "loguniform(0.05, 1)", "method.pgpc.weight": "loguniform(0.01, 1)",
             "method.pgpc.threshold": "uniform(0.8, 0.99)", "method.pgpc.unreliable_weight": "uniform(0, 1)"},
}
"""--space NAME: SePiCo's temperature (method.sepico.tau, paper 100), contrast weight (lambda, paper 1), and
DAFormer's pseudo-label confidence threshold (0.968) and pseudo-label loss weight (1); PGPC's temperature,
weight, reliability threshold and unreliable weight (recipes: 0.1, 0.1, 0.968, 1)."""

_RANGES = ("uniform", "loguniform", "randint")
_LISTS = ("choice", "grid")


def parse(spec: str) -> tuple[str, list[Any]]:
    """'loguniform(25, 400)' -> ('loguniform', [25, 400]); list values may be numbers or bare words."""
    match = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", spec)
    kind = match.group(1) if match else ""
    if kind not in _RANGES + _LISTS:
        raise ConfigError(f"bad distribution {spec!r}: write one of "
                          + ", ".join(f"{k}(...)" for k in _RANGES + _LISTS))
    values = [_literal(part) for part in match.group(2).split(",") if part.strip()]
    if kind in _RANGES and (len(values) != 2 or not all(isinstance(v, (int, float)) for v in values)
                            or not values[0] < values[1]):
        raise ConfigError(f"bad distribution {spec!r}: {kind} takes two numbers, low < high")
    if kind == "loguniform" and values[0] <= 0:
        raise ConfigError(f"bad distribution {spec!r}: loguniform needs low > 0")
    if kind in _LISTS and not values:
        raise ConfigError(f"bad distribution {spec!r}: {kind} needs at least one value")
    return kind, values


def resolve_space(cfg: Any, name: str, params: list[str]) -> dict[str, str]:
    """The named space (or none, for "") with ``KEY=DIST`` params added, every key checked against cfg."""
    if name and name not in SPACES:
        raise ConfigError(f"unknown search space {name!r}; valid: {', '.join(sorted(SPACES))}")
    space = dict(SPACES.get(name, {}))
    for text in params:
        key, sep, spec = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {text!r} is not of the form key=distribution")
        space[key.strip()] = spec.strip()
    if not space:
        raise ConfigError("nothing to sweep: give --space NAME or --param KEY=DIST")
    for key, spec in space.items():
        kind, values = parse(spec)
        for value in (values if kind in _LISTS else [values[0], values[1] - (kind == "randint")]):
            try:
                apply_overrides(cfg, {key: value})
            except ConfigError as e:
                raise ConfigError(f"search space key {key!r} ({spec}): {e}") from None
        _check_term_on(cfg, key, space)
    return space


def _check_term_on(cfg: Any, key: str, space: dict[str, str]) -> None:
    """A key of a plug-in term (a config section with a ``weight``, 0 = off) is swept only where the term is on
    or its weight is swept too: otherwise every trial would train the same run."""
    section, _, leaf = key.rpartition(".")
    weight_key = f"{section}.weight"
    if leaf != "weight" and to_flat_dict(cfg).get(weight_key) == 0 and weight_key not in space:
        raise ConfigError(f"search space key {key!r}: the {section.rpartition('.')[2]} term is off in this recipe "
                          f"({weight_key}=0), so every trial would train the same run; sweep or set {weight_key}")


def to_tune(space: dict[str, str]) -> dict[str, Any]:
    """Ray Tune domains for the space (ray.tune imported here, on the sweep's driver)."""
    from ray import tune

    makers = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint,
              "choice": lambda *v: tune.choice(list(v)), "grid": lambda *v: tune.grid_search(list(v))}
    return {key: makers[kind](*values) for key, (kind, values) in ((k, parse(s)) for k, s in space.items())}


def has_grid(space: dict[str, str]) -> bool:
    return any(parse(spec)[0] == "grid" for spec in space.values())


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()
