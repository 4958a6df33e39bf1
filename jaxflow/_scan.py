r"""Monte Carlo landscape scans: chunked, resumable, on many devices or machines.

A scan integrates the flow from $N$ random starts, classifies every trajectory and
stores one row per trajectory, chunk by chunk, in a crash-safe store (`_store.py`);
its summary is the Theorem 1.2 report.

**Keys.** The starts of chunk $i$ are `problem.sample(fold_in(key(seed), i), chunk_size)`:
a two-level key tree, so no flat index above $2^{32}$ ever reaches `fold_in` (which
silently wraps its data to 32 bits). The last chunk is drawn at full size and its
surplus rows are replaced by NaN starts, which the engine marks `NONFINITE` at $t = 0$
without integrating them and which are dropped before storing: every chunk runs the
same compiled program.

**Determinism.** A chunk's rows depend only on (spec, chunk index): the engine has no
cross-trajectory arithmetic, each chunk runs whole on one device, and summaries are
computed from the stored table in chunk order. Results are bit-identical whatever the
order, the number of workers or devices, for the same device kind, jax/jaxlib/jaxflow
versions, x64 flag and XLA flags (on GPU add `XLA_FLAGS=--xla_gpu_deterministic_ops=true`);
they are not bit-identical between CPU and GPU.

**Where chunks run.** By default on every local device of the default backend, each
device running whole chunks (a device pool of threads). `executor=` takes any
`concurrent.futures`-style executor instead: a `ThreadPoolExecutor`, a
`ProcessPoolExecutor` with the `spawn` or `forkserver` start method (JAX is
multithreaded; `fork` deadlocks), or Dask's `client.get_executor()` for many machines.
Workers return tables; only the calling process (the driver) writes the store.
A stdlib process pool broken by a dead worker is rebuilt and its chunks resubmitted.

**Problems reach workers** by reference: a built-in name with `params`, or
`"package.module:function"` naming a `Problem`, a factory returning one, or an objective
(with `params={"dim": d, "low": ..., "high": ...}`). A `Problem` object works with the
device pool and thread pools; it cannot be shipped to other processes when its `f` is a
closure or lambda (pickle cannot serialise those) — give a reference instead.
"""

from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import contextlib
import dataclasses
import hashlib
import importlib
import math
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import numpy as np

from ._problem import Problem, Uniform
from ._status import Status
from ._store import (
    ChunkCorruptedError,
    Store,
    canonical_json,
    column_to_numpy,
    columns_to_table,
)

__all__ = ["scan", "load", "ScanResult", "ScanProgress", "ScanError", "resolve_problem"]

_UINT32 = 2**32


class ScanError(RuntimeError):
    """A chunk could not be computed (its worker raised, or crashed too often)."""


# --------------------------------------------------------------------------- problems
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
        from . import problems

        return problems.get(source["name"], **params)
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
            return Problem(obj, dim=dim, sampler=Uniform(low, high), name=target,
                           global_infimum=infimum)
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


def _cached_problem(source: Mapping) -> Problem:
    """One Problem object per (source, x64) per process: the compiled engine is keyed by
    the objective function object, so rebuilding the problem would recompile."""
    import jax

    key = canonical_json(dict(source)) + f"|x64={bool(jax.config.jax_enable_x64)}"
    with _PROBLEM_CACHE_LOCK:
        if key not in _PROBLEM_CACHE:
            _PROBLEM_CACHE[key] = _build_from_source(source)
        return _PROBLEM_CACHE[key]


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
            raise TypeError(f"params must be JSON-able numbers/strings/lists, got {params!r}.") from e
        return _cached_problem(source), source
    raise TypeError(
        "problem must be a jaxflow.Problem, a built-in name (see jaxflow.problems.names()) or "
        f"'package.module:function', got {type(problem).__name__}."
    )


def problem_fingerprint(problem: Problem, dtype) -> str:
    """SHA-256 of the objective's jaxpr and constants at the scan dtype.

    Detects a changed objective (or a worker running other code) without pickling it.
    """
    import jax
    import jax.numpy as jnp

    closed = jax.make_jaxpr(problem.f_flat)(jnp.zeros((problem.dim,), dtype))
    h = hashlib.sha256(str(closed.jaxpr).encode())
    for c in closed.consts:
        a = np.asarray(c)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached_fingerprint(problem: Problem, dtype) -> str:
    per_dtype = _FINGERPRINTS.setdefault(problem, {})
    if str(dtype) not in per_dtype:
        per_dtype[str(dtype)] = problem_fingerprint(problem, dtype)
    return per_dtype[str(dtype)]


