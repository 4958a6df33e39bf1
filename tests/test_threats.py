"""Fault injection: a store is data someone else may have written.

One test per threat of the issue "stores you can open safely": opening never executes,
nothing outside `out/` is written, a tampered store is refused (exit 5) or recomputed on
resume without mixing, options are validated before anything is written (exit 2), every
failure is one line with README's exit code, and no escape sequence reaches the terminal.
README's "Threat model and guarantees" counts the cases collected here.
"""

import errno
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jaxflow as jf
from jaxflow import _files, cli
from jaxflow._render import markdown_text, report_markdown, terminal_text
from jaxflow._scan import store as _store
from jaxflow.cli import main

PROBLEM = "matrix-completion"
N = 200
SPEC = dict(t1=10.0, chunk_size=50, seed=0, compilation_cache=False)
CLI_ARGS = ["--n", "200", "--t1", "10", "--chunk-size", "50", "--quiet"]
EVIL = "evil\x1b]0;owned\x07\x1b[2J\x1b[31mname\u202e|<b>*"


@pytest.fixture(autouse=True)
def no_user_cache(monkeypatch):
    monkeypatch.setenv("JAXFLOW_COMPILATION_CACHE", "off")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return jf.scan(PROBLEM, N, out=tmp_path_factory.mktemp("threats") / "scan", **SPEC)


