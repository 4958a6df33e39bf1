"""Serialised engine executables (`jaxflow._executables`): a repeated scan of a built-in
problem loads the engine instead of tracing and compiling it, with the same results bit
for bit; anything that changes the program gives another entry; a damaged entry is
recompiled; scans of Problem objects store only the problem-free classification."""

import diffrax
import jax
import numpy as np
import pytest

import jaxflow as jf
from jaxflow import _executables

KW = dict(t1=50.0, chunk_size=64, progress=None)


def _bins(cache):
    return sorted((cache / _executables.SUBDIR).glob("*.bin"))


def _table(res):
    return res.to_numpy()


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture
def fresh_process(monkeypatch):
    """What a new process would have: no executable loaded, no program traced."""

    def reset():
        monkeypatch.setattr(_executables, "_LOADED", {})
        monkeypatch.setattr(_executables, "_TIMES", {})
        jax.clear_caches()

    return reset


def test_repeated_scan_loads_the_engine_with_identical_results(tmp_path, compilations,
                                                                fresh_process):
    cache = tmp_path / "xla"
    plain = jf.scan("matrix-completion", 128, out=tmp_path / "plain", compilation_cache=False, **KW)
    assert not cache.exists()
    fresh_process()
    first = jf.scan("matrix-completion", 128, out=tmp_path / "a", compilation_cache=cache, **KW)
    entries = _bins(cache)  # the engine, and the report's Hessians and values
    assert len(entries) >= 3
    compiled_in = _executables.last_measured("_started")["compile"]
    fresh_process()
    before = compilations(), compilations("jit(_hessians)")
    again = jf.scan("matrix-completion", 128, out=tmp_path / "b", compilation_cache=cache, **KW)
    # Neither the engine nor the report's programs were traced or compiled.
    assert (compilations(), compilations("jit(_hessians)")) == before
    # The engine's compile time comes with it (the price of its narrower siblings).
    times = _executables.last_measured("_started")
    assert times["compile"] == compiled_in and times["load"] > 0
    assert _bins(cache) == entries
    _same(_table(first), _table(plain))
    _same(_table(again), _table(plain))

    # Another program (here the tolerance) is another entry; the first stays valid.
    fresh_process()
    other = jf.scan("matrix-completion", 128, out=tmp_path / "c", compilation_cache=cache,
                    stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-8), **KW)
    assert set(entries) < set(_bins(cache))
    assert other.counts() == plain.counts()  # same fates, other steps

    # Damaged entries are not loaded: compiled again, same results; the entries are
    # rewritten, or removed where the program came from JAX's persistent cache (whose
    # executables are not stored, see `test_stored_engine_runs_in_another_process`).
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:1000])
    fresh_process()
    before = compilations()
    fixed = jf.scan("matrix-completion", 128, out=tmp_path / "d", compilation_cache=cache, **KW)
    assert compilations() == before + 1
    assert all(not entry.exists() or entry.stat().st_size > 1000 for entry in entries)
    _same(_table(fixed), _table(plain))


def test_problem_objects_store_only_the_problem_free_classification(tmp_path, compilations,
                                                                    fresh_process):
    # A Problem object's code is not covered by the identity: its engine is never stored.
    # The classification of a chunk depends on no problem: stored, and then loaded by a
    # scan of another problem (no tracing, no compilation).
    cache = tmp_path / "xla"
    problem = jf.problems.get("matrix-completion")
    jf.scan(problem, 64, out=tmp_path / "a", compilation_cache=cache, **KW)
    assert len(_bins(cache)) == 1
    # By name the problem has another identity (its engine is stored): a new program, but
    # the same classification, loaded.
    fresh_process()
    before = compilations("jit(_classify_batch)"), compilations()
    named = jf.scan("matrix-completion", 64, out=tmp_path / "b", compilation_cache=cache, **KW)
    assert compilations("jit(_classify_batch)") == before[0] and compilations() > before[1]
    plain = jf.scan("matrix-completion", 64, out=tmp_path / "c", compilation_cache=False, **KW)
    _same(_table(named), _table(plain))


def test_no_identity_no_cache():
    assert _executables.current_identity() is None
    assert _executables.call_cached(
        lambda x: x, (np.zeros(2),), static={}, compiler_options={}
    ) is None
    with _executables.program_identity({"a": 1}, None):
        assert _executables.current_identity() is None


def test_loaded_executables_are_bounded(monkeypatch):
    # A sweep compiles a few programs per grid point; keeping every one of them in the
    # process exhausted its memory maps after ~40 points. The least recently used go.
    monkeypatch.setattr(_executables, "_LOADED", {})
    m = _executables._MAX_LOADED
    for i in range(m + 5):
        _executables._remember(f"k{i}", object())
    assert list(_executables._LOADED) == [f"k{i}" for i in range(5, m + 5)]
    _executables._remember("k5", object())  # used again: now the most recent
    _executables._remember("new", object())
    assert "k5" in _executables._LOADED and "k6" not in _executables._LOADED
    assert len(_executables._LOADED) == m


