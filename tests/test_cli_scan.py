"""`jaxflow scan` and `jaxflow report`: output, stores, exit codes a script can rely on."""

import json
import subprocess
import sys

import numpy as np
import pytest

import jaxflow as jf
from jaxflow import cli
from jaxflow.cli import main

ARGS = ["--n", "300", "--t1", "50", "--chunk-size", "64", "--seed", "7", "--quiet"]


@pytest.fixture(autouse=True)
def no_user_cache(monkeypatch):
    monkeypatch.setenv("JAXFLOW_COMPILATION_CACHE", "off")


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "scan"
    mp = pytest.MonkeyPatch()
    mp.setenv("JAXFLOW_COMPILATION_CACHE", "off")
    try:
        rc = main(["scan", "matrix-completion", *ARGS, "--out", str(out)])
    finally:
        mp.undo()
    assert rc == cli.EXIT_OK
    return out


def snapshot(out):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()}


def test_scan_prints_report_and_stores_the_library_table(scanned, tmp_path, capsys):
    lib = jf.scan("matrix-completion", 300, out=tmp_path / "lib", t1=50.0, chunk_size=64, seed=7,
                  compilation_cache=False)
    res = jf.load(scanned)
    assert res.complete and res.table.column_names == lib.table.column_names
    for name in lib.table.column_names:
        a, b = res.table.column(name).to_numpy(), lib.table.column(name).to_numpy()
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    # A rerun resumes: nothing recomputed, the same report printed.
    capsys.readouterr()
    assert main(["scan", "matrix-completion", *ARGS, "--out", str(scanned)]) == 0
    out = capsys.readouterr().out
    assert "0 chunks computed, 5 already stored" in out
    assert "CONVERGED" in out and "Conclusion" in out and "jaxflow report" in out


