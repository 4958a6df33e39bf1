"""The engine against closed forms, conserved quantities and the paper's Remark 3.3."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize

import jaxflow as jf
from jaxflow import problems

TIGHT = diffrax.PIDController(rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize(
    "solver", [diffrax.Kvaerno5(), diffrax.Kvaerno3(), diffrax.Tsit5(), diffrax.Dopri8(), jf.Rodas4()]
)
def test_linear_flow_matches_matrix_exponential(solver):
    rng = np.random.default_rng(0)
    d = 5
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = np.array([0.0, 0.3, 1.0, 2.5, 7.0])  # PSD with a zero eigenvalue
    a = q @ np.diag(lam) @ q.T
    a = (a + a.T) / 2
    problem = jf.Problem(lambda x: 0.5 * x @ jnp.asarray(a) @ x, dim=d)
    x0 = rng.normal(size=(7, d))
    t1 = 3.0
    res = jf.flow(problem, jnp.asarray(x0), t1=t1, solver=solver, stepsize_controller=TIGHT, gtol=0.0)
    assert np.all(np.asarray(res.status) == jf.Status.HORIZON)
    np.testing.assert_allclose(np.asarray(res.t), t1, rtol=1e-14)
    exact = x0 @ scipy.linalg.expm(-t1 * a).T
    err = np.linalg.norm(np.asarray(res.x) - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert err.max() <= 1e-7, err
    # The checkpoints record ||x(t_k)|| and f(x(t_k)) at exactly the log-spaced times.
    ts = np.asarray(res.ts)
    for k in (3, len(ts) // 2, len(ts) - 1):
        xk = x0 @ scipy.linalg.expm(-ts[k] * a).T
        np.testing.assert_allclose(np.asarray(res.cp_norm[:, k]), np.linalg.norm(xk, axis=1), rtol=1e-7)
        fk = 0.5 * np.einsum("ni,ij,nj->n", xk, a, xk)
        np.testing.assert_allclose(np.asarray(res.cp_f[:, k]), fk, rtol=1e-6, atol=1e-14)


def _g_remark33(x):
    """The paper's closed form: g(x(t)) = 2t + g(x0) for f = x^2(1+x^2)/(1+x^4)."""
    r2 = math.sqrt(2.0)
    return (
        x**4 / 4 + x**2 + (2 + r2) * math.log(x**2 - r2 - 1)
        + (2 - r2) * math.log(x**2 + r2 - 1) - math.log(x)
    )


def _x_remark33(t, x0=2.0):
    target = 2 * t + _g_remark33(x0)
    return scipy.optimize.brentq(lambda x: _g_remark33(x) - target, x0, 100.0, xtol=1e-15, rtol=1e-15)


def test_remark_3_3_escape_matches_closed_form():
    # Sanity of the closed form itself: dg/dx = 2 / x'(x).
    x, hh = 2.7, 1e-6
    xdot = 2 * x * (x**4 - 2 * x**2 - 1) / (x**4 + 1) ** 2
    dg = (_g_remark33(x + hh) - _g_remark33(x - hh)) / (2 * hh)
    assert dg == pytest.approx(2 / xdot, rel=1e-7)

    problem = problems.get("unbounded-trajectory") if "unbounded-trajectory" in problems.names() else (
        jf.Problem(lambda x: (x[0] ** 2 * (1 + x[0] ** 2)) / (1 + x[0] ** 4), dim=1)
    )
    res = jf.flow(problem, jnp.array([[2.0]]), t1=1e4, stepsize_controller=TIGHT, gtol=0.0)
    ts = np.asarray(res.ts)
    ref = np.array([_x_remark33(t) for t in ts])
    np.testing.assert_allclose(np.asarray(res.cp_norm[0]), ref, rtol=1e-6)
    for t in (10.0, 1e3, 1e4):
        k = int(np.argmin(np.abs(ts - t)))
        assert ts[k] == pytest.approx(t, rel=1e-12)
        assert float(res.cp_norm[0, k]) == pytest.approx(_x_remark33(t), rel=1e-6)
    assert float(res.x[0, 0]) == pytest.approx(_x_remark33(1e4), rel=1e-6)


