r"""Sweeps: one landscape scan per point of a parameter grid, in one store.

A sweep is a set of scans sharing one store directory (`store.py`): the point
`{hidden: 2, points: 4}` of a sweep of `one-hidden-sigmoid` is exactly
`jaxflow.scan("one-hidden-sigmoid", n, params={**fixed, "hidden": 2, "points": 4}, ...)`,
stored under `out/points/hidden=2,points=4/`, with the scan's seeding, chunking,
integrity checks, executors and devices. So a point's rows are bit-identical to those of
the separate scan, whatever else is in the grid.

Resuming a sweep resumes its unfinished points. A different spec (problem, fixed
parameters, $N$, seed, flow or detector options) is refused with nothing modified
(`SpecMismatchError`); a grid is accepted again only with **added** values, whose new
points are computed without touching the stored ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from .._options import FlowOptions, FlowShorthands
from .._problem import Problem
from .._scan import load, scan
from .._scan.api import _SCAN_OPTIONS
from .._scan.references import resolve_problem
from .._scan.scheduler import ScanProgress
from .._scan.spec import check_classify_options
from .grid import Grid, check_axes_against
from .store import SweepStore
from .summary import SweepSummary

__all__ = ["sweep", "load_sweep", "SweepResult", "SweepProgress"]


@dataclasses.dataclass(frozen=True)
class SweepProgress:
    """Passed to `sweep`'s `progress` callback: the point being computed and its scan's
    `ScanProgress` (`scan` is `None` when a point starts)."""

    point: int
    points_total: int
    params: dict
    scan: ScanProgress | None


class SweepResult:
    """What `jaxflow.sweep` and `jaxflow.load_sweep` return.

    - `points`: the grid points (`{parameter: value}`), in grid order;
    - `results`: one `ScanResult` per point (`None` for a point with no stored scan yet);
    - `table`: one `pyarrow.Table` of every point's trajectories, with the columns
      `point` (index into `points`) and one per grid parameter in front of the scan's
      columns (points of other dimensions leave the others' `x_j`, `start_j` null);
    - `summary`: the `SweepSummary` (fractions with 95 % intervals, values at infinity,
      critical values and the Theorem 1.2 verdict, per point);
    - `manifest`, `out`, `grid`; `computed_points`, `skipped_points` (this call).
    """

    def __init__(self, *, manifest, out, points, results, computed=(), skipped=(),
                 wall_s=None):
        self.manifest = dict(manifest)
        self.out = Path(out)
        self.points = [dict(p) for p in points]
        self.results = list(results)
        self.computed_points = list(computed)
        self.skipped_points = list(skipped)
        self.wall_s = wall_s
        self._summary = None

    @property
    def grid(self) -> Grid:
        return Grid(self.manifest["grid"])

    @property
    def spec(self) -> dict:
        return self.manifest["spec"]

    @property
    def complete(self) -> bool:
        return all(r is not None and r.complete for r in self.results)

    @property
    def summary(self) -> SweepSummary:
        if self._summary is None:
            self._summary = SweepSummary.from_results(
                list(self.manifest["grid"]), self.points, self.results, spec=self.spec)
        return self._summary

    def point(self, **params):
        """The `ScanResult` of the point with these parameters."""
        for p, r in zip(self.points, self.results, strict=True):
            if p == params:
                return r
        raise KeyError(f"no grid point {params}; the points are {self.points}.")

    def table_of(self, columns=None):
        """`table` restricted to these scan columns (plus `point` and the grid's)."""
        import pyarrow as pa

        axes = list(self.manifest["grid"])
        parts = []
        for i, (p, r) in enumerate(zip(self.points, self.results, strict=True)):
            if r is None or len(r) == 0:
                continue
            t = r._store.read_table(sorted(r._entries), columns=columns) \
                if columns is not None else r.table
            n = t.num_rows
            front = [pa.array(np.full(n, i, np.int32))] + [pa.array([p[a]] * n) for a in axes]
            parts.append(pa.Table.from_arrays(front + list(t.columns),
                                              names=["point", *axes, *t.column_names]))
        if not parts:
            return pa.table({"point": pa.array([], pa.int32())})
        return pa.concat_tables(parts, promote_options="default")

    @property
    def table(self):
        return self.table_of()

    def __len__(self) -> int:
        return sum(len(r) for r in self.results if r is not None)

    def __repr__(self):
        return (f"SweepResult({self.spec['problem']!r}, grid={self.manifest['grid']}, "
                f"n={self.spec['n']}, complete={self.complete}, out={str(self.out)!r})")


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"sweep: `{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _sweep_spec(problem: str, fixed: Mapping, grid: Grid, *, n, seed, chunk_size, dtype,
                flow: Mapping, classify: Mapping, save_trajectories, save_states) -> dict:
    source = ({"kind": "reference", "target": problem} if ":" in problem
              else {"kind": "builtin", "name": problem})
    return {
        "problem": source, "fixed": dict(fixed), "axes": grid.names,
        "n": n, "seed": seed, "chunk_size": chunk_size, "dtype": dtype,
        "flow": dict(flow), "classify": dict(classify),
        "save_trajectories": save_trajectories, "save_states": save_states,
        "keys": "point p: jaxflow.scan(problem, n, params=fixed | p, seed=seed, chunk_size=...)",
    }


def sweep(
    problem: str,
    grid,
    n: int,
    *,
    out,
    params: Mapping | None = None,
    seed: int = 0,
    chunk_size: int = 10_000,
    dtype: str = "float32",
    options: FlowOptions | None = None,
    classify_options: Mapping | None = None,
    save_trajectories: int = 256,
    save_states: bool | None = None,
    executor=None,
    devices=None,
    max_in_flight: int | None = None,
    progress: Callable[[SweepProgress], Any] | None = None,
    compilation_cache: Any = None,
    **shorthands: Unpack[FlowShorthands],
) -> SweepResult:
    r"""Scans a problem at every point of a parameter grid, into one resumable store.

    **Arguments:**

    - `problem`: a built-in name (`"one-hidden-sigmoid"`) or `"package.module:function"`
      (a factory taking the grid's parameters). Not a `Problem` object: the grid is a grid
      of parameters.
    - `grid`: a `jaxflow.Grid`, `{parameter: [values]}`, or a list of `"NAME=SPEC"` strings
      (`"hidden=1,2,4"`, `"points=1:8*2"`; see `jaxflow._sweep.grid`).
    - `n`: starts per point; `seed`: the root seed of every point's scan.
    - `out`: the store directory (created; an existing sweep there is resumed, and may
      gain grid values).
    - `params`: fixed parameters of the problem (not grid axes).
    - `chunk_size`, `dtype`, `options`, `classify_options`, `save_trajectories`,
      `save_states`, `executor`, `devices`, `max_in_flight`, `compilation_cache` and the
      flow shorthands (`t1`, `solver`, `stepsize_controller`, `gtol`, `escape_radius`,
      ...): as in `jaxflow.scan`, for every point.
    - `progress`: called with a `SweepProgress` when a point starts and after each stored
      chunk.

    **Returns:** a `SweepResult` (points, per-point `ScanResult`s, table, summary).

    Bad input (an unknown grid parameter, an empty or duplicated axis, a value the problem
    refuses) raises `ValueError`/`TypeError` before anything is written; a different
    sweep in `out/`, or a grid that lost stored values or axes, raises `SpecMismatchError`
    with nothing modified.
    """
    import jax
    import jax.numpy as jnp

    t_start = time.perf_counter()
    # -- validation: every point's problem is built before anything is written ------------
    if isinstance(problem, Problem) or not isinstance(problem, str):
        raise TypeError(
            "sweep: `problem` must be a built-in name or 'package.module:function' (the grid "
            f"varies its parameters), got {type(problem).__name__}."
        )
    grid = grid if isinstance(grid, Grid) else Grid(grid)
    fixed = dict(params or {})
    check_axes_against(problem, grid, fixed)
    n = _check_int(n, "n", 1)
    chunk_size = min(_check_int(chunk_size, "chunk_size", 1), n)
    seed = _check_int(seed, "seed", 0)
    if seed >= 2**32:
        raise ValueError(f"sweep: `seed` must be below 2**32, got {seed}.")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"sweep: `dtype` must be 'float32' or 'float64', got {dtype!r}.")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("sweep: dtype='float64' needs jax.config.update('jax_enable_x64', True).")
    save_trajectories = _check_int(save_trajectories, "save_trajectories", 0)
    if save_states is not None and not isinstance(save_states, bool):
        raise TypeError(f"sweep: `save_states` must be True, False or None, got {save_states!r}.")
    try:
        opts = FlowOptions.build(options, shorthands, caller="sweep", allowed=_SCAN_OPTIONS)
        opts.checkpoint_times()
    except ValueError as e:
        raise ValueError(f"sweep: {e}") from None
    classify = check_classify_options(classify_options)
    store = SweepStore(out)
    from .._scan.store import Store

    Store.check_writable(out)
    store.check_links()

    stored = store.read()
    grid_problems = []
    if stored is not None:
        merged, grid_problems = Grid(stored["grid"]).union(grid)
        if not grid_problems:
            grid = merged
    points = grid.points()
    built = []
    for p in points:
        prob, _ = resolve_problem(problem, {**fixed, **p})
        built.append(prob)
    try:
        flow = opts.to_spec(built[0], jnp.dtype(dtype))
        for prob in built:
            opts.stepper(prob)
    except ValueError as e:
        raise ValueError(f"sweep: {e}") from None
    if isinstance(opts.solver, str):
        flow["solver"] = opts.solver  # "auto" is resolved per point, by each scan
    spec = _sweep_spec(problem, fixed, grid, n=n, seed=seed, chunk_size=chunk_size,
                       dtype=dtype, flow=flow, classify=classify,
                       save_trajectories=save_trajectories, save_states=save_states)
    if stored is not None:
        store.compare(stored, spec)
        if grid_problems:
            store.refuse_grid(grid_problems)
    else:
        store.check_new()

    # -- the store: lock, (re)write the manifest with the merged grid, scan every point ----
    store.lock()
    try:
        again = store.read()
        if again is not None:
            store.compare(again, spec)
            _, problems = Grid(again["grid"]).union(grid)
            if problems:
                store.refuse_grid(problems)
        if again is None or again["grid"] != grid.to_json():
            store.write(spec, grid.to_json(), points,
                        created=None if again is None else again.get("created"))
        manifest = store.read()
        results, computed, skipped = [], [], []
        for i, p in enumerate(points):
            def point_progress(sp, i=i, p=p):
                progress(SweepProgress(i, len(points), dict(p), sp))

            if progress is not None:
                progress(SweepProgress(i, len(points), dict(p), None))
            res = _finished_point(store.point_path(p), spec, {**fixed, **p})
            if res is not None:  # nothing to do: read it, write nothing
                results.append(res)
                skipped.append(i)
                continue
            res = scan(
                problem, n, out=store.point_path(p), params={**fixed, **p}, seed=seed,
                chunk_size=chunk_size, dtype=dtype, options=opts,
                classify_options=classify or None, save_trajectories=save_trajectories,
                save_states=save_states, executor=executor, devices=devices,
                max_in_flight=max_in_flight,
                progress=point_progress if progress is not None else None,
                compilation_cache=compilation_cache,
            )
            results.append(res)
            (computed if res.computed_chunks else skipped).append(i)
    finally:
        store.release()
    return SweepResult(manifest=manifest, out=out, points=points, results=results,
                       computed=computed, skipped=skipped,
                       wall_s=time.perf_counter() - t_start)


