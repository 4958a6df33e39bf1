"""Nonsmooth flows: the prox-linear stepper slides along kinks instead of chattering."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.integrate import solve_ivp

import jaxflow as jf
from jaxflow import problems
from jaxflow._stepper import default_solver


def test_default_solver_is_prox_linear_for_nonsmooth_problems():
    p = jf.Problem(lambda z: jnp.abs(z).sum(), dim=2, nonsmooth=True)
    assert isinstance(default_solver(p), jf.ProxLinear)
    assert not isinstance(default_solver(jf.Problem(lambda z: z @ z, dim=2)), jf.ProxLinear)


# --------------------------------------------------------------------------- soft threshold
def test_soft_thresholding_flow_hits_zero_at_the_closed_form_time_and_stays():
    r"""f = 1/2 ||x - a||^2 + sum_i lam_i |x_i|. Where sign(x_i) = s is constant,
    x_i(t) = c + (x_i(0) - c) e^{-t} with c = a_i - lam_i s. With |a_i| <= lam_i it hits
    0 at t* = ln((x_i(0) - c) / -c) and stays there; with a_i > lam_i it never does."""
    a = np.array([0.3, 2.0, -0.4])
    lam = np.array([1.0, 0.5, 1.0])
    x0 = np.array([2.0, 3.0, -1.0])

    def f(x):
        return 0.5 * jnp.sum((x - a) ** 2) + jnp.sum(lam * jnp.abs(x))

    p = jf.Problem(f, dim=3, nonsmooth=True)
    res = jf.flow(
        p, jnp.asarray(x0)[None], t1=8.0, save_states=1, checkpoints_per_decade=40, t_first=0.01
    )
    ts = np.asarray(res.ts)
    xs = np.asarray(res.cp_x[0])
    keep = ~np.isnan(xs[:, 0])
    ts, xs = ts[keep], xs[keep]
    s0 = np.sign(x0)
    c = a - lam * s0
    ratio = (x0 - c) / -c
    assert ratio[1] < 0  # coordinate 1 never reaches 0
    tstar = np.log(np.abs(ratio))
    for i in (0, 2):
        before = ts < tstar[i] - 1e-3
        after = ts > tstar[i] + 1e-3
        closed = c[i] + (x0[i] - c[i]) * np.exp(-ts)
        np.testing.assert_allclose(xs[before, i], closed[before], atol=2e-6)
        assert np.all(np.sign(xs[before, i]) == s0[i])
        assert np.all(np.abs(xs[after, i]) <= 1e-12)  # on the kink, exactly
    np.testing.assert_allclose(xs[:, 1], c[1] + (x0[1] - c[1]) * np.exp(-ts), atol=2e-6)


# --------------------------------------------------------------------------- hyperbola
def _hyperbola_reference(a, b, kappa, ts):
    r"""f = |xy - 1| + kappa ((x - 2)^2 + y^2): smooth flow of (xy - 1) + g until xy = 1,
    then the sliding (Filippov, minimal-norm) velocity -(grad g + sigma grad r),
    sigma = clip(-<grad g, grad r> / ||grad r||^2, -1, 1)."""

    def gg(z):
        return np.array([2 * kappa * (z[0] - 2), 2 * kappa * z[1]])

    def outside(t, z):
        return -(gg(z) + np.array([z[1], z[0]]))

    hit = lambda t, z: z[0] * z[1] - 1  # noqa: E731
    hit.terminal = True
    sol1 = solve_ivp(
        outside, (0, ts[-1]), [a, b], events=hit, rtol=1e-12, atol=1e-14, dense_output=True
    )
    t_hit = sol1.t_events[0][0]
    z_hit = sol1.y_events[0][0]

    def sliding(t, z):
        gr = np.array([z[1], z[0]])
        sig = np.clip(-(gg(z) @ gr) / (gr @ gr), -1, 1)
        return -(gg(z) + sig * gr)

    sol2 = solve_ivp(sliding, (t_hit, ts[-1]), z_hit, rtol=1e-12, atol=1e-14, dense_output=True)
    out = np.array([sol1.sol(t) if t <= t_hit else sol2.sol(t) for t in ts])
    return out, t_hit


def test_hyperbola_flow_arrives_at_the_closed_form_time_and_stops():
    r"""f = |xy - 1|: from (a, b) with ab > 1, x - y = (a - b)e^t, x + y = (a + b)e^{-t}
    until xy = 1 at e^{2t*} = (-2 + sqrt(4 + (a^2 - b^2)^2)) / (a - b)^2; on the
    hyperbola 0 is in the subdifferential, so the flow stops."""
    p = jf.Problem(lambda z: jnp.abs(z[0] * z[1] - 1.0), dim=2, nonsmooth=True)
    a, b = 2.0, 1.5
    res = jf.flow(p, jnp.array([[a, b]]), t1=3.0, save_states=1, checkpoints_per_decade=30)
    u = (-2 + np.sqrt(4 + (a * a - b * b) ** 2)) / (a - b) ** 2
    tstar = 0.5 * np.log(u)
    ts = np.asarray(res.ts)
    xs = np.asarray(res.cp_x[0])
    keep = ~np.isnan(xs[:, 0])
    before = keep & (ts < tstar - 1e-3)
    closed = np.stack(
        [
            0.5 * ((a + b) * np.exp(-ts) + (a - b) * np.exp(ts)),
            0.5 * ((a + b) * np.exp(-ts) - (a - b) * np.exp(ts)),
        ],
        axis=1,
    )
    np.testing.assert_allclose(xs[before], closed[before], atol=1e-5)
    z_star = closed[np.argmin(np.abs(ts - tstar))]
    assert int(res.status[0]) == jf.Status.CONVERGED
    assert abs(float(res.x[0, 0] * res.x[0, 1]) - 1.0) <= 1e-9
    assert float(res.t[0]) < 1.5  # stopped soon after the arrival
    # where it stopped: the closed-form arrival point, up to the step around t*
    np.testing.assert_allclose(np.asarray(res.x[0]), z_star, atol=2e-2)


def test_hyperbola_sliding_matches_filippov_reference_and_stays_on_it():
    kappa = 0.05

    def f(z):
        return jnp.abs(z[0] * z[1] - 1.0) + kappa * ((z[0] - 2.0) ** 2 + z[1] ** 2)

    p = jf.Problem(f, dim=2, nonsmooth=True)
    res = jf.flow(p, jnp.array([[2.0, 1.5]]), t1=30.0, save_states=1, stop_at_convergence=False)
    ts = np.asarray(res.ts)
    xs = np.asarray(res.cp_x[0])
    ref, t_hit = _hyperbola_reference(2.0, 1.5, kappa, ts)
    np.testing.assert_allclose(xs, ref, atol=2e-5)
    on = ts > t_hit + 1e-2
    assert on.sum() >= 10
    # stays on the kink manifold to the default tolerance (1e-6 relative)
    assert np.max(np.abs(xs[on, 0] * xs[on, 1] - 1.0)) <= 1e-6
    # sliding towards the stationary point x^4 - 2x^3 - 1 = 0 on the hyperbola
    root = max(np.roots([1, -2, 0, 0, -1]).real)
    assert abs(xs[-1, 0] - root) < abs(xs[on][0, 0] - root)


def test_prox_linear_does_not_chatter_where_explicit_euler_does():
    """At the same fixed step h = 0.01, explicit Euler with jax.grad chatters around
    the hyperbola with |xy - 1| ~ 1e-2; the prox-linear step stays on it."""

    def f(z):
        return jnp.abs(z[0] * z[1] - 1.0) + 0.05 * ((z[0] - 2.0) ** 2 + z[1] ** 2)

    x0 = jnp.array([[2.0, 1.5]])
    smooth = jf.Problem(f, dim=2)  # nonsmooth=False: GradientField = jax.grad
    gd = jf.descend(
        smooth, x0, optax.sgd(0.01), num_steps=1000, time_per_step=0.01, stop_at_convergence=False
    )
    r_gd = abs(float(gd.x[0, 0] * gd.x[0, 1]) - 1.0)
    assert r_gd > 1e-3
    p = jf.Problem(f, dim=2, nonsmooth=True)
    res = jf.flow(
        p,
        x0,
        t1=10.0,
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=0.01,
        save_states=1,
        stop_at_convergence=False,
    )
    xs = np.asarray(res.cp_x[0])
    ts = np.asarray(res.ts)
    on = ts > 1.0
    assert np.max(np.abs(xs[on, 0] * xs[on, 1] - 1.0)) <= 1e-6


# --------------------------------------------------------------------------- Figure 2
def test_figure2_flat_region_stops_and_positive_starts_reach_zero():
    """(x2 max(x1, 0) - 1)^2: starts with x1 < 0 are Clarke-critical at once (f = 1,
    ||v|| = 0); starts with x1 > 0 and x1 x2 > 0 reach f = 0 on the hyperbola; starts
    with x1 > 0, x2 < -x1 (x1^2 - x2^2 conserved < 0) reach x1 = 0 with f = 1 and stop
    at the downward kink (0 is in conv{0, (-2 x2, 0)})."""
    p = problems.get("relu-flat")
    x0 = jnp.array(
        [
            [-1.0, 0.5],
            [-0.3, -1.7],
            [-1.9, 1.9],  # flat region
            [0.5, 1.0],
            [1.5, 0.2],
            [1.0, 0.5],  # x1 x2 > 0
            [0.5, -1.5],
            [0.2, -1.0],  # x2 < -x1
        ]
    )
    res = jf.flow(p, x0, t1=100.0)
    st = np.asarray(res.status)
    assert np.all(st == jf.Status.CONVERGED)
    np.testing.assert_array_equal(np.asarray(res.steps[:3]), 0)
    np.testing.assert_array_equal(np.asarray(res.stationarity[:3]), 0.0)
    np.testing.assert_allclose(np.asarray(res.f[:3]), 1.0)
    assert np.all(np.asarray(res.f[3:6]) <= 1e-12)
    xf = np.asarray(res.x)
    np.testing.assert_allclose(
        xf[3:6, 0] ** 2 - xf[3:6, 1] ** 2, np.asarray(x0[3:6, 0] ** 2 - x0[3:6, 1] ** 2), atol=1e-6
    )
    assert np.all(np.abs(xf[6:, 0]) <= 1e-9)
    np.testing.assert_allclose(np.asarray(res.f[6:]), 1.0, atol=1e-9)
    np.testing.assert_allclose(
        xf[6:, 1], -np.sqrt(np.asarray(x0[6:, 1] ** 2 - x0[6:, 0] ** 2)), atol=1e-5
    )


def test_descend_uses_the_minimal_norm_velocity():
    """optax drives the same engine with v = the minimal-norm subgradient: on the flat
    region of Figure 2 the starts are CONVERGED at iteration 0 (jax.grad would give 0
    too there, but on the kink x1 = 0 it would not be the minimal-norm element)."""
    p = problems.get("relu-flat")
    x0 = jnp.array([[-1.0, 0.5], [0.0, 1.0], [0.5, 1.0]])
    res = jf.descend(p, x0, optax.sgd(0.05), num_steps=400, time_per_step=0.05)
    st = np.asarray(res.status)
    assert st[0] == jf.Status.CONVERGED and int(res.steps[0]) == 0
    assert st[1] == jf.Status.CONVERGED and int(res.steps[1]) == 0  # downward kink
    assert float(res.f[2]) < 1e-6


def test_figure2_float32():
    p = problems.get("relu-flat")
    x0 = jnp.array([[-1.0, 0.5], [0.5, 1.0], [0.5, -1.5]], jnp.float32)
    res = jf.flow(p, x0, t1=50.0)
    assert res.x.dtype == jnp.float32
    assert float(res.f[0]) == 1.0 and int(res.steps[0]) == 0
    assert float(res.f[1]) < 1e-6
    assert abs(float(res.x[2, 0])) < 1e-5 and abs(float(res.f[2]) - 1.0) < 1e-4


# --------------------------------------------------------------------------- Prop. 4.5
def _check_prop45(problem, res, m, n, r):
    mm = np.asarray(problem.data["M"])
    cx = np.asarray(res.cp_x)
    for i in range(cx.shape[0]):
        x0 = cx[i, 0, : m * r].reshape(m, r)
        y0 = cx[i, 0, m * r :].reshape(n, r)
        phi0 = x0.T @ x0 - y0.T @ y0
        bound = (
            np.linalg.norm(phi0) ** 2
            + 2 * m * n * (np.abs(x0 @ y0.T - mm).sum() + np.abs(mm).sum()) ** 2
        )
        scale = np.sum(x0**2) + np.sum(y0**2)
        seen = 0
        for k in range(cx.shape[1]):
            if np.isnan(cx[i, k, 0]):
                continue
            seen += 1
            x = cx[i, k, : m * r].reshape(m, r)
            y = cx[i, k, m * r :].reshape(n, r)
            drift = np.linalg.norm(x.T @ x - y.T @ y - phi0) / scale
            assert drift <= 1e-6, (i, k, drift)
            lhs = np.linalg.norm(x, 2) ** 4 + np.linalg.norm(y, 2) ** 4
            assert lhs <= bound
        assert seen >= 5


@pytest.mark.parametrize(
    "m,n,r,rank_m",
    [(3, 3, 1, 1), (4, 3, 2, 2), pytest.param(3, 4, 2, 1, marks=pytest.mark.slow)],
)
def test_proposition_4_5_conservation_and_bound(m, n, r, rank_m):
    r"""Along the minimal-norm flow of ||XY^T - M||_1, X^T X - Y^T Y is constant and
    ||X||_2^4 + ||Y||_2^4 <= ||X_0^T X_0 - Y_0^T Y_0||_F^2 + 2mn(||X_0 Y_0^T - M||_1 +
    ||M||_1)^2 at every checkpoint (Proposition 4.5)."""
    p = problems.get("nonsmooth-factorization", m=m, n=n, r=r, rank_m=rank_m, seed=1)
    x0 = p.sample(jax.random.key(m * 10 + r), 4, jnp.float64)
    res = jf.flow(p, x0, t1=10.0, save_states=4)
    _check_prop45(p, res, m, n, r)
    # The minimal-norm flow decreases f; with rank M <= r it reaches the infimum 0 from
    # most starts (no spurious local minima for (4.14)).
    cpf = np.asarray(res.cp_f)
    for row in cpf:
        row = row[~np.isnan(row)]
        assert np.all(np.diff(row) <= 1e-9 * (1 + row[:-1]))
    if (r, rank_m) == (1, 1):
        assert np.sum(np.asarray(res.f) < 1e-8) >= 3


def test_midpoint_error_estimate_takes_fewer_steps_and_keeps_the_invariant():
    """ProxLinear(estimate="midpoint") controls the midpoint point's own error: fewer
    steps, same Proposition 4.5 invariant (implicit midpoint conserves it exactly)."""
    p = problems.get("nonsmooth-factorization", m=3, n=3, r=1, rank_m=1, seed=2)
    x0 = p.sample(jax.random.key(5), 4, jnp.float64)
    base = jf.flow(p, x0, t1=10.0)
    fast = jf.flow(p, x0, t1=10.0, solver=jf.ProxLinear(estimate="midpoint"), save_states=4)
    assert int(np.sum(fast.steps)) * 3 < int(np.sum(base.steps))
    _check_prop45(p, fast, 3, 3, 1)
    np.testing.assert_allclose(np.asarray(fast.f), np.asarray(base.f), atol=1e-6)
    with pytest.raises(ValueError, match="estimate"):
        jf.ProxLinear(estimate="richardson")


A_SPD = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, -0.5], [0.0, -0.5, 0.7]])


@pytest.mark.parametrize("dense_max, krylov_dim", [(64, 4), (0, 3), (0, 0)],
                         ids=["dense", "matrix-free-gmres", "matrix-free-fixed-point"])
@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
def test_midpoint_estimate_is_the_local_error_to_leading_order(kind, dense_max, krylov_dim):
    r"""One `ProxLinear(estimate="midpoint")` step of a smooth field (the implicit midpoint
    rule): the error it reports is the step's true local error $z - x(h)$ to leading order,
    $-\tfrac{h^3}{12}G'G'G + \tfrac{h^3}{24}G''(G, G)$, checked against the exact flow (a
    matrix exponential; a float64 DOP853 solve at rtol 1e-13), with the dense Jacobian and
    matrix-free (Jacobian-vector products; the midpoint equation solved by GMRES or by
    fixed-point iterations: `dense_max=0`). An estimate that only bounds the error (a
    norm of $G'$ times the Euler-midpoint difference) is not parallel to it and fails."""
    from jaxflow._field_choice import field_for

    if kind == "linear":
        def f(x):
            return 0.5 * x @ (jnp.asarray(A_SPD) @ x)

        def exact(x0, h):
            from scipy.linalg import expm

            return expm(-h * A_SPD) @ x0
    else:
        def f(x):
            return 0.25 * jnp.sum(x**2) ** 2 + 0.5 * x @ (jnp.asarray(A_SPD) @ x)

        def exact(x0, h):
            def rhs(t, x):
                return -(np.sum(x**2) * x + A_SPD @ x)

            return solve_ivp(rhs, (0, h), x0, method="DOP853", rtol=1e-13, atol=1e-15).y[:, -1]

    p = jf.Problem(f, dim=3)
    field = field_for(p)
    stepper = jf.ProxLinear(estimate="midpoint", dense_max=dense_max, krylov_dim=krylov_dim)
    x0 = np.array([0.8, -0.5, 0.3])
    x = jnp.asarray(x0)
    rels = []
    for h in (2e-2, 1e-2):
        z, err = stepper.step(field, x, f(x), field.velocity(x), jnp.asarray(h), None)[:2]
        true = np.asarray(z) - exact(x0, h)
        rels.append(np.linalg.norm(np.asarray(err) - true) / np.linalg.norm(true))
        assert rels[-1] < 10 * h, (h, rels)
    assert rels[1] < 0.6 * rels[0], rels  # O(h) relative: the next order's term


@pytest.mark.parametrize("krylov_dim, solved", [(3, True), (0, False)],
                         ids=["gmres", "fixed-point"])
def test_matrix_free_midpoint_step_solved_beyond_the_fixed_point_limit(krylov_dim, solved):
    r"""Matrix-free `ProxLinear` (`dense_max=0`) on $f = \tfrac12 x^TAx$ with
    $\tfrac h2\lambda_{\max}(A) = 15$: simplified Newton with GMRES solves the midpoint
    equation exactly (GMRES(3) is exact in $d = 3$, and one Newton iteration is exact for a
    linear field), $z = (I + \tfrac h2 A)^{-1}(I - \tfrac h2 A)x$, the Cayley transform;
    fixed-point iterations diverge there (which is what bounded the steps by the
    curvature), so the same check fails for them."""
    from jaxflow._field_choice import field_for

    a = 100.0 * A_SPD
    p = jf.Problem(lambda x: 0.5 * x @ (jnp.asarray(a) @ x), dim=3)
    field = field_for(p)
    h = 0.3 / np.linalg.eigvalsh(A_SPD)[-1]  # (h/2) * lambda_max(a) = 15
    x0 = np.array([0.8, -0.5, 0.3])
    stepper = jf.ProxLinear(dense_max=0, krylov_dim=krylov_dim)
    x = jnp.asarray(x0)
    z = np.asarray(stepper.step(field, x, p.f_flat(x), field.velocity(x), jnp.asarray(h), None)[0])
    cayley = np.linalg.solve(np.eye(3) + 0.5 * h * a, (np.eye(3) - 0.5 * h * a) @ x0)
    close = np.allclose(z, cayley, rtol=1e-10, atol=1e-12)
    assert close == solved, (z, cayley)


# --------------------------------------------------------------------------- field=
def test_flow_and_descend_take_a_bundle_field_for_an_unsupported_kink():
    """|z0| written with `sign` has no kink jaxflow can select: the problem's own field
    raises, the black-box field passed with `field=` integrates it (flagged approximate)."""

    def f(z):
        return jnp.sign(z[0]) * z[0] + (z[1] - 1.0) ** 2

    p = jf.Problem(f, dim=2, nonsmooth=True)
    x0 = jnp.array([[0.5, 0.0], [-0.3, 2.0]])
    with pytest.raises(jf.UnsupportedKinkError, match="field=jaxflow.MinNormField.for_problem"):
        jf.flow(p, x0, t1=1.0)
    field = jf.MinNormField.for_problem(p, fallback="bundle")
    res = jf.flow(p, x0, t1=5.0, field=field)
    assert np.all(np.asarray(res.status) == jf.Status.CONVERGED)
    # a Goldstein epsilon-subgradient: near the minimiser (0, 1), not on it
    np.testing.assert_allclose(np.asarray(res.x), [[0.0, 1.0], [0.0, 1.0]], atol=2e-2)
    assert np.all(np.asarray(res.f) < 1e-2)
    gd = jf.descend(p, x0, optax.sgd(0.01), num_steps=50, time_per_step=0.01, field=field)
    assert np.all(np.asarray(gd.f) < np.asarray(jax.vmap(p.f_flat)(x0)))