def test_matrix_sensing_conserves_balancedness(getkey):
    n1, n2, r, m = 4, 3, 2, 20
    k1, k2, k3, k4 = jax.random.split(getkey(), 4)
    a = jax.random.normal(k1, (m, n1, n2))
    mstar = jax.random.normal(k2, (n1, r)) @ jax.random.normal(k3, (n2, r)).T
    b = jnp.einsum("kij,ij->k", a, mstar)

    def f(p):
        z = p["X"] @ p["Y"].T
        return jnp.sum((jnp.einsum("kij,ij->k", a, z) - b) ** 2) / (2 * m)

    problem = jf.Problem(f, example={"X": jnp.zeros((n1, r)), "Y": jnp.zeros((n2, r))})
    x0 = problem.sample(k4, 6, jnp.float64)

    def c(flat):
        p = problem.unravel(flat)
        return p["X"].T @ p["X"] - p["Y"].T @ p["Y"]

    c0 = jax.vmap(c)(x0)
    for t1 in (1.0, 10.0, 100.0):
        res = jf.flow(problem, x0, t1=t1, stepsize_controller=TIGHT, gtol=0.0)
        assert np.all(np.asarray(res.status) == jf.Status.HORIZON)
        c1 = jax.vmap(c)(res.x)
        drift = jnp.linalg.norm(c1 - c0, axis=(1, 2)) / jnp.linalg.norm(c0, axis=(1, 2))
        assert float(drift.max()) <= 1e-6, drift
    # ...and the loss decreased along the way.
    assert np.all(np.asarray(res.f) <= np.asarray(res.cp_f[:, 0]))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_batch_of_one_and_many_agree(dtype, getkey):
    problem = problems.get("matrix-completion")
    x0 = problem.sample(getkey(), 2000, dtype)
    many = jf.flow(problem, x0, t1=50.0)
    one = jf.flow(problem, x0[5:6], t1=50.0)
    assert many.x.dtype == dtype and one.x.dtype == dtype
    assert int(one.status[0]) == int(many.status[5])
    rtol = 1e-5 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(np.asarray(one.x[0]), np.asarray(many.x[5]), rtol=rtol, atol=rtol)
    counts = many.counts()
    assert set(counts) <= {"CONVERGED", "HORIZON"}
    # No finished result is lost: every start has a final status.
    assert sum(counts.values()) == 2000


def test_float32_batch_of_ten_thousand(getkey):
    problem = problems.get("matrix-completion")
    x0 = problem.sample(getkey(), 10_000, jnp.float32)
    res = jf.flow(problem, x0, t1=200.0)
    st = np.asarray(res.status)
    assert np.all((st == jf.Status.CONVERGED) | (st == jf.Status.HORIZON))
    # The undecided ones at t = 200 are the escaping valley: f near 1, |x| near 8.8.
    f = np.asarray(res.f)[st == jf.Status.HORIZON]
    nrm = np.linalg.norm(np.asarray(res.x), axis=1)[st == jf.Status.HORIZON]
    assert np.all(np.abs(f - 1) < 0.2) and np.all(np.abs(nrm - 8.8) < 0.5)
    assert 0.07 < np.mean(st == jf.Status.HORIZON) < 0.10
    assert 0 < res.lockstep_efficiency <= 1


def test_no_recompilation_for_same_shapes(getkey, compilations):
    problem = problems.get("matrix-completion")
    x0 = problem.sample(getkey(), 64, jnp.float32)
    x1, x2 = x0 + 0.01, x0 * 0.5
    jf.flow(problem, x0, t1=10.0)
    before = compilations()
    jf.flow(problem, x1, t1=10.0)
    jf.flow(problem, x2, t1=9.5)  # same number of checkpoints: still no recompilation
    assert compilations() == before
    jf.flow(problem, x0[:32], t1=10.0)  # a new shape compiles: the counter can fail
    assert compilations() > before


def test_nan_row_is_isolated(getkey):
    problem = problems.get("matrix-completion")
    x0 = problem.sample(getkey(), 300, jnp.float64)
    clean = jf.flow(problem, x0, t1=100.0)
    bad_x0 = x0.at[17].set(jnp.nan).at[250, 2].set(jnp.inf)
    bad = jf.flow(problem, bad_x0, t1=100.0)
    assert int(bad.status[17]) == jf.Status.NONFINITE
    assert int(bad.status[250]) == jf.Status.NONFINITE
    keep = np.setdiff1d(np.arange(300), [17, 250])
    for name in ("x", "f", "stationarity", "status", "t", "steps", "rejected", "path_length",
                 "cp_norm", "cp_f", "cp_stat"):
        np.testing.assert_array_equal(np.asarray(getattr(bad, name))[keep],
                                      np.asarray(getattr(clean, name))[keep], err_msg=name)


