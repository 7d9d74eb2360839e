"""The root RunConfig and the one typed override mechanism shared by the CLI and (later) Ray Tune.

Every component has its own frozen, keyword-only dataclass next to its code; RunConfig only composes them.
A field's docstring (the string literal right after it) is its help text. Overrides use dotted keys
("optim.lr=1e-4"): the value string is coerced to the field's annotated type, unknown keys are rejected with
the list of valid ones, and each component's __post_init__ checks run again on the new values.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
import types
import typing
from typing import Any, Literal, Union

from uda_dist.data.sources import DataConfig
from uda_dist.dist.engine import EngineConfig
from uda_dist.errors import ConfigError
from uda_dist.inference import EvalConfig
from uda_dist.launch import LaunchConfig
from uda_dist.methods.base import MethodConfig
from uda_dist.model.segmentor import ModelConfig
from uda_dist.optim import OptimConfig
from uda_dist.pseudo_labels import LabelConfig
from uda_dist.redact import redact
from uda_dist.tracking import TrackingConfig

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Run and recipe names: they name folders and checkpoints, so no path separators, spaces or '..' tricks."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    iterations: int = 2000
    """Optimiser steps of the run."""
    eval_every: int = 0
    """Evaluate on the target validation split every this many steps (0 = only at the end)."""
    log_every: int = 50
    """Steps between progress-bar/log updates (the only place losses are synced to the host)."""
    eval_max_batches: int = 0
    """Cap on evaluation batches (0 = the whole split)."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu' or 'cuda'."""
    threads: int = 0
    """torch intra-op threads per process (0 = torch's default)."""
    checkpoint_every: int = 0
    """Steps between resumable checkpoints on the launcher's workers (0 = only the final one)."""
    time_stats_reduce: bool = False
    """Time the class-statistics reduce (SePiCo's per-step all-reduce) and log its share of the step time as
    time.stats_reduce_share. On a GPU this synchronises the device around every reduce: for measurements."""

    def __post_init__(self) -> None:
        for name in ("iterations", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.eval_max_batches < 0 or self.threads < 0 or self.checkpoint_every < 0:
            raise ValueError("eval_every, eval_max_batches, threads and checkpoint_every must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingSections:
    """What a run trains, and on what: a run's sections, and each stage's own in a staged run."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    method: MethodConfig = dataclasses.field(default_factory=MethodConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    label: LabelConfig = dataclasses.field(default_factory=LabelConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


TRAINING_SECTIONS = tuple(f.name for f in dataclasses.fields(TrainingSections))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(TrainingSections):
    name: str = "run"
    """Run name: outputs go to {output_dir}/{name}."""
    seed: int = 0
    """Training seed (model init, data order, augmentation); the benchmark's own seed is data.synthetic.seed."""
    output_dir: str = "outputs"
    """Folder for run outputs (final weights, pictures)."""
    launch: LaunchConfig = dataclasses.field(default_factory=LaunchConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        for key, value in (("name", self.name), ("launch.run_name", self.launch.run_name)):
            if value and not NAME_PATTERN.fullmatch(value):
                raise ValueError(f"{key} {value!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a "
                                 f"letter or digit (it names the run's folder)")
        if not self.name:
            raise ValueError("name must not be empty")


# ---------------------------------------------------------------- overrides

def apply_overrides(cfg: Any, overrides: list[str] | dict[str, Any]) -> Any:
    """Return a copy of cfg with dotted-key overrides applied ("a.b=v" strings, or a {key: value} dict)."""
    items = _parse_items(overrides)
    for key, value in items:
        cfg = _replace_path(cfg, key.split("."), value, key)
    return cfg


def _parse_items(overrides: list[str] | dict[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(overrides, dict):
        return list(overrides.items())
    items = []
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {text!r} is not of the form key=value")
        items.append((key.strip(), value.strip()))
    return items


def _replace_path(node: Any, path: list[str], value: Any, full_key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(node)}
    name = path[0]
    prefix = full_key[: len(full_key) - len(".".join(path))].rstrip(".")
    if name not in fields:
        valid = ", ".join(sorted(fields))
        where = f" under '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown config key '{full_key}': '{name}' is not a field{where}; valid: {valid}")
    current = getattr(node, name)
    if is_named_sections(current):
        new = _replace_named(current, path[1:], value, full_key, f"{prefix + '.' if prefix else ''}{name}")
    elif len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key '{full_key}': '{prefix + '.' if prefix else ''}{name}' "
                              f"is a value, not a section")
        new = _replace_path(current, path[1:], value, full_key)
    else:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"'{full_key}' is a section; set one of its fields: "
                              + ", ".join(f.name for f in dataclasses.fields(current)))
        hint = typing.get_type_hints(type(node))[name]
        new = coerce(value, hint, full_key)
    try:
        return dataclasses.replace(node, **{name: new})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid value for '{full_key}': {e}") from None


def is_named_sections(value: Any) -> bool:
    """A tuple of config sections addressed by their ``name`` field (a pipeline's stages:
    ``stages.<name>.<key>``)."""
    return (isinstance(value, tuple) and bool(value)
            and all(dataclasses.is_dataclass(v) and hasattr(v, "name") for v in value))


def _replace_named(sections: tuple, path: list[str], value: Any, full_key: str, prefix: str) -> tuple:
    names = [s.name for s in sections]
    if not path:
        raise ConfigError(f"'{full_key}' is a list of sections; set a field of one: {prefix}.<name>.<key>, "
                          f"<name> one of {', '.join(names)}")
    if path[0] not in names:
        raise ConfigError(f"unknown config key '{full_key}': no {prefix} named '{path[0]}'; valid: "
                          f"{', '.join(names)}")
    if len(path) == 1:
        raise ConfigError(f"'{full_key}' is a section; set one of its fields: "
                          + ", ".join(f.name for f in dataclasses.fields(sections[0])))
    if path[1] == "name":
        raise ConfigError(f"'{full_key}' names the section and cannot be changed")
    index = names.index(path[0])
    return sections[:index] + (_replace_path(sections[index], path[1:], value, full_key),) + sections[index + 1:]


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Coerce a CLI string (or a Python value from a sweep) to the annotated type, or raise ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or str(value).lower() in ("none", "null")):
            return None
        return coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is Literal:
        if value in args or str(value) in [str(a) for a in args]:
            return next(a for a in args if a == value or str(a) == str(value))
        raise ConfigError(f"bad value for '{key}': {value!r}; valid: {', '.join(map(str, args))}")
    if origin is tuple:
        return _coerce_tuple(value, args, key)
    return _coerce_scalar(value, hint, key)


def _coerce_tuple(value: Any, args: tuple, key: str) -> tuple:
    if isinstance(value, str):
        text = value.strip().strip("()[]")
        parts = [p.strip() for p in text.split(",") if p.strip()] if text else []
    else:
        parts = list(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(p, args[0], key) for p in parts)
    if len(parts) != len(args):
        raise ConfigError(f"bad value for '{key}': expected {len(args)} comma-separated values, got {value!r}")
    return tuple(coerce(p, a, key) for p, a in zip(parts, args))


def _coerce_scalar(value: Any, hint: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        lowered = str(value).lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"bad value for '{key}': {value!r} is not a bool (true/false)")
    if hint in (int, float, str):
        try:
            if hint is int and isinstance(value, str):
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            coerced = hint(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"bad value for '{key}': {value!r} is not {hint.__name__}") from None
        if hint is float and not math.isfinite(coerced):
            raise ConfigError(f"bad value for '{key}': {value!r} is not a finite number")
        if hint is str and any(ord(c) < 32 or ord(c) == 127 for c in coerced):
            raise ConfigError(f"bad value for '{key}': {redact(value)!r} holds control characters")
        return coerced
    raise ConfigError(f"'{key}' has type {hint!r}, which cannot be set from the command line")


# ---------------------------------------------------------------- views

def to_flat_dict(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{'optim.lr': 6e-05, ...}: every leaf field by dotted key (the same keys apply_overrides takes)."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(to_flat_dict(value, f"{prefix}{f.name}."))
        elif is_named_sections(value):
            for section in value:  # its name is in the keys
                at = f"{prefix}{f.name}.{section.name}."
                flat.update({k: v for k, v in to_flat_dict(section, at).items() if k != f"{at}name"})
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat


def field_help(cls: type) -> dict[str, str]:
    """Field docstrings (the string literal after each field) of a dataclass and of the dataclasses it
    inherits fields from (a subclass's own docstring wins), by field name."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            helps.update(_own_field_help(klass))
    return helps


def _own_field_help(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body, helps = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            helps[node.target.id] = " ".join(nxt.value.value.split())
    return helps


def format_config(cfg: Any, prefix: str = "") -> str:
    """The resolved config as 'key = value  # help' lines, each key usable with --set."""
    lines = [f"# {type(cfg).__name__}" if not prefix else f"# [{prefix.rstrip('.')}] {type(cfg).__name__}"]
    helps = field_help(type(cfg))
    nested = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            nested.append(format_config(value, f"{prefix}{f.name}."))
            continue
        if is_named_sections(value):
            nested += [format_config(section, f"{prefix}{f.name}.{section.name}.") for section in value]
            continue
        text = f"{prefix}{f.name} = {redact(value)!r}"
        lines.append(f"{text:<48}  # {helps[f.name]}" if f.name in helps else text)
    return "\n".join(lines + nested)
