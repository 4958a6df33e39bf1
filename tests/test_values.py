"""Critical values and values at infinity against the paper's stated facts."""

import detector_runs as runs
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow._values import cluster_values, critical_point_type, value_tolerance

S = jf.Status


def _table(res):
    return jf.trajectory_table(res, jf.classify(res))


# --------------------------------------------------------------------------- clustering
def test_cluster_values_unit():
    v = [0.0, 1e-9, 2.0, 2.0 + 5e-8, 3.0, np.nan, -np.inf, -np.inf, np.inf, 2.0 + 3e-7]
    lab = cluster_values(v, 1e-7)
    assert lab[5] == -1
    assert lab[6] == lab[7] == 0
    assert lab[0] == lab[1] == 1
    assert lab[2] == lab[3] == 2
    assert lab[9] == 3 and lab[4] == 4 and lab[8] == 5
    # Single linkage chains values whose neighbours are within tolerance.
    np.testing.assert_array_equal(cluster_values([0.0, 0.9, 1.8, 5.0], 1.0), [0, 0, 0, 1])
    # Per-value tolerances: the larger of two neighbours' decides.
    np.testing.assert_array_equal(cluster_values([0.0, 0.5, 2.0], [0.6, 0.1, 0.1]), [0, 0, 1])


def test_value_tolerance():
    assert value_tolerance(np.float32) == pytest.approx(1e-3)  # 10 x gtol 1e-4
    assert value_tolerance(np.float64) == pytest.approx(1e-7)  # 10 x gtol 1e-8
    assert value_tolerance(np.float64, gtol=0.0) == pytest.approx(640 * np.finfo(np.float64).eps)


# --------------------------------------------------------------------------- typing
@pytest.mark.parametrize(
    "f, point, expected",
    [
        (lambda z: z[0] ** 2 + 2 * z[1] ** 2, [0.0, 0.0], "minimum"),
        (lambda z: z[0] ** 2 - z[1] ** 2, [0.0, 0.0], "saddle"),
        (lambda z: -(z[0] ** 2) - z[1] ** 2, [0.0, 0.0], "maximum"),
        # Degenerate Hessians, settled by the perturbation test.
        (lambda z: z[0] ** 4 + z[1] ** 2, [0.0, 0.0], "minimum"),
        (lambda z: z[0] ** 3 + z[1] ** 2, [0.0, 0.0], "saddle"),
        # A curve of minima (like C_1 of Example 1.1): one zero eigenvalue.
        (lambda z: (z[0] * z[1] - 1.0) ** 2, [2.0, 0.5], "minimum"),
    ],
)
def test_critical_point_type_smooth(f, point, expected):
    p = jf.Problem(f, dim=2)
    val = float(f(jnp.asarray(point)))
    types, methods, eigs = critical_point_type(p, np.asarray([point]), [val], [1e-7])
    assert types == [expected], (types, methods, eigs)
    assert types[0] is jf.CriticalPointType(expected)


@pytest.mark.parametrize(
    "f, point, expected",
    [
        (lambda z: jnp.abs(z[0]) + jnp.abs(z[1]), [0.0, 0.0], "minimum"),
        (lambda z: jnp.abs(z[0]) - jnp.abs(z[1]), [0.0, 0.0], "saddle"),
        (lambda z: -jnp.abs(z[0]) - 2 * jnp.abs(z[1]), [0.0, 0.0], "maximum"),
        # Figure 2's flat region {x1 < 0}: Clarke-critical, neither min nor max locally.
        (lambda z: (z[1] * jnp.maximum(z[0], 0.0) - 1.0) ** 2, [-1.0, 0.5], "degenerate"),
    ],
)
def test_critical_point_type_nonsmooth(f, point, expected):
    p = jf.Problem(f, dim=2, nonsmooth=True)
    val = float(f(jnp.asarray(point)))
    types, methods, _ = critical_point_type(p, np.asarray([point]), [val], [1e-7])
    assert types == [expected] and methods == ["perturbation"]


# --------------------------------------------------------------------------- paper
def test_example_1_1_critical_value_zero_minima():
    p, _, res, _ = runs.example_1_1()
    cvs = jf.critical_values(p, _table(res), gtol=res.meta["gtol"])
    main = max(cvs, key=lambda c: c.count)
    assert abs(main.value) < 1e-3 and main.type == "minimum"
    x1, x2, y1, y2 = main.point
    # On C_1 = {(t, t, 1/t, 1/t)}.
    assert x1 == pytest.approx(x2, abs=1e-3) and y1 == pytest.approx(y2, abs=1e-3)
    assert x1 * y1 == pytest.approx(1.0, abs=1e-3)
    # Saddle values 2 and 3 only with tiny counts, if at all.
    for cv in cvs:
        if cv is not main:
            assert cv.count <= 2 and min(abs(cv.value - 2), abs(cv.value - 3)) < 1e-2
    assert sum(c.count for c in cvs) == int(
        np.sum(np.asarray(jf.classify(res).status) == S.CONVERGED)
    )
    lo, hi = main.interval
    assert lo < main.fraction < hi


