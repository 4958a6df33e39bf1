"""The scan store: atomic chunk files, journal, verification, recomputation, readers."""

import hashlib
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import jaxflow as jf
from jaxflow._scan import store as _store
from jaxflow._scan.store import Store, atomic_write_bytes, canonical_json, diff_specs

PROBLEM = "matrix-completion"
N = 300
SPEC = dict(t1=50.0, chunk_size=64, seed=7, compilation_cache=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "scan"
    return jf.scan(PROBLEM, N, out=out, **SPEC)


@pytest.fixture
def copy(finished, tmp_path):
    """A private copy of the finished store (resuming it must recompute nothing)."""
    dst = tmp_path / "copy"
    shutil.copytree(finished.out, dst)
    return dst


def assert_same_table(a, b):
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def test_layout_and_journal(finished):
    out = finished.out
    assert sorted(p.name for p in (out / "chunks").iterdir()) == [
        f"chunk-{i:06d}.parquet" for i in range(5)
    ]
    entries = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    assert sorted(e["chunk"] for e in entries) == list(range(5))
    for e in entries:
        data = (out / e["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e["sha256"]
        assert e["rows"] == (64 if e["chunk"] < 4 else 44)
        assert sum(e["counts"].values()) == e["rows"]
        md = pq.read_schema(out / e["file"]).metadata
        assert md[b"jaxflow.chunk"] == str(e["chunk"]).encode()
        assert md[b"jaxflow.spec_sha256"] == finished.manifest["spec_sha256"].encode()
    # The subsample's checkpoint series lives beside the table (first 256 starts).
    traj = finished.trajectories
    assert np.array_equal(traj.column("index").to_numpy(), np.arange(256))
    K = len(finished.checkpoint_times)
    assert traj.schema.field("cp_norm").type.list_size == K
    # Example 1.1 is 4-D: no positions saved by default.
    assert "cp_x_0" not in traj.column_names


def test_plain_parquet_for_other_readers(finished, copy):
    # A crash between write and rename leaves a dot-prefixed temporary file: dataset
    # readers must skip it.
    orphan = copy / "chunks" / ".chunk-000002.parquet.0123abcd.tmp"
    orphan.write_bytes(b"half a parquet file")
    table = ds.dataset(copy / "chunks", format="parquet").to_table()
    assert table.num_rows == N
    assert set(table.column("index").to_numpy()) == set(range(N))
    df = finished.to_pandas()
    assert len(df) == N and df["status"].dtype == np.int8
    # The orphan is removed on the next run, which recomputes nothing.
    again = jf.scan(PROBLEM, N, out=copy, **SPEC)
    assert again.computed_chunks == [] and not orphan.exists()
    for mod in ("polars", "duckdb"):
        try:
            lib = __import__(mod)
        except ImportError:
            continue
        glob = str(copy / "chunks" / "*.parquet")
        if mod == "polars":
            assert lib.read_parquet(glob).height == N
        else:
            assert lib.sql(f"SELECT count(*) FROM '{glob}'").fetchone()[0] == N


def test_truncated_and_flipped_chunks_are_detected_and_recomputed(finished, copy):
    f1 = copy / "chunks" / "chunk-000001.parquet"
    f3 = copy / "chunks" / "chunk-000003.parquet"
    data = f1.read_bytes()
    f1.write_bytes(data[: len(data) // 2])  # truncated
    raw = bytearray(f3.read_bytes())
    raw[len(raw) // 3] ^= 0x01  # one flipped bit, same size
    f3.write_bytes(bytes(raw))
    with pytest.raises(jf.ChunkCorruptedError) as info:
        jf.load(copy)
    assert info.value.chunks == [1, 3]
    untouched = {c: (copy / "chunks" / f"chunk-{c:06d}.parquet").stat().st_mtime_ns
                 for c in (0, 2, 4)}
    with pytest.warns(UserWarning, match=r"chunk\(s\) \[1, 3\] failed verification"):
        res = jf.scan(PROBLEM, N, out=copy, **SPEC)
    assert sorted(res.computed_chunks) == [1, 3]
    assert {c: (copy / "chunks" / f"chunk-{c:06d}.parquet").stat().st_mtime_ns
            for c in (0, 2, 4)} == untouched
    assert_same_table(res.table, finished.table)
    assert_same_table(jf.load(copy).table, finished.table)


def test_chunk_without_journal_entry_and_torn_journal_line(finished, copy):
    journal = copy / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])["chunk"]
    # Crash after the rename but before the journal append: the file exists, unjournalled.
    # Then a crash in the middle of an append: a torn line without newline.
    journal.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert last not in Store(copy).read_journal()
    res = jf.scan(PROBLEM, N, out=copy, **SPEC)
    assert res.computed_chunks == [last]
    text = journal.read_text()
    assert text.endswith("\n")
    assert sorted(json.loads(x)["chunk"] for x in text.splitlines()) == list(range(5))
    assert_same_table(res.table, finished.table)


def test_partial_scan_loads(tmp_path, finished):
    res = jf.scan(PROBLEM, N, out=tmp_path / "part", chunks=[3, 0], **SPEC)
    assert not res.complete and res.computed_chunks == [3, 0]
    assert res.table.num_rows == 128
    idx = res.table.column("index").to_numpy()
    assert np.array_equal(idx, np.r_[0:64, 192:256])
    full = finished.table.take(pa.array(idx))
    assert_same_table(res.table, full)
    loaded = jf.load(tmp_path / "part")
    assert not loaded.complete and loaded.report.n == 128


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a jaxflow scan"):
        jf.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(jf.StoreError, match="not a jaxflow scan directory"):
        jf.load(tmp_path)


def test_nonempty_directory_without_manifest_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(jf.StoreError, match="not empty and has no manifest.json"):
        jf.scan(PROBLEM, 10, out=tmp_path, **SPEC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_resume_false_refuses_an_existing_scan(finished):
    with pytest.raises(jf.StoreError, match="resume=False"):
        jf.scan(PROBLEM, N, out=finished.out, resume=False, **SPEC)


def test_lock_is_exclusive(copy):
    import filelock

    with filelock.FileLock(str(copy / ".lock")).acquire(timeout=0):
        with pytest.raises(jf.ScanLockedError, match="being written by another jaxflow process"):
            jf.scan(PROBLEM, N, out=copy, **SPEC)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # no temporary left


def test_canonical_json_and_spec_diff():
    a = {"n": 10, "flow": {"t1": 50.0, "solver": "Kvaerno5"}, "seed": 1}
    b = {"seed": 1, "flow": {"solver": "Kvaerno5", "t1": 50.0}, "n": 10}
    assert canonical_json(a) == canonical_json(b)
    assert _store.spec_sha256(a) == hashlib.sha256(canonical_json(b).encode()).hexdigest()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    c = {"n": 11, "flow": {"t1": 60.0, "solver": "Kvaerno5"}, "seed": 1, "extra": True}
    assert diff_specs(a, c) == [("extra", None, True), ("flow.t1", 50.0, 60.0), ("n", 10, 11)]


def test_fixed_size_list_columns_round_trip():
    cols = {"a": np.arange(3, dtype=np.int64), "b": np.arange(12, dtype=np.float32).reshape(3, 4)}
    t = _store.columns_to_table(cols)
    assert t.schema.field("b").type == pa.list_(pa.float32(), 4)
    back = _store.column_to_numpy(t.column("b"))
    assert back.shape == (3, 4) and np.array_equal(back, cols["b"])
