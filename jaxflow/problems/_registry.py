"""Name -> problem factory."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from .._problem import Problem

_REGISTRY: dict[str, Callable[..., Problem]] = {}


def register(name: str):
    """Decorator: registers a factory `(**params) -> Problem` under `name`."""

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"problem {name!r} is already registered")
        _REGISTRY[name] = factory
        factory.problem_name = name
        return factory

    return deco


def names() -> list[str]:
    """Names of the built-in problems, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **params) -> Problem:
    """Builds the built-in problem `name` with its parameters (see `info(name)`)."""
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if name.split("-")[0] in n]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown problem {name!r}.{hint} Known: {', '.join(names())}.")
    factory = _REGISTRY[name]
    sig = inspect.signature(factory)
    unknown = [k for k in params if k not in sig.parameters]
    if unknown:
        raise TypeError(
            f"problem {name!r} has no parameter(s) {unknown}; it takes "
            f"{list(sig.parameters)}."
        )
    return factory(**params)


def info(name: str) -> str:
    """The docstring of problem `name` (equation, parameters, known facts)."""
    if name not in _REGISTRY:
        get(name)  # raises the helpful KeyError
    return inspect.getdoc(_REGISTRY[name]) or ""