def test_example_1_1_value_at_infinity():
    _, _, res, _ = runs.example_1_1()
    vis = jf.values_at_infinity(_table(res), gtol=res.meta["gtol"])
    assert len(vis) == 1
    (vi,) = vis
    assert vi.value == pytest.approx(1.0, abs=6e-3)
    assert vi.count == int(np.sum(np.asarray(res.f) > 0.5)) == vi.escaping
    assert vi.growth_exponent == pytest.approx(0.25, abs=0.015) and vi.log_growth == 0.0
    assert vi.malgrange < 0.05  # ||x|| ||v|| -> 0 like t^(-1/2)


def test_remark_3_2_clusters_not_merged():
    p, x0, res = runs.remark_3_2()
    table = _table(res)
    cvs = jf.critical_values(p, table, gtol=res.meta["gtol"])
    x0 = np.asarray(x0[:, 0], np.float64)
    st = table["status"]
    done = (st == S.CONVERGED) | (st == S.BOUNDED)
    assert done.mean() > 0.9
    # Remark 3.2: x0 < 0 flows to -4 (value -8); 2k < x0 <= 2k + 2 flows to 2k + 2
    # (value -3 (1 - 2^-(k+1))). Starts on the flat side of a degenerate critical point
    # (|f'(x0)| <= gtol, e.g. x0 = 6.3 where f' = -2 (0.3)^15) stop at once, next to it.
    true_values = np.array([-8.0] + [-3 * (1 - 2.0**-j) for j in range(0, 6)])
    f = table["f"].astype(np.float64)[done]
    nearest = true_values[np.argmin(np.abs(f[:, None] - true_values[None, :]), axis=1)]
    moved = table["t"][done] > 0
    k = np.where(x0 < 0, -1, np.ceil(x0 / 2) - 1).astype(int)[done]
    by_start = np.where(k < 0, -8.0, -3 * (1 - 2.0 ** -(k + 1)))
    np.testing.assert_array_equal(nearest[moved], by_start[moved])
    expected = {v: int(np.sum(nearest == v)) for v in np.unique(nearest)}
    assert len(expected) >= 5  # -8, -1.5, -2.25, -2.625, -2.8125
    assert len(cvs) == len(expected)  # none merged, none split
    for cv in cvs:
        v = min(expected, key=lambda e: abs(e - cv.value))
        assert abs(cv.value - v) <= cv.tolerance
        assert cv.spread[1] - cv.spread[0] <= cv.tolerance
        assert cv.count == expected[v]
    best = cvs[0]
    assert best.value == pytest.approx(-8.0, abs=1e-3) and best.type == "minimum"
    assert best.point[0] == pytest.approx(-4.0, abs=1e-3)
    # The others are degenerate saddles: f ~ +-(x - 2k)^(2^(k+1)) on either side.
    assert all(cv.type == "saddle" for cv in cvs[1:]), [c.type for c in cvs]


def test_example_4_3_saddle_and_value_at_infinity():
    p, x0, res = runs.example_4_3()
    table = _table(res)
    cvs = jf.critical_values(p, table)
    assert len(cvs) == 1
    (cv,) = cvs
    # (0, 0) is the only critical point: a strict saddle with value 1.
    assert cv.value == pytest.approx(1.0, abs=1e-9) and cv.count == 1
    assert cv.type == "saddle" and cv.eigenvalues[0] < 0 < cv.eigenvalues[1]
    np.testing.assert_allclose(cv.point, [0.0, 0.0], atol=1e-12)
    vis = jf.values_at_infinity(table)
    assert len(vis) == 1
    (vi,) = vis
    assert vi.value == pytest.approx(0.5, abs=1e-3)
    assert vi.count == len(x0) - 1 and vi.log_growth == 1.0
    assert vi.fraction == pytest.approx((len(x0) - 1) / len(x0))


def test_figure_3_two_values_at_infinity():
    _, _, res = runs.figure_3()
    table = _table(res)
    vis = jf.values_at_infinity(table)
    assert [round(v.value, 2) for v in vis] == [0.5, 4.5]
    # w1 -> -inf gives 1/2, w1 -> +inf gives 9/2.
    w1 = table["x_0"]
    esc = table["status"] == S.ESCAPING
    assert vis[0].count == int(np.sum(esc & (w1 < 0)))
    assert vis[1].count == int(np.sum(esc & (w1 > 0)))
    assert all(v.log_growth == 1.0 for v in vis)


def test_remark_3_3_value_at_infinity():
    _, _, res = runs.remark_3_3()
    table = _table(res)
    (vi,) = jf.values_at_infinity(table)
    assert vi.value == pytest.approx(1.0, abs=1e-3) and vi.count == 2
    assert vi.growth_exponent == pytest.approx(0.25, abs=0.03)


def test_bad_table():
    with pytest.raises(KeyError, match="trajectory_table"):
        jf.critical_values(None, {"f": np.zeros(3)})
    assert jf.values_at_infinity({"status": np.zeros(0, np.int8), "f": np.zeros(0)}) == []


@pytest.mark.slow
def test_nonsmooth_factorization_minimum_by_perturbation():
    # (4.14): rank M = r = 1 with nonzero entries, no spurious local minima; the value 0
    # is typed by the perturbation test on the min-norm subgradient flow's end points.
    p, _, res = runs.nonsmooth_factorization()
    cvs = jf.critical_values(p, _table(res))
    assert len(cvs) == 1
    (cv,) = cvs
    assert abs(cv.value) < 1e-6 and cv.type == "minimum" and cv.method == "perturbation"
    assert cv.eigenvalues is None
