"""The built-in catalogue: every entry evaluates, differentiates, flows; the paper's facts."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow
from jaxflow import problems
from jaxflow._flow import flow

ALL = problems.names()
PAPER = [
    "matrix-completion", "relu-flat", "sigmoid-two-points", "infinitely-many-critical-values",
    "unbounded-trajectory", "deep-linear", "deep-sigmoid-1d", "sigmoid-example-4-3",
    "matrix-sensing", "nonsmooth-factorization",
]


def _needs_minnorm(problem):
    if problem.nonsmooth:
        pytest.importorskip("jaxflow._nonsmooth", reason="nonsmooth flows not available")


_JIT = {}


def _jitted(problem, what):
    key = (id(problem), what)
    if key not in _JIT:
        fn = {"f": problem.f_flat, "grad": jax.grad(problem.f_flat),
              "hess": jax.hessian(problem.f_flat)}[what]
        _JIT[key] = (problem, jax.jit(fn))  # keep problem alive so its id stays unique
    return _JIT[key][1]


def _grad(problem, x):
    return np.asarray(_jitted(problem, "grad")(jnp.asarray(x, jnp.float64)))


def _f(problem, x):
    return float(_jitted(problem, "f")(jnp.asarray(x, jnp.float64)))


def _hess(problem, x):
    return np.asarray(_jitted(problem, "hess")(jnp.asarray(x, jnp.float64)))


# --------------------------------------------------------------------------- registry
def test_catalogue_complete():
    assert set(PAPER) <= set(ALL)
    assert {"cosine-network", "cosine-network-extra-neuron"} <= set(ALL)


def test_registry_is_an_attribute_of_a_bare_import():
    # `import jaxflow as jf; jf.problems.get(...)`, as the README writes it; a fresh
    # process, since importing jaxflow.problems here would set the attribute anyway
    import subprocess
    import sys

    code = "import jaxflow as jf; print(jf.problems.get('matrix-completion').dim)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "4"


@pytest.mark.parametrize("name", ALL)
def test_entry_evaluates_and_documents(name, getkey):
    problem = problems.get(name)
    assert problem.name == name
    x0 = problem.sample(getkey(), 16, jnp.float64)
    assert x0.shape == (16, problem.dim)
    fs = jax.vmap(problem.f_flat)(x0)
    assert fs.shape == (16,) and bool(jnp.all(jnp.isfinite(fs)))
    if problem.global_infimum is not None:
        assert float(jnp.min(fs)) >= problem.global_infimum - 1e-12
    # The docstring cites the equation recorded in the facts.
    facts = problem.facts
    assert "equation" in facts and "bounded_trajectories" in facts
    doc = problems.info(name)
    assert doc.strip()
    eq = facts["equation"]
    cite = eq.split(",")[0].replace(" base network", "")
    assert cite.split(" (")[0] in doc or cite in doc, (eq, doc[:200])
    # A float32 run stays float32 with x64 on: no float64 value anywhere in f or its
    # gradient (data captured in float64 is cast to the point's dtype), and no mixed-dtype
    # arithmetic (which strict promotion, on in these tests, would refuse).
    x32 = x0.astype(jnp.float32)
    jaxpr = jax.make_jaxpr(jax.value_and_grad(problem.f_flat))(x32[0])
    wide = sorted({str(v.aval.dtype) for eqn in jaxpr.eqns for v in eqn.outvars}
                  - {"float32", "int32", "bool", "uint32", "int8"})
    assert not wide, f"{name}: float32 evaluation computes in {wide}"
    # The recorded parameters rebuild the same problem.
    rebuilt = problems.get(**facts["registry"])
    np.testing.assert_array_equal(jax.vmap(rebuilt.f_flat)(x0), fs)
    # JSON-able description (used by scan manifests).
    import json

    json.dumps(problem.describe())


@pytest.mark.parametrize("name", ALL)
def test_gradient_matches_finite_differences(name, getkey):
    """Central differences in float64 at random starts (a.s. away from kinks)."""
    problem = problems.get(name)
    x0 = np.asarray(problem.sample(getkey(), 3, jnp.float64))
    h = 1e-6
    f_batch = jax.jit(jax.vmap(problem.f_flat))
    grads = np.asarray(jax.jit(jax.vmap(jax.grad(problem.f_flat)))(jnp.asarray(x0)))
    for x, g in zip(x0, grads, strict=True):
        e = np.eye(problem.dim)
        up, down = f_batch(jnp.asarray(x + h * e)), f_batch(jnp.asarray(x - h * e))
        fd = (np.asarray(up) - np.asarray(down)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6 * (1 + np.abs(g).max()))


@pytest.mark.parametrize("name", ALL)
def test_entry_scans_at_tiny_size(name, getkey, tmp_path):
    """Each entry scans by name (`jaxflow.scan`) or, before scans exist, flows."""
    problem = problems.get(name)
    _needs_minnorm(problem)
    ok = {int(jaxflow.Status.CONVERGED), int(jaxflow.Status.HORIZON),
          int(jaxflow.Status.ESCAPED)}
    # Tsit5 for smooth problems: the smoke test is about the problem, not the (slower to
    # compile) implicit default; nonsmooth ones need their default (kinks).
    solver = "auto" if problem.nonsmooth else diffrax.Tsit5()
    if hasattr(jaxflow, "scan"):
        out = jaxflow.scan(name, 6, out=tmp_path / "scan", t1=1.0, chunk_size=6,
                           dtype="float64", solver=solver, compilation_cache=False,
                           checkpoints_per_decade=2)
        table = out.table.to_pydict()
        starts = np.stack([table[f"start_{j}"] for j in range(problem.dim)], axis=1)
        f0 = np.asarray(jax.vmap(problem.f_flat)(jnp.asarray(starts)))
        f1 = np.asarray(table["f"])
        # The refined statuses of the detectors (ESCAPING, BOUNDED, UNDECIDED) are fine too.
        ok |= {int(s) for s in jaxflow.Status if s.value >= 6}
        status = np.asarray(table["status"])
    else:
        x0 = problem.sample(getkey(), 6, jnp.float64)
        res = flow(problem, x0, t1=1.0, solver=solver, checkpoints_per_decade=2)
        f0 = np.asarray(jax.vmap(problem.f_flat)(x0))
        f1, status = np.asarray(res.f), np.asarray(res.status)
    assert f1.shape == (6,) and np.all(np.isfinite(f1))
    assert np.all(f1 <= f0 + 1e-9)  # descent along a (sub)gradient flow
    assert set(np.unique(status)) <= ok


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "name, params, exc, words",
    [
        ("no-such-problem", {}, KeyError, "unknown problem"),
        ("matrix-completion", {"foo": 1}, TypeError, "no parameter"),
        ("matrix-completion", {"low": 1.0, "high": -1.0}, ValueError, "low < high"),
        ("matrix-completion", {"low": float("nan")}, ValueError, "finite"),
        ("deep-linear", {"depth": 0}, ValueError, "depth"),
        ("deep-linear", {"depth": "3"}, TypeError, "depth"),
        ("deep-linear", {"widths": (3, 2)}, ValueError, "widths"),
        ("deep-linear", {"rank_x": 7}, ValueError, "rank_x"),
        ("deep-linear", {"seed": -1}, ValueError, "seed"),
        ("deep-linear", {"init_scale": 0.0}, ValueError, "init_scale"),
        ("deep-linear", {"X": np.ones((3, 4)), "Y": np.ones((2, 5))}, ValueError, "`Y`"),
        ("deep-linear", {"X": np.ones((3, 4)), "rank_x": 1}, ValueError, "rank_x"),
        ("deep-sigmoid-1d", {"depth": 1}, ValueError, "depth"),
        ("deep-sigmoid-1d", {"x": "one"}, TypeError, "`x`"),
        ("matrix-sensing", {"r": 0}, ValueError, "`r`"),
        ("matrix-sensing", {"rank_m": 9}, ValueError, "rank_m"),
        ("nonsmooth-factorization", {"m": 2.5}, TypeError, "`m`"),
        ("nonsmooth-factorization", {"rank_m": 4}, ValueError, "rank_m"),
        ("cosine-network", {"lam": 0.0}, ValueError, "lam"),
        ("cosine-network", {"extra_neuron": "yes"}, TypeError, "extra_neuron"),
        ("cosine-network", {"width": 0}, ValueError, "width"),
    ],
)
def test_bad_parameters_give_clear_errors(name, params, exc, words):
    with pytest.raises(exc, match=words):
        problems.get(name, **params)


# --------------------------------------------------------------------------- paper facts
def test_example_1_1_critical_sets():
    """Example 1.1: C1..C4 are critical with values 0, 2, 2, 3."""
    p = problems.get("matrix-completion")
    for t in (0.5, -1.3, 2.0):
        for point, value in (
            ([t, t, 1 / t, 1 / t], 0.0),
            ([t, 0, 1 / t, -1 / t], 2.0),
            ([t, -t, 0, -1 / t], 2.0),
            ([0, 0, 0, 0], 3.0),
        ):
            assert _f(p, point) == pytest.approx(value, abs=1e-12)
            np.testing.assert_allclose(_grad(p, point), 0.0, atol=1e-12)
            if value > 0:  # strict saddles: a negative Hessian eigenvalue
                assert np.linalg.eigvalsh(_hess(p, point))[0] < 0


def test_figure_3_saddle_and_values_at_infinity():
    p = problems.get("sigmoid-two-points")
    crit = [math.log(3.0), 0.0]
    assert _f(p, crit) == pytest.approx(5.0)
    np.testing.assert_allclose(_grad(p, crit), 0.0, atol=1e-12)
    assert np.linalg.eigvalsh(_hess(p, crit))[0] < 0
    assert _f(p, [-40.0, -3.0]) == pytest.approx(0.5, abs=1e-12)
    assert _f(p, [40.0, 1.0]) == pytest.approx(4.5, abs=1e-12)


def test_remark_3_2_is_c1_with_the_stated_critical_values():
    p = problems.get("infinitely-many-critical-values")
    assert _f(p, [-4.0]) == -8.0 and _grad(p, [-4.0])[0] == 0.0
    for k in range(0, 5):
        x = 2.0 * k
        assert _f(p, [x]) == pytest.approx(-3 * (1 - 2.0**-k))
        assert _grad(p, [x])[0] == pytest.approx(0.0, abs=1e-12)
    # Continuity of f and f' across every piece boundary.
    for b in [-2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]:
        e = 1e-7
        assert _f(p, [b - e]) == pytest.approx(_f(p, [b + e]), abs=1e-5)
        assert _grad(p, [b - e])[0] == pytest.approx(_grad(p, [b + e])[0], abs=1e-4)
    # No other critical points: f' < 0 left of -4, > 0 on (-4, 0), < 0 on (0, inf)
    # except at the inflection points 2k (grid avoiding them).
    xs = np.linspace(-7.3, 7.3, 1460)
    g = np.asarray(jax.vmap(jax.grad(lambda x: p.f_flat(x[None])))(jnp.asarray(xs)))
    assert np.all(g[xs < -4] < 0) and np.all(g[(xs > -4) & (xs < 0)] > 0)
    assert np.all(g[xs > 0] < 0)


def _g_remark_3_3(x):
    r2 = math.sqrt(2.0)
    return (x**4 / 4 + x**2 + (2 + r2) * np.log(x**2 - r2 - 1)
            + (2 - r2) * np.log(x**2 + r2 - 1) - np.log(x))


def test_remark_3_3_escape_matches_closed_form():
    """g(x(t)) = 2t + g(2) along the flow from x0 = 2, at every checkpoint."""
    p = problems.get("unbounded-trajectory")
    res = flow(p, jnp.array([[2.0]]), t1=1e3, checkpoints_per_decade=4,
               stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12))
    ts = np.asarray(res.ts)
    xs = np.asarray(res.cp_norm[0])
    np.testing.assert_allclose(_g_remark_3_3(xs) - _g_remark_3_3(2.0), 2 * ts, rtol=1e-7, atol=1e-7)
    assert xs[-1] == pytest.approx((8 * ts[-1]) ** 0.25, rel=0.1)
    # Critical values 0 and (1 + sqrt 2) / 2.
    xc = (math.sqrt(2) - 1) ** -0.5
    assert _f(p, [xc]) == pytest.approx((1 + math.sqrt(2)) / 2)
    assert _grad(p, [xc])[0] == pytest.approx(0.0, abs=1e-12)


def _balancedness(p, x):
    ws = p.unravel(jnp.asarray(x))
    return [np.asarray(ws[i + 1].T @ ws[i + 1] - ws[i] @ ws[i].T) for i in range(len(ws) - 1)]


def test_deep_linear_conservation_and_global_infimum(getkey):
    """Prop. 4.1 with rank-deficient X: balancedness conserved, W1 U2 constant, f -> inf f."""
    rank_x = 1
    p = problems.get("deep-linear", depth=3, rank_x=rank_x)
    x = p.data["X"]
    # The stated infimum is the reduced-rank least-squares value (numpy lstsq reference).
    w_ls = np.linalg.lstsq(x.T, p.data["Y"].T, rcond=None)[0].T
    assert p.global_infimum == pytest.approx(0.5 * np.sum((w_ls @ x - p.data["Y"]) ** 2))
    x0 = p.sample(getkey(), 3, jnp.float64) * 0.5
    res = flow(p, x0, t1=200.0, gtol=1e-10, solver=diffrax.Tsit5(),
               stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12))
    for i in range(3):
        for a, b in zip(_balancedness(p, x0[i]), _balancedness(p, res.x[i]), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
        assert float(res.f[i]) == pytest.approx(p.global_infimum, abs=1e-7)
    u2 = np.linalg.svd(x)[0][:, rank_x:]
    for i in range(3):
        w1_0 = np.asarray(p.unravel(x0[i])[0])
        w1_t = np.asarray(p.unravel(res.x[i])[0])
        np.testing.assert_allclose(w1_0 @ u2, w1_t @ u2, atol=1e-9)


def test_deep_sigmoid_l2_conserved_quantity(getkey):
    """Prop. 4.2, L = 2: w1 x + exp(w1 x) - x^2 w2^2 / 2 is constant along the flow."""
    xdat = 1.5
    p = problems.get("deep-sigmoid-1d", depth=2, x=xdat, y=0.7)

    def q(w):
        w = np.asarray(w)
        return w[..., 0] * xdat + np.exp(w[..., 0] * xdat) - xdat**2 * w[..., 1] ** 2 / 2

    x0 = p.sample(getkey(), 8, jnp.float64)
    # Convergence can be slow (sigma' small when |w1 x| is large): long horizon.
    res = flow(p, x0, t1=1e5, stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12))
    np.testing.assert_allclose(q(res.x), q(x0), rtol=1e-7, atol=1e-7)
    assert np.all(np.asarray(res.status) == int(jaxflow.Status.CONVERGED))
    assert np.all(np.asarray(res.f) < 1e-12)  # every critical point is global


def test_example_4_3_single_saddle():
    p = problems.get("sigmoid-example-4-3")
    assert _f(p, [0.0, 0.0]) == 1.0
    np.testing.assert_allclose(_grad(p, [0.0, 0.0]), 0.0)
    w1 = 30.0
    assert _f(p, [w1, 1 - 2 / (1 + math.exp(2 * w1))]) == pytest.approx(0.5, abs=1e-12)


def test_matrix_sensing_conservation_and_bound(getkey):
    """Prop. 4.4: X^T X - Y^T Y conserved and the proof's bound holds along the flow."""
    p = problems.get("matrix-sensing", n1=3, n2=3, r=2, m=12)
    a, b = p.data["A"], p.data["b"]
    c = p.facts["lower_bound_c"]
    avec = a.reshape(len(b), -1)
    z = np.asarray(jax.random.normal(getkey(), (5, 9), jnp.float64))
    ratios = np.sum((z @ avec.T) ** 2, axis=1) / len(b) / np.sum(z**2, axis=1)
    assert 0 < c <= ratios.min()
    x0 = p.sample(getkey(), 4, jnp.float64)
    res = flow(p, x0, t1=30.0, checkpoints_per_decade=2, solver=diffrax.Tsit5(),
               stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12))

    def gram(x):
        d = p.unravel(jnp.asarray(x))
        return np.asarray(d["X"].T @ d["X"] - d["Y"].T @ d["Y"]), d

    for i in range(4):
        c0, _ = gram(x0[i])
        ct, d = gram(res.x[i])
        np.testing.assert_allclose(c0, ct, atol=1e-6)
        lhs = (np.linalg.norm(d["X"].T @ d["X"]) ** 2 + np.linalg.norm(d["Y"].T @ d["Y"]) ** 2)
        bound = np.linalg.norm(c0) ** 2 + 2 * (4 * _f(p, x0[i]) + 2 * np.mean(b**2)) / c
        assert lhs <= bound


