"""The matrix-free Rosenbrock stepper (`RodasKrylov`) and its GMRES.

References: the dense `Rodas4` (same method, exact solves), `Kvaerno5`, and SciPy's
Radau in float64; Hessian-vector products against finite differences of the gradient.
"""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import jaxflow as jf
from jaxflow import problems
from jaxflow._stepper import default_solver
from jaxflow._stepper.choice import MATRIX_FREE_MIN_DIM
from jaxflow._stepper.krylov import gmres, krylov_space, space_add, space_expand, space_solve


def test_gmres_solves_symmetric_indefinite_systems(getkey):
    d = 12
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(getkey(), (d, d), jnp.float64)))
    eig = np.concatenate([np.linspace(-3.0, -0.5, 4), np.linspace(0.5, 40.0, d - 4)])
    a = (q * eig) @ q.T  # symmetric, indefinite, like I + h gamma H at a saddle
    b = np.asarray(jax.random.normal(getkey(), (d,), jnp.float64))
    matvec = lambda y: jnp.asarray(a) @ y  # noqa: E731
    solve = jax.jit(gmres, static_argnums=(0, 2))
    y, res = solve(matvec, jnp.asarray(b), d)  # full dimension: exact
    np.testing.assert_allclose(np.asarray(y), np.linalg.solve(a, b), rtol=1e-9, atol=1e-10)
    # Fewer steps: the returned residual is the true one, and it shrinks with m.
    norms = []
    for m in (2, 5, 8):
        y, res = solve(matvec, jnp.asarray(b), m)
        np.testing.assert_allclose(np.asarray(res), b - a @ np.asarray(y), atol=1e-10)
        norms.append(np.linalg.norm(res))
    assert norms[0] > norms[1] > norms[2] > 0
    # A zero right-hand side gives zero, not NaN.
    y, res = solve(matvec, jnp.zeros(d), 4)
    assert np.all(np.asarray(y) == 0) and np.all(np.asarray(res) == 0)


def test_hessian_vector_products_match_finite_differences(getkey):
    """The stepper's products `jax.linearize` of the velocity vs central differences."""
    p = problems.get("matrix-completion-nxn", n=5, r=2, seed=1)
    field = jf.GradientField(p.f_flat) if hasattr(jf, "GradientField") else None
    grad = jax.grad(p.f_flat)
    x = p.sample(getkey(), 1, jnp.float64)[0]
    u = jax.random.normal(getkey(), (p.dim,), jnp.float64)
    velocity = grad if field is None else field.velocity
    hvp_u = jax.jit(lambda x, u: jax.linearize(velocity, x)[1](u))(x, u)
    eps = 1e-5
    grad = jax.jit(grad)
    fd = (grad(x + eps * u) - grad(x - eps * u)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(hvp_u), np.asarray(fd), rtol=1e-7, atol=1e-8)
    hess = jax.jit(jax.hessian(p.f_flat))(x)
    np.testing.assert_allclose(np.asarray(hvp_u), np.asarray(hess @ u), rtol=1e-12, atol=1e-12)


# d = 16 with Krylov dimension 6: the solves are genuinely inexact.
_SMALL = dict(n=4, r=2, seed=3, rate=0.6)


@functools.cache
def _small():
    # One problem object for the whole module, so runs with the same solver and shapes
    # reuse the compiled engine.
    return problems.get("matrix-completion-nxn", **_SMALL)


def _run(solver, x0, **kw):
    return jf.flow(_small(), x0, t1=kw.pop("t1", 50.0), solver=solver, **kw)


def test_matches_dense_rodas4_and_kvaerno5(getkey):
    p = _small()
    x0 = p.sample(getkey(), 6, jnp.float64)
    mf = _run(jf.RodasKrylov(krylov_dim=6), x0)
    dense = _run(jf.Rodas4(), x0)
    kv = _run(diffrax.Kvaerno5(), x0)
    np.testing.assert_array_equal(np.asarray(mf.status), np.asarray(dense.status))
    np.testing.assert_array_equal(np.asarray(mf.status), np.asarray(kv.status))
    # Converged points of a flow are attracting: to the tolerance (rtol 1e-6) level.
    np.testing.assert_allclose(np.asarray(mf.x), np.asarray(dense.x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mf.f), np.asarray(kv.f), atol=1e-8)


def test_matches_scipy_radau_float64(getkey):
    """State at t = 3 (mid-transient, no convergence stop) against Radau at rtol 1e-11."""
    p = _small()
    x0 = np.asarray(p.sample(getkey(), 3, jnp.float64))
    t1 = 3.0
    res = _run(jf.RodasKrylov(krylov_dim=6), jnp.asarray(x0), t1=t1, stop_at_convergence=False,
               stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10))
    grad = jax.jit(jax.grad(p.f_flat))
    hess = jax.jit(jax.hessian(p.f_flat))
    for x_start, x_end in zip(x0, np.asarray(res.x), strict=True):
        ref = scipy.integrate.solve_ivp(
            lambda t, y: -np.asarray(grad(jnp.asarray(y))), (0.0, t1), x_start,
            method="Radau", rtol=1e-11, atol=1e-12,
            jac=lambda t, y: -np.asarray(hess(jnp.asarray(y))),
        )
        np.testing.assert_allclose(x_end, ref.y[:, -1], rtol=1e-6, atol=1e-7)


