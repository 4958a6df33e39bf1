"""One JSON policy for manifests, journals, reports and CLI output.

Numbers: NaN becomes `null`, $\\pm\\infty$ the strings `"inf"`/`"-inf"` (standard JSON has
neither); numpy scalars and arrays become Python numbers and lists; enumerations their
names; tuples lists. `canonical_json` is the deterministic form hashed into scan specs.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import numpy as np

__all__ = ["jsonable", "json_float", "float_from_json", "canonical_json", "dumps"]


def json_float(x) -> float | str | None:
    """A float for JSON: finite values unchanged, NaN -> None, +-inf -> "inf"/"-inf"."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def float_from_json(x) -> float | None:
    """Inverse of `json_float` (None stays None)."""
    return None if x is None else float(x)


def jsonable(obj) -> Any:
    """`obj` with every value made representable in standard JSON (see module docstring)."""
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or (
        hasattr(obj, "__array__") and not isinstance(obj, (int, float, bool, str))
    ):
        return jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return json_float(obj)
    return obj


def canonical_json(obj) -> str:
    """Deterministic JSON: sorted keys, no whitespace, no NaN (a spec must be exact)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def dumps(obj, **kwargs) -> str:
    """`json.dumps` of `jsonable(obj)`, refusing NaN (none can remain)."""
    return json.dumps(jsonable(obj), allow_nan=False, **kwargs)