# --------------------------------------------------------------------------- spec
def _jf(x):
    """A float for canonical JSON (which has no inf/NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _unjf(x):
    return None if x is None else float(x)


def _solver_spec(solver, problem):
    """The solver as recorded in the spec: a diffrax solver's class name (`"Kvaerno5"`),
    or `"jaxflow.<Stepper>"` for jaxflow's own steppers, with `params` if not default."""
    import dataclasses as dc

    import diffrax

    import jaxflow

    from ._stepper import AbstractStepper, default_solver

    if isinstance(solver, str):
        if solver == "auto":
            return _solver_spec(default_solver(problem), problem)
        if solver.startswith("jaxflow."):
            cls = getattr(jaxflow, solver.split(".", 1)[1], None)
            if isinstance(cls, type) and issubclass(cls, AbstractStepper):
                return solver
            raise ValueError(f"solver: jaxflow has no stepper {solver!r}.")
        cls = getattr(diffrax, solver, None)
        if not (isinstance(cls, type) and issubclass(cls, diffrax.AbstractSolver)):
            raise ValueError(f"solver: unknown diffrax solver {solver!r} (try Kvaerno5, Tsit5).")
        return solver
    if isinstance(solver, AbstractStepper):
        name = type(solver).__name__
        if getattr(jaxflow, name, None) is not type(solver):
            raise ValueError(f"solver: {name} is not a stepper exported by jaxflow.")
        params = {f.name: getattr(solver, f.name) for f in dc.fields(solver)}
        default = {f.name: getattr(type(solver)(), f.name) for f in dc.fields(solver)}
        changed = {k: v for k, v in params.items() if v != default[k]}
        if not changed:
            return f"jaxflow.{name}"
        try:
            canonical_json(changed)
        except (TypeError, ValueError) as e:
            raise ValueError(f"solver: {name} parameters {changed} cannot be recorded.") from e
        return {"class": f"jaxflow.{name}", "params": changed}
    if isinstance(solver, diffrax.AbstractSolver):
        name = type(solver).__name__
        if getattr(diffrax, name, None) is not type(solver) or solver != type(solver)():
            raise ValueError(
                "solver: a scan records its solver by name, so pass a diffrax solver built "
                f"without arguments (e.g. diffrax.{name}()) or its name, got {solver!r}."
            )
        return name
    raise TypeError(
        f"solver must be 'auto', a diffrax solver (name or instance) or a jaxflow stepper, "
        f"got {solver!r}."
    )


def _solver_name(spec) -> str:
    return spec if isinstance(spec, str) else spec["class"]


def _controller_spec(ctrl, dt0) -> dict:
    import diffrax

    if ctrl is None:
        ctrl = diffrax.PIDController(rtol=1e-6, atol=1e-8)
    if isinstance(ctrl, diffrax.ConstantStepSize):
        if dt0 is None or not float(dt0) > 0:
            raise ValueError("stepsize_controller=ConstantStepSize() needs a positive dt0.")
        return {"kind": "constant"}
    if isinstance(ctrl, diffrax.PIDController):
        out = {"kind": "pid"}
        for name in ("rtol", "atol", "pcoeff", "icoeff", "dcoeff", "dtmax", "safety",
                     "factormin", "factormax"):
            v = getattr(ctrl, name)
            try:
                out[name] = None if v is None else _jf(v)
            except TypeError as e:
                raise TypeError(f"PIDController.{name} must be a scalar, got {v!r}.") from e
        if ctrl.dtmin is not None:
            raise ValueError("PIDController(dtmin=...) is not supported by jaxflow.")
        return out
    raise TypeError(
        "stepsize_controller must be diffrax.PIDController(...) or diffrax.ConstantStepSize(), "
        f"got {type(ctrl).__name__}."
    )


def _controller_from_spec(spec: Mapping):
    import diffrax

    if spec["kind"] == "constant":
        return diffrax.ConstantStepSize()
    kw = {k: _unjf(v) for k, v in spec.items() if k != "kind"}
    return diffrax.PIDController(**kw)


def _environment() -> dict:
    import jax
    import jaxlib

    from . import __version__

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jaxflow": __version__,
        "jaxflow_source": source_fingerprint(),
        "x64": bool(jax.config.jax_enable_x64),
        "prng_impl": str(jax.config.jax_default_prng_impl),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
    }


# Modules that only read, store or render results: editing them cannot change a row.
_PRESENTATION = {"cli.py", "_plots.py", "_report.py", "_values.py", "_store.py", "_cache.py",
                 "_stats.py", "__init__.py"}
_SOURCE_HASH: list[str] = []


def source_fingerprint() -> str:
    """SHA-256 of jaxflow's computing modules (engine, detectors, problems, scan).

    The version number does not change while a development install is edited; this
    does, so a resumed scan or a worker running other code is caught.
    """
    if not _SOURCE_HASH:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            if path.name in _PRESENTATION and path.parent == root:
                continue
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _SOURCE_HASH.append(h.hexdigest())
    return _SOURCE_HASH[0]


# --------------------------------------------------------------------------- workers
_THREAD = threading.local()


@dataclasses.dataclass(frozen=True)
class _ChunkJob:
    """What a worker needs for one chunk: small, picklable, no closures (unless `problem`)."""

    source: dict
    spec: dict
    environment: dict
    chunk: int
    cache: Any = None
    problem: Problem | None = None  # only for Problem objects (threads, or picklable)


