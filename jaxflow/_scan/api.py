r"""Monte Carlo landscape scans: `scan`, `load` and their result.

A scan integrates the flow from $N$ random starts, classifies every trajectory and
stores one row per trajectory, chunk by chunk, in a crash-safe store (`store.py`); its
summary is the Theorem 1.2 report.

**Determinism.** A chunk's rows depend only on (spec, chunk index) (`worker.py`), and
the report is computed from per-chunk summaries merged in chunk order
(`jaxflow._summaries`), so the driver never holds the whole table. Results are bit-identical
whatever the order, the number of workers or devices, for the same device kind,
jax/jaxlib/jaxflow versions, x64 flag and XLA flags (on GPU add
`XLA_FLAGS=--xla_gpu_deterministic_ops=true`); they are not bit-identical between CPU
and GPU.

**Where chunks run.** By default on every local device of the default backend (a device
pool of threads); `executor=` takes any `concurrent.futures`-style executor instead
(`scheduler.py`). Problems reach workers by reference (`references.py`).

This module validates the arguments (before anything is compiled or written), opens the
store, hands the chunks to the scheduler and reads the result back.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from .._executables import program_identity
from .._json import float_from_json
from .._options import FlowOptions, FlowShorthands, solver_name
from .._problem import Problem
from .._status import status_counts
from .._schema import column_to_numpy
from .references import bounded_builtin, problem_fingerprint, resolve_problem
from .scheduler import ScanProgress, check_executor, execute, open_executor
from .spec import check_classify_options, environment, scan_spec
from .store import Store
from .worker import program_identity_of
from .summary import read_typing, store_points, summarize, write_typing

__all__ = ["scan", "load", "ScanResult", "ScanProgress", "build_report"]

_UINT32 = 2**32


# --------------------------------------------------------------------------- results
class ScanResult:
    """What `jaxflow.scan` and `jaxflow.load` return.

    - `table`: a `pyarrow.Table`, one row per trajectory in start order (column `index`),
      with the detectors' columns (`status`, `f`, `stationarity`, `t`, `growth_exponent`,
      `limit_value`, ..., final point `x_j`) and the start point `start_j`. Read from the
      chunk files on first access (a scan of $10^9$ starts does not fit in memory: the
      report and `counts()` do not need it);
    - `trajectories`: the checkpoint series (`cp_norm`, `cp_f`, `cp_stat`, one list per
      row, at `checkpoint_times`) of the saved subsample, or `None` (read on first access);
    - `report`: the Theorem 1.2 report, built from per-chunk summaries;
    - `manifest`, `out`; `complete` (all chunks stored); `computed_chunks`,
      `skipped_chunks` (this call; empty for `load`); `devices` (chunks per device kind).
    """

    def __init__(self, *, manifest, out, complete, report, table=None, trajectories=None,
                 store=None, entries=None, columns=None, status_counts=None,
                 computed_chunks=(), skipped_chunks=(), devices=None, wall_s=None):
        self._table = table
        self._trajectories = trajectories
        self._store = store
        self._entries = entries
        self._columns = columns
        self._status_counts = status_counts
        self.manifest = manifest
        self.out = Path(out)
        self.complete = complete
        self.report = report
        self.computed_chunks = list(computed_chunks)
        self.skipped_chunks = list(skipped_chunks)
        self.devices = dict(devices or {})
        self.wall_s = wall_s

    @property
    def table(self):
        if self._table is None:
            self._table = self._store.read_table(sorted(self._entries), columns=self._columns)
        return self._table

    @property
    def trajectories(self):
        if self._trajectories is None and self._store is not None:
            self._trajectories = self._store.read_trajectories(self._entries)
        return self._trajectories

    @property
    def spec(self) -> dict:
        return self.manifest["spec"]

    @property
    def checkpoint_times(self) -> np.ndarray:
        return np.asarray(self.manifest["checkpoint_times"], np.float64)

    def __len__(self) -> int:
        if self._table is None and self._entries is not None:
            return sum(int(e["rows"]) for e in self._entries.values())
        return self.table.num_rows

    def to_pandas(self):
        """The table as a pandas DataFrame (needs pandas: `pip install 'jaxflow[pandas]'`)."""
        try:
            import pandas  # noqa: F401  (pyarrow imports it lazily; fail here, and say how to fix)
        except ImportError:
            raise ModuleNotFoundError(
                "ScanResult.to_pandas() needs pandas: pip install 'jaxflow[pandas]' "
                "(or pip install pandas); ScanResult.table is the same table in pyarrow"
            ) from None
        return self.table.to_pandas()

    def column(self, name: str) -> np.ndarray:
        return column_to_numpy(self.table.column(name))

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {name: self.column(name) for name in self.table.column_names}

    def counts(self) -> dict[str, int]:
        """Number of trajectories per status name."""
        if self._status_counts is not None:
            return dict(self._status_counts)
        st = self.column("status") if self.table.num_rows else np.zeros(0, np.int8)
        return status_counts(st)

    def __repr__(self):
        sp = self.spec
        return (f"ScanResult({sp['problem']['name']!r}, n={sp['n']}, rows={len(self)}, "
                f"complete={self.complete}, out={str(self.out)!r})")


def _report_meta(manifest: Mapping, complete: bool, devices: Mapping) -> dict:
    sp = manifest["spec"]
    fs = sp["flow"]
    ctrl = fs["stepsize_controller"]
    return {
        "kind": "scan", "n": sp["n"], "seed": sp["seed"], "t1": float_from_json(fs["t1"]),
        "dtype": sp["dtype"], "solver": solver_name(fs["solver"]), "controller": ctrl["kind"],
        "rtol": float_from_json(ctrl.get("rtol")), "atol": float_from_json(ctrl.get("atol")),
        "gtol": float_from_json(fs["gtol"]),
        "escape_radius": float_from_json(fs["escape_radius"]),
        "max_steps": fs["max_steps"], "chunk_size": sp["chunk_size"], "complete": complete,
        "devices": dict(devices), "spec_sha256": manifest["spec_sha256"],
        "extend_undecided": float_from_json(fs.get("extend_undecided")),
    }


def build_report(problem: Problem | None, manifest: Mapping, table: Mapping[str, np.ndarray],
                 *, complete: bool, devices: Mapping):
    """`jaxflow.Report.from_table` on an in-memory scan table (None for an empty table).

    Without the `Problem`, critical points are not typed; the problem's description comes
    from the manifest.
    """
    from .._report import Report

    if len(table.get("status", ())) == 0:
        return None
    meta = _report_meta(manifest, complete, devices)
    report = Report.from_table(problem, dict(table), meta=meta)
    if problem is None and manifest.get("problem"):
        report = dataclasses.replace(report, problem=dict(manifest["problem"]))
    return report


def _devices_summary(entries: Mapping[int, Mapping]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries.values():
        d = e.get("device", "unknown")
        out[d] = out.get(d, 0) + 1
    return out


def _scan_report(store: Store, manifest: Mapping, entries: Mapping[int, Mapping], problem,
                 *, complete: bool, devices: Mapping, record: bool = False):
    """The report of the stored `entries`, streamed chunk by chunk (`summary.py`), and the
    summary's status counts. Critical points are typed with `problem` when given, else
    with the types stored by the scan's driver; with `record`, the types are stored."""
    from .._report import Report

    summary = summarize(store, manifest, entries)
    if summary is None:
        return None, {}
    typing = None if problem is not None else read_typing(store, manifest, entries)
    if typing is None and problem is None:
        problem = _stored_builtin(manifest)
    meta = _report_meta(manifest, complete, devices)
    sp = manifest["spec"]["problem"]
    report, types = Report.from_summary(
        summary, problem=problem, typing=typing, points_of=store_points(store, manifest),
        meta=meta, description=dict(manifest["problem"]) if manifest.get("problem") else None,
        nonsmooth=bool(sp.get("nonsmooth", False)) if problem is None else None,
    )
    if summary.critical and types is None:
        warnings.warn(
            f"the critical points of {store.path} are not typed: the store holds no types for "
            "these chunks and opening a store never runs its problem. Pass the problem "
            "(jaxflow.load(out, problem=...) or jaxflow report DIR --problem module:function).",
            stacklevel=4,
        )
    if record and types is not None and typing is None:
        write_typing(store, manifest, entries, types)
    return report, summary.status_counts()


