"""Sweeps: grids, resumption, added points, refusals, the summary against separate scans,
the one-hidden-sigmoid problem.

One 2x2 reference sweep of Example 1.1 over the sampler's box (N = 150, t1 = 50, chunks
of 64: three chunks per point, the last one padded) is computed once; every other sweep
and scan here runs points of it, so nothing compiles twice.
"""

import json
import shutil

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow._stats import wilson_interval
from jaxflow._sweep.grid import Grid, parse_axis
from jaxflow.cli import main

PROBLEM = "matrix-completion"
GRID = {"low": [-1.0, -2.0], "high": [1.0, 2.0]}
N = 150
# An explicit solver: it compiles faster than the default implicit one.
KW = dict(t1=50.0, chunk_size=64, seed=7, compilation_cache=False, solver=diffrax.Tsit5(),
          stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8))
CLI = ["--n", str(N), "--t1", "50", "--chunk-size", "64", "--seed", "7", "--solver", "Tsit5",
       "--no-compilation-cache", "--quiet"]


def assert_tables_equal(a, b):
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name).to_numpy(zero_copy_only=False), b.column(name).to_numpy(
            zero_copy_only=False)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def snapshot(out):
    return {p.relative_to(out): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "ref"
    return jf.sweep(PROBLEM, GRID, N, out=out, **KW)


def test_reference_layout_and_table(reference):
    assert reference.complete and reference.computed_points == [0, 1, 2, 3]
    assert reference.points == [{"low": -1.0, "high": 1.0}, {"low": -1.0, "high": 2.0},
                                {"low": -2.0, "high": 1.0}, {"low": -2.0, "high": 2.0}]
    manifest = json.loads((reference.out / "sweep.json").read_text())
    assert manifest["grid"] == GRID and manifest["spec"]["axes"] == ["low", "high"]
    assert sorted(p.name for p in (reference.out / "points").iterdir()) == [
        "high=1.0,low=-1.0", "high=1.0,low=-2.0", "high=2.0,low=-1.0", "high=2.0,low=-2.0"]
    table = reference.table
    assert table.column_names[:3] == ["point", "low", "high"]
    assert table.num_rows == 4 * N
    # The starts of each point are uniform in its own box (the grid reaches the sampler).
    for i, p in enumerate(reference.points):
        rows = table.filter(table.column("point").to_numpy() == i)
        s = np.stack([rows.column(f"start_{j}").to_numpy() for j in range(4)])
        assert p["low"] <= s.min() and s.max() <= p["high"]
        assert s.min() < p["low"] + 0.2 and s.max() > p["high"] - 0.2


def test_summary_fractions_equal_separate_scans(reference, tmp_path, compilations):
    before = compilations()
    for p, row in zip(reference.points, reference.summary.rows, strict=True):
        alone = jf.scan(PROBLEM, N, out=tmp_path / str(len(list(tmp_path.iterdir()))),
                        params=p, **KW)
        assert_tables_equal(alone.table, reference.point(**p).table)
        counts = alone.counts()
        k = counts.get("ESCAPING", 0) + counts.get("ESCAPED", 0)
        assert row["n"] == N and row["escaping"] == k
        assert row["escaping_fraction"] == k / N
        assert (row["escaping_low"], row["escaping_high"]) == wilson_interval(k, N)
        settled = counts.get("CONVERGED", 0) + counts.get("BOUNDED", 0)
        assert row["settled"] == settled
    assert compilations() == before  # the sweep's programs were reused
    # Example 1.1 escapes from a fraction of the starts in every box (Figure 1).
    assert all(0 < r["escaping"] < N for r in reference.summary.rows)


def test_killed_and_resumed_sweep_is_bit_identical(reference, tmp_path):
    out, frozen = tmp_path / "run", tmp_path / "killed"
    seen = []

    def progress(p):
        # A copy of the store after point 1's first chunk is exactly what `kill -9` at this
        # instant leaves: every file is written atomically before its journal line.
        if p.scan is not None and p.scan.chunk is not None:
            seen.append((p.point, p.scan.chunk))
            if p.point == 1 and len([s for s in seen if s[0] == 1]) == 1:
                shutil.copytree(out, frozen)

    jf.sweep(PROBLEM, GRID, N, out=out, progress=progress, **KW)
    assert (frozen / "points" / "high=2.0,low=-1.0" / "journal.jsonl").exists()
    assert not (frozen / "points" / "high=1.0,low=-2.0").exists()
    point0 = snapshot(frozen / "points" / "high=1.0,low=-1.0")
    resumed = jf.sweep(PROBLEM, GRID, N, out=frozen, **KW)
    assert resumed.skipped_points == [0] and resumed.computed_points == [1, 2, 3]
    assert snapshot(frozen / "points" / "high=1.0,low=-1.0") == point0
    assert len(resumed.point(low=-1.0, high=2.0).skipped_chunks) == 1
    assert_tables_equal(resumed.table, reference.table)
    assert resumed.summary.rows == reference.summary.rows


def test_added_point_is_the_only_one_computed(reference, tmp_path):
    out = tmp_path / "grow"
    first = jf.sweep(PROBLEM, {"low": [-1.0]}, N, out=out, params={"high": 1.0}, **KW)
    assert first.computed_points == [0]
    before = snapshot(out / "points")
    grown = jf.sweep(PROBLEM, {"low": [-1.0, -2.0]}, N, out=out, params={"high": 1.0}, **KW)
    assert grown.skipped_points == [0] and grown.computed_points == [1]
    after = snapshot(out / "points")
    assert {k: v for k, v in after.items() if k in before} == before  # untouched
    assert_tables_equal(grown.point(low=-2.0).table, reference.point(low=-2.0, high=1.0).table)
    # A grid that lost a stored value is refused, with nothing modified.
    before = snapshot(out)
    with pytest.raises(jf.SpecMismatchError, match="lost the stored value"):
        jf.sweep(PROBLEM, {"low": [-2.0]}, N, out=out, params={"high": 1.0}, **KW)
    assert snapshot(out) == before
    assert jf.load_sweep(out).grid.to_json() == {"low": [-1.0, -2.0]}


def test_changed_fixed_parameter_or_option_is_refused_untouched(reference):
    out = reference.out
    before = snapshot(out)
    cases = [
        (dict(params={"high": 2.0}, grid={"low": [-1.0, -2.0]}), "spec.fixed.high"),
        (dict(t1=60.0), "spec.flow.t1"),
        (dict(seed=8), "spec.seed"),
        (dict(grid={"low": [-1.0], "high": [1.0, 2.0]}), "grid"),  # a lost value
    ]
    for change, field in cases:
        kw = {**KW, **change}
        grid = kw.pop("grid", GRID)
        with pytest.raises(jf.SpecMismatchError) as info:
            jf.sweep(PROBLEM, grid, N, out=out, **kw)
        fields = [d[0] for d in info.value.differences]
        assert field in fields, fields
        assert "nothing was modified" in str(info.value)
    assert snapshot(out) == before


@pytest.mark.parametrize("spec, values", [
    ("hidden=1,2,4", [1, 2, 4]), ("points=1:8*2", [1, 2, 4, 8]), ("k=1:3", [1, 2, 3]),
    ("rate=0:1:0.25", [0.0, 0.25, 0.5, 0.75, 1.0]), ("data=random,example-4-3",
                                                      ["random", "example-4-3"]),
    ("x=0.01:1*10", [0.01, 0.1, 1.0]),
])
def test_grid_syntax(spec, values):
    name, got = parse_axis(spec)
    assert name == spec.split("=")[0]
    assert np.allclose(got, values) if isinstance(values[0], float) else got == values
    assert [type(v) for v in got] == [type(v) for v in values]


def test_float_ranges_give_the_typed_values():
    # Accumulated binary error must not leak into the values (and the points' directory
    # names): 0.3 + 3 * 0.1 == 0.6000000000000001, 0.1 * 1.5 ** 2 == 0.22500000000000003.
    assert parse_axis("rate=0.3:1:0.1")[1] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert parse_axis("x=0.1:0.3*1.5")[1] == [0.1, 0.15, 0.225]
    assert [p["rate"] for p in Grid(["rate=0.3:1:0.1"]).points()][3] == 0.6


def test_grid_points_order_and_union():
    g = Grid({"a": [1, 2], "b": ["x", "y"]})
    assert g.points() == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"},
                          {"a": 2, "b": "y"}]
    merged, problems = g.union(Grid({"a": [2, 1, 3], "b": ["x", "y"]}))
    assert not problems and merged.to_json() == {"a": [1, 2, 3], "b": ["x", "y"]}
    assert g.union(Grid({"a": [1], "b": ["x", "y"]}))[1]