@pytest.fixture
def copy(finished, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(finished.out, dst)
    return dst


def manifest_of(out):
    return json.loads((out / "manifest.json").read_text())


def write_manifest(out, manifest, *, rehash=False):
    if rehash:
        manifest["spec_sha256"] = _store.spec_sha256(manifest["spec"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def journal_lines(out):
    return [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]


def write_journal(out, entries):
    (out / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


def reseal(out):
    """What a careful forger does after editing the spec: a new hash in the manifest, in
    every chunk's metadata and in the journal. Such a store is consistent; it must still
    be harmless to open."""
    m = manifest_of(out)
    write_manifest(out, m, rehash=True)
    new = manifest_of(out)["spec_sha256"]
    entries = journal_lines(out)
    for e in entries:
        for rec in (e, e.get("trajectories")):
            if not rec:
                continue
            t = pq.read_table(out / rec["file"])
            md = dict(t.schema.metadata or {})
            md[b"jaxflow.spec_sha256"] = new.encode()
            sink = pa.BufferOutputStream()
            pq.write_table(t.replace_schema_metadata(md), sink, compression="zstd")
            data = sink.getvalue().to_pybytes()
            (out / rec["file"]).write_bytes(data)
            rec["sha256"] = hashlib.sha256(data).hexdigest()
    write_journal(out, entries)


def assert_same_table(a, b):
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
        if x.dtype == object:
            x, y = np.stack(x), np.stack(y)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def one_line_error(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxflow: error:"), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- 1. execution
def test_crafted_manifest_reference_is_never_run_on_open(copy, tmp_path, capsys):
    marker = tmp_path / "executed"
    m = manifest_of(copy)
    m["spec"]["problem"]["source"] = {
        "kind": "reference", "target": "subprocess:run",
        "params": {"args": f"touch {marker}", "shell": True},
    }
    write_manifest(copy, m)
    reseal(copy)  # a consistent store: integrity checks cannot be the defence here
    try:
        jf.load(copy)
    except jf.JaxflowError:
        pass
    assert not marker.exists(), "jaxflow.load ran a command named in the manifest"
    rc = main(["report", str(copy), "--no-plots"])
    assert not marker.exists(), "jaxflow report ran a command named in the manifest"
    assert rc != 1, capsys.readouterr().err


# --------------------------------------------------------------------------- 2. containment
@pytest.mark.parametrize("name", ["report.md", "report.json", "final_f_by_status.png"])
def test_report_never_writes_through_a_symlink(copy, tmp_path, capsys, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (copy / "report").mkdir()
    (copy / "report" / name).symlink_to(victim)
    argv = ["report", str(copy)] + (["--no-plots"] if name.endswith((".md", ".json")) else [])
    assert main(argv) == cli.EXIT_STORE == 5
    assert "symbolic link" in one_line_error(capsys.readouterr().err)
    assert victim.read_text() == "precious"


def test_report_directory_symlinked_outside_is_refused(copy, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (copy / "report").symlink_to(outside)
    assert main(["report", str(copy), "--no-plots"]) == 5
    assert "symbolic link" in one_line_error(capsys.readouterr().err)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", [".writer.json", ".lock", "journal.jsonl", "chunks"])
def test_rerun_scan_never_writes_through_a_symlink(copy, tmp_path, name):
    victim = tmp_path / "victim"
    if name == "chunks":
        shutil.copytree(copy / "chunks", victim)
        shutil.rmtree(copy / "chunks")
        before = {p.name: p.read_bytes() for p in victim.iterdir()}
    else:
        victim.write_text("precious")
        (copy / name).unlink(missing_ok=True)
    (copy / name).symlink_to(victim)
    with pytest.raises(jf.UnsafePathError, match="symbolic link"):
        jf.scan(PROBLEM, N, out=copy, **SPEC)
    if name == "chunks":
        assert {p.name: p.read_bytes() for p in victim.iterdir()} == before
    else:
        assert victim.read_text() == "precious"


def test_writer_refuses_parent_links_and_escaping_paths(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "sub").symlink_to(outside)
    with pytest.raises(jf.UnsafePathError, match="symbolic link"):
        _files.write_bytes(root, "sub/file", b"x")
    for rel in ("../escape", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(jf.UnsafePathError):
            _files.write_bytes(root, rel, b"x")
    assert list(outside.iterdir()) == [] and not (tmp_path / "escape").exists()
    _files.write_bytes(root, "ok/file", b"y")
    assert (root / "ok" / "file").read_bytes() == b"y"
    assert sorted(p.name for p in (root / "ok").iterdir()) == ["file"]  # no temporary left


@pytest.mark.parametrize("file", ["../../outside.parquet", "/etc/passwd",
                                  "chunks/chunk-000002.parquet", "chunks/./chunk-000001.parquet"])
def test_journal_file_field_must_name_its_chunk(copy, finished, capsys, file):
    entries = journal_lines(copy)
    e1 = next(e for e in entries if e["chunk"] == 1)
    e1["file"] = file
    write_journal(copy, entries)
    with pytest.raises(jf.ChunkCorruptedError, match="`file`") as info:
        jf.load(copy)
    assert info.value.chunks == [1]
    assert main(["report", str(copy), "--no-plots"]) == 5
    assert "chunk-000001.parquet" in one_line_error(capsys.readouterr().err)
    with pytest.warns(UserWarning, match="failed verification"):
        res = jf.scan(PROBLEM, N, out=copy, **SPEC)
    assert res.computed_chunks == [1]
    assert_same_table(res.table, finished.table)


# --------------------------------------------------------------------------- 3. integrity
def test_edited_seed_is_refused_everywhere(copy, capsys):
    m = manifest_of(copy)
    m["spec"]["seed"] = 7
    write_manifest(copy, m)
    with pytest.raises(jf.StoreIntegrityError) as info:
        jf.load(copy)
    assert (info.value.file, info.value.field) == ("manifest.json", "spec_sha256")
    with pytest.raises(jf.StoreIntegrityError, match="spec_sha256"):
        jf.scan(PROBLEM, N, out=copy, **{**SPEC, "seed": 7})
    assert main(["report", str(copy), "--no-plots"]) == 5
    assert "spec_sha256" in one_line_error(capsys.readouterr().err)


def test_edited_seed_with_a_new_hash_never_mixes(copy, capsys):
    m = manifest_of(copy)
    m["spec"]["seed"] = 7
    write_manifest(copy, m, rehash=True)
    with pytest.raises(jf.ChunkCorruptedError, match="jaxflow.spec_sha256"):
        jf.load(copy)
    assert main(["report", str(copy), "--no-plots"]) == 5
    one_line_error(capsys.readouterr().err)
    (copy / "chunks" / "chunk-000001.parquet").unlink()
    with pytest.warns(UserWarning, match="failed verification"):
        res = jf.scan(PROBLEM, N, out=copy, **{**SPEC, "seed": 7})
    assert sorted(res.computed_chunks) == [0, 1, 2, 3]  # every seed-0 chunk recomputed
    new = res.manifest["spec_sha256"]
    for c in range(4):
        md = pq.read_schema(copy / "chunks" / f"chunk-{c:06d}.parquet").metadata
        assert md[b"jaxflow.spec_sha256"] == new.encode()
    assert jf.load(copy).complete


@pytest.mark.parametrize("rehash", [False, True])
def test_edited_n_chunks_is_refused(copy, capsys, rehash):
    m = manifest_of(copy)
    m["spec"]["n_chunks"] = 2
    write_manifest(copy, m, rehash=rehash)
    with pytest.raises(jf.StoreIntegrityError) as info:
        jf.load(copy)
    assert info.value.field == ("spec.n_chunks" if rehash else "spec_sha256")
    assert main(["report", str(copy), "--no-plots"]) == 5
    one_line_error(capsys.readouterr().err)


def test_edited_checkpoint_times_are_refused(copy):
    m = manifest_of(copy)
    m["checkpoint_times"] = m["checkpoint_times"][:-1]
    write_manifest(copy, m)
    with pytest.raises(jf.StoreIntegrityError, match="checkpoint_times"):
        jf.load(copy)


def test_swapped_chunk_and_journal_line_from_another_scan(copy, finished, tmp_path, capsys):
    other = jf.scan(PROBLEM, 100, out=tmp_path / "other", **{**SPEC, "seed": 1})
    shutil.copyfile(other.out / "chunks" / "chunk-000001.parquet",
                    copy / "chunks" / "chunk-000001.parquet")
    line = next(e for e in journal_lines(other.out) if e["chunk"] == 1)
    with open(copy / "journal.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")
    with pytest.raises(jf.ChunkCorruptedError, match="jaxflow.spec_sha256") as info:
        jf.load(copy)
    assert info.value.chunks == [1]
    assert main(["report", str(copy), "--no-plots"]) == 5
    one_line_error(capsys.readouterr().err)
    with pytest.warns(UserWarning, match="failed verification"):
        res = jf.scan(PROBLEM, N, out=copy, **SPEC)
    assert res.computed_chunks == [1]
    assert_same_table(res.table, finished.table)


def test_chunk_with_wrong_rows_is_refused(copy):
    # A consistent-looking chunk 3 (the last, 50 rows) cut to 10 rows, journal updated.
    f = copy / "chunks" / "chunk-000003.parquet"
    t = pq.read_table(f)
    sink = pa.BufferOutputStream()
    pq.write_table(t.slice(0, 10), sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    f.write_bytes(data)
    entries = journal_lines(copy)
    e = next(e for e in entries if e["chunk"] == 3)
    e.update(rows=10, sha256=hashlib.sha256(data).hexdigest())
    write_journal(copy, entries)
    with pytest.raises(jf.ChunkCorruptedError, match="`rows`"):
        jf.load(copy)


@pytest.mark.parametrize("edit", [
    lambda e: e.pop("sha256"), lambda e: e.pop("file"), lambda e: e.pop("rows"),
    lambda e: e.update(rows="50"), lambda e: e.update(sha256=None),
    lambda e: e.update(trajectories="x"),
])
def test_journal_line_without_fields(copy, finished, capsys, edit):
    entries = journal_lines(copy)
    edit(entries[0])
    write_journal(copy, entries)
    with pytest.raises(jf.ChunkCorruptedError, match="journal.jsonl line 1"):
        jf.load(copy)
    assert main(["report", str(copy), "--no-plots"]) == 5
    assert "journal.jsonl line 1" in one_line_error(capsys.readouterr().err)
    with pytest.warns(UserWarning, match="failed verification"):
        res = jf.scan(PROBLEM, N, out=copy, **SPEC)
    assert res.computed_chunks == [entries[0]["chunk"]]
    assert_same_table(res.table, finished.table)


@pytest.mark.parametrize("line", ['{"file": "chunks/chunk-000000.parquet"}', "[1, 2]",
                                  "not json", '{"chunk": "0"}'])
def test_journal_line_without_a_chunk(copy, capsys, line):
    with open(copy / "journal.jsonl", "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(jf.StoreIntegrityError, match="journal.jsonl line 5"):
        jf.load(copy)
    assert main(["report", str(copy), "--no-plots"]) == 5
    one_line_error(capsys.readouterr().err)
    res = jf.scan(PROBLEM, N, out=copy, **SPEC)  # resuming ignores it: nothing to recompute
    assert res.computed_chunks == [] and res.complete


@pytest.mark.parametrize("edit", [lambda m: m.pop("spec"), lambda m: m.update(spec=[1]),
                                  lambda m: m.pop("spec_sha256")])
def test_manifest_without_spec(copy, capsys, edit):
    m = manifest_of(copy)
    edit(m)
    write_manifest(copy, m)
    with pytest.raises(jf.StoreIntegrityError):
        jf.load(copy)
    assert main(["report", str(copy), "--no-plots"]) == 5
    assert "manifest.json" in one_line_error(capsys.readouterr().err)


# --------------------------------------------------------------------------- 4. disk full
def test_disk_full_while_writing_a_chunk(finished, tmp_path, monkeypatch, capsys):
    real = _store.write_bytes

    def full(root, rel, data):
        if str(rel).endswith("chunk-000002.parquet"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(root, rel, data)

    monkeypatch.setattr(_store, "write_bytes", full)
    out = tmp_path / "full"
    with pytest.raises(jf.ChunkWriteError, match="No space left on device"):
        jf.scan(PROBLEM, N, out=out, **SPEC)
    partial = jf.load(out)  # consistent: chunk 2 has no journal line and no file
    assert not partial.complete and 2 not in {e["chunk"] for e in journal_lines(out)}
    assert not any(p.name.startswith(".") for p in (out / "chunks").iterdir())
    cli_out = tmp_path / "full-cli"
    assert main(["scan", PROBLEM, *CLI_ARGS, "--out", str(cli_out)]) == cli.EXIT_CHUNK_FAILED
    assert "No space left on device" in one_line_error(capsys.readouterr().err)
    monkeypatch.undo()
    res = jf.scan(PROBLEM, N, out=out, **SPEC)
    assert res.complete and 2 in res.computed_chunks
    assert_same_table(res.table, finished.table)


# --------------------------------------------------------------------------- 5. read-only
def test_read_only_store_report_is_printed_and_writing_fails_in_one_line(
        copy, tmp_path, monkeypatch, capsys):
    from jaxflow import _render

    def read_only(root, rel, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as mp:
        mp.setattr(_render, "write_bytes", read_only)
        assert main(["report", str(copy), "--no-plots"]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert "Theorem 1.2 assumptions" in captured.out  # the report itself was printed
    assert "--to" in one_line_error(captured.err)
    assert main(["report", str(copy), "--no-plots", "--to", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "report.md").exists()
    if os.geteuid() == 0:
        return  # root ignores permission bits; the patched write above covers the path
    copy.chmod(0o555)
    try:
        assert main(["report", str(copy), "--no-plots"]) == cli.EXIT_USAGE
        one_line_error(capsys.readouterr().err)
    finally:
        copy.chmod(0o755)


# --------------------------------------------------------------------------- 6. bad options
@pytest.mark.parametrize("argv, field", [
    (["--rtol", "nan"], "rtol"), (["--rtol", "-1"], "rtol"), (["--atol", "inf"], "atol"),
    (["--param", "low=true"], "`low`"), (["--param", "high=[1]"], "`high`"),
])
def test_bad_cli_options_exit_2_before_out_exists(tmp_path, capsys, argv, field):
    out = tmp_path / "never"
    rc = main(["scan", PROBLEM, *CLI_ARGS, "--out", str(out), *argv])
    assert rc == cli.EXIT_USAGE
    assert field in one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_objective_param_types_checked(tmp_path, capsys):
    out = tmp_path / "never"
    rc = main(["scan", "scan_problems:double_well", "--param", "dim=true", *CLI_ARGS,
               "--out", str(out)])
    assert rc == 2 and "`dim`" in one_line_error(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("kwargs, field", [
    (dict(classify_options={"bogus": 1}), "bogus"),
    (dict(classify_options={"tail_decades": -1}), "tail_decades"),
    (dict(classify_options={"tail_decades": "2"}), "tail_decades"),
    (dict(checkpoints_per_decade=2.5), "checkpoints_per_decade"),
    (dict(dt0=-1.0), "dt0"),
])
def test_bad_library_options_refused_before_out_exists(tmp_path, kwargs, field):
    out = tmp_path / "never"
    with pytest.raises((ValueError, TypeError), match=field):
        jf.scan(PROBLEM, N, out=out, **{**SPEC, **kwargs})
    assert not out.exists()


def test_dangling_out_symlink_exit_2(tmp_path, capsys):
    out = tmp_path / "dangling"
    out.symlink_to(tmp_path / "nowhere")
    assert main(["scan", PROBLEM, *CLI_ARGS, "--out", str(out)]) == cli.EXIT_USAGE
    assert "symbolic link" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "nowhere").exists()


# --------------------------------------------------------------------------- 7. escapes
def test_escape_sequences_never_reach_the_terminal_or_markdown(copy, finished, capsys):
    import dataclasses

    from rich.console import Console

    assert "\x1b" not in terminal_text(EVIL) and "\u202e" not in terminal_text(EVIL)
    md = markdown_text(EVIL)
    assert "\x1b" not in md and "<b>" not in md and "\\|" in md
    report = dataclasses.replace(finished.report, problem={**finished.report.problem,
                                                           "name": EVIL})
    assert "\x1b" not in report_markdown(report) and "<b>" not in report_markdown(report)
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    console.print(report.to_rich())
    shown = console.file.getvalue()
    assert "\x1b]0;" not in shown and "\x1b[2J" not in shown and "\u202e" not in shown
    # Through the command line: a store whose manifest strings carry escapes.
    m = manifest_of(copy)
    m["problem"]["name"] = EVIL
    write_manifest(copy, m)
    assert main(["report", str(copy), "--no-plots"]) == 0
    assert "\x1b" not in capsys.readouterr().out
    assert "\x1b" not in (copy / "report" / "report.md").read_text()
    m["format_version"] = "\x1b[2J\x1b]0;owned\x07"
    write_manifest(copy, m)
    assert main(["report", str(copy), "--no-plots"]) == 5
    assert "\x1b" not in one_line_error(capsys.readouterr().err)