def _stored_builtin(manifest: Mapping) -> Problem | None:
    """A built-in problem rebuilt from the manifest when its params are small; else None."""
    sp = manifest["spec"]["problem"]
    if sp.get("source", {}).get("kind") != "builtin":
        return None
    try:
        return bounded_builtin(sp["source"], sp.get("dim"))
    except Exception:  # a report without types is still a report (the warning says so)
        return None


def _read_result(store: Store, manifest: Mapping, entries: Mapping[int, Mapping], problem,
                 *, computed=(), skipped=(), wall_s=None, columns=None,
                 record: bool = False) -> ScanResult:
    complete = len(entries) == manifest["spec"]["n_chunks"]
    devices = _devices_summary(entries)
    report, counts = None, None
    if columns is None:
        report, counts = _scan_report(store, manifest, entries, problem, complete=complete,
                                      devices=devices, record=record)
    if len(devices) > 1 and len({d.split(":")[0] for d in devices}) > 1:
        warnings.warn(
            f"chunks of {store.path} were computed on different device kinds {sorted(devices)}; "
            "each chunk is correct but the table is not bit-reproducible on one kind.",
            stacklevel=3,
        )
    return ScanResult(store=store, entries=entries, columns=columns, status_counts=counts,
                      manifest=dict(manifest), out=store.path, complete=complete,
                      report=report, computed_chunks=computed, skipped_chunks=skipped,
                      devices=devices, wall_s=wall_s)


