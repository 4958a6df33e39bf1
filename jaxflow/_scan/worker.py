r"""Computing one chunk: the job a worker receives, the columns it returns, and where it runs.

The starts of chunk $i$ are `problem.sample(fold_in(key(seed), i), chunk_size)`: a
two-level key tree, so no flat index above $2^{32}$ ever reaches `fold_in` (which silently
wraps its data to 32 bits). The last chunk is drawn at full size and its surplus rows are
replaced by NaN starts, which the engine marks `NONFINITE` at $t = 0$ without integrating
them and which are dropped before storing: every chunk runs the same compiled program.

A chunk's rows depend only on (spec, chunk index): the engine has no cross-trajectory
arithmetic and each chunk runs whole on one device. The default executor is a device
pool: one thread per local device, each running whole chunks on its own device.

Workers refuse to run when they were `fork`ed from the process that imported this module
(the scan's driver): JAX is multithreaded and a forked copy of it deadlocks. The check
compares the pid recorded when this module was imported with the worker's own pid and
its multiprocessing parent; it runs before anything touches JAX.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import numpy as np

from .._executables import PROBLEM_FREE_ONLY, call_cached, program_identity
from .._detect import DetectorOptions, classify
from .._flow import flow, memory_lanes
from .._options import FlowOptions
from .._problem import Problem
from .._schema import checkpoint_state_columns, start_columns, trajectory_table
from .errors import ScanError
from .references import cached_fingerprint, cached_problem
from .spec import jaxflow_version, program_key, source_fingerprint

__all__ = ["ChunkJob", "ChunkOutput", "run_chunk", "device_pool", "forked_from_driver",
           "FORK_REFUSAL", "program_identity_of"]

# The process that imported this module. A `fork`ed child inherits the module (and this
# value) instead of importing it; a `spawn`ed or `forkserver` child imports it afresh.
_IMPORT_PID = os.getpid()

FORK_REFUSAL = (
    "a ProcessPoolExecutor with the 'fork' start method deadlocks with JAX "
    "(multithreaded). Use ProcessPoolExecutor(mp_context=multiprocessing.get_context("
    "'spawn')) or 'forkserver'."
)

_THREAD = threading.local()


def forked_from_driver() -> bool:
    """Is this process a `fork` of the process that imported jaxflow's scan machinery?

    True in a worker of a `fork` pool started by the scan's driver; false in the driver
    itself, in `spawn` workers (which import afresh) and in `forkserver` workers (whose
    multiprocessing parent is the driver, not the fork server that imported the module).
    """
    if os.getpid() == _IMPORT_PID:
        return False
    parent = multiprocessing.parent_process()
    return parent is None or parent.pid == _IMPORT_PID


@dataclasses.dataclass(frozen=True)
class ChunkJob:
    """What a worker needs for one chunk: small, picklable, no closures (unless `problem`)."""

    source: dict
    spec: dict
    environment: dict
    chunk: int
    cache: Any = None
    problem: Problem | None = None  # only for Problem objects (threads, or picklable)


@dataclasses.dataclass
class ChunkOutput:
    """A computed chunk: its per-trajectory columns and the saved checkpoint series."""

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
    table = trajectory_table(result, classify(result, **classify_options))
    return {k: np.asarray(v) for k, v in table.items()}


def run_chunk(job: ChunkJob) -> ChunkOutput:
    """Computes one chunk (in a worker thread or process); returns its columns."""
    if forked_from_driver():
        raise ScanError(f"this worker process was forked from the scan's driver: {FORK_REFUSAL}")
    import jax

    from .cache import enable_compilation_cache

    env = job.environment
    if bool(jax.config.jax_enable_x64) != env["x64"]:
        jax.config.update("jax_enable_x64", env["x64"])
    _check_worker_versions(env)
    cache_dir = enable_compilation_cache(job.cache) if job.cache is not False else None
    problem = job.problem if job.problem is not None else cached_problem(job.source)
    device = getattr(_THREAD, "device", None)
    t0 = time.perf_counter()
    # The default device needs no context (a `default_device` context is part of JAX's
    # trace-cache key: the same chunk program would be traced and compiled again).
    default = jax.config.jax_default_device or jax.devices()[0]
    on_default = device is None or device == default
    ctx = contextlib.nullcontext() if on_default else jax.default_device(device)
    # The engine's executable is stored next to JAX's cache, keyed by what this spec
    # decides (`jaxflow._executables`): a repeated scan neither traces nor compiles it.
    identity = program_identity_of(job.spec, env) if on_default else None
    with ctx, program_identity(identity, cache_dir):
        columns, trajectories = _first_run_serialised(
            (id(problem), program_key(job.spec), None if device is None else device.id),
            lambda: _compute_chunk(problem, job.spec, job.chunk, device),
        )
    if device is None:
        device = jax.devices()[0]
    return ChunkOutput(job.chunk, columns, trajectories, _device_label(device),
                       time.perf_counter() - t0)


def program_identity_of(spec: Mapping, environment: Mapping) -> dict | None:
    """What a scan's compiled programs depend on beyond their arguments' shapes, for the
    executable cache (`jaxflow._executables`). Every program is cached for a built-in
    problem (its code is covered by jaxflow's source fingerprint); for a user's `Problem`,
    which can change in ways its objective's jaxpr does not show, only the problem-free
    ones (the classification)."""
    if spec["problem"]["source"].get("kind") != "builtin":
        return {"environment": dict(environment), PROBLEM_FREE_ONLY: True}
    return {"problem": spec["problem"], "program": program_key(spec),
            "save_states": spec["save_states"], "environment": dict(environment)}


_WARM: set = set()
_WARM_LOCKS: dict = {}
_WARM_GUARD = threading.Lock()


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

    mine = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "jaxflow": jaxflow_version(),
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


    dtype = jnp.dtype(spec["dtype"])
    if spec["problem"]["fingerprint"] != cached_fingerprint(problem, dtype):
        raise ScanError(
            f"the objective of {problem.name!r} built on this worker differs from the scan's "
            "(jaxpr fingerprint mismatch): different code or versions on the worker?"
        )
    cs = int(spec["chunk_size"])
    valid = min(cs, int(spec["n"]) - chunk * cs)
    # Placement: the caller's `jax.default_device(device)`; arrays stay uncommitted, so
    # the programs are the ones a plain `jaxflow.flow` call compiles.
    x0 = _chunk_starts(problem, int(spec["seed"]), chunk, valid, cs, dtype)
    options = FlowOptions.from_spec(spec["flow"], save_states=int(spec["save_states"]))
    if options.lanes is None:  # left to the worker's backend (the result does not depend on it)
        options = options.replace(lanes=memory_lanes(
            problem, cs, options.stepper(problem), backend=_backend(device)))
    # The scan's detector thresholds also decide which trajectories `extend_undecided`
    # continues (a `horizon` there is for the final classification only).
    detect = {k: v for k, v in spec["classify"].items() if k != "horizon"}
    res = flow(problem, x0, options, detector_options=DetectorOptions(**detect))
    cols = _trajectory_columns(res, spec["classify"])
    x0_np = np.asarray(x0)[:valid]
    index = chunk * cs + np.arange(valid, dtype=np.int64)
    main = {"index": index}
    series = {}
    for name, col in cols.items():
        col = np.asarray(col)[:valid]
        (main if col.ndim == 1 else series)[name] = col
    starts = start_columns(x0_np)
    main.update(starts)
    keep = index < int(spec["save_trajectories"])
    trajectories = None
    if np.any(keep) and series:
        trajectories = {"index": index[keep], "status": main["status"][keep]}
        trajectories.update({k: v[keep] for k, v in series.items()})
        trajectories.update({k: v[keep] for k, v in starts.items()})
        if res.cp_x is not None:
            # Saved rows are the chunk's first ones (global index < save_trajectories),
            # all within the engine's first `save_states` rows.
            trajectories.update(checkpoint_state_columns(np.asarray(res.cp_x)[: int(keep.sum())]))
    return main, trajectories


def _backend(device) -> str:
    import jax

    return device.platform if device is not None else jax.default_backend()


def _chunk_starts(problem: Problem, seed: int, chunk: int, valid: int, size: int, dtype):
    """The starts of `chunk`: `problem.sample(fold_in(key(seed), chunk), size)`, rows
    from `valid` on NaN. Inside a scan's program identity, one stored executable (key,
    fold-in and sampling together; `jaxflow._executables`), so that a repeated scan
    lowers nothing to draw its starts; the key is then built from its data on the host,
    which for the default threefry keys and seeds below $2^{32}$ is `(0, seed)`."""
    import jax
    import jax.numpy as jnp

    if jax.config.jax_default_prng_impl == "threefry2x32" and 0 <= seed < 2**32:
        data = np.array([0, seed], np.uint32)
        args = (problem, data, np.asarray(chunk, np.uint32), np.asarray(valid, np.int32))
        static = {"fn": "chunk_starts", "size": size, "dtype": str(jnp.dtype(dtype))}

        def chunk_starts(problem, data, chunk, valid):
            key = jax.random.fold_in(jax.random.wrap_key_data(data), chunk)
            return _pad(problem.sample(key, size, dtype), valid)

        out = call_cached(chunk_starts, args, static=static, compiler_options={})
        if out is not None:
            return out
    key = jax.random.fold_in(jax.random.key(seed), chunk)
    return _sample_padded(problem, key, jnp.asarray(valid, jnp.int32), size, dtype)


def _pad(x0, valid):
    import jax.numpy as jnp

    return jnp.where(jnp.arange(x0.shape[0], dtype=valid.dtype)[:, None] < valid, x0, jnp.nan)


@eqx.filter_jit
def _sample_padded(problem: Problem, key, valid, size: int, dtype):
    """`size` starts from `key`; rows from `valid` on are NaN (the padding of the last
    chunk: the engine marks them NONFINITE at t = 0 and never integrates them)."""
    import jax.numpy as jnp

    return _pad(problem.sample(key, size, dtype), valid)


def _set_thread_device(devices: deque, lock: threading.Lock) -> None:
    with lock:
        _THREAD.device = devices.popleft()


def device_pool(devices: Sequence) -> cf.ThreadPoolExecutor:
    """One thread per device; each thread runs whole chunks on its own device."""
    queue, lock = deque(devices), threading.Lock()
    return cf.ThreadPoolExecutor(
        max_workers=len(devices), thread_name_prefix="jaxflow-device",
        initializer=_set_thread_device, initargs=(queue, lock),
    )