@dataclasses.dataclass
class _ChunkOutput:
    chunk: int
    columns: dict
    trajectories: dict | None
    device: str
    seconds: float


def _device_label(device) -> str:
    kind = getattr(device, "device_kind", "") or ""
    return f"{device.platform}:{kind}" if kind and kind != device.platform else device.platform


def _trajectory_columns(result, classify_options: Mapping) -> dict[str, np.ndarray]:
    """Per-trajectory columns: `jaxflow.trajectory_table` of the classified result."""
    from ._detect import classify, trajectory_table

    table = trajectory_table(result, classify(result, **classify_options))
    return {k: np.asarray(v) for k, v in table.items()}


def _run_chunk(job: _ChunkJob) -> _ChunkOutput:
    """Computes one chunk (in a worker thread or process); returns its columns."""
    import jax

    from ._cache import enable_compilation_cache

    env = job.environment
    if bool(jax.config.jax_enable_x64) != env["x64"]:
        jax.config.update("jax_enable_x64", env["x64"])
    _check_worker_versions(env)
    if job.cache is not False:
        enable_compilation_cache(job.cache)
    problem = job.problem if job.problem is not None else _cached_problem(job.source)
    device = getattr(_THREAD, "device", None)
    t0 = time.perf_counter()
    # The default device needs no context (a `default_device` context is part of JAX's
    # trace-cache key: the same chunk program would be traced and compiled again).
    default = jax.config.jax_default_device or jax.devices()[0]
    on_default = device is None or device == default
    ctx = contextlib.nullcontext() if on_default else jax.default_device(device)
    with ctx:
        columns, trajectories = _first_run_serialised(
            (id(problem), _program_key(job.spec), None if device is None else device.id),
            lambda: _compute_chunk(problem, job.spec, job.chunk, device),
        )
    if device is None:
        device = jax.devices()[0]
    return _ChunkOutput(job.chunk, columns, trajectories, _device_label(device),
                        time.perf_counter() - t0)


_WARM: set = set()
_WARM_LOCKS: dict = {}
_WARM_GUARD = threading.Lock()


def _program_key(spec: Mapping) -> str:
    keep = {k: spec[k] for k in ("dtype", "chunk_size", "flow", "classify")}
    return canonical_json(keep)


def _first_run_serialised(key, compute):
    """Threads sharing a device wait for the first one to compile the chunk program
    instead of compiling it concurrently (twice the CPU for the same executable)."""
    if key not in _WARM:
        with _WARM_GUARD:
            lock = _WARM_LOCKS.setdefault(key, threading.Lock())
        with lock:
            if key not in _WARM:
                out = compute()
                _WARM.add(key)
                return out
    return compute()


def _check_worker_versions(env: Mapping) -> None:
    import jax
    import jaxlib

    from . import __version__

    mine = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "jaxflow": __version__,
            "jaxflow_source": source_fingerprint()}
    bad = {k: (env[k], v) for k, v in mine.items() if env.get(k) != v}
    if bad:
        raise ScanError(
            "worker runs different versions than the scan's manifest "
            + ", ".join(f"{k} {v} (manifest {m})" for k, (m, v) in bad.items())
            + "; results would not be reproducible. Install the same versions on all workers."
        )


def _compute_chunk(problem: Problem, spec: Mapping, chunk: int, device):
    import jax
    import jax.numpy as jnp

    from ._engine import default_lanes as _default_lanes
    from ._flow import flow

    dtype = jnp.dtype(spec["dtype"])
    if spec["problem"]["fingerprint"] != _cached_fingerprint(problem, dtype):
        raise ScanError(
            f"the objective of {problem.name!r} built on this worker differs from the scan's "
            "(jaxpr fingerprint mismatch): different code or versions on the worker?"
        )
    cs = int(spec["chunk_size"])
    valid = min(cs, int(spec["n"]) - chunk * cs)
    # Placement: the caller's `jax.default_device(device)`; arrays stay uncommitted, so
    # the programs are the ones a plain `jaxflow.flow` call compiles.
    key = jax.random.fold_in(jax.random.key(int(spec["seed"])), chunk)
    x0 = _sample_padded(problem, key, jnp.asarray(valid, jnp.int32), cs, dtype)
    fs = spec["flow"]
    res = flow(
        problem, x0, t1=float(fs["t1"]), solver=_solver_instance(fs["solver"]),
        stepsize_controller=_controller_from_spec(fs["stepsize_controller"]),
        dt0=_unjf(fs["dt0"]), gtol=float(fs["gtol"]), escape_radius=float(fs["escape_radius"]),
        max_steps=int(fs["max_steps"]), checkpoints_per_decade=int(fs["checkpoints_per_decade"]),
        t_first=_unjf(fs["t_first"]), lanes=fs["lanes"] or _default_lanes(cs, _backend(device)),
        stop_at_convergence=bool(fs["stop_at_convergence"]),
        save_states=int(spec["save_states"]),
    )
    cols = _trajectory_columns(res, spec["classify"])
    x0_np = np.asarray(x0)[:valid]
    index = chunk * cs + np.arange(valid, dtype=np.int64)
    main = {"index": index}
    series = {}
    for name, col in cols.items():
        col = np.asarray(col)[:valid]
        (main if col.ndim == 1 else series)[name] = col
    for j in range(problem.dim):
        main[f"start_{j}"] = x0_np[:, j]
    keep = index < int(spec["save_trajectories"])
    trajectories = None
    if np.any(keep) and series:
        trajectories = {"index": index[keep], "status": main["status"][keep]}
        trajectories.update({k: v[keep] for k, v in series.items()})
        trajectories.update({f"start_{j}": main[f"start_{j}"][keep] for j in range(problem.dim)})
        if res.cp_x is not None:
            # Saved rows are the chunk's first ones (global index < save_trajectories),
            # all within the engine's first `save_states` rows.
            cp_x = np.asarray(res.cp_x)[: int(keep.sum())]
            for j in range(problem.dim):
                trajectories[f"cp_x_{j}"] = cp_x[:, :, j]
    return main, trajectories