def test_nonsmooth_factorization_value_and_bound_at_start(getkey):
    p = problems.get("nonsmooth-factorization", m=3, n=4, r=2, rank_m=2)
    x0 = np.asarray(p.sample(getkey(), 1, jnp.float64))[0]
    d = p.unravel(jnp.asarray(x0))
    xm, ym = np.asarray(d["X"]), np.asarray(d["Y"])
    assert _f(p, x0) == pytest.approx(np.abs(xm @ ym.T - p.data["M"]).sum())
    assert p.facts["equation"] == "(4.11)"
    assert problems.get("nonsmooth-factorization").facts["equation"] == "(4.14)"


def test_cosine_network_bad_minima_and_extra_neuron():
    """Bad local minima of the base network (PD Hessian, f > 0) and, with the extra
    neuron, no critical point there but the same value approached at infinity."""
    base = problems.get("cosine-network")
    ext = problems.get("cosine-network-extra-neuron")
    # Refine the documented bad minima with Newton steps, then check them.
    for v, w, value in ((-0.104, 3.378, 0.2413), (0.806, 4.797, 0.0395), (0.543, 8.789, 0.1633)):
        x = np.array([v, w])
        for _ in range(20):
            x = x - np.linalg.solve(_hess(base, x), _grad(base, x))
        assert np.linalg.norm(_grad(base, x)) < 1e-12
        assert np.linalg.eigvalsh(_hess(base, x))[0] > 0
        assert _f(base, x) == pytest.approx(value, abs=2e-4)
        # Extended loss, flat order (a, b, v, w): along a e^b = 1, b -> inf, f -> L(theta*).
        for bb in (5.0, 10.0, 20.0):
            pt = np.concatenate([[math.exp(-bb), bb], x])
            assert _f(ext, pt) == pytest.approx(_f(base, x) + 0.1 * math.exp(-2 * bb))
            assert np.linalg.norm(_grad(ext, pt)) > 0
    # Global minima (1, +-2): value 0 for both, with a = 0 for the extended loss.
    assert _f(base, [1.0, 2.0]) == pytest.approx(0.0, abs=1e-15)
    assert _f(ext, [0.0, 3.0, 1.0, -2.0]) == pytest.approx(0.0, abs=1e-15)
    # grad_theta L~ = (1 + (a e^b - 1)^2) grad L: the theta-path is L's, reparametrised.
    pt = np.array([0.3, -0.2, 0.5, 1.1])
    scale = 1 + (0.3 * math.exp(-0.2) - 1) ** 2
    np.testing.assert_allclose(_grad(ext, pt)[2:], scale * _grad(base, pt[2:]), rtol=1e-12)


def test_cosine_network_flow_reaches_infinity_with_extra_neuron(getkey):
    """Starts attracted by a bad minimum of L escape (b grows like log t) with the neuron."""
    ext = problems.get("cosine-network-extra-neuron")
    x0 = jnp.array([[0.5, 0.0, 0.8, 4.6], [0.5, 0.0, 0.9, 1.8]])
    res = flow(ext, x0, t1=1e4, gtol=1e-10)
    assert int(res.status[0]) == int(jaxflow.Status.HORIZON)
    b = float(res.x[0, 1])
    assert b == pytest.approx(0.5 * math.log(4 * 0.1 * 1e4), abs=0.3)
    assert float(res.f[0]) == pytest.approx(0.0395, abs=1e-3)
    assert int(res.status[1]) == int(jaxflow.Status.CONVERGED)
    assert float(res.f[1]) < 1e-8
