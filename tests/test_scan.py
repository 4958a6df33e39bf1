"""Scans: keys, determinism across schedules/devices/engines, crash and resume, bad input.

All scans here share one spec (Example 1.1, t1 = 50, chunks of 64, N = 300: five chunks,
the last one padded), so the engine compiles once per process.
"""

import concurrent.futures as cf
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow._scan import resolve_problem
from jaxflow._scan.store import canonical_json
from jaxflow._scan.worker import ChunkJob, forked_from_driver, run_chunk

PROBLEM = "matrix-completion"
N = 300
SPEC = dict(t1=50.0, chunk_size=64, seed=7, compilation_cache=False)
REPO = Path(__file__).resolve().parents[1]


def assert_tables_equal(a, b):
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x = a.column(name).to_numpy()
        y = b.column(name).to_numpy()
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    """A private persistent compilation cache: worker processes (Dask, process pools)
    load the reference's compiled engine from it instead of compiling it again."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    path = tmp_path_factory.mktemp("xla-cache")
    previous = (jax.config.jax_compilation_cache_dir,
                jax.config.jax_persistent_cache_min_compile_time_secs)
    yield str(path)
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    cc.reset_cache()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, xla_cache):
    """An uninterrupted serial scan on one device."""
    out = tmp_path_factory.mktemp("ref") / "scan"
    spec = {**SPEC, "compilation_cache": xla_cache}
    return jf.scan(PROBLEM, N, out=out, devices=jax.local_devices()[:1], **spec)


def test_starts_come_from_two_level_keys_and_flow_matches(reference):
    t = reference.table
    assert t.num_rows == N and reference.complete
    assert np.array_equal(t.column("index").to_numpy(), np.arange(N))
    problem, _ = resolve_problem(PROBLEM)  # the scan's own Problem object: no recompilation
    starts = np.stack([t.column(f"start_{j}").to_numpy() for j in range(4)], axis=1)
    for chunk in range(5):
        # Uniform(-1, 1) from fold_in(key(seed), chunk), drawn for the whole chunk.
        key = jax.random.fold_in(jax.random.key(7), chunk)
        u = jax.random.uniform(key, (64, 4), jnp.float32)
        expect = np.asarray(-1.0 + 2.0 * u)[: min(64, N - 64 * chunk)]
        assert np.array_equal(starts[64 * chunk : 64 * chunk + len(expect)], expect)
    # Chunk 0 is exactly one engine call on its starts.
    x0 = jnp.asarray(starts[:64])
    res = jf.flow(problem, x0, t1=50.0)
    assert np.array_equal(t.column("f").to_numpy()[:64], np.asarray(res.f))
    assert np.array_equal(t.column("x_2").to_numpy()[:64], np.asarray(res.x[:, 2]))
    # The padding of the last chunk (20 NaN rows) never reaches the table.
    assert np.all(np.isfinite(starts))
    counts = reference.counts()
    assert counts.get("CONVERGED", 0) > 200 and sum(counts.values()) == N
    # Escaping trajectories of Example 1.1: f - 1 ~ t^(-1/2) along the valley at infinity.
    st = t.column("status").to_numpy()
    f = t.column("f").to_numpy().astype(np.float64)
    esc = np.isin(st, [jf.Status.HORIZON, jf.Status.ESCAPING])
    assert esc.sum() > 5
    assert np.all(f[esc] - 1 > 0.5 / np.sqrt(50)) and np.all(f[esc] - 1 < 1 / np.sqrt(50))


def test_no_recompilation_across_chunks(reference, tmp_path, compilations):
    before = compilations()
    res = jf.scan(PROBLEM, 200, out=tmp_path / "s", **SPEC)  # 4 chunks, last one padded
    assert compilations() == before
    assert res.table.num_rows == 200


def test_threads_and_shuffled_order_are_bit_identical(reference, tmp_path):
    order = list(range(5))
    random.Random(3).shuffle(order)
    with cf.ThreadPoolExecutor(2) as ex:
        res = jf.scan(PROBLEM, N, out=tmp_path / "threads", executor=ex, chunks=order, **SPEC)
    assert res.computed_chunks != sorted(res.computed_chunks) or order == sorted(order)
    assert_tables_equal(res.table, reference.table)
    assert res.counts() == reference.counts()


_SUBPROCESS = textwrap.dedent(
    """
    import collections, json, sys, time
    import jax
    jax.config.update("jax_enable_x64", True)   # like tests/conftest.py
    from jax import monitoring
    events = collections.Counter()
    monitoring.register_event_listener(lambda name, **kw: events.update([name]))
    import jaxflow as jf

    mode, out = sys.argv[1], sys.argv[2]
    spec = json.loads(sys.argv[3])
    print("DEVICES", len(jax.local_devices()), flush=True)

    def progress(p):
        if p.chunk is None:
            return
        hits = events["/jax/compilation_cache/cache_hits"]
        print("DONE", p.chunk, p.device, "HITS", hits, flush=True)
        if mode == "kill":
            time.sleep(2.0)   # the test kills us (SIGKILL) while we wait here

    spec.pop("compilation_cache")
    res = jf.scan("matrix-completion", 300, out=out, progress=progress, **spec)
    print("END", len(res.computed_chunks), flush=True)
    """
)


def _spawn(mode, out, cache_dir):
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4",
        # The suite's codegen flags (conftest.py) kept: the tables are compared bit for bit.
        XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""),
                            "--xla_force_host_platform_device_count=4"]).strip(),
        JAXFLOW_COMPILATION_CACHE=str(cache_dir),
    )
    return subprocess.Popen(
        [sys.executable, "-c", _SUBPROCESS, mode, str(out), json.dumps(SPEC)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )


def _file_stats(out: Path, chunks):
    stats = {}
    for c in chunks:
        st = (out / "chunks" / f"chunk-{c:06d}.parquet").stat()
        stats[c] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return stats


@pytest.mark.slow
def test_four_devices_kill9_resume_lock_and_compile_cache(reference, tmp_path):
    cache = tmp_path / "xla-cache"
    # 1. Four virtual CPU devices, each running whole chunks: identical table.
    p = _spawn("run", tmp_path / "dev4", cache)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]
    assert "DEVICES 4" in stdout
    dev4 = jf.load(tmp_path / "dev4")
    assert sum(dev4.devices.values()) == 5
    assert_tables_equal(dev4.table, reference.table)
    assert any(cache.iterdir()), "the compilation cache stayed empty"

    # 2. A second process: cache hits (no recompilation); killed with SIGKILL after 2 chunks.
    out = tmp_path / "killed"
    p = _spawn("kill", out, cache)
    done_lines = []
    try:
        for line in p.stdout:
            if line.startswith("DONE"):
                done_lines.append(line.split())
                if len(done_lines) == 2:
                    break
        assert len(done_lines) == 2, p.stderr.read()[-3000:]
        # While it sleeps holding the lock, a second writer gets a clear error.
        with pytest.raises(jf.ScanLockedError, match=r"another jaxflow process \(pid"):
            jf.scan(PROBLEM, N, out=out, **SPEC)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -signal.SIGKILL
    assert int(done_lines[0][-1]) > 0, "the second process recompiled instead of hitting the cache"

    journal = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    finished = sorted(e["chunk"] for e in journal)
    assert 2 <= len(finished) < 5
    before = _file_stats(out, finished)
    resumed = jf.scan(PROBLEM, N, out=out, **SPEC)
    assert sorted(resumed.computed_chunks) == sorted(set(range(5)) - set(finished))
    assert sorted(resumed.skipped_chunks) == finished
    assert _file_stats(out, finished) == before  # finished chunks were not rewritten
    assert_tables_equal(resumed.table, reference.table)


@pytest.mark.slow
def test_dask_local_cluster_with_a_killed_worker(reference, tmp_path, xla_cache):
    distributed = pytest.importorskip("distributed")
    order = list(range(5))
    random.Random(11).shuffle(order)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
    ) as cluster, distributed.Client(cluster) as client:
        killed = []

        def progress(p):
            if p.chunk is not None and not killed:
                victim = sorted(client.scheduler_info()["workers"])[0]
                pid = client.run(os.getpid, workers=[victim])[victim]
                os.kill(pid, signal.SIGKILL)  # the nanny restarts it; its task is retried
                killed.append(pid)

        res = jf.scan(PROBLEM, N, out=tmp_path / "dask", executor=client.get_executor(),
                      chunks=order, progress=progress, **{**SPEC, "compilation_cache": xla_cache})
    assert killed
    assert res.complete and res.computed_chunks != sorted(res.computed_chunks)
    assert_tables_equal(res.table, reference.table)


@pytest.mark.slow
def test_broken_process_pool_is_rebuilt(reference, tmp_path, xla_cache):
    import multiprocessing

    pools = []  # the scan builds its pools from the factory, and rebuilds a broken one

    def make_pool():
        pools.append(cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
        return pools[-1]

    killed = []

    def progress(p):
        if p.chunk is not None and not killed:
            for proc in list(pools[-1]._processes.values()):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)

    # One chunk in flight at a time: the worker is killed after the first chunk is stored
    # and before the next is submitted. With every chunk in flight at once, the one worker
    # could finish them all (milliseconds each with the compilation cache warm) before the
    # driver read the first result, and the kill then broke nothing that was still needed.
    try:
        res = jf.scan(PROBLEM, N, out=tmp_path / "pool", executor=make_pool, progress=progress,
                      max_in_flight=1, **{**SPEC, "compilation_cache": xla_cache})
    finally:
        for ex in pools:
            ex.shutdown(wait=False, cancel_futures=True)
    assert killed and res.complete and len(pools) == 2
    assert_tables_equal(res.table, reference.table)


class _BrokenPool(cf.Executor):
    """An executor instance whose every chunk fails as if its worker process died."""

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        fut.set_exception(BrokenProcessPool("a worker died"))
        return fut


def test_broken_executor_instance_is_not_rebuilt(tmp_path):
    # The scan cannot rebuild an executor it did not build: a clear error, chunks resumable.
    with pytest.raises(jf.ScanError, match="cannot rebuild an executor it did not create"):
        jf.scan(PROBLEM, 10, out=tmp_path / "broken", executor=_BrokenPool(), **SPEC)


def test_fork_pool_and_unpicklable_problem_refused_before_compute(tmp_path, compilations):
    import multiprocessing

    before = compilations()
    assert not forked_from_driver()  # the driver itself
    if "fork" in multiprocessing.get_all_start_methods():
        with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as ex:
            with pytest.raises(ValueError, match="fork"):
                jf.scan(PROBLEM, 10, out=tmp_path / "a", executor=ex, **SPEC)
            # The check lives in the worker: a forked worker refuses a chunk before JAX.
            job = ChunkJob(source={}, spec={}, environment={}, chunk=0)
            with pytest.raises(jf.ScanError, match="forked from the scan's driver.*'fork'"):
                ex.submit(run_chunk, job).result()
    problem = jf.Problem(lambda z: jnp.sum(z**2), dim=2, name="closure")
    spawn = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=spawn) as ex:
        with pytest.raises(TypeError, match="closures and lambdas cannot be pickled"):
            jf.scan(problem, 10, out=tmp_path / "b", executor=ex, **SPEC)
    assert compilations() == before
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_problem_object_runs_in_process(tmp_path):
    problem, _ = resolve_problem(PROBLEM)
    res = jf.scan(problem, 64, out=tmp_path / "obj", **SPEC)
    assert res.manifest["spec"]["problem"]["source"] == {"kind": "object", "name": PROBLEM}
    assert res.table.num_rows == 64


def test_changed_spec_is_refused_and_nothing_modified(reference, tmp_path):
    out = reference.out

    def snapshot():
        return {
            p.relative_to(out): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file()
        }

    before = snapshot()
    changes = [
        (dict(PROBLEM=PROBLEM, n=N, seed=8), "spec.seed"),
        (dict(PROBLEM=PROBLEM, n=N, chunk_size=32), "spec.chunk_size"),
        (dict(PROBLEM=PROBLEM, n=N + 1), "spec.n"),
        (dict(PROBLEM="relu-flat", n=N), "spec.problem.source.name"),
        (dict(PROBLEM=PROBLEM, n=N, params={"low": -2.0}), "spec.problem.source.params.low"),
        (dict(PROBLEM=PROBLEM, n=N, t1=60.0), "spec.flow.t1"),
    ]
    for change, field in changes:
        kw = dict(SPEC)
        problem = change.pop("PROBLEM")
        n = change.pop("n")
        kw.update(change)
        with pytest.raises(jf.SpecMismatchError) as info:
            jf.scan(problem, n, out=out, **kw)
        fields = [d[0] for d in info.value.differences]
        assert field in fields, fields
        assert field in str(info.value) and "nothing was modified" in str(info.value)
    assert snapshot() == before


def test_other_versions_are_refused(reference, monkeypatch):
    from jaxflow._scan import api

    real = api.environment
    monkeypatch.setattr(api, "environment", lambda: {**real(), "jax": "0.0.1"})
    with pytest.raises(jf.SpecMismatchError, match="environment.jax"):
        jf.scan(PROBLEM, N, out=reference.out, **SPEC)
    monkeypatch.setattr(api, "environment", lambda: {**real(), "jaxflow_source": "edited"})
    with pytest.raises(jf.SpecMismatchError, match="environment.jaxflow_source"):
        jf.scan(PROBLEM, N, out=reference.out, **SPEC)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "`n` must be a positive integer"),
        (dict(n=-5), "`n` must be a positive integer"),
        (dict(chunk_size=0), "`chunk_size` must be a positive integer"),
        (dict(seed=-1), "`seed`"),
        (dict(seed=2**32), "`seed`"),
        (dict(params={"low": float("nan")}), r"`low`.*(finite|NaN)"),
        (dict(params={"high": float("inf")}), r"`high`.*(finite|NaN|inf)"),
        (dict(t1=float("nan")), "t1 must be a positive finite"),
        (dict(escape_radius=0.0), "escape_radius"),
        (dict(dtype="float16"), "dtype"),
        (dict(solver="NoSuchSolver"), "unknown diffrax solver"),
    ],
)
def test_bad_input_fails_before_any_compute(tmp_path, kwargs, match, compilations):
    before = compilations()
    kw = dict(SPEC, n=10)
    kw.update(kwargs)
    n = kw.pop("n")
    with pytest.raises(ValueError, match=match):
        jf.scan(PROBLEM, n, out=tmp_path / "out", **kw)
    assert compilations() == before
    assert not (tmp_path / "out").exists()


def test_unwritable_out_fails_before_any_compute(tmp_path, compilations):
    before = compilations()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="not a directory"):
        jf.scan(PROBLEM, 10, out=blocker / "out", **SPEC)
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="permission denied"):
            jf.scan(PROBLEM, 10, out=ro / "out", **SPEC)
    assert compilations() == before


def test_nonfinite_trajectories_do_not_stop_the_scan(tmp_path):
    # f = x^2 - x^4/4 by reference, as a user module: from |x0| > sqrt(2) the flow blows
    # up at t* = log(x0^2 / (x0^2 - 2)) / 4; with no escape radius it overflows.
    # Kvaerno5: its stage iterates overflow, so some rows are NONFINITE (Rodas4, the
    # default, rejects every step near t* until the step underflows: all MAX_STEPS).
    res = jf.scan(
        "scan_problems:double_well", 200, out=tmp_path / "blowup",
        params={"dim": 1, "low": -2.0, "high": 2.0}, escape_radius=float("inf"),
        solver="Kvaerno5", **SPEC,
    )
    assert res.complete and res.table.num_rows == 200
    st = res.column("status")
    x0 = res.column("start_0").astype(np.float64)
    t = res.column("t").astype(np.float64)
    assert np.all(st[np.abs(x0) < 1.3] == jf.Status.CONVERGED)
    blow = np.abs(x0) > 1.5
    # The blow-up ends as NONFINITE when the state overflows, or as MAX_STEPS when the
    # step size underflows first (a failed implicit solve with a finite iterate is not
    # NONFINITE); either way at t*, and the rest of the scan is unaffected.
    assert blow.sum() > 20 and np.all(np.isin(st[blow], [jf.Status.NONFINITE, jf.Status.MAX_STEPS]))
    assert np.sum(st[blow] == jf.Status.NONFINITE) > 0
    t_star = 0.25 * np.log(x0[blow] ** 2 / (x0[blow] ** 2 - 2))
    assert np.all(t[blow] <= t_star * (1 + 1e-5))
    assert np.all(t[blow] >= t_star * (1 - 1e-3))
    assert res.manifest["spec"]["flow"]["escape_radius"] == "inf"


def test_manifest_records_versions_and_hash(reference):
    m = json.loads((reference.out / "manifest.json").read_text())
    import hashlib

    import jaxlib

    assert m["spec_sha256"] == hashlib.sha256(canonical_json(m["spec"]).encode()).hexdigest()
    env = m["environment"]
    assert env["jax"] == jax.__version__ and env["jaxlib"] == jaxlib.__version__
    assert env["jaxflow"] == jf.__version__
    assert env["x64"] is True and env["prng_impl"] == "threefry2x32"
    assert len(env["jaxflow_source"]) == 64
    assert m["spec"]["dtype"] == "float32" and m["spec"]["n_chunks"] == 5
    assert m["spec"]["flow"]["solver"] == "jaxflow.Rodas4"  # "auto", recorded resolved
    assert len(m["checkpoint_times"]) > 10 and m["checkpoint_times"][0] == 0.0