@pytest.mark.parametrize("grid, params, message", [
    (["--grid", "hidden=1,2"], [], "no parameter `hidden`"),        # unknown parameter
    (["--grid", "low=-1:-3"], [], "empty"),                         # empty range
    (["--grid", "low=-1,-1.0"], [], "twice"),                       # duplicate values
    (["--grid", "low=a,b"], [], "`low` must be"),                   # wrong type
    (["--grid", "low=-1:-2:0"], [], "step"),                        # zero step
    (["--grid", "low=-1,-2", "--grid", "low=-3"], [], "given twice"),
    (["--grid", "low=-1,-2"], ["--param", "low=-3"], "both"),
    (["--grid", "low=1,2"], [], "low < high"),                      # the problem refuses
])
def test_bad_grids_exit_2_before_anything_is_written(tmp_path, capsys, grid, params, message):
    out = tmp_path / "bad"
    rc = main(["sweep", PROBLEM, *grid, *params, "--out", str(out), *CLI])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert not out.exists()


def test_bad_grid_for_a_network_parameter_type(tmp_path, capsys):
    out = tmp_path / "bad"
    rc = main(["sweep", "one-hidden-sigmoid", "--grid", "hidden=1.5,2", "--out", str(out), *CLI])
    assert rc == 2 and "`hidden` must be int" in capsys.readouterr().err
    assert not out.exists()


