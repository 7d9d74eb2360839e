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