# --------------------------------------------------------------------------- scan
def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"scan: `{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _local_devices(devices) -> list:
    import jax

    if devices is None:
        return jax.local_devices()
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        avail = jax.local_devices()
        if not 1 <= devices <= len(avail):
            raise ValueError(f"scan: devices={devices} but {len(avail)} local devices exist.")
        return avail[: int(devices)]
    devices = list(devices)
    if not devices or not all(hasattr(d, "platform") for d in devices):
        raise TypeError("scan: `devices` must be a list of jax devices or a count.")
    return devices


# Every `FlowOptions` field is a shorthand of `scan` except `save_states`, which `scan`
# takes in its own sense (whether to keep the saved trajectories' states).
_SCAN_OPTIONS = frozenset(FlowShorthands.__annotations__) - {"save_states"}


def scan(
    problem,
    n: int,
    *,
    out,
    seed: int = 0,
    chunk_size: int = 10_000,
    params: Mapping | None = None,
    dtype: str = "float32",
    options: FlowOptions | None = None,
    classify_options: Mapping | None = None,
    save_trajectories: int = 256,
    save_states: bool | None = None,
    executor=None,
    devices=None,
    max_in_flight: int | None = None,
    resume: bool = True,
    chunks: Iterable[int] | None = None,
    progress: Callable[[ScanProgress], Any] | None = None,
    max_retries: int = 3,
    compilation_cache: Any = None,
    **shorthands: Unpack[FlowShorthands],
) -> ScanResult:
    r"""Integrates and classifies the flow from `n` random starts, chunk by chunk, into `out/`.

    **Arguments:**

    - `problem`: a built-in name (`"matrix-completion"`, see `jaxflow.problems.names()`),
      `"package.module:function"` (a `Problem`, a factory returning one, or an objective
      with `params={"dim": d}`), or a `jaxflow.Problem` object (threads and devices only:
      closures cannot be sent to other processes).
    - `n`: number of starts; `seed`: the root PRNG seed ($0 \le$ seed $< 2^{32}$).
    - `out`: the store directory (created; an existing scan there is resumed).
    - `t1`: horizon; `chunk_size`: starts per chunk (fixed by the spec: the same
      `(seed, chunk_size)` always gives the same starts). A `chunk_size` above `n` is
      clamped to `n`, and the spec records `n` (so a scan with `chunk_size > n` is the
      same scan as one with `chunk_size = n`).
    - `params`: parameters of a problem given by name.
    - `dtype`: `"float32"` or `"float64"` (needs `jax_enable_x64`).
    - `options`: a `jaxflow.FlowOptions`; `t1`, `solver`, `stepsize_controller`, `dt0`,
      `gtol`, `escape_radius`, `max_steps`, `checkpoints_per_decade`, `t_first`, `lanes`,
      `stop_at_convergence` are shorthands for its fields, as in `jaxflow.flow` (`t1` is
      required one way or the other); the solver is recorded by name. `lanes=None` leaves
      the lane count to each worker's backend (a trajectory's result does not depend on it).
    - `classify_options`: keyword options of `jaxflow.classify`.
    - `save_trajectories`: keep the checkpoint series ($\|x\|$, $f$, $\|v\|$) of the
      first this many starts (a uniform random subsample, since starts are i.i.d.) for
      plots; 0 for none.
    - `save_states`: also keep their positions $x(t_k)$ (for phase portraits); default
      for problems of dimension at most 3 (every chunk then records its first
      `min(save_trajectories, chunk_size)` states, so all chunks run one program).
    - `executor`: a `concurrent.futures`-style executor (thread pool, spawn process
      pool, Dask `client.get_executor()`), or a zero-argument function returning one
      (then the scan shuts it down at the end and rebuilds it if a worker process dies);
      default: the local device pool.
    - `devices`: the devices of the pool (a list of `jax.Device`, or a count; default all
      local devices). Not with `executor`.
    - `max_in_flight`: chunks submitted to the executor at a time (default: two per
      device for the device pool, otherwise `max(16, 2 * os.cpu_count())`).
    - `resume`: continue an existing scan in `out/` (refused if its spec differs). With
      `False`, an existing scan in `out/` is an error.
    - `chunks`: chunk ids to compute, in this order (default all, ascending); the result
      covers every stored chunk.
    - `progress`: called with a `ScanProgress` after each stored chunk.
    - `max_retries`: times a chunk is resubmitted after its process pool broke.
    - `compilation_cache`: `None` (default directory, see `jaxflow._scan.cache`), a path,
      or `False`.

    **Returns:** a `ScanResult` (table, report, manifest).

    Bad input raises `ValueError`/`TypeError` before anything is compiled or written; a
    different scan already in `out/` raises `SpecMismatchError` listing the differing
    fields; another process writing `out/` raises `ScanLockedError`.
    """
    import jax
    import jax.numpy as jnp

    from .cache import enable_compilation_cache

    t_start = time.perf_counter()
    # -- validation, before any compute ----------------------------------------------------
    n = _positive_int(n, "n")
    # A chunk larger than the scan would only pad it (and allocate for the padding): clamp.
    # The clamped value is what the spec records.
    chunk_size = min(_positive_int(chunk_size, "chunk_size"), n)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < _UINT32:
        raise ValueError(f"scan: `seed` must be an integer in [0, 2**32), got {seed!r}.")
    n_chunks = -(-n // chunk_size)
    if n_chunks >= _UINT32:
        raise ValueError(f"scan: {n_chunks} chunks exceed 2**32; use a larger chunk_size.")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"scan: `dtype` must be 'float32' or 'float64', got {dtype!r}.")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "scan: dtype='float64' needs jax.config.update('jax_enable_x64', True) first."
        )
    if save_trajectories is None or isinstance(save_trajectories, bool) or not (
        isinstance(save_trajectories, (int, np.integer)) and save_trajectories >= 0
    ):
        raise ValueError(
            f"scan: `save_trajectories` must be an integer >= 0, got {save_trajectories!r}."
        )
    if not (isinstance(max_retries, int) and max_retries >= 0):
        raise ValueError(f"scan: `max_retries` must be an integer >= 0, got {max_retries!r}.")
    if executor is not None and devices is not None:
        raise ValueError("scan: give `executor` or `devices`, not both (devices are the default "
                         "executor's; an executor's workers use their own devices).")
    if max_in_flight is not None:
        max_in_flight = _positive_int(max_in_flight, "max_in_flight")
    try:
        opts = FlowOptions.build(options, shorthands, caller="scan", allowed=_SCAN_OPTIONS)
        ts = opts.checkpoint_times()
    except ValueError as e:
        raise ValueError(f"scan: {e}") from None
    classify_options = check_classify_options(classify_options)
    if save_states is not None and not isinstance(save_states, bool):
        raise TypeError(f"scan: `save_states` must be True, False or None, got {save_states!r}.")
    Store.check_writable(out)

    prob, source = resolve_problem(problem, params)
    problem_obj = prob if source["kind"] == "object" else None
    workers = open_executor(executor)
    try:
        if executor is not None:
            check_executor(workers.executor, problem_obj)
        if save_states is None:
            save_states = prob.dim <= 3
        save_states_val = min(int(save_trajectories), chunk_size) if save_states else 0
        try:
            opts.stepper(prob)  # the solver exists and suits the controller
            flow_spec = opts.to_spec(prob, jnp.dtype(dtype))
        except ValueError as e:
            raise ValueError(f"scan: {e}") from None
        if executor is None:
            devices = _local_devices(devices)
        order = list(range(n_chunks)) if chunks is None else [int(c) for c in chunks]
        bad = [c for c in order if not 0 <= c < n_chunks]
        if bad:
            raise ValueError(f"scan: chunk ids {bad[:5]} are outside [0, {n_chunks}).")

        spec = scan_spec(
            problem={
                "source": source,
                "name": prob.name,
                "dim": prob.dim,
                "sampler": prob.sampler.describe(),
                "nonsmooth": prob.nonsmooth,
                "fingerprint": problem_fingerprint(prob, jnp.dtype(dtype)),
            },
            n=n, seed=seed, chunk_size=chunk_size, n_chunks=n_chunks, dtype=dtype,
            flow=flow_spec, classify=classify_options,
            save_trajectories=save_trajectories, save_states=save_states_val,
        )
        env = environment()
        extra = {"problem": prob.describe(), "checkpoint_times": [float(t) for t in ts]}

        # -- the store: refuse a different scan before touching anything --------------------
        store = Store(out)
        manifest = store.open_for_writing(spec, env, resume=resume, extra=extra)
        try:
            cache_setting = compilation_cache
            if compilation_cache is not False:
                cache_setting = enable_compilation_cache(compilation_cache) or False
            done, corrupted = store.finished_chunks(n_chunks)
            if corrupted:
                warnings.warn(
                    f"{out}: chunk(s) {corrupted[:10]} failed verification (truncated, modified "
                    "or missing); recomputing them.", stacklevel=2,
                )
            todo = [c for c in dict.fromkeys(order) if c not in done]
            skipped = [c for c in dict.fromkeys(order) if c in done]
            computed = execute(
                store, todo, workers=workers, devices=devices, max_in_flight=max_in_flight,
                spec=spec, environment=env, source=source, problem_obj=problem_obj,
                cache=cache_setting, spec_hash=manifest["spec_sha256"], progress=progress,
                max_retries=max_retries, done=done, n_chunks=n_chunks, t_start=t_start,
            )
            entries, _ = store.finished_chunks(n_chunks)
            # The driver has the problem: it types the critical points and stores the
            # types, so the store later opens and reports without running anything.
            # Its programs (Hessians at the critical points) come from the executable
            # cache like the workers' (`jaxflow._executables`).
            identity = program_identity_of(spec, env) if cache_setting else None
            with program_identity(identity, cache_setting or None):
                result = _read_result(store, manifest, entries, prob, computed=computed,
                                      skipped=skipped, wall_s=time.perf_counter() - t_start,
                                      record=True)
        finally:
            store.release()
    finally:
        workers.close(wait=False)  # a no-op when `execute` closed it, or it is the caller's
    return result