def _backend(device) -> str:
    import jax

    return device.platform if device is not None else jax.default_backend()


@eqx.filter_jit
def _sample_padded(problem: Problem, key, valid, size: int, dtype):
    """`size` starts from `key`; rows from `valid` on are NaN (the padding of the last
    chunk: the engine marks them NONFINITE at t = 0 and never integrates them)."""
    import jax.numpy as jnp

    x0 = problem.sample(key, size, dtype)
    return jnp.where(jnp.arange(size)[:, None] < valid, x0, jnp.nan)


def _solver_instance(spec):
    import diffrax

    import jaxflow

    name, params = (spec, {}) if isinstance(spec, str) else (spec["class"], spec["params"])
    if name.startswith("jaxflow."):
        return getattr(jaxflow, name.split(".", 1)[1])(**params)
    return getattr(diffrax, name)(**params)


def _set_thread_device(devices: deque, lock: threading.Lock) -> None:
    with lock:
        _THREAD.device = devices.popleft()


def _device_pool(devices: Sequence) -> cf.ThreadPoolExecutor:
    """One thread per device; each thread runs whole chunks on its own device."""
    queue, lock = deque(devices), threading.Lock()
    return cf.ThreadPoolExecutor(
        max_workers=len(devices), thread_name_prefix="jaxflow-device",
        initializer=_set_thread_device, initargs=(queue, lock),
    )


# --------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class ScanProgress:
    """Passed to the `progress` callback after each chunk is stored (and once at start)."""

    chunks_done: int
    chunks_total: int
    trajectories_done: int
    trajectories_total: int
    chunks_skipped: int
    computed_now: int
    trajectories_now: int
    elapsed_s: float
    chunk: int | None = None
    device: str | None = None


class ScanResult:
    """What `jaxflow.scan` and `jaxflow.load` return.

    - `table`: a `pyarrow.Table`, one row per trajectory in start order (column `index`),
      with the detectors' columns (`status`, `f`, `stationarity`, `t`, `growth_exponent`,
      `limit_value`, ..., final point `x_j`) and the start point `start_j`;
    - `trajectories`: the checkpoint series (`cp_norm`, `cp_f`, `cp_stat`, one list per
      row, at `checkpoint_times`) of the saved subsample, or `None`;
    - `report`: the Theorem 1.2 report built from `table`;
    - `manifest`, `out`; `complete` (all chunks stored); `computed_chunks`,
      `skipped_chunks` (this call; empty for `load`); `devices` (chunks per device kind).
    """

    def __init__(self, *, table, trajectories, manifest, out, complete, report,
                 computed_chunks=(), skipped_chunks=(), devices=None, wall_s=None):
        self.table = table
        self.trajectories = trajectories
        self.manifest = manifest
        self.out = Path(out)
        self.complete = complete
        self.report = report
        self.computed_chunks = list(computed_chunks)
        self.skipped_chunks = list(skipped_chunks)
        self.devices = dict(devices or {})
        self.wall_s = wall_s

    @property
    def spec(self) -> dict:
        return self.manifest["spec"]

    @property
    def checkpoint_times(self) -> np.ndarray:
        return np.asarray(self.manifest["checkpoint_times"], np.float64)

    def __len__(self) -> int:
        return self.table.num_rows

    def to_pandas(self):
        """The table as a pandas DataFrame."""
        return self.table.to_pandas()

    def column(self, name: str) -> np.ndarray:
        return column_to_numpy(self.table.column(name))

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {name: self.column(name) for name in self.table.column_names}

    def counts(self) -> dict[str, int]:
        """Number of trajectories per status name."""
        st = self.column("status") if self.table.num_rows else np.zeros(0, np.int8)
        return {s.name: int(np.sum(st == int(s))) for s in Status if np.any(st == int(s))}

    def __repr__(self):
        sp = self.spec
        return (f"ScanResult({sp['problem']['name']!r}, n={sp['n']}, rows={len(self)}, "
                f"complete={self.complete}, out={str(self.out)!r})")