def _finished_point(path: Path, spec: Mapping, params: Mapping):
    """The stored scan of a point when it is complete and is this sweep's point; else
    `None` (then `scan` resumes it, or refuses a different one with the differing fields)."""
    from .._scan.store import Store

    point = Store(path)
    try:
        manifest = point.read_manifest()
    except Exception:  # damaged: `scan` reports it
        return None
    if manifest is None:
        return None
    ps = manifest["spec"]
    flow = dict(ps["flow"])
    if spec["flow"]["solver"] == "auto":
        flow["solver"] = "auto"
    same = (
        ps["problem"]["source"] == {**spec["problem"], "params": dict(params)}
        and all(ps[k] == spec[k] for k in ("n", "seed", "chunk_size", "dtype", "classify",
                                           "save_trajectories"))
        and flow == spec["flow"]
        and (spec["save_states"] is None or bool(ps["save_states"]) == spec["save_states"])
    )
    from .._scan.spec import environment

    if not same or manifest.get("environment") != environment():
        return None
    done, corrupted = point.finished_chunks(ps["n_chunks"])
    if corrupted or len(done) != ps["n_chunks"]:
        return None
    return load(path)


def load_sweep(out, *, verify: bool = True) -> SweepResult:
    """Reads a sweep store: every point's scan (`jaxflow.load`), the table and the summary.

    A point without a stored scan yet has `None` in `results`; partial points load as
    partial scans. **Arguments:** `out`: the sweep directory; `verify`: as in `jaxflow.load`
    (every chunk's SHA-256 and metadata).
    """
    store = SweepStore(out)
    manifest = store.read()
    if manifest is None:
        raise FileNotFoundError(f"{out} is not a jaxflow sweep (no sweep.json).")
    points = [dict(p["params"]) for p in manifest["points"]]
    results = []
    for p in points:
        path = store.point_path(p)
        results.append(load(path, verify=verify) if (path / "manifest.json").exists() else None)
    return SweepResult(manifest=manifest, out=out, points=points, results=results)