def test_status_codes():
    # Unbounded below: x' = 2x escapes exponentially and hits the radius.
    p = jf.Problem(lambda x: -jnp.sum(x**2), dim=2)
    res = jf.flow(p, jnp.array([[1.0, 0.0], [0.0, 0.0]]), t1=100.0, escape_radius=1e3)
    assert list(np.asarray(res.status)) == [jf.Status.ESCAPED, jf.Status.CONVERGED]
    assert float(res.t[0]) == pytest.approx(math.log(1e3) / 2, rel=1e-2)
    assert float(res.t[1]) == 0.0  # a critical start is converged at t = 0
    # Step budget.
    q = jf.Problem(lambda x: jnp.sum(x**2), dim=1)
    res = jf.flow(q, jnp.array([[1.0]]), t1=100.0, max_steps=3, gtol=0.0)
    assert int(res.status[0]) == jf.Status.MAX_STEPS and int(res.steps[0] + res.rejected[0]) == 3
    # f = x^(3/2): d sqrt(x)/dt = -3/4, so x reaches 0 at t = 4 sqrt(x0) / 3 and the
    # field is NaN beyond: NONFINITE, with the last finite state kept.
    s = jf.Problem(lambda x: jnp.sqrt(x[0]) ** 3, dim=1)
    res = jf.flow(s, jnp.array([[1.0], [4.0]]), t1=100.0, gtol=0.0)
    assert np.all(np.asarray(res.status) == jf.Status.NONFINITE)
    assert np.all(np.isfinite(np.asarray(res.x)))
    np.testing.assert_allclose(np.asarray(res.t), [4 / 3, 8 / 3], rtol=1e-2)


def test_converged_statuses_have_small_stationarity(getkey):
    problem = problems.get("matrix-completion")
    res = jf.flow(problem, problem.sample(getkey(), 500, jnp.float64), t1=1e3)
    st = np.asarray(res.status)
    conv = st == jf.Status.CONVERGED
    assert conv.sum() > 400
    assert np.all(np.asarray(res.stationarity)[conv] <= jf.default_gtol(jnp.float64))
    # Converged to the global minima (value 0) on C_1 = {(t, t, 1/t, 1/t)}.
    x = np.asarray(res.x)[conv]
    assert np.all(np.asarray(res.f)[conv] < 1e-12)
    np.testing.assert_allclose(x[:, 0] * x[:, 2], 1.0, atol=1e-6)


def test_any_diffrax_solver_runs_through_the_generic_path():
    a = jnp.diag(jnp.array([1.0, 3.0]))
    p = jf.Problem(lambda x: 0.5 * x @ a @ x, dim=2)
    x0 = jnp.array([[1.0, 1.0]])
    h, n = 0.01, 100
    res = jf.flow(p, x0, t1=1.0, solver=diffrax.ImplicitEuler(),
                  stepsize_controller=diffrax.ConstantStepSize(), dt0=h, gtol=0.0)
    assert res.meta["solver"] == "ImplicitEuler"
    # Implicit Euler on a linear flow: (I + hA)^-n x0 (steps are clipped at checkpoints,
    # so compare with the exact product of the steps actually taken).
    assert int(res.status[0]) == jf.Status.HORIZON
    exact = np.array([1.0, 1.0]) / (1 + h * np.array([1.0, 3.0])) ** n
    np.testing.assert_allclose(np.asarray(res.x[0]), exact, rtol=5e-3)


def test_float32_run_with_float64_data_stays_float32(getkey):
    # The conftest enables x64, so data captured by f (here float64) would promote f and
    # break the run's single precision; the engine must keep the dtype of x0.
    # The objective mixes precisions on purpose (user code), so standard promotion here.
    data = jnp.asarray(np.linspace(0.5, 2.0, 3))  # float64
    problem = jf.Problem(lambda x: jnp.sum((x - data) ** 2), dim=3)
    x0 = problem.sample(getkey(), 8, jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        res = jf.flow(problem, x0, t1=50.0)
    assert res.x.dtype == res.f.dtype == jnp.float32
    assert np.all(np.asarray(res.status) == jf.Status.CONVERGED)
    np.testing.assert_allclose(np.asarray(res.x), np.tile(np.asarray(data), (8, 1)), atol=1e-4)