def test_inexact_solves_are_rejected_not_accepted(getkey):
    """With two products for the first stage and one for each later one, the stiff steps
    cannot be solved: the stepper must shrink the steps (more rejections) and still land
    on the dense answer."""
    p = _small()
    x0 = p.sample(getkey(), 6, jnp.float64)  # same shapes as above: programs reused
    tight = _run(jf.RodasKrylov(krylov_dim=2, krylov_extend=1), x0)
    dense = _run(jf.Rodas4(), x0)
    np.testing.assert_array_equal(np.asarray(tight.status), np.asarray(dense.status))
    # Both within the controller's tolerance (rtol 1e-6 per step) of the true flow.
    np.testing.assert_allclose(np.asarray(tight.f), np.asarray(dense.f), rtol=1e-5, atol=1e-8)
    assert int(np.sum(tight.rejected)) > int(np.sum(dense.rejected))


def test_float32_agrees_with_float64(getkey):
    p = _small()
    x0 = p.sample(getkey(), 6, jnp.float64)
    r64 = _run(jf.RodasKrylov(krylov_dim=6), x0)
    r32 = _run(jf.RodasKrylov(krylov_dim=6), x0.astype(jnp.float32))
    assert r32.x.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(r32.status), np.asarray(r64.status))
    np.testing.assert_allclose(np.asarray(r32.f), np.asarray(r64.f), atol=1e-4)


def test_auto_is_dense_below_the_crossover_and_matrix_free_above():
    small = problems.get("matrix-completion-nxn", n=4, r=2)
    assert small.dim <= 32
    assert isinstance(default_solver(small), jf.Rodas4)
    medium = problems.get("matrix-completion-nxn", n=30, r=2)
    assert 32 < medium.dim < MATRIX_FREE_MIN_DIM
    assert isinstance(default_solver(medium), diffrax.Kvaerno5)
    big = problems.get("matrix-completion-nxn", n=MATRIX_FREE_MIN_DIM, r=1)
    assert isinstance(default_solver(big), jf.RodasKrylov)
    spec = jf.FlowOptions(t1=1.0).to_spec(big, jnp.float32)
    assert spec["solver"] == "jaxflow.RodasKrylov"
    assert type(jf.FlowOptions.from_spec(spec).stepper(big)) is jf.RodasKrylov


@pytest.mark.parametrize("bad", [dict(krylov_dim=0), dict(krylov_dim=2.5),
                                 dict(krylov_rtol=0.0), dict(krylov_extend=-1)])
def test_bad_parameters_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        jf.RodasKrylov(**bad)


def test_default_lanes_shrink_with_the_dimension():
    from jaxflow._engine import MIN_LANES, default_lanes

    assert default_lanes(10**5, "cpu") == default_lanes(10**5, "cpu", dim=4) == 1024
    big = default_lanes(10**5, "cpu", dim=10**7)
    assert MIN_LANES <= big < 1024 and big & (big - 1) == 0
    assert default_lanes(10**5, "cpu", dim=10**8) <= big


def test_default_lanes_count_a_dense_stepper_s_matrices(monkeypatch):
    """Dense Hessians (d^2 per matrix and lane) cap the lanes where vectors alone would
    not: at d = 120 with a 1 GiB budget on an accelerator."""
    import diffrax

    from jaxflow import _engine
    from jaxflow._stepper import make_stepper

    monkeypatch.setattr(_engine, "_lane_memory_budget", lambda backend: 2**30)
    d = 120
    kv = make_stepper(diffrax.Kvaerno5(), rtol=1e-6, atol=1e-8)
    assert jf.RodasKrylov().matrices_per_lane(d) == 0 < kv.matrices_per_lane(d)
    assert kv.matrices_per_lane(4) == jf.Rodas4().matrices_per_lane(4) == 0  # unrolled
    free = _engine.default_lanes(10**7, "gpu", dim=d)
    dense = _engine.default_lanes(10**7, "gpu", dim=d, matrices=kv.matrices_per_lane(d))
    per_lane = (_engine._VECTORS_PER_LANE + kv.matrices_per_lane(d) * d) * d * 8
    assert dense * per_lane <= 2**30 < 2 * dense * per_lane  # the largest power of two
    assert dense < free


