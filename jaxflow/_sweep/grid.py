r"""The grid of a sweep: parameter axes, parsed and checked before anything runs.

A grid is an ordered mapping `parameter -> values`; its points are the Cartesian product
of the axes, in axis order (the last axis varies fastest). On the command line an axis is
`NAME=SPEC` with `SPEC` one of

- `v1,v2,...`: explicit values (each read as JSON, else kept as a string);
- `A:B` or `A:B:STEP`: the arithmetic range $A, A + s, \dots \le B$ (step 1 by default);
- `A:B*R`: the geometric (log) range $A, AR, AR^2, \dots \le B$ ($A > 0$, $R > 1$).

Values are integers when every number of the range is an integer. Bad grids (an
unknown parameter, an empty range, duplicate values, a value of the wrong type, an axis
also given as a fixed parameter) raise `ValueError`/`TypeError` naming the axis.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._json import canonical_json

__all__ = ["Grid", "parse_axis", "parse_grid", "check_axes_against"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ARITH = re.compile(rf"^({_NUMBER}):({_NUMBER})(?::({_NUMBER}))?$")
_GEOM = re.compile(rf"^({_NUMBER}):({_NUMBER})\*({_NUMBER})$")
_MAX_VALUES = 10_000


def _number(text: str) -> int | float:
    return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)


def _as_json_value(text: str):
    text = text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(value, (dict, list)):
        raise TypeError(f"grid values must be numbers, booleans or strings, got {text!r}.")
    return value


def _range(name: str, start, stop, step, *, geometric: bool) -> list:
    ints = all(isinstance(v, int) for v in (start, stop, step))
    if geometric:
        if not (start > 0 and step > 1):
            raise ValueError(
                f"grid: `{name}`: a log range A:B*R needs A > 0 and R > 1, got "
                f"A = {start}, R = {step}."
            )
    elif not step > 0:
        raise ValueError(f"grid: `{name}`: the step of A:B:STEP must be positive, got {step}.")
    if stop < start:
        raise ValueError(f"grid: `{name}`: the range {start}:{stop} is empty (B < A).")
    values, i = [], 0
    slack = 1e-9 * max(abs(start), abs(stop), 1.0)
    while True:
        v = start * step**i if geometric else start + i * step
        if v > stop + slack:
            break
        # 0.3 + 3 * 0.1 is 0.6000000000000001 in binary: keep 12 significant digits, so
        # that a range gives the values (and point names) one would type.
        values.append(v if ints else float(f"{v:.12g}"))
        i += 1
        if i > _MAX_VALUES:
            raise ValueError(f"grid: `{name}`: the range has more than {_MAX_VALUES} values.")
    return values


def parse_axis(text: str) -> tuple[str, list]:
    """`"NAME=SPEC"` (see the module docstring) -> `(name, values)`."""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"--grid expects NAME=VALUES (e.g. hidden=1,2,4), got {text!r}.")
    name, spec = (s.strip() for s in text.split("=", 1))
    if not _NAME.match(name):
        raise ValueError(f"--grid: {name!r} is not a parameter name.")
    if not spec:
        raise ValueError(f"grid: `{name}` has no values.")
    m = _GEOM.match(spec)
    if m:
        return name, _range(name, _number(m[1]), _number(m[2]), _number(m[3]), geometric=True)
    m = _ARITH.match(spec)
    if m:
        step = _number(m[3]) if m[3] is not None else 1
        return name, _range(name, _number(m[1]), _number(m[2]), step, geometric=False)
    parts = [p for p in spec.split(",")]
    if any(not p.strip() for p in parts):
        raise ValueError(f"grid: `{name}` has an empty value in {spec!r}.")
    return name, [_as_json_value(p) for p in parts]


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """`["hidden=1,2,4", "points=1:8*2"]` -> `{"hidden": [1, 2, 4], "points": [1, 2, 4, 8]}`."""
    grid: dict[str, list] = {}
    for item in items:
        name, values = parse_axis(item)
        if name in grid:
            raise ValueError(f"grid: `{name}` is given twice; list all its values in one --grid.")
        grid[name] = values
    return grid


def _key(value) -> str:
    # 1 and 1.0 are the same parameter value for a problem; True is not 1.
    if isinstance(value, (bool, np.bool_)):
        return f"b:{bool(value)}"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"n:{float(value)!r}"
    return f"s:{value}"


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


class Grid:
    """An ordered grid of problem parameters; `points()` lists its points.

    **Arguments:**

    - `axes`: `{parameter: [values]}` (or `"NAME=SPEC"` strings, see `parse_axis`); each
      axis non-empty, without duplicates, of numbers, booleans or strings.
    """

    def __init__(self, axes: Mapping[str, Sequence] | Sequence[str]):
        if isinstance(axes, (list, tuple)) and all(isinstance(a, str) for a in axes):
            axes = parse_grid(axes)
        if not isinstance(axes, Mapping):
            raise TypeError(
                f"grid must be a mapping {{parameter: [values]}}, got {type(axes).__name__}."
            )
        if not axes:
            raise ValueError("grid: give at least one axis (a parameter and its values).")
        clean: dict[str, list] = {}
        for name, values in axes.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"grid: {name!r} is not a parameter name.")
            if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
                raise TypeError(
                    f"grid: `{name}` must be a list of values, got {type(values).__name__}."
                )
            values = [_plain(v) for v in values]
            if not values:
                raise ValueError(f"grid: `{name}` has no values (an empty axis has no points).")
            for v in values:
                if not isinstance(v, (bool, int, float, str)):
                    raise TypeError(
                        f"grid: `{name}` values must be numbers, booleans or strings, got "
                        f"{v!r} ({type(v).__name__})."
                    )
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(f"grid: `{name}` has a non-finite value {v!r}.")
            seen: dict[str, Any] = {}
            for v in values:
                if _key(v) in seen:
                    raise ValueError(
                        f"grid: `{name}` lists the value {v!r} twice (as {seen[_key(v)]!r} "
                        "too); each point must be computed once."
                    )
                seen[_key(v)] = v
            clean[name] = values
        self.axes = clean

    @property
    def names(self) -> list[str]:
        return list(self.axes)

    def __len__(self) -> int:
        return math.prod(len(v) for v in self.axes.values())

    def points(self) -> list[dict]:
        """Every point `{parameter: value}`, the last axis varying fastest."""
        return [dict(zip(self.axes, combo, strict=True))
                for combo in itertools.product(*self.axes.values())]

    def to_json(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.axes.items()}

    def union(self, other: Grid) -> tuple[Grid, list[str]]:
        """This grid with `other`'s new values appended; refuses other axes or lost values.

        Returns the merged grid and the problems (empty when `other` only adds values).
        """
        problems = []
        if set(other.axes) != set(self.axes):
            problems.append(f"axes {sorted(self.axes)} stored, {sorted(other.axes)} requested")
            return self, problems
        merged = {}
        for name, values in self.axes.items():
            new_keys = {_key(v) for v in other.axes[name]}
            lost = [v for v in values if _key(v) not in new_keys]
            if lost:
                problems.append(f"`{name}` lost the stored value(s) {lost}")
            old_keys = {_key(v) for v in values}
            merged[name] = list(values) + [v for v in other.axes[name] if _key(v) not in old_keys]
        return Grid(merged), problems

    def __eq__(self, other) -> bool:
        return isinstance(other, Grid) and canonical_json(self.to_json()) == canonical_json(
            other.to_json())

    def __repr__(self) -> str:
        return f"Grid({self.to_json()!r})"


def check_axes_against(factory_or_problem: str, grid: Grid, fixed: Mapping) -> None:
    """The grid's axes are parameters of a built-in problem, not also fixed; else an error
    naming the axis (a `module:function` reference is checked when its points are built)."""
    both = sorted(set(grid.axes) & set(fixed))
    if both:
        raise ValueError(
            f"grid: {both} given both as grid axes and as fixed parameters; give each once."
        )
    if not isinstance(factory_or_problem, str) or ":" in factory_or_problem:
        return
    from ..problems import get
    from ..problems._registry import _REGISTRY

    if factory_or_problem not in _REGISTRY:
        get(factory_or_problem)  # the registry's KeyError, with suggestions
    sig = inspect.signature(_REGISTRY[factory_or_problem])
    for name in grid.axes:
        if name not in sig.parameters:
            raise ValueError(
                f"grid: problem {factory_or_problem!r} has no parameter `{name}`; it takes "
                f"{list(sig.parameters)}."
            )