# --------------------------------------------------------------------------- load
def load(out, *, verify: bool = True, columns: Sequence[str] | None = None,
         problem: Problem | str | None = None, params: Mapping | None = None) -> ScanResult:
    """Reads a scan store: the per-trajectory table (pyarrow; `.to_pandas()`) and the report.

    Opening a store never imports or calls anything the store names: the report is built
    from the stored chunks, chunk by chunk, and the critical-point types the scan's driver
    stored in `summary.json`.

    **Arguments:**

    - `out`: the scan directory.
    - `verify`: check every chunk file against the journal's SHA-256, its Parquet
      metadata and rows against the manifest (raises `ChunkCorruptedError` naming the bad
      chunks and why; rerun the scan to recompute them). The manifest's own hash and a
      well-formed journal are checked either way (`StoreIntegrityError`).
    - `columns`: read only these columns of the table (then `report` is `None`).
    - `problem`: the problem to type critical points with, instead of the stored types:
      a `Problem`, a built-in name or `"package.module:function"` (imported because the
      caller asks; `params` as in `scan`). Without it and without stored types (e.g. the
      scan was interrupted), a built-in problem is rebuilt only if its stored params are
      small (`references.bounded_builtin`); other critical points stay untyped, with a
      warning.

    Partial scans load too (`result.complete` is then `False`). The chunk files are plain
    Parquet: `polars.read_parquet("out/chunks/*.parquet")` or DuckDB
    `SELECT * FROM 'out/chunks/*.parquet'` read them directly.
    """
    store = Store(out)
    manifest = store.read_manifest()
    if manifest is None:
        raise FileNotFoundError(f"{out} is not a jaxflow scan (no manifest.json).")
    if problem is not None and not isinstance(problem, Problem):
        problem, _ = resolve_problem(problem, params)
    elif params:
        raise ValueError("load: params= applies to a problem given by name.")
    n_chunks = manifest["spec"]["n_chunks"]
    if verify:
        entries, _ = store.finished_chunks(n_chunks, strict=True)
    else:
        entries = {c: e for c, e in store.read_journal().items() if 0 <= c < n_chunks}
    return _read_result(store, manifest, entries, problem,
                        columns=list(columns) if columns is not None else None)