def test_default_lanes_count_a_nonsmooth_field_s_kink_memory(monkeypatch):
    """A minimal-norm field holds a few numbers per piece of every kink group and lane
    (14 MB per lane for a ReLU MLP 16-48-1 on 1000 points in float32, measured; 0.58 GiB
    before its slot Jacobian was formed a few columns at a time): the default lanes of
    `flow` fit the memory budget with them, where the dimension alone would allow more."""
    from jaxflow import _engine, _flow
    from jaxflow._field_choice import field_for

    p = jf.problems.get("mlp", widths=[4, 8, 1], activation="relu", n_samples=50)
    field = field_for(p)
    # 400 relu kinks of two pieces, 48 numbers each, in vectors of length d = 49
    assert p.dim == 49 and field.vectors_per_lane() == -(-48 * 800 // 49) == 784
    assert field_for(jf.problems.get("matrix-completion")).vectors_per_lane() == 0
    budget = 40 * (_engine._VECTORS_PER_LANE + 784) * p.dim * 8  # 40 lanes' worth
    monkeypatch.setattr(_engine, "_lane_memory_budget", lambda backend: budget)
    assert _engine.default_lanes(256, dim=p.dim) == 64
    assert _flow.memory_lanes(p, 256) == 32


def _symmetric(getkey, eig):
    d = len(eig)
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(getkey(), (d, d), jnp.float64)))
    return (q * np.asarray(eig)) @ q.T


def _recycled_solves(a, bs, products):
    """Solves A y = b for each row of `bs` in one shared space, `products[i]` new
    products for the i-th (a Krylov sequence from its residual, as in `RodasKrylov`).
    Run eagerly: at this size compiling would take longer than running."""
    d = bs.shape[1]
    k_max = sum(products)
    space = krylov_space(d, k_max + len(products), k_max, bs.dtype)
    n = k = 0
    ys, residuals = [], []
    for b, m in zip(bs, products, strict=True):
        space, c = space_add(space, n, b)
        n += 1
        for j in range(m):
            e = space_solve(space, c)[1] if j == 0 else jax.nn.one_hot(n - 1, space.basis.shape[0])
            space, _ = space_expand(space, n, k, e / jnp.linalg.norm(e), lambda y: a @ y)
            n, k = n + 1, k + 1
        y, e = space_solve(space, c)
        ys.append(y)
        residuals.append(e @ space.basis)
    return jnp.stack(ys), jnp.stack(residuals)


@pytest.mark.parametrize("kind", ["spd", "indefinite"])
def test_recycled_space_matches_dense_solves(getkey, kind):
    d = 10
    if kind == "spd":  # I + h gamma H near a minimum: eigenvalues 1 .. 1 + h gamma lambda_max
        eig = np.geomspace(1.0, 1e3, d)
    else:  # at a saddle with h gamma lambda_min < -1
        eig = np.concatenate([np.linspace(-4.0, -0.5, 4), np.geomspace(0.5, 1e3, d - 4)])
    a = _symmetric(getkey, eig)
    bs = np.asarray(jax.random.normal(getkey(), (6, d), jnp.float64))
    exact = np.linalg.solve(a, bs.T).T
    # A full space in the first solve: the later ones are exact with no new product.
    ys, res = _recycled_solves(jnp.asarray(a), jnp.asarray(bs), (d, 0, 0, 0, 0, 0))
    np.testing.assert_allclose(np.asarray(ys), exact, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(np.asarray(res), 0.0, atol=1e-9)
    # Small spaces: the residuals returned are the true ones (to rounding), and the
    # first solve is GMRES's.
    ys, res = _recycled_solves(jnp.asarray(a), jnp.asarray(bs), (4, 2, 2, 2, 2, 2))
    np.testing.assert_allclose(np.asarray(res), bs - np.asarray(ys) @ a.T, atol=1e-10)
    y_gmres = gmres(lambda y: jnp.asarray(a) @ y, jnp.asarray(bs[0]), 4)[0]
    np.testing.assert_allclose(np.asarray(ys[0]), np.asarray(y_gmres), rtol=1e-8, atol=1e-10)
    # A product more for the second solve: its space contains the smaller one.
    norms = [np.linalg.norm(np.asarray(_recycled_solves(
        jnp.asarray(a), jnp.asarray(bs), (4, m, 2, 2, 2, 2))[1][1])) for m in (0, 1, 2)]
    assert norms[0] > norms[1] > norms[2] > 0
    # A right-hand side already in the space costs nothing: b2 = b1 + A y for y in it.
    y1 = np.asarray(ys[0])
    shifted = np.stack([bs[0], bs[0] + a @ y1, *bs[2:]])
    ys2, res2 = _recycled_solves(jnp.asarray(a), jnp.asarray(shifted), (4, 0, 2, 2, 2, 2))
    np.testing.assert_allclose(np.asarray(ys2[1]), 2 * y1, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(res2[1]), np.asarray(res[0]), atol=1e-10)