def test_scan_json_output(scanned, capsys):
    assert main(["scan", "matrix-completion", *ARGS, "--out", str(scanned), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    counts = {s["status"]: s["count"] for s in report["statuses"]}
    assert sum(counts.values()) == 300 and report["n"] == 300
    assert report["meta"]["spec_sha256"] == jf.load(scanned).manifest["spec_sha256"]


def test_report_writes_markdown_json_and_pngs(scanned, tmp_path, capsys):
    target = tmp_path / "rep"
    assert main(["report", str(scanned), "--to", str(target)]) == 0
    assert "Conclusion" in capsys.readouterr().out
    md = (target / "report.md").read_text()
    assert "Theorem 1.2" in md and "| status |" in md
    data = json.loads((target / "report.json").read_text())
    assert data["n"] == 300
    import matplotlib.image as mpimg

    pngs = sorted(p.name for p in target.glob("*.png"))
    assert pngs == ["final_f_by_status.png", "norm_vs_t_escaping.png"]  # 4-D: no phase portrait
    for name in pngs:
        assert (target / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(target / name)
        assert img.shape[0] > 300 and img.shape[1] > 500
        assert img[..., :3].std() > 0.05  # not a blank canvas


def test_changed_seed_exit_3_and_nothing_modified(scanned, capsys):
    before = snapshot(scanned)
    rc = main(["scan", "matrix-completion", *ARGS[:-3], "--seed", "8", "--quiet", "--out",
               str(scanned)])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_SPEC_MISMATCH == 3
    assert "spec.seed: stored 7, requested 8" in err and "nothing was modified" in err
    assert snapshot(scanned) == before


def test_lock_exit_4(scanned, capsys):
    import filelock

    with filelock.FileLock(str(scanned / ".lock")).acquire(timeout=0):
        rc = main(["scan", "matrix-completion", *ARGS, "--out", str(scanned)])
    assert rc == cli.EXIT_LOCKED == 4
    assert "being written by another jaxflow process" in capsys.readouterr().err


def test_corrupted_store_report_exit_5(scanned, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(scanned, copy)
    f = copy / "chunks" / "chunk-000002.parquet"
    f.write_bytes(f.read_bytes()[:100])
    assert main(["report", str(copy), "--no-plots"]) == cli.EXIT_STORE == 5
    err = capsys.readouterr().err
    assert "chunk file(s) 2 are missing or corrupted" in err and "Rerun" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n", "0"], "--n must be positive"),
        (["--chunk-size", "0"], "--chunk-size must be positive"),
        (["--param", "low=nan"], "`low`"),
        (["--param", "colour=3"], "no parameter"),
    ],
)
def test_bad_input_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    rc = main(["scan", "matrix-completion", "--t1", "5", "--quiet", "--out", str(out), *argv])
    assert rc == cli.EXIT_USAGE == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_out_and_missing_store_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["scan", "matrix-completion", "--quiet", "--out", str(blocker / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "not a jaxflow scan" in capsys.readouterr().err


def test_interrupt_exit_130_and_chunk_failure_exit_6(tmp_path, capsys, monkeypatch):
    from jaxflow import _scan

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(_scan, "scan", interrupted)
    assert main(["scan", "matrix-completion", "--quiet", "--out", str(tmp_path / "o")]) == 130
    assert "Rerun the same command to resume" in capsys.readouterr().err

    def failed(*a, **k):
        raise _scan.ScanError("chunk 3 failed: boom")

    monkeypatch.setattr(_scan, "scan", failed)
    assert main(["scan", "matrix-completion", "--quiet", "--out", str(tmp_path / "o")]) == 6
    assert "chunk 3 failed" in capsys.readouterr().err


def test_user_objective_by_reference(tmp_path, capsys):
    # scan_problems.py sits in tests/, which pytest puts on sys.path (like a user's cwd).
    out = tmp_path / "dw"
    rc = main([
        "scan", "scan_problems:double_well", "--param", "dim=1", "--param", "low=-2",
        "--param", "high=2", "--escape-radius", "inf", "--n", "200", "--t1", "50",
        "--chunk-size", "64", "--seed", "7", "--quiet", "--out", str(out),
        "--solver", "Kvaerno5",  # its blow-ups overflow (NONFINITE); Rodas4's end MAX_STEPS
    ])
    assert rc == 0, capsys.readouterr().err
    res = jf.load(out)
    st = res.column("status")
    assert np.sum(st == jf.Status.NONFINITE) > 0 and np.sum(st == jf.Status.CONVERGED) > 0
    assert res.manifest["spec"]["problem"]["source"] == {
        "kind": "reference", "target": "scan_problems:double_well",
        "params": {"dim": 1, "high": 2, "low": -2},
    }


def test_default_out_and_exit_code_from_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxflow.cli", "scan", "no-such-problem", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path,
        env={**__import__("os").environ, "JAXFLOW_COMPILATION_CACHE": "off"},
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("jaxflow: error: unknown problem 'no-such-problem'")
    assert not (tmp_path / "jaxflow-out").exists()


@pytest.mark.parametrize("width", [60, 80, 120])
def test_report_fits_the_width_and_never_cuts_a_number(scanned, tmp_path, capsys, width):
    to = tmp_path / "report"
    argv = ["report", str(scanned), "--no-plots", "--to", str(to), "--width", str(width)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((to / "report.json").read_text(encoding="utf-8"))
    # The tables fit (only the closing "wrote ..." line is a soft-wrapped path list) ...
    assert all(len(line) <= width for line in out.splitlines() if not line.startswith("wrote"))
    # ... and nothing is ellipsised: every number of the JSON report is printed whole.
    assert "…" not in out

    def pct(p):
        return f"{100 * p:.2f}%"

    numbers = []
    for row in report["statuses"]:
        numbers += [str(row["count"]), pct(row["fraction"]), *map(pct, row["interval"])]
    for cv in report["critical_values"]:
        numbers += [f"{cv['value']:.6g}", str(cv["count"]), pct(cv["fraction"]),
                    *(f"{e:.3g}" for e in cv["eigenvalues"]), *(f"{x:.3g}" for x in cv["point"])]
    for vi in report["values_at_infinity"]:
        numbers += [f"{vi['value']:.6g}", str(vi["count"]), f"{vi['growth_exponent']:.3g}",
                    f"{vi['norm']:.4g}"]
    assert report["critical_values"] and report["values_at_infinity"]
    missing = [s for s in numbers if s not in out]
    assert not missing, (width, missing)


def test_width_option_on_scan_and_bad_width(scanned, capsys):
    assert main(["scan", "matrix-completion", *ARGS, "--out", str(scanned), "--width", "100"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()[:-1]) > 80  # the wide tables
    assert all(len(line) <= 100 for line in out.splitlines()[:-1])
    assert main(["report", str(scanned), "--no-plots", "--width", "10"]) == cli.EXIT_USAGE
    assert "--width must be at least 40" in capsys.readouterr().err
