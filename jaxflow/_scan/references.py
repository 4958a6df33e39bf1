"""Problem references: how a scan names its problem, and how workers rebuild it.

A problem reaches a worker by reference, never by pickled code (unless the caller gave a
`Problem` object, which then travels with the job): a built-in name with `params`, or
`"package.module:function"` naming a `Problem`, a factory returning one, or an objective
(with `params={"dim": d, "low": ..., "high": ...}`). The reference is the JSON-able
`source` recorded in the spec. This module also owns the per-process cache of rebuilt
problems and the objective's fingerprint (the hash of its jaxpr) that catches a worker
running other code.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
import weakref
from collections.abc import Mapping

import numpy as np

from .._json import canonical_json
from .._problem import Problem, Uniform

__all__ = [
    "resolve_problem",
    "cached_problem",
    "bounded_builtin",
    "problem_fingerprint",
    "cached_fingerprint",
]

_PROBLEM_CACHE: dict[str, Problem] = {}
_PROBLEM_CACHE_LOCK = threading.Lock()


def _import_target(target: str):
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(
            f"problem reference {target!r} must look like 'package.module:function'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"cannot import module {module_name!r} for problem {target!r}: {e}. It must be "
            "importable here and on every worker (installed, or on PYTHONPATH)."
        ) from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (from {target!r}).")
        obj = getattr(obj, part)
    return obj


def _build_from_source(source: Mapping) -> Problem:
    kind = source["kind"]
    params = dict(source.get("params") or {})
    if kind == "builtin":
        from ..problems import get

        return get(source["name"], **params)
    if kind == "reference":
        target = source["target"]
        obj = _import_target(target)
        if isinstance(obj, Problem):
            if params:
                raise ValueError(f"{target!r} is a Problem object; it takes no params ({params}).")
            return obj
        if not callable(obj):
            raise TypeError(f"{target!r} is neither a Problem nor a callable.")
        if "dim" in params:
            # An objective: f(flat x) -> scalar, with a uniform box of starts.
            dim = params.pop("dim")
            low, high = params.pop("low", -1.0), params.pop("high", 1.0)
            infimum = params.pop("global_infimum", None)
            if params:
                raise TypeError(
                    f"objective {target!r}: unknown params {sorted(params)}; an objective "
                    "takes dim, low, high, global_infimum."
                )
            from ..problems._registry import check_int, check_real

            dim = check_int(dim, "dim", target)
            low, high = (np.asarray(v).tolist() if hasattr(v, "__array__") else v
                         for v in (low, high))
            for name, v in (("low", low), ("high", high)):
                for x in v if isinstance(v, list) else [v]:
                    check_real(x, name, target)
            if infimum is not None:
                infimum = check_real(infimum, "global_infimum", target)
            return Problem(obj, dim=dim, sampler=Uniform(low, high), name=target,
                           global_infimum=infimum)
        from ..problems._registry import check_params

        check_params(obj, params, target)
        try:
            problem = obj(**params)
        except TypeError as e:
            raise TypeError(
                f"calling {target}(**{params}) failed ({e}). A reference must name a Problem, "
                "a function returning a Problem, or an objective f(x) given with the param "
                "dim=D (and optionally low=, high= for the box of starts)."
            ) from e
        if not isinstance(problem, Problem):
            raise TypeError(
                f"{target}(**{params}) returned {type(problem).__name__}, not a jaxflow.Problem. "
                "For an objective f(x), pass the param dim=D."
            )
        return problem
    raise ValueError(f"unknown problem source kind {kind!r}.")


def cached_problem(source: Mapping) -> Problem:
    """One Problem object per (source, x64) per process: the compiled engine is keyed by
    the objective function object, so rebuilding the problem would recompile."""
    import jax

    key = canonical_json(dict(source)) + f"|x64={bool(jax.config.jax_enable_x64)}"
    with _PROBLEM_CACHE_LOCK:
        if key not in _PROBLEM_CACHE:
            _PROBLEM_CACHE[key] = _build_from_source(source)
        return _PROBLEM_CACHE[key]


# Bounds on a stored built-in's params before `bounded_builtin` rebuilds it: the factories
# allocate roughly in proportion to the product of their integer params.
_MAX_PARAM_INT = 10**6
_MAX_PARAM_PRODUCT = 10**7
_MAX_PARAM_LIST = 64
_MAX_DIM = 10**6


def bounded_builtin(source: Mapping, dim: int | None = None) -> Problem:
    """Rebuilds a built-in problem named by a stored `source`, only if its params are small.

    Refuses (`ValueError`) anything but `{"kind": "builtin"}` with a registered name, and
    params that are not scalars (bool, int, float, str) or short lists of numbers, an
    integer above 10^6 in absolute value, integer params whose product exceeds 10^7, or a
    rebuilt problem whose dimension differs from `dim` (the manifest's) or exceeds 10^6.
    The registry then checks the params' types and ranges.
    """
    from ..problems import get, names

    if not isinstance(source, Mapping) or source.get("kind") != "builtin":
        raise ValueError("only built-in problems are rebuilt from a store; pass the problem.")
    name, params = source.get("name"), source.get("params") or {}
    if name not in names() or not isinstance(params, Mapping):
        raise ValueError(f"stored problem {name!r} is not a built-in problem with params.")
    product = 1
    for key, value in params.items():
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > _MAX_PARAM_LIST:
            raise ValueError(f"stored param {key!r} is a list of {len(value)} entries.")
        for v in items:
            if not isinstance(v, (bool, int, float, str)) or (isinstance(v, str) and len(v) > 64):
                raise ValueError(f"stored param {key!r} = {value!r} is not a small scalar.")
            if isinstance(v, int) and not isinstance(v, bool):
                if abs(v) > _MAX_PARAM_INT:
                    raise ValueError(f"stored param {key!r} = {v} exceeds {_MAX_PARAM_INT}.")
                product *= max(1, abs(v))
    if product > _MAX_PARAM_PRODUCT:
        raise ValueError(
            f"stored params {dict(params)} are too large to rebuild (the product of their "
            f"integers exceeds {_MAX_PARAM_PRODUCT}); pass the problem explicitly."
        )
    problem = cached_problem({"kind": "builtin", "name": name, "params": dict(params)})
    if problem.dim > _MAX_DIM or (dim is not None and problem.dim != dim):
        raise ValueError(
            f"rebuilt {name!r} has dimension {problem.dim}, the store says {dim}."
        )
    return problem


def resolve_problem(problem, params: Mapping | None = None) -> tuple[Problem, dict]:
    """`problem` (a `Problem`, a built-in name or `"module:function"`) -> (Problem, source).

    `source` is the JSON-able description workers rebuild the problem from
    (`{"kind": "object"}` for a `Problem` given as an object).
    """
    params = dict(params or {})
    if isinstance(problem, Problem):
        if params:
            raise ValueError("params= applies to a problem given by name; this one is an object.")
        return problem, {"kind": "object", "name": problem.name}
    if isinstance(problem, str):
        if ":" in problem:
            source = {"kind": "reference", "target": problem, "params": params}
        else:
            source = {"kind": "builtin", "name": problem, "params": params}
        try:
            canonical_json(params)
        except ValueError:
            _build_from_source(source)  # NaN/inf: the problem's own check names the field
            raise ValueError(f"params must be finite numbers to be recorded, got {params!r}.")
        except TypeError as e:
            raise TypeError(
                f"params must be JSON-able numbers/strings/lists, got {params!r}."
            ) from e
        return cached_problem(source), source
    raise TypeError(
        "problem must be a jaxflow.Problem, a built-in name (see jaxflow.problems.names()) or "
        f"'package.module:function', got {type(problem).__name__}."
    )


def problem_fingerprint(problem: Problem, dtype) -> str:
    """SHA-256 of the objective's jaxpr and constants at the scan dtype.

    Detects a changed objective (or a worker running other code) without pickling it.
    """
    import jax

    closed = jax.make_jaxpr(problem.f_flat)(jax.ShapeDtypeStruct((problem.dim,), dtype))
    h = hashlib.sha256(str(closed.jaxpr).encode())
    for c in closed.consts:
        a = np.asarray(c)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_fingerprint(problem: Problem, dtype) -> str:
    """`problem_fingerprint`, computed once per (problem object, dtype) per process."""
    per_dtype = _FINGERPRINTS.setdefault(problem, {})
    if str(dtype) not in per_dtype:
        per_dtype[str(dtype)] = problem_fingerprint(problem, dtype)
    return per_dtype[str(dtype)]