def _report_meta(manifest: Mapping, complete: bool, devices: Mapping) -> dict:
    sp = manifest["spec"]
    fs = sp["flow"]
    ctrl = fs["stepsize_controller"]
    return {
        "kind": "scan", "n": sp["n"], "seed": sp["seed"], "t1": _unjf(fs["t1"]),
        "dtype": sp["dtype"], "solver": _solver_name(fs["solver"]), "controller": ctrl["kind"],
        "rtol": _unjf(ctrl.get("rtol")), "atol": _unjf(ctrl.get("atol")),
        "gtol": _unjf(fs["gtol"]), "escape_radius": _unjf(fs["escape_radius"]),
        "max_steps": fs["max_steps"], "chunk_size": sp["chunk_size"], "complete": complete,
        "devices": dict(devices), "spec_sha256": manifest["spec_sha256"],
    }


def build_report(problem: Problem | None, manifest: Mapping, table: Mapping[str, np.ndarray],
                 *, complete: bool, devices: Mapping):
    """`jaxflow.Report.from_table` on a scan's table (None for an empty table).

    Without the `Problem` (a scan of a `Problem` object, loaded elsewhere), critical
    points are not typed and the problem's description comes from the manifest.
    """
    from ._report import Report

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


def _table_columns(table) -> dict[str, np.ndarray]:
    return {name: column_to_numpy(table.column(name)) for name in table.column_names}


def _read_result(store: Store, manifest: Mapping, entries: Mapping[int, Mapping], problem,
                 *, computed=(), skipped=(), wall_s=None, columns=None) -> ScanResult:
    chunks = sorted(entries)
    table = store.read_table(chunks, columns=columns)
    trajectories = store.read_trajectories(entries)
    complete = len(chunks) == manifest["spec"]["n_chunks"]
    devices = _devices_summary(entries)
    report = None
    if columns is None:
        report = build_report(problem, manifest, _table_columns(table), complete=complete,
                              devices=devices)
    if len(devices) > 1 and len({d.split(":")[0] for d in devices}) > 1:
        warnings.warn(
            f"chunks of {store.path} were computed on different device kinds {sorted(devices)}; "
            "each chunk is correct but the table is not bit-reproducible on one kind.",
            stacklevel=3,
        )
    return ScanResult(table=table, trajectories=trajectories, manifest=dict(manifest),
                      out=store.path, complete=complete, report=report, computed_chunks=computed,
                      skipped_chunks=skipped, devices=devices, wall_s=wall_s)


# --------------------------------------------------------------------------- scan
def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"scan: `{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _is_process_executor(executor) -> bool:
    return isinstance(executor, cf.ProcessPoolExecutor)


def _is_thread_executor(executor) -> bool:
    return isinstance(executor, cf.ThreadPoolExecutor)


def _check_executor(executor, problem_obj: Problem | None) -> None:
    if not callable(getattr(executor, "submit", None)):
        raise TypeError(
            "executor must have a concurrent.futures-style submit(fn, *args) (a ThreadPool/"
            f"ProcessPoolExecutor, or a Dask client.get_executor()), got {type(executor).__name__}."
        )
    if _is_process_executor(executor):
        ctx = getattr(executor, "_mp_context", None)
        method = ctx.get_start_method() if ctx is not None else None
        if method == "fork":
            raise ValueError(
                "executor: a ProcessPoolExecutor with the 'fork' start method deadlocks with JAX "
                "(multithreaded). Use ProcessPoolExecutor(mp_context=multiprocessing.get_context("
                "'spawn')) or 'forkserver'."
            )
    if problem_obj is not None and not _is_thread_executor(executor):
        import pickle

        try:
            pickle.dumps(problem_obj)
            return
        except Exception as e:
            err = e
        if not _is_process_executor(executor):
            try:  # Dask ships tasks with cloudpickle, which handles closures
                import cloudpickle

                cloudpickle.dumps(problem_obj)
                return
            except Exception:
                pass
        raise TypeError(
            f"problem {problem_obj.name!r} is a Problem object whose objective cannot be sent "
            f"to worker processes ({type(err).__name__}: {err}); closures and lambdas cannot be "
            "pickled. Pass a built-in name or 'package.module:function' instead, or use threads "
            "/ the default device pool."
        ) from err


def _rebuild_process_pool(executor: cf.ProcessPoolExecutor) -> cf.ProcessPoolExecutor:
    with contextlib.suppress(Exception):
        executor.shutdown(wait=False, cancel_futures=True)
    return cf.ProcessPoolExecutor(
        max_workers=getattr(executor, "_max_workers", None),
        mp_context=getattr(executor, "_mp_context", None),
        initializer=getattr(executor, "_initializer", None),
        initargs=getattr(executor, "_initargs", ()),
    )


def _window(executor, n_devices: int) -> int:
    for attr in ("_max_workers",):
        w = getattr(executor, attr, None)
        if isinstance(w, int) and w > 0:
            return 2 * w
    client = getattr(executor, "_client", None)
    if client is not None:
        with contextlib.suppress(Exception):
            return max(2, 2 * sum(client.nthreads().values()))
    return max(2, 2 * n_devices, 16)


