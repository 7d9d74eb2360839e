"""Generated bad values for every --set key of every recipe (and of the demo): each is refused by the
command line with one line naming the key, exit status 2, no traceback, in bounded time."""
import dataclasses
import time
import types
import typing

import pytest

from uda_dist import train
from uda_dist.config import is_named_sections
from uda_dist.recipes import all_recipes

NAME_KEYS = ("name", "launch.run_name")


def typed_keys(cfg, prefix=""):
    """(dotted key, annotated type) of every leaf field (a staged recipe's: of every stage, by its name)."""
    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            yield from typed_keys(value, f"{prefix}{field.name}.")
        elif is_named_sections(value):
            for section in value:
                yield from typed_keys(section, f"{prefix}{field.name}.{section.name}.")
        else:
            yield f"{prefix}{field.name}", hints[field.name]


def bad_values(key, hint):
    """Values of the wrong type or out of every field's domain for this annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return bad_values(key, next(a for a in args if a is not type(None)))
    if origin is typing.Literal:
        return ["bogus", ""]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return ["a,b"] if args[0] in (int, float) else ["a\nb"]
        return [",".join(["1"] * (len(args) + 1)), ",".join(["x"] * len(args))]
    if hint is bool:
        return ["maybe", "2"]
    if hint is int:
        return ["x", "1.5", "1e999"]
    if hint is float:
        return ["x", "nan", "inf", "-inf"]
    if hint is str:
        return ["a\nb", "tab\there"] + (["../up", "a/b", ""] if key in NAME_KEYS[:1] else
                                        ["../up", "a/b"] if key in NAME_KEYS else [])
    raise AssertionError(f"no bad values for {key}: {hint!r}")


def assert_one_line_error(code, err, key):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (key, code, err)
    assert key in lines[0] and "Traceback" not in err, (key, err)


@pytest.mark.parametrize("recipe", sorted(all_recipes()))
def test_every_key_of_every_recipe_refuses_bad_values_in_one_line(recipe, capsys):
    base = all_recipes()[recipe]()
    start, tried = time.monotonic(), 0
    for key, hint in typed_keys(base):
        for value in bad_values(key, hint):
            code = train.main(["--recipe", recipe, "--set", f"{key}={value}", "--print-config"])
            out, err = capsys.readouterr()
            assert_one_line_error(code, err, key)
            assert out == ""  # nothing printed as if it had worked
            tried += 1
    assert tried > 150 and time.monotonic() - start < 120


def test_the_demo_refuses_bad_values_in_one_line(capsys):
    for override in ("seed=x", "optim.lr=nan", "method.sepico.tau=inf", "launch.workers=-1", "nope.key=1",
                     "data.loader.crop_size=1,2,3", "engine.precision=fp8"):
        code = train.main(["--set", override, "--print-config"])
        assert_one_line_error(code, capsys.readouterr().err, override.partition("=")[0].split(".")[0])


def test_unknown_recipe_and_malformed_override_are_one_line(capsys):
    assert_one_line_error(train.main(["--recipe", "nope"]), capsys.readouterr().err, "nope")
    assert_one_line_error(train.main(["--recipe", "synthetic_source_only", "--set", "novalue"]),
                          capsys.readouterr().err, "novalue")