_CHILD = """
import os, sys
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as under taskset
import jax
lowered = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: lowered.append(kw.get("fun_name"))
    if name == "/jax/core/compile/jaxpr_to_mlir_module_duration" else None)
import jaxflow as jf
from jaxflow import _executables
stored = []
_store = _executables._store
_executables._store = lambda path, *a: (stored.append(path.name), _store(path, *a))
jf.scan(sys.argv[3] if len(sys.argv) > 3 else "matrix-completion", 128, out=sys.argv[2],
        compilation_cache=sys.argv[1], t1=50.0, chunk_size=64, progress=None)
print("LOWERED", sum(lowered.count(f"jit({p})") for p in ("_started", "_start", "_run")),
      "STORED", len(stored))
"""


def test_stored_engine_runs_in_another_process(tmp_path):
    # The stored engine loads and runs in a new process with nothing compiled or stored
    # again (the test above reloads in the same process). An executable that JAX took
    # from its persistent cache is not stored: on XLA:CPU it serialised without its
    # compiled functions, and every later process failed to run it ("Function ... not
    # found"), compiled it again and stored it broken again.
    import shutil
    import subprocess
    import sys

    cache = tmp_path / "xla"
    runs = []
    for out in ("a", "b", "c"):
        if out == "c":  # JAX's cache keeps the programs; ours is gone
            shutil.rmtree(cache / _executables.SUBDIR)
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(cache), str(tmp_path / out)],
                              capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(proc.stdout.split("LOWERED")[-1].split())
    assert int(runs[0][0]) >= 1 and int(runs[0][2]) >= 1  # compiled and stored
    assert runs[1] == ["0", "STORED", "0"], runs  # loaded and run: nothing compiled or stored
    assert int(runs[2][0]) >= 1 and runs[2][2] == "0", runs  # from JAX's cache: not stored


def test_stored_lapack_engine_runs_in_another_process(tmp_path):
    # Deep linear (d = 24) factorises its Newton matrices with LAPACK (`jaxflow._linalg`
    # above 12 variables): such executables are stored too, and a process that only loads
    # them has LAPACK set up first (run uninitialised, they crashed the process).
    import pickle
    import subprocess
    import sys

    cache = tmp_path / "xla"
    runs = []
    for out in ("a", "b"):
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(cache), str(tmp_path / out), "deep-linear"],
            capture_output=True, text=True, timeout=300,
            env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(proc.stdout.split("LOWERED")[-1].split())
    assert int(runs[0][0]) >= 1 and int(runs[0][2]) >= 1, runs  # compiled and stored
    assert runs[1] == ["0", "STORED", "0"], runs  # loaded and run: nothing compiled
    metas = [pickle.loads(p.read_bytes())[1] for p in _bins(cache)]
    assert any(m["lapack"] for m in metas) and all(m["compile_s"] > 0 for m in metas)
    _same(jf.load(tmp_path / "b").to_numpy(), jf.load(tmp_path / "a").to_numpy())


def test_lookup_finds_what_call_cached_would_use(tmp_path, monkeypatch):
    # The narrowed tail prices a program by where `call_cached` would find it (see
    # `jaxflow._engine.RENT_TAIL`): the key from shapes alone must be the call's key.
    import jax.numpy as jnp

    monkeypatch.setattr(_executables, "_LOADED", {})
    fn = lambda x, y: x * 2.0 + y  # noqa: E731
    x, y = jnp.arange(4.0), jnp.ones(4)
    shaped = (jax.ShapeDtypeStruct(x.shape, x.dtype), y)
    kw = dict(static={"fn": "double"}, compiler_options={})
    with _executables.program_identity({"environment": {"v": 1}}, tmp_path):
        assert _executables.lookup(args=shaped, **kw)[1] is None  # would compile
        out = _executables.call_cached(fn, (x, y), **kw)
        np.testing.assert_array_equal(np.asarray(out), [1.0, 3.0, 5.0, 7.0])
        key, where = _executables.lookup(args=shaped, **kw)
        assert where == "memory" and (tmp_path / _executables.SUBDIR / f"{key}.bin").exists()
        monkeypatch.setattr(_executables, "_LOADED", {})  # a new process
        assert _executables.lookup(args=shaped, **kw) == (key, "disk")
        other = (jax.ShapeDtypeStruct((8,), x.dtype), jnp.ones(8))
        assert _executables.lookup(args=other, **kw)[1] is None
    assert _executables.lookup(args=shaped, **kw) is None  # no identity, no cache