def scan(
    problem,
    n: int,
    *,
    out,
    t1: float,
    seed: int = 0,
    chunk_size: int = 10_000,
    params: Mapping | None = None,
    dtype: str = "float32",
    solver: Any = "auto",
    stepsize_controller: Any = None,
    dt0: float | None = None,
    gtol: float | None = None,
    escape_radius: float = 1e6,
    max_steps: int = 65536,
    checkpoints_per_decade: int = 8,
    t_first: float | None = None,
    lanes: int | None = None,
    stop_at_convergence: bool = True,
    classify_options: Mapping | None = None,
    save_trajectories: int = 256,
    save_states: bool | None = None,
    executor=None,
    devices=None,
    resume: bool = True,
    chunks: Iterable[int] | None = None,
    progress: Callable[[ScanProgress], Any] | None = None,
    max_retries: int = 3,
    compilation_cache: Any = None,
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
      `(seed, chunk_size)` always gives the same starts).
    - `params`: parameters of a problem given by name.
    - `dtype`: `"float32"` or `"float64"` (needs `jax_enable_x64`).
    - `solver`, `stepsize_controller`, `dt0`, `gtol`, `escape_radius`, `max_steps`,
      `checkpoints_per_decade`, `t_first`, `lanes`, `stop_at_convergence`: as in
      `jaxflow.flow`; the solver is recorded by name.
    - `classify_options`: keyword options of `jaxflow.classify`.
    - `save_trajectories`: keep the checkpoint series ($\|x\|$, $f$, $\|v\|$) of the
      first this many starts (a uniform random subsample, since starts are i.i.d.) for
      plots; 0 for none.
    - `save_states`: also keep their positions $x(t_k)$ (for phase portraits); default
      for problems of dimension at most 3 (every chunk then records its first
      `min(save_trajectories, chunk_size)` states, so all chunks run one program).
    - `executor`: a `concurrent.futures`-style executor (thread pool, spawn process
      pool, Dask `client.get_executor()`); default: the local device pool.
    - `devices`: the devices of the pool (a list of `jax.Device`, or a count; default all
      local devices). Not with `executor`.
    - `resume`: continue an existing scan in `out/` (refused if its spec differs). With
      `False`, an existing scan in `out/` is an error.
    - `chunks`: chunk ids to compute, in this order (default all, ascending); the result
      covers every stored chunk.
    - `progress`: called with a `ScanProgress` after each stored chunk.
    - `max_retries`: times a chunk is resubmitted after its process pool broke.
    - `compilation_cache`: `None` (default directory, see `jaxflow._cache`), a path, or
      `False`.

    **Returns:** a `ScanResult` (table, report, manifest).

    Bad input raises `ValueError`/`TypeError` before anything is compiled or written; a
    different scan already in `out/` raises `SpecMismatchError` listing the differing
    fields; another process writing `out/` raises `ScanLockedError`.
    """
    import jax
    import jax.numpy as jnp

    from ._cache import enable_compilation_cache
    from ._options import checkpoint_times, default_gtol

    t_start = time.perf_counter()
    # -- validation, before any compute ----------------------------------------------------
    n = _positive_int(n, "n")
    chunk_size = _positive_int(chunk_size, "chunk_size")
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
        raise ValueError(f"scan: `save_trajectories` must be an integer >= 0, got {save_trajectories!r}.")
    if not (isinstance(max_retries, int) and max_retries >= 0):
        raise ValueError(f"scan: `max_retries` must be an integer >= 0, got {max_retries!r}.")
    if executor is not None and devices is not None:
        raise ValueError("scan: give `executor` or `devices`, not both (devices are the default "
                         "executor's; an executor's workers use their own devices).")
    ts = checkpoint_times(t1, per_decade=checkpoints_per_decade, t_first=t_first)
    if not float(escape_radius) > 0:
        raise ValueError(f"scan: `escape_radius` must be positive, got {escape_radius!r}.")
    gtol_val = default_gtol(jnp.dtype(dtype)) if gtol is None else float(gtol)
    if not gtol_val >= 0:
        raise ValueError(f"scan: `gtol` must be >= 0, got {gtol!r}.")
    max_steps = _positive_int(max_steps, "max_steps")
    # Default lanes are left to each worker's backend (1024 on CPU, up to 2^18 on GPU):
    # a trajectory's result does not depend on the lane count.
    lanes_val = None if lanes is None else _positive_int(lanes, "lanes")
    classify_options = dict(classify_options or {})
    if save_states is not None and not isinstance(save_states, bool):
        raise TypeError(f"scan: `save_states` must be True, False or None, got {save_states!r}.")
    Store.check_writable(out)

    prob, source = resolve_problem(problem, params)
    problem_obj = prob if source["kind"] == "object" else None
    if executor is not None:
        _check_executor(executor, problem_obj)
    solver_name = _solver_spec(solver, prob)
    if save_states is None:
        save_states = prob.dim <= 3
    save_states_val = min(int(save_trajectories), chunk_size) if save_states else 0
    from ._options import FlowOptions

    ctrl_spec = _controller_spec(stepsize_controller, dt0)
    try:
        FlowOptions(solver=_solver_instance(solver_name),
                    stepsize_controller=_controller_from_spec(ctrl_spec), dt0=dt0).stepper(prob)
    except ValueError as e:
        raise ValueError(f"scan: {e}") from None

    if executor is None:
        if devices is None:
            devices = jax.local_devices()
        elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
            avail = jax.local_devices()
            if not 1 <= devices <= len(avail):
                raise ValueError(f"scan: devices={devices} but {len(avail)} local devices exist.")
            devices = avail[: int(devices)]
        else:
            devices = list(devices)
            if not devices or not all(hasattr(d, "platform") for d in devices):
                raise TypeError("scan: `devices` must be a list of jax devices or a count.")
    order = list(range(n_chunks)) if chunks is None else [int(c) for c in chunks]
    bad = [c for c in order if not 0 <= c < n_chunks]
    if bad:
        raise ValueError(f"scan: chunk ids {bad[:5]} are outside [0, {n_chunks}).")

    spec = {
        "problem": {
            "source": source,
            "name": prob.name,
            "dim": prob.dim,
            "sampler": prob.sampler.describe(),
            "nonsmooth": prob.nonsmooth,
            "fingerprint": problem_fingerprint(prob, jnp.dtype(dtype)),
        },
        "n": n,
        "seed": int(seed),
        "chunk_size": chunk_size,
        "n_chunks": n_chunks,
        "dtype": dtype,
        "keys": "chunk i: sampler(fold_in(key(seed), i), chunk_size)",
        "flow": {
            "t1": _jf(t1), "solver": solver_name, "stepsize_controller": ctrl_spec,
            "dt0": _jf(dt0), "gtol": _jf(gtol_val), "escape_radius": _jf(escape_radius),
            "max_steps": max_steps, "checkpoints_per_decade": int(checkpoints_per_decade),
            "t_first": _jf(t_first), "lanes": lanes_val,
            "stop_at_convergence": bool(stop_at_convergence),
        },
        "classify": classify_options,
        "save_trajectories": int(save_trajectories),
        "save_states": save_states_val,
    }
    try:
        canonical_json(spec)
    except (TypeError, ValueError) as e:
        raise TypeError(f"scan: classify_options must be JSON-able, got {classify_options!r}.") from e
    environment = _environment()
    extra = {"problem": prob.describe(), "checkpoint_times": [float(t) for t in ts]}

    # -- the store: refuse a different scan before touching anything ------------------------
    store = Store(out)
    manifest = store.open_for_writing(spec, environment, resume=resume, extra=extra)
    try:
        cache_setting = compilation_cache
        if compilation_cache is not False:
            cache_setting = enable_compilation_cache(compilation_cache) or False
        spec_hash = manifest["spec_sha256"]
        done, corrupted = store.finished_chunks(n_chunks)
        if corrupted:
            warnings.warn(
                f"{out}: chunk(s) {corrupted[:10]} failed verification (truncated, modified or "
                "missing); recomputing them.", stacklevel=2,
            )
        todo = [c for c in dict.fromkeys(order) if c not in done]
        skipped = [c for c in dict.fromkeys(order) if c in done]
        computed = _execute(
            store, todo, spec=spec, environment=environment, source=source,
            problem_obj=problem_obj, cache=cache_setting, executor=executor, devices=devices,
            spec_hash=spec_hash, progress=progress, max_retries=max_retries, done=done,
            n_chunks=n_chunks, t_start=t_start,
        )
        entries, _ = store.finished_chunks(n_chunks)
    finally:
        store.release()
    return _read_result(store, manifest, entries, prob, computed=computed, skipped=skipped,
                        wall_s=time.perf_counter() - t_start)


def _rows_in(chunk: int, spec: Mapping) -> int:
    cs = spec["chunk_size"]
    return min(cs, spec["n"] - chunk * cs)


def _execute(store: Store, todo: list[int], *, spec, environment, source, problem_obj, cache,
             executor, devices, spec_hash, progress, max_retries, done, n_chunks,
             t_start) -> list[int]:
    """Runs the chunks in `todo` on the executor; the driver writes each result."""
    n_total = spec["n"]
    rows_done = sum(_rows_in(c, spec) for c in done)
    chunks_done = len(done)
    skipped = len(done)
    computed: list[int] = []
    rows_now = 0

    def report(chunk=None, device=None):
        if progress is not None:
            progress(ScanProgress(
                chunks_done=chunks_done, chunks_total=n_chunks, trajectories_done=rows_done,
                trajectories_total=n_total, chunks_skipped=skipped, computed_now=len(computed),
                trajectories_now=rows_now, elapsed_s=time.perf_counter() - t_start,
                chunk=chunk, device=device,
            ))

    report()
    if not todo:
        return computed
    own_pool = executor is None
    ex = _device_pool(devices) if own_pool else executor
    rebuilt = False
    window = _window(ex, len(devices or ()))
    pending = deque(todo)
    inflight: dict[Any, int] = {}
    attempts: dict[int, int] = {}

    def job(c):
        return _ChunkJob(source=source, spec=spec, environment=environment, chunk=c,
                         cache=cache, problem=problem_obj)

    try:
        while pending or inflight:
            broken = False
            while pending and len(inflight) < window:
                c = pending.popleft()
                try:
                    inflight[ex.submit(_run_chunk, job(c))] = c
                except BrokenProcessPool:  # the pool broke since the last round
                    attempts[c] = attempts.get(c, 0) + 1
                    if attempts[c] > max_retries:
                        raise ScanError(
                            f"the process pool kept breaking when chunk {c} was submitted; "
                            "giving up (finished chunks are stored; rerun to resume)."
                        ) from None
                    pending.appendleft(c)
                    broken = True
                    break
            finished = set()
            if inflight and not broken:
                finished, _ = cf.wait(list(inflight), timeout=1.0,
                                      return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                c = inflight.pop(fut)
                try:
                    result: _ChunkOutput = fut.result()
                except BrokenProcessPool:
                    broken = True
                    attempts[c] = attempts.get(c, 0) + 1
                    if attempts[c] > max_retries:
                        raise ScanError(
                            f"chunk {c} broke its worker process {attempts[c]} times; giving up "
                            "(finished chunks are stored; rerun to resume)."
                        ) from None
                    pending.appendleft(c)
                    continue
                except ScanError:
                    raise
                except Exception as e:
                    raise ScanError(
                        f"chunk {c} failed: {type(e).__name__}: {e} (finished chunks are stored; "
                        "rerun the same scan to resume)."
                    ) from e
                table = columns_to_table(result.columns)
                traj = None if result.trajectories is None else columns_to_table(result.trajectories)
                counts = np.bincount(result.columns["status"].astype(np.int64), minlength=9)
                store.write_chunk(
                    c, table, traj, spec_hash=spec_hash,
                    info={"device": result.device, "seconds": round(result.seconds, 4),
                          "counts": {Status(i).name: int(k) for i, k in enumerate(counts) if k}},
                )
                computed.append(c)
                chunks_done += 1
                rows_done += table.num_rows
                rows_now += table.num_rows
                report(c, result.device)
            if broken:
                # Every future of a broken pool fails; resubmit them all on a fresh pool.
                for fut, c in list(inflight.items()):
                    pending.appendleft(c)
                inflight.clear()
                if not _is_process_executor(ex):
                    raise ScanError("the executor reported a broken process pool.")
                ex = _rebuild_process_pool(ex)
                rebuilt = True
    except BaseException:
        for fut in inflight:
            fut.cancel()
        if own_pool or rebuilt:
            ex.shutdown(wait=False, cancel_futures=True)
        raise
    if own_pool or rebuilt:
        ex.shutdown(wait=True)
    return computed


# --------------------------------------------------------------------------- load
def load(out, *, verify: bool = True, columns: Sequence[str] | None = None,
         problem: Problem | None = None) -> ScanResult:
    """Reads a scan store: the per-trajectory table (pyarrow; `.to_pandas()`) and the report.

    **Arguments:**

    - `out`: the scan directory.
    - `verify`: check every chunk file against the journal's SHA-256 (raises
      `ChunkCorruptedError` naming the bad chunks; rerun the scan to recompute them).
    - `columns`: read only these columns of the table (then `report` is `None`: the
      report needs the full table).
    - `problem`: the `Problem` for the report when the scan was given a `Problem` object
      (built-in and `module:function` problems are rebuilt from the manifest).

    Partial scans load too (`result.complete` is then `False`). The chunk files are plain
    Parquet: `polars.read_parquet("out/chunks/*.parquet")` or DuckDB
    `SELECT * FROM 'out/chunks/*.parquet'` read them directly.
    """
    store = Store(out)
    manifest = store.read_manifest()
    if manifest is None:
        raise FileNotFoundError(f"{out} is not a jaxflow scan (no manifest.json).")
    n_chunks = manifest["spec"]["n_chunks"]
    if verify:
        entries, bad = store.finished_chunks(n_chunks)
        if bad:
            raise ChunkCorruptedError(out, bad)
    else:
        entries = {c: e for c, e in store.read_journal().items() if 0 <= c < n_chunks}
    if problem is None and columns is None:
        problem = _problem_for_report(manifest)
    return _read_result(store, manifest, entries, problem,
                        columns=list(columns) if columns is not None else None)


def _problem_for_report(manifest: Mapping) -> Problem | None:
    source = manifest["spec"]["problem"]["source"]
    if source.get("kind") == "object":
        return None
    try:
        return _cached_problem(source)
    except Exception as e:  # a report without the problem is still a report
        warnings.warn(f"could not rebuild the problem {source}: {e}", stacklevel=3)
        return None

