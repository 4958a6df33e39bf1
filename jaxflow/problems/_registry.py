"""Name -> problem factory, and the parameter checks and data helpers the factories share."""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .._json import jsonable
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
    """Builds the built-in problem `name` with its parameters (see `info(name)`).

    The returned problem records the registry name and every parameter (defaults
    included) in `problem.facts["registry"]`, so `get(**facts["registry"])` rebuilds it.
    """
    if not isinstance(name, str):
        raise TypeError(f"problem name must be a string, got {type(name).__name__}.")
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
    check_params(factory, params, name)
    problem = factory(**params)
    bound = sig.bind(**params)
    bound.apply_defaults()
    return problem.with_facts(registry={"name": name, **jsonable(dict(bound.arguments))})


def info(name: str) -> str:
    """The docstring of problem `name` (equation, parameters, known facts)."""
    if name not in _REGISTRY:
        get(name)  # raises the helpful KeyError
    return inspect.getdoc(_REGISTRY[name]) or ""


# --------------------------------------------------------------------------- checks
def _annotation_kinds(annotation) -> tuple[set, bool] | None:
    """The simple types (int, float, bool, str) an annotation allows, and whether None is
    allowed; None when the annotation is something else (then nothing is checked)."""
    if annotation in (int, float, bool, str):
        return {annotation}, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds, optional = set(), False
        for arg in typing.get_args(annotation):
            if arg is type(None):
                optional = True
            elif arg in (int, float, bool, str):
                kinds.add(arg)
            else:
                return None
        return kinds, optional
    return None


def _has_kind(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False  # `--param dim=true` is not dim = 1
    if kind is int:
        return isinstance(value, (int, np.integer)) or (
            isinstance(value, float) and value.is_integer())
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating))
    return isinstance(value, str)


def check_params(factory: Callable, params: Mapping, problem: str) -> None:
    """Checks `params` against the names and simple annotations (`int`, `float`, `bool`,
    `str`, their unions with `None`) of `factory`'s signature before it is called:
    a `TypeError` naming the parameter, what it takes and what it got."""
    try:
        sig = inspect.signature(factory, eval_str=True)
    except (NameError, TypeError, ValueError):
        return
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for key, value in params.items():
        p = sig.parameters.get(key)
        if p is None:
            if not takes_kwargs:
                raise TypeError(
                    f"{problem}: no parameter `{key}`; it takes {list(sig.parameters)}."
                )
            continue
        kinds = _annotation_kinds(p.annotation)
        if kinds is None or hasattr(value, "__array__") and not isinstance(value, np.generic):
            continue
        allowed, optional = kinds
        if value is None and optional:
            continue
        if not any(_has_kind(value, k) for k in allowed):
            want = " or ".join(sorted(k.__name__ for k in allowed)) + (" or None" if optional
                                                                        else "")
            raise TypeError(
                f"{problem}: `{key}` must be {want}, got {value!r} ({type(value).__name__})."
            )


def check_int(value, field: str, problem: str, *, minimum: int = 1) -> int:
    """`value` as an int `>= minimum`, or a `ValueError`/`TypeError` naming `field`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(
                f"{problem}: `{field}` must be an integer, got {value!r} "
                f"({type(value).__name__})."
            )
    if value < minimum:
        raise ValueError(f"{problem}: `{field}` must be >= {minimum}, got {value}.")
    return int(value)


def check_real(value, field: str, problem: str, *, positive: bool = False) -> float:
    """`value` as a finite float (positive if asked), or an error naming `field`."""
    if isinstance(value, bool):
        raise TypeError(f"{problem}: `{field}` must be a real number, got {value!r}.")
    try:
        out = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{problem}: `{field}` must be a real number, got {value!r}.") from e
    if not math.isfinite(out):
        raise ValueError(f"{problem}: `{field}` must be finite, got {value!r}.")
    if positive and not out > 0:
        raise ValueError(f"{problem}: `{field}` must be positive, got {value!r}.")
    return out


def check_box(low, high, problem: str) -> tuple[float, float]:
    """Scalar sampler bounds with `low < high`."""
    low = check_real(low, "low", problem)
    high = check_real(high, "high", problem)
    if not low < high:
        raise ValueError(
            f"{problem}: need low < high for the uniform sampler, got [{low}, {high}]."
        )
    return low, high


def on_device(a, dtype=None) -> jax.Array:
    """Host data (numpy arrays, lists) as a device array, copied without compiling anything.

    `jnp.asarray` of a numpy array runs a small compiled conversion program, a few
    hundredths of a second in every new process (jax 0.10), which a repeated scan pays
    before it starts; `jax.device_put` copies. Float64 data become float32 when x64 is off,
    rounded to nearest, as `jnp.asarray` rounds them."""
    return jax.device_put(np.asarray(a, dtype))


def zeros(shape) -> np.ndarray:
    """An `example` leaf: zeros of shape `shape` in JAX's default float dtype, on the host
    (`jnp.zeros` compiles a program)."""
    return np.zeros(shape, jnp.result_type(float))
