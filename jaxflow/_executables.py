r"""Serialised engine executables: a repeated scan starts without tracing or compiling.

JAX's persistent compilation cache (`jaxflow._scan.cache`) saves XLA's compilation, but
to find an entry it needs the lowered program, so every new process still traces and
lowers the engine (about 1 s of a scan's start on a 2-core CPU). Here the *compiled*
executable of the engine is stored as well (`jax.experimental.serialize_executable`),
under a key that the caller computes without tracing anything.

The key is the caller's **identity** of everything the program is built from, plus what
`jaxflow._engine.run` adds at the call. A scan's worker gives (`program_identity`) the
objective's jaxpr fingerprint (jaxpr and constants, `jaxflow._scan.references`), the
problem's source, the flow and classification options of its spec, the chunk size and
dtype, jaxflow's source fingerprint and the versions in the scan's environment; to that
are added here the engine's static configuration (lanes, step budget, saved states, the
field's and stepper's types), the path, shape and dtype of every array argument, the
versions of jax, jaxlib, equinox and diffrax,
the platform and device kind, the JAX flags that change lowering, `XLA_FLAGS` and the
engine's compiler options. A change to any of them gives another key: a stale entry is
never found, so it is never used. An entry that cannot be read, loaded or run is ignored and
compiled anew (and rewritten). Results are bit for bit those of the traced program
(`tests/test_executables.py`).

Programs whose only custom calls are LAPACK kernels (XLA:CPU's `eigh`, Cholesky, LU:
the engine's linear algebra above 12 variables, `jaxflow._linalg`, and the report's
Hessian eigenvalues) are stored too. jaxlib initialises LAPACK when it lowers such a call,
and a process that only loads one would run it uninitialised (a segmentation fault,
measured with a float32 `eigh` on CPU, jax 0.10.2), so before loading an entry that
calls LAPACK this module has jaxlib set it up (`_prepare_lapack`).
Programs with any other custom call (host callbacks, a problem's foreign kernels) are
never stored.

Only calls made inside `program_identity(...)` use this cache (a scan's chunks of a
built-in problem, on the default device); every other call compiles as usual. Like JAX's own cache, the directory
holds executable code: anyone who can write to it can run code as you. It lives inside
the compilation-cache directory (`jaxflow-executables/`), under the same trust.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import pickle
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax

__all__ = ["program_identity", "current_identity", "call_cached", "lookup", "last_measured",
           "compile_seconds", "accepted_options", "SUBDIR", "PROBLEM_FREE_ONLY"]

SUBDIR = "jaxflow-executables"

# An identity with this entry set covers only problem-free programs (`call_cached`'s
# `problem_free`): a scan of a user's `Problem`, whose code the identity cannot cover.
PROBLEM_FREE_ONLY = "problem_free_only"
_IDENTITY: contextvars.ContextVar = contextvars.ContextVar("jaxflow_program_identity",
                                                           default=None)
# Executables loaded or compiled in this process, by key (a chunk program is reused by
# every chunk of a scan), the most recently used last. Bounded: a sweep goes through a few
# programs per grid point, and every executable kept holds ~250 memory maps on XLA:CPU;
# unbounded, a sweep of ~40 points of `matrix-completion-nxn` reached the kernel's
# vm.max_map_count (65530) and died in LLVM ("Cannot allocate memory").
_LOADED: dict[str, Any] = {}
_MAX_LOADED = 16
_LOCK = threading.Lock()
# The JAX flags that change how a traced program is lowered (and so its executable).
_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
          "jax_numpy_dtype_promotion", "jax_default_prng_impl", "jax_enable_checks",
          "jax_debug_nans", "jax_debug_infs", "jax_disable_jit")


@contextlib.contextmanager
def program_identity(identity: Mapping | None, directory):
    """Within this context, engine programs are stored and loaded as executables.

    **Arguments:**

    - `identity`: JSON-able description of everything the program depends on that the
      engine cannot see (see the module docstring); `None` turns the cache off.
    - `directory`: where the executables live; `None` turns the cache off.
    """
    value = None
    if identity is not None and directory is not None:
        value = (json.dumps(identity, sort_keys=True, default=str), str(directory))
    token = _IDENTITY.set(value)
    try:
        yield
    finally:
        _IDENTITY.reset(token)


def current_identity():
    """`(identity_json, directory)` set by `program_identity`, or None."""
    return _IDENTITY.get()


def _environment() -> dict:
    """What the executable depends on beyond the caller's identity (which carries
    jaxflow's source fingerprint: see `jaxflow._scan.worker`)."""
    import diffrax
    import jaxlib
    import numpy as np

    device = jax.devices()[0]
    return {
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "equinox": eqx.__version__,
        "diffrax": getattr(diffrax, "__version__", "?"), "numpy": np.__version__, "platform": device.platform, "device_kind": getattr(device, "device_kind", ""),
        "default_device": str(jax.config.jax_default_device),
        "flags": {k: str(getattr(jax.config, k, None)) for k in _FLAGS},
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def _arrays(dynamic) -> list:
    """(path, shape, dtype, weak type) of every array leaf: the call's signature."""
    leaves = jax.tree_util.tree_flatten_with_path(dynamic)[0]
    return [
        [jax.tree_util.keystr(path), list(leaf.shape), str(leaf.dtype),
         bool(getattr(leaf, "weak_type", False))]
        for path, leaf in leaves
    ]


def _remember(key: str, compiled) -> None:
    with _LOCK:
        _LOADED.pop(key, None)
        _LOADED[key] = compiled  # dicts keep insertion order: the oldest use comes first
        while len(_LOADED) > _MAX_LOADED:
            del _LOADED[next(iter(_LOADED))]


# XLA:CPU may split a module into several object files compiled in parallel. Stored
# executables have been seen to load in a new process and then fail when run ("Function
# compare_convert_fusion.2 not found"; one-core processes, scans of 10^4 starts), so each
# was compiled again; with one part per module the same scans loaded and ran. Not
# reproduced on demand since: a defensive option, with no measured cost (cold compile of
# the README's scan on one core 22.6 s with it, 22.7 s without).
_CPU_STORABLE = {"xla_cpu_parallel_codegen_split_count": 1}


def accepted_options(options: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """The `(name, value)` XLA compiler options of `options` that this jaxlib accepts
    (checked once per process by compiling a trivial program: XLA raises on an option it
    does not know), in their order."""
    return tuple(item for item in options if _accepted(*item))


@functools.cache
def _accepted(name: str, value) -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(0.0).compile()
    except Exception:  # noqa: BLE001 - an option this jaxlib does not know
        return False
    return True


def _storable_options_for(platform: str) -> tuple:
    return accepted_options(tuple(_CPU_STORABLE.items())) if platform == "cpu" else ()


def _storable_options() -> dict:
    """Compiler options that make an executable loadable in another process."""
    return dict(_storable_options_for(jax.default_backend()))


def call_cached(fn: Callable, args: tuple, *, static: Mapping, compiler_options: Mapping,
                problem_free: bool = False):
    """`jax.jit(fn, compiler_options)(*args)` through the executable cache, or `None`
    when no `program_identity` is active (then the caller compiles as usual).

    `static`: JSON-able description of the non-array parts of `args` that the caller's
    identity does not already cover (the engine's static fields).
    `problem_free`: the program does not depend on the problem or the flow (the
    classification of a chunk: checkpoint series in, verdicts out): keyed by the
    identity's `"environment"` entry only (versions and jaxflow's source), so that scans
    of other problems share its executable.
    """
    found = _key(args, static, compiler_options, problem_free)
    if found is None:
        return None
    key, path, compiler_options = found
    dynamic, rest = eqx.partition(args, eqx.is_array)
    leaves, treedef = jax.tree.flatten(dynamic)
    name = static.get("program", fn.__name__)

    def compile_and_store():
        t0 = time.perf_counter()

        def flat(leaves_):
            return fn(*eqx.combine(jax.tree.unflatten(treedef, leaves_), rest))

        flat.__name__ = flat.__qualname__ = fn.__name__  # the program's name: jit(_run)
        lowered = jax.jit(flat, compiler_options=dict(compiler_options)).lower(leaves)
        hits = _persistent_cache_hits()
        compiled = lowered.compile()
        seconds = time.perf_counter() - t0
        _record(name, "compile", seconds)
        # An executable that JAX took from its persistent cache is not stored: on
        # XLA:CPU it serialises without its compiled functions, and the entry would fail
        # when run in the next process ("Function ... not found"), be compiled (taken
        # from JAX's cache) and stored broken again, in every process.
        fresh = _persistent_cache_hits() == hits
        text = lowered.as_text()
        if fresh and _storable(text):
            _store(path, compiled, {"compile_s": seconds,
                                    "lapack": bool(_CUSTOM_CALL.search(text))})
        elif not fresh:
            with contextlib.suppress(OSError):  # an entry that failed: not read again
                path.unlink(missing_ok=True)
        return compiled

    with _LOCK:
        compiled = _LOADED.pop(key, None)
        if compiled is not None:
            _LOADED[key] = compiled  # most recently used last
    loaded = False
    if compiled is None:
        t0 = time.perf_counter()
        compiled, compile_s = _load(path)
        loaded = compiled is not None
        if loaded:
            _record(name, "load", time.perf_counter() - t0)
            if compile_s is not None:
                # What compiling it cost where it was stored: the price of its siblings
                # that are not stored (the engine's narrower programs, `_engine._price`),
                # as in the process that compiled it, not a default guess.
                _record(name, "compile", compile_s)
        if compiled is None:
            compiled = compile_and_store()
        _remember(key, compiled)
    if not loaded:
        return compiled(leaves)
    try:
        # Waits for the result: XLA reports a broken executable when it runs, which with
        # asynchronous dispatch would be when the caller reads the outputs.
        return jax.block_until_ready(compiled(leaves))
    except jax.errors.JaxRuntimeError:
        # Loaded but not runnable here (XLA:CPU: "Function ... not found" with several
        # host devices): compiled anew, replacing the entry. The call is pure, so
        # running it again is safe.
        compiled = compile_and_store()
        _remember(key, compiled)
        return compiled(leaves)


def _key(args: tuple, static: Mapping, compiler_options: Mapping, problem_free: bool):
    """(key, path, compiler options) of a call in the current program identity, or None
    without one. Leaves that are `jax.ShapeDtypeStruct`s count as arrays of that shape."""
    current = _IDENTITY.get()
    if current is None:
        return None
    identity, directory = current
    parsed = json.loads(identity)
    if parsed.get(PROBLEM_FREE_ONLY) and not problem_free:
        return None
    if problem_free:
        identity = json.dumps({"environment": parsed.get("environment")}, sort_keys=True,
                              default=str)
    compiler_options = {**compiler_options, **_storable_options()}
    dynamic, _ = eqx.partition(
        args, lambda a: eqx.is_array(a) or isinstance(a, jax.ShapeDtypeStruct)
    )
    key_text = json.dumps(
        {"identity": identity, "static": static, "arrays": _arrays(dynamic),
         "compiler_options": sorted(compiler_options.items()), "environment": _environment()},
        sort_keys=True, default=str,
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()
    return key, Path(directory) / SUBDIR / f"{key}.bin", compiler_options


def lookup(*, args: tuple, static: Mapping, compiler_options: Mapping,
           problem_free: bool = False):
    """Where `call_cached` would find this call's executable: `(key, "memory")` (loaded or
    compiled in this process), `(key, "disk")` (stored), `(key, None)` (it would compile),
    or None when no program identity is active. Nothing is loaded or compiled; `args`
    may hold `jax.ShapeDtypeStruct`s in place of arrays."""
    found = _key(args, static, compiler_options, problem_free)
    if found is None:
        return None
    key, path, _ = found
    with _LOCK:
        if key in _LOADED:
            return key, "memory"
    return key, "disk" if path.exists() else None


# Latest measured compile and load seconds per program name (this process).
_TIMES: dict = {}


def _record(name: str, kind: str, seconds: float) -> None:
    with _LOCK:
        _TIMES.setdefault(name, {})[kind] = seconds


def last_measured(name: str) -> dict:
    """`{"compile": s, "load": s}`: the latest compile and load seconds of a program of
    that name in this process (the entries measured so far)."""
    with _LOCK:
        return dict(_TIMES.get(name, {}))


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_COMPILE_CLOCK = threading.local()
_TIMING: list = []


def compile_seconds() -> float:
    """Seconds this thread has spent tracing, lowering and compiling programs since the
    first call (JAX's monitoring events; differences of two calls time a section)."""
    with _LISTENING_LOCK:
        if not _TIMING:
            def listen(name, secs, **kwargs):
                if name in _COMPILE_EVENTS:
                    _COMPILE_CLOCK.s = getattr(_COMPILE_CLOCK, "s", 0.0) + secs

            jax.monitoring.register_event_duration_secs_listener(listen)
            _TIMING.append(listen)
    return getattr(_COMPILE_CLOCK, "s", 0.0)


_HITS = threading.local()
_LISTENING: list = []
_LISTENING_LOCK = threading.Lock()


def _persistent_cache_hits() -> int:
    """Hits of JAX's persistent compilation cache in this thread so far (a listener on
    JAX's monitoring events, registered on first use)."""
    with _LISTENING_LOCK:
        if not _LISTENING:
            def listen(name, **kwargs):
                if name == "/jax/compilation_cache/cache_hits":
                    _HITS.n = getattr(_HITS, "n", 0) + 1

            jax.monitoring.register_event_listener(listen)
            _LISTENING.append(listen)
    return getattr(_HITS, "n", 0)


_CUSTOM_CALL = re.compile(r"custom_call\s*@\"?([\w.$-]+)")


def _storable(text: str) -> bool:
    """Whether a lowered program (StableHLO text) may be stored: no custom calls other
    than LAPACK's (`_prepare_lapack` makes those safe to load)."""
    return all(t.startswith("lapack_") for t in _CUSTOM_CALL.findall(text))


@functools.cache
def _prepare_lapack() -> None:
    """jaxlib sets LAPACK up when it lowers a LAPACK call (`jaxlib.lapack.
    prepare_lapack_call`): called directly, or else by lowering (not compiling or
    running) a 2x2 Cholesky factorisation (0.16 s in a new process)."""
    try:
        import numpy as np
        from jaxlib import lapack

        lapack.prepare_lapack_call("potrf_ffi", np.dtype(np.float32))
    except Exception:  # noqa: BLE001 - another jaxlib: the public way
        with contextlib.suppress(Exception):  # no LAPACK here: nothing stored needs it
            jax.jit(jax.numpy.linalg.cholesky).lower(
                jax.ShapeDtypeStruct((2, 2), jax.numpy.float32))


def _load(path: Path):
    """`(executable, compile seconds)` stored at `path`, or `(None, None)` (missing,
    unreadable, or not loadable here: then it is compiled anew and overwritten)."""
    from jax.experimental.serialize_executable import deserialize_and_load

    try:
        data = path.read_bytes()
    except OSError:
        return None, None
    try:
        (payload, in_tree, out_tree), meta = pickle.loads(data)
        if meta.get("lapack"):
            _prepare_lapack()
        # On the default device only (as compiled), not on every device of the backend.
        device = jax.config.jax_default_device or jax.devices()[0]
        compiled = deserialize_and_load(payload, in_tree, out_tree, backend=device.client,
                                        execution_devices=[device])
        seconds = meta.get("compile_s")
        return compiled, float(seconds) if isinstance(seconds, (int, float)) else None
    except Exception:  # a truncated or foreign entry: recompile
        return None, None


def _store(path: Path, compiled, meta: dict) -> None:
    """Writes the executable and `meta` (the seconds it took to compile, whether it calls
    LAPACK) atomically (a crash leaves no partial entry); failures to serialise or write
    only cost the next process a compilation."""
    from jax.experimental.serialize_executable import serialize

    try:
        data = pickle.dumps((serialize(compiled), meta))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except Exception:
        return