def test_cli_resumes_the_python_sweep_and_reports_it(reference, tmp_path, capsys):
    out = tmp_path / "cli"
    shutil.copytree(reference.out, out)
    rc = main(["sweep", PROBLEM, "--grid", "low=-1.0,-2.0", "--grid", "high=1.0,2.0",
               "--out", str(out), *CLI, "--width", "160"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "0 computed, 4 already stored" in text
    rc = main(["report", str(out), "--width", "160"])
    text = capsys.readouterr().out
    assert rc == 0
    for name in ("summary.md", "summary.json", "summary.parquet", "escaping_heatmap.png",
                 "escaping_line.png"):
        assert (out / "report" / name).stat().st_size > 0
    data = json.loads((out / "report" / "summary.json").read_text())
    assert [r["escaping"] for r in data["rows"]] == [r["escaping"] for r in
                                                     reference.summary.rows]
    import pyarrow.parquet as pq

    t = pq.read_table(out / "report" / "summary.parquet")
    assert t.column("escaping_fraction").to_pylist() == [
        r["escaping_fraction"] for r in reference.summary.rows]


def test_edited_manifest_is_refused(reference, tmp_path, capsys):
    out = tmp_path / "edited"
    shutil.copytree(reference.out, out)
    data = json.loads((out / "sweep.json").read_text())
    data["spec"]["n"] = N + 1
    (out / "sweep.json").write_text(json.dumps(data))
    assert main(["report", str(out)]) == 5
    assert "sweep.json" in capsys.readouterr().err


# --------------------------------------------------------------------------- the problem
def test_one_hidden_sigmoid_with_example_4_3_data_is_example_4_3():
    a = jf.problems.get("one-hidden-sigmoid", hidden=1, points=2, data="example-4-3")
    b = jf.problems.get("sigmoid-example-4-3")
    x = jax.random.uniform(jax.random.key(0), (64, 2), jnp.float64, -3.0, 3.0)
    assert np.allclose(jax.vmap(a.f_flat)(x), jax.vmap(b.f_flat)(x), rtol=1e-14, atol=0)
    assert a.global_infimum == 0.5 and a.facts["values_at_infinity"] == [0.5]


def test_one_hidden_sigmoid_formula_and_interpolation():
    from scipy.special import expit

    p = jf.problems.get("one-hidden-sigmoid", hidden=3, points=3, input_dim=2, seed=4)
    X, y = p.data["X"], p.data["y"]
    rng = np.random.default_rng(1)
    W, v = rng.normal(size=(3, 2)), rng.normal(size=3)
    expected = 0.5 * np.sum((expit(X @ W.T) @ v - y) ** 2)
    got = float(p.f({"W": jnp.asarray(W), "v": jnp.asarray(v)}))
    assert got == pytest.approx(expected, rel=1e-13)
    # k >= m: some W makes the feature matrix invertible, and v then interpolates (f = 0).
    v_star = np.linalg.solve(expit(X @ W.T), y)
    assert float(p.f({"W": jnp.asarray(W), "v": jnp.asarray(v_star)})) < 1e-25
    assert p.global_infimum == 0.0
    assert jf.problems.get("one-hidden-sigmoid", hidden=1, points=3).global_infimum is None
    with pytest.raises(ValueError, match="example-4-3"):
        jf.problems.get("one-hidden-sigmoid", points=3, data="example-4-3")
