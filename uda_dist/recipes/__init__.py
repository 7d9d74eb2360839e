"""Runs as plain functions returning a RunConfig; `--recipe NAME` calls the function of that name.

A variant calls its base recipe and replaces a few fields (dataclasses.replace): no config files, no
inheritance chains, no registry beyond the functions defined in these modules.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from uda_dist.recipes import real, synthetic

_MODULES = (synthetic, real)


def recipe(name: str) -> Any:
    """The config the recipe ``name`` returns; a ConfigError listing the valid names when there is none."""
    from uda_dist.errors import ConfigError

    recipes = all_recipes()
    if name not in recipes:
        raise ConfigError(f"unknown recipe {name!r}; valid: {', '.join(sorted(recipes))}")
    return recipes[name]()


def all_recipes() -> dict[str, Callable]:
    """{name: recipe function} for every public function defined in the recipe modules."""
    found = {}
    for module in _MODULES:
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("_") and fn.__module__ == module.__name__:
                found[name] = fn
    return found


def first_sentence(text: str) -> str:
    """The first sentence of a docstring, whole: up to the first full stop that is outside parentheses and
    followed by a space or the end (module paths and "e.g." do not end it), its lines joined."""
    words = " ".join((text or "").split())
    depth = 0
    for i, char in enumerate(words):
        depth += (char in "([") - (char in ")]")
        if char == "." and depth <= 0 and (i + 1 == len(words) or words[i + 1] == " "):
            if not words[max(0, i - 3):i + 1].lower().endswith(("e.g.", "i.e.", "vs.")):
                return words[:i + 1]
    return words


def listing(width: int = 120) -> str:
    """``--list-recipes``: each recipe's name and the first sentence of its docstring, wrapped to ``width``."""
    import textwrap

    recipes = all_recipes()
    column = max(len(name) for name in recipes) + 2
    lines = []
    for name, fn in sorted(recipes.items()):
        lines += textwrap.wrap(first_sentence(fn.__doc__), width, initial_indent=f"{name:<{column}}",
                               subsequent_indent=" " * column, break_on_hyphens=False)
    return "\n".join(lines)
