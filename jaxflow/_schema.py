r"""The per-trajectory table: its columns, how it is built, how points are read back.

One row per trajectory, numeric numpy columns only (so that a table survives Parquet
unchanged). Everything that writes or reads the table goes through this module, so the
column names are spelled once:

- scalar columns: `status` (refined by `jaxflow.classify` when a classification is
  given, else the engine's), `engine_status`, `f`, `stationarity`, `t`, `norm`, `steps`,
  `rejected`, `path_length`, and the classification's `growth_exponent`, `log_growth`,
  `limit_value`, `malgrange`, `deceleration`, `velocity_exponent`, `value_exponent`,
  and `decided_at` (the horizon of the run that gave the final status: `t1`, or a later
  one for trajectories continued with `extend_undecided`);
- column families, one column per coordinate $j = 0, \dots, d - 1$: the final point
  `x_j`, the start point `start_j` (scans) and the states at the checkpoints `cp_x_j`
  (`(n, K)` each, saved trajectories of a scan);
- checkpoint series `cp_norm`, `cp_f`, `cp_stat`, `(n, K)` each, at the checkpoint times
  `FlowResult.ts` (common to all rows, so not a column).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from ._flow import FlowResult

__all__ = [
    "CHECKPOINT_SERIES",
    "CLASSIFICATION_COLUMNS",
    "checkpoint_state_column",
    "checkpoint_state_columns",
    "checkpoint_states",
    "column",
    "dim_of",
    "final_column",
    "final_points",
    "start_column",
    "start_columns",
    "start_points",
    "trajectory_table",
    "value_dtype",
]

# The detectors' per-trajectory fields (`jaxflow.Classification`) besides `status`.
CLASSIFICATION_COLUMNS = (
    "growth_exponent",
    "limit_value",
    "malgrange",
    "deceleration",
    "velocity_exponent",
    "value_exponent",
)
# (n, K) series at the checkpoint times.
CHECKPOINT_SERIES = ("cp_norm", "cp_f", "cp_stat")

_FINAL, _START, _CHECKPOINT_STATE = "x_", "start_", "cp_x_"


# --------------------------------------------------------------------------- names
def final_column(j: int) -> str:
    """Name of coordinate `j` of the final point."""
    return f"{_FINAL}{j}"


def start_column(j: int) -> str:
    """Name of coordinate `j` of the start point."""
    return f"{_START}{j}"


def checkpoint_state_column(j: int) -> str:
    """Name of coordinate `j` of the states at the checkpoints (an `(n, K)` column)."""
    return f"{_CHECKPOINT_STATE}{j}"


def _family_columns(points, name) -> dict[str, np.ndarray]:
    points = np.asarray(points)
    return {name(j): points[..., j] for j in range(points.shape[-1])}


def start_columns(x0) -> dict[str, np.ndarray]:
    """The start points `x0` `(n, d)` as the columns `start_0 .. start_{d-1}`."""
    return _family_columns(x0, start_column)


def checkpoint_state_columns(cp_x) -> dict[str, np.ndarray]:
    """The checkpoint states `cp_x` `(n, K, d)` as the columns `cp_x_0 .. cp_x_{d-1}`."""
    return _family_columns(cp_x, checkpoint_state_column)


# --------------------------------------------------------------------------- reading
def column_to_numpy(col) -> np.ndarray:
    """An Arrow column -> numpy; fixed-size list columns (checkpoint series) come back 2-D."""
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(-1, width)
    return col.to_numpy()


def arrow_columns(table) -> dict[str, np.ndarray]:
    """Every column of an Arrow table, by name, as numpy arrays (`column_to_numpy`)."""
    return {name: column_to_numpy(table.column(name)) for name in table.column_names}


def column(table: Mapping, name: str, default=None) -> np.ndarray:
    """Column `name` of `table` as an array; `default` (if given) when it is missing."""
    if name in table:
        return np.asarray(table[name])
    if default is not None:
        return default
    raise KeyError(
        f"trajectory table has no column {name!r}; build it with jaxflow.trajectory_table."
    )


def _family_dim(table: Mapping, name) -> int:
    d = 0
    while name(d) in table:
        d += 1
    return d


def dim_of(table: Mapping) -> int:
    """The dimension $d$ of the problem: the number of final-point columns `x_j`."""
    return _family_dim(table, final_column)


def _stack(table: Mapping, name, rows) -> np.ndarray | None:
    d = _family_dim(table, name)
    if d == 0:
        return None
    sel = slice(None) if rows is None else rows
    return np.stack([np.asarray(table[name(j)])[sel] for j in range(d)], axis=-1)


def final_points(table: Mapping, rows=None) -> np.ndarray | None:
    """The final points `(n, d)` (of `rows` only, if given); `None` without `x_j` columns."""
    return _stack(table, final_column, rows)


def start_points(table: Mapping, rows=None) -> np.ndarray | None:
    """The start points `(n, d)` (of `rows` only, if given); `None` without `start_j`."""
    return _stack(table, start_column, rows)


def checkpoint_states(table: Mapping, rows=None) -> np.ndarray | None:
    """The states at the checkpoints `(n, K, d)`; `None` without `cp_x_j` columns."""
    return _stack(table, checkpoint_state_column, rows)


def value_dtype(table: Mapping) -> np.dtype:
    """The floating dtype the values `f` were computed in (float64 if not floating)."""
    f = np.asarray(table["f"])
    return f.dtype if np.issubdtype(f.dtype, np.floating) else np.dtype(np.float64)


# --------------------------------------------------------------------------- building
def trajectory_table(result: FlowResult, classification=None) -> dict:
    """One row per trajectory, numeric numpy columns only (for Parquet and `Report`).

    **Arguments:**

    - `result`: a `jaxflow.FlowResult`.
    - `classification`: its `jaxflow.Classification` (from `jaxflow.classify`), or
      `None` for the engine's statuses only.

    **Returns:** a dict of columns (see the module docstring): `status` (refined when
    `classification` is given, else the engine's), `engine_status`, `f`, `stationarity`,
    `t`, `norm`, `steps`, `rejected`, `path_length`, the final point as
    `x_0 .. x_{d-1}`, the classification fields (`growth_exponent`, `log_growth`,
    `limit_value`, `malgrange`, `deceleration`, `velocity_exponent`, `value_exponent`;
    NaN/False without a classification, and `limit_value` the final `f`) and the
    checkpoint series `cp_norm`, `cp_f`, `cp_stat` as `(n, K)` arrays.
    """
    if not isinstance(result, FlowResult):
        raise TypeError(
            f"trajectory_table: `result` must be a jaxflow.FlowResult, got {type(result).__name__}."
        )
    r = result.to_numpy()
    n = r["f"].shape[0]
    table: dict[str, np.ndarray] = {}
    engine_status = r["status"].astype(np.int8)
    if classification is not None:
        if len(classification) != n:
            raise ValueError(
                f"trajectory_table: classification has {len(classification)} rows, "
                f"result has {n}; classify this result first."
            )
        c = classification.to_numpy()
        table["status"] = c["status"].astype(np.int8)
    else:
        c = None
        table["status"] = engine_status
    table["engine_status"] = engine_status
    for key in ("f", "stationarity", "t", "path_length"):
        table[key] = r[key]
    table["norm"] = np.linalg.norm(r["x"].astype(np.float64), axis=-1).astype(r["f"].dtype)
    table["steps"] = r["steps"].astype(np.int32)
    table["rejected"] = r["rejected"].astype(np.int32)
    for j in range(r["x"].shape[1]):
        table[final_column(j)] = r["x"][:, j]
    for key in CLASSIFICATION_COLUMNS:
        table[key] = c[key] if c is not None else np.full(n, np.nan, r["f"].dtype)
    if c is not None:
        table["log_growth"] = c["log_growth"].astype(bool)
    else:
        table["log_growth"] = np.zeros(n, bool)
        table["limit_value"] = r["f"].copy()
    if result.decided_at is not None:
        table["decided_at"] = np.asarray(result.decided_at, np.float64)
    else:
        table["decided_at"] = np.full(n, float(np.asarray(result.ts)[-1]))
    for key in CHECKPOINT_SERIES:
        table[key] = r[key]
    return table
