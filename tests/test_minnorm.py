"""Minimal-norm subgradients: QP solvers against scipy, closed forms, certificates."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import jaxflow as jf
from jaxflow import problems
from jaxflow._nonsmooth.qp import box_minnorm, hull_minnorm, simplex_product_minnorm

EX = jf.Exactness


def hull_reference(points):
    """Min-norm point of conv(points) by the exact LDP -> NNLS reduction (Lawson–Hanson,
    ch. 23): u = nnls([P^T; 1^T], e), r = [P^T; 1^T] u - e, x = -r[:d] / r[d],
    d* = x / ||x||^2 (d* = 0 when r[d] = 0)."""
    v, d = points.shape
    a = np.vstack([points.T, np.ones((1, v))])
    b = np.zeros(d + 1)
    b[-1] = 1.0
    u, _ = so.nnls(a, b, maxiter=100 * (v + d))
    r = a @ u - b
    if abs(r[-1]) < 1e-15:
        return np.zeros(d)
    x = -r[:d] / r[-1]
    return x / (x @ x)


# --------------------------------------------------------------------------- box
BOX_SHAPES = [(6, 9), (10, 5), (40, 30), (20, 60), (40, 100)]  # (d, k), paper-sized


@pytest.mark.parametrize("method", ["active_set", "fista"])
@pytest.mark.parametrize("d,k", BOX_SHAPES)
def test_box_matches_bvls(d, k, method):
    """40 random instances per shape (200 in all) vs lsq_linear(method='bvls'), for
    both QP methods."""
    rng = np.random.default_rng(d * 1000 + k)
    n = 40
    jac = rng.normal(size=(n, d, k))
    g0 = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=(n, 1))
    w = rng.uniform(0.1, 2.0, size=(n, k))
    w[:, : k // 5] = 0.0  # some frozen coordinates
    sol = jax.jit(jax.vmap(lambda a, b, c: box_minnorm(a, b, c, method=method)))(jac, g0, w)
    for i in range(n):
        free = w[i] > 0  # frozen coordinates (w = 0) drop out of the reference
        ref = so.lsq_linear(
            jac[i][:, free],
            -g0[i],
            bounds=(-w[i][free], w[i][free]),
            method="bvls",
            tol=1e-14,
            max_iter=10_000,
        )
        assert ref.status > 0  # bvls converged (its default max_iter can stop it early)
        v_ref = g0[i] + jac[i][:, free] @ ref.x
        scale = max(np.linalg.norm(g0[i]), np.linalg.norm(jac[i], 2))
        err = np.linalg.norm(np.asarray(sol.v[i]) - v_ref)
        assert err <= 1e-8 * scale
        assert err <= float(sol.error_bound[i]) + 1e-12 * scale  # the certificate holds
        assert np.all(np.abs(np.asarray(sol.y[i])) <= w[i] + 1e-15)  # feasible


def test_box_active_set_with_linear_term_matches_scipy_and_picks_least_norm():
    """The prox-linear dual (a linear term) against SciPy (L-BFGS-B on the same smooth
    box problem, converged tightly); and with more columns
    than rows and the box not binding, the active set's weights are the least-norm
    minimiser -J^+ g0 (the central selection the prox-linear stepper relies on: its
    second-order correction depends on which minimiser is taken)."""
    rng = np.random.default_rng(7)
    n, d, k = 20, 6, 9
    jacs, g0s = rng.normal(size=(n, d, k)), rng.normal(size=(n, d))
    ws, lins = rng.uniform(0.2, 1.5, size=(n, k)), rng.normal(size=(n, k))
    sols = jax.jit(jax.vmap(
        lambda a, b, c, e: box_minnorm(a, b, c, linear=e, method="active_set")
    ))(jacs, g0s, ws, lins)
    for jac, g0, w, lin, y, gap in zip(jacs, g0s, ws, lins, np.asarray(sols.y),
                                       np.asarray(sols.gap), strict=True):

        def obj(s, jac=jac, g0=g0, lin=lin):
            r = g0 + jac @ s
            return 0.5 * r @ r + lin @ s, jac.T @ r + lin

        ref = so.minimize(obj, np.zeros(k), jac=True, method="L-BFGS-B",
                          bounds=list(zip(-w, w)), options=dict(ftol=1e-15, gtol=1e-13, maxiter=10_000))
        assert float(obj(y)[0]) <= ref.fun + 1e-12
        assert float(gap) < 1e-12
    # Box not binding, 9 columns of rank 6: the minimisers form a 3-dimensional set.
    # Up to the rounding of the ridge-regularised solves (condition ~1e13 in float64),
    # which leaks ~1e-3 relative into the null space, the active set (started from the
    # box centre) returns the least-norm one. FISTA warm-started at a vertex s0 keeps
    # s0's null part: another minimiser (its Newton polish is kept only if it lowers
    # the gap, which is already at rounding level), with the same v.
    for _ in range(6):
        jac, g0 = rng.normal(size=(6, 9)), 1e-3 * rng.normal(size=6)
        s0 = np.where(rng.uniform(size=9) > 0.5, 1.0, -1.0)
        act = box_minnorm(jac, g0, np.ones(9), s0=s0, method="active_set")
        least = -np.linalg.pinv(jac) @ g0
        assert np.linalg.norm(np.asarray(act.y) - least) <= 1e-2 * np.linalg.norm(least)
        raw = box_minnorm(jac, g0, np.ones(9), s0=s0, method="fista", polish=False)
        assert np.linalg.norm(np.asarray(raw.y) - least) > 0.5
        np.testing.assert_allclose(np.asarray(act.v), np.asarray(raw.v), atol=1e-10)


# --------------------------------------------------------------------------- hulls
HULL_SHAPES = [(3, 2), (8, 5), (20, 40), (30, 10)]  # (V, d)


@pytest.mark.parametrize("nv,d", HULL_SHAPES)
def test_hull_matches_nnls_reduction(nv, d):
    """50 random hulls per shape (200 in all), a third with near-duplicate points,
    against the exact NNLS reduction: Wolfe's method and (V <= 4) enumeration."""
    rng = np.random.default_rng(nv * 100 + d)
    n = 50
    pts = rng.normal(size=(n, 1, d)) * rng.uniform(0, 2, size=(n, 1, 1))
    pts = pts + rng.normal(size=(n, nv, d))
    pts[::3, -2:] = pts[::3, :2] + 1e-9 * rng.normal(size=(len(pts[::3]), 2, d))
    methods = ["wolfe"] + (["enumerate"] if nv <= 4 else [])
    for method in methods:
        sol = jax.jit(jax.vmap(lambda p, m=method: hull_minnorm(p, method=m)))(pts)
        for i in range(n):
            ref = hull_reference(pts[i])
            scale = np.abs(pts[i]).max()
            err = np.linalg.norm(np.asarray(sol.v[i]) - ref)
            assert err <= 1e-8 * scale, (method, i, err)
            assert err <= float(sol.error_bound[i]) + 1e-12 * scale
            mu = np.asarray(sol.y[i])
            assert mu.min() >= 0 and abs(mu.sum() - 1) < 1e-12


def test_simplex_product_matches_minkowski_hull():
    """A product of simplices (two kinks with three tied pieces each) equals the hull
    of the 9 sums of pieces (Minkowski sum), solved by the NNLS reduction."""
    rng = np.random.default_rng(7)
    n, d, kk, rr = 40, 6, 2, 3
    jac = rng.normal(size=(n, d, kk, rr))
    g0 = rng.normal(size=(n, d))
    lam0 = np.zeros((kk, rr))
    lam0[:, 0] = 1.0
    valid = np.ones((kk, rr), bool)
    sol = jax.jit(jax.vmap(lambda a, b: simplex_product_minnorm(a, b, lam0, valid)))(jac, g0)
    for i in range(n):
        base = g0[i] - jac[i][:, :, 0].sum(axis=1)
        verts = np.array(
            [
                base + jac[i][:, 0, a] + jac[i][:, 1, b]
                for a, b in itertools.product(range(rr), repeat=2)
            ]
        )
        ref = hull_reference(verts)
        assert np.linalg.norm(np.asarray(sol.v[i]) - ref) <= 1e-8 * np.abs(verts).max()


def test_hull_invariant_to_reordering_and_duplication():
    rng = np.random.default_rng(11)
    pts = rng.normal(size=(7, 4)) + 0.5
    base = hull_minnorm(jnp.asarray(pts), method="wolfe").v
    perm = rng.permutation(7)
    dup = np.concatenate([pts[perm], pts[[1, 1, 4]]])
    for p in (pts[perm], dup):
        np.testing.assert_allclose(
            np.asarray(hull_minnorm(jnp.asarray(p), method="wolfe").v), np.asarray(base), atol=1e-13
        )


# --------------------------------------------------------------------------- kink path
def l1_factorization_point(rng, m, n, r, n_zero_cols):
    """(z, M, zero mask): Y solves X_i . Y_j = M_ij for r rows i of the first columns j,
    so those residuals of XY^T - M vanish exactly (up to rounding)."""
    x = rng.normal(size=(m, r))
    y = rng.normal(size=(n, r))
    mm = rng.normal(size=(m, r)) @ rng.normal(size=(r, n)) + 0.3 * rng.normal(size=(m, n))
    for j in range(n_zero_cols):
        rows = rng.choice(m, size=r, replace=False)
        y[j] = np.linalg.solve(x[rows], mm[rows, j])
    return np.r_[x.ravel(), y.ravel()], mm


def box_reference_l1(z, mm, m, n, r, tol=1e-9):
    """The minimal-norm element of the Clarke subdifferential of ||XY^T - M||_1 by
    hand (Section 4.4): sign(R) Y, sign(R)^T X plus the box over the zero residuals."""
    x, y = z[: m * r].reshape(m, r), z[m * r :].reshape(n, r)
    res = x @ y.T - mm
    act = np.abs(res) <= tol
    s = np.sign(res) * ~act
    g0 = np.r_[(s @ y).ravel(), (s.T @ x).ravel()]
    cols = []
    for i, j in zip(*np.nonzero(act), strict=True):
        cx, cy = np.zeros((m, r)), np.zeros((n, r))
        cx[i], cy[j] = y[j], x[i]
        cols.append(np.r_[cx.ravel(), cy.ravel()])
    if not cols:
        return g0, 0
    jac = np.array(cols).T
    ref = so.lsq_linear(jac, -g0, bounds=(-1.0, 1.0), method="bvls", tol=1e-14, max_iter=10_000)
    assert ref.status > 0
    return g0 + jac @ ref.x, int(act.sum())


def _l1_factorization_problem(m, n, r):
    """||XY^T - M||_1 with the data M part of the input (stop_gradient), so that one
    compiled program serves points with different M: `(f, problem)`."""

    def f(z):
        x = z[: m * r].reshape(m, r)
        y = z[m * r : (m + n) * r].reshape(n, r)
        mm = jax.lax.stop_gradient(z[(m + n) * r :].reshape(m, n))
        return jnp.sum(jnp.abs(x @ y.T - mm))

    return f, jf.Problem(f, dim=(m + n) * r + m * n, nonsmooth=True)


def test_l1_factorization_matches_bvls_batched():
    """minnorm_subgradient on ||XY^T - M||_1 at 30 points with 2-6 zero residuals each,
    one batch: error <= 1e-8 relative, flags certify equality with the Clarke set."""
    m, n, r = 4, 3, 2
    rng = np.random.default_rng(5)
    pts, ms = zip(
        *[l1_factorization_point(rng, m, n, r, 1 + i % 3) for i in range(30)], strict=True
    )
    pts = np.array(pts)
    ms = np.array(ms)

    f, problem = _l1_factorization_problem(m, n, r)
    zs = np.concatenate([pts, ms.reshape(30, -1)], axis=1)
    res = jf.minnorm_subgradient(problem, jnp.asarray(zs))
    for i in range(30):
        ref, nact = box_reference_l1(pts[i], ms[i], m, n, r)
        v = np.asarray(res.v[i])[: (m + n) * r]
        assert np.linalg.norm(v - ref) <= 1e-8 * max(1.0, np.linalg.norm(ref))
        assert int(res.n_active[i]) == nact
        assert EX(int(res.exactness[i])) in (EX.LIKQ, EX.CONVEX_COMPOSITE)
        # the certificate holds; being sqrt(2 gap) with a gap at rounding level it is
        # looser than the error itself
        assert np.linalg.norm(v - ref) <= float(res.error_bound[i]) + 1e-12
        assert float(res.error_bound[i]) <= 1e-4 * max(1.0, np.linalg.norm(ref))
    # Autodiff's +1 choice is never shorter than the minimal-norm element.
    g = np.asarray(jax.vmap(jax.grad(f))(jnp.asarray(zs)))[:, : (m + n) * r]
    assert np.all(np.linalg.norm(g, axis=1) >= np.asarray(res.stationarity) - 1e-12)


def test_batched_minnorm_subgradient_sizes_its_calls_by_memory(monkeypatch):
    """With a memory budget that fits 16 rows, the 20 points of ||XY^T - M||_1 are solved
    in calls of at most 16 rows (the budget counts each row's kink pieces; the last 4 in
    a call of 8), with the answers of one batch: the BVLS reference to 1e-8. (A ReLU
    network with d = 865 asked for 26 GiB at once for 640 points before the calls were
    sized; the calls' outputs, pytrees, are joined leaf by leaf.)"""
    from jaxflow._nonsmooth import subgradient

    m, n, r = 4, 3, 2
    rng = np.random.default_rng(5)
    pts, ms = zip(
        *[l1_factorization_point(rng, m, n, r, 1 + i % 3) for i in range(20)], strict=True
    )
    pts, ms = np.array(pts), np.array(ms)

    _, problem = _l1_factorization_problem(m, n, r)
    field = jf.MinNormField.for_problem(problem)
    d = problem.dim
    per_row = (subgradient._VECTORS_PER_ROW + field.vectors_per_lane()) * d * 8
    monkeypatch.setattr(subgradient, "lane_memory_budget", lambda backend: 17 * per_row)
    sizes = []
    vmapped = subgradient._vmapped

    def spy(fn, xs):
        sizes.append(int(xs.shape[0]))
        return vmapped(fn, xs)

    monkeypatch.setattr(subgradient, "_vmapped", spy)
    zs = np.concatenate([pts, ms.reshape(20, -1)], axis=1)
    res = jf.minnorm_subgradient(problem, jnp.asarray(zs))
    assert max(sizes) == 16 and 8 in sizes, sizes
    for i in range(20):
        ref, nact = box_reference_l1(pts[i], ms[i], m, n, r)
        v = np.asarray(res.v[i])[: (m + n) * r]
        assert np.linalg.norm(v - ref) <= 1e-8 * max(1.0, np.linalg.norm(ref))
        assert int(res.n_active[i]) == nact


def test_l1_factorization_float32_band():
    """float32: residuals at exact zeros are ~1e-7; the dtype-aware band still finds
    the ties and the answer matches the float64 reference to float32 accuracy."""
    m, n, r = 4, 3, 1
    rng = np.random.default_rng(2)
    z, mm = l1_factorization_point(rng, m, n, r, 3)
    mj = jnp.asarray(mm, jnp.float32)

    def f(p):
        # The problem is also traced at float64 (its example): cast the data to p's dtype.
        return jnp.sum(jnp.abs(p[:m, None] * p[None, m:] - mj.astype(p.dtype)))

    res = jf.minnorm_subgradient(
        jf.Problem(f, dim=m + n, nonsmooth=True), jnp.asarray(z, jnp.float32)
    )
    ref, nact = box_reference_l1(z, mm, m, n, r)
    assert int(res.n_active) == nact == 3
    assert np.linalg.norm(np.asarray(res.v) - ref) <= 1e-4 * max(1.0, np.linalg.norm(ref))


# --------------------------------------------------------------------------- closed forms
def test_soft_thresholding_closed_form():
    r"""f = sum_i lam_i |x_i| + 1/2 ||x - a||^2: at x_i = 0 the minimal-norm component is
    sign(x_i - a_i) max(|a_i| - lam_i, 0) (soft thresholding, OWL-QN's pseudo-gradient);
    elsewhere x_i - a_i + lam_i sign(x_i)."""
    rng = np.random.default_rng(0)
    d = 6
    lam = rng.uniform(0.2, 1.5, size=d)
    a = rng.normal(size=d) * 1.5

    def f(x):
        return jnp.sum(lam * jnp.abs(x)) + 0.5 * jnp.sum((x - a) ** 2)

    problem = jf.Problem(f, dim=d, nonsmooth=True)
    xs = rng.normal(size=(20, d))
    xs[xs < 0.3] = 0.0  # many exact zeros
    res = jf.minnorm_subgradient(problem, jnp.asarray(xs))
    expect = np.where(
        xs == 0, -np.sign(a) * np.maximum(np.abs(a) - lam, 0.0), xs - a + lam * np.sign(xs)
    )
    np.testing.assert_allclose(np.asarray(res.v), expect, atol=1e-12)
    assert np.all(np.asarray(res.exactness) <= int(EX.CONVEX_COMPOSITE))


def test_max_tie_segment_closed_form():
    r"""max(f1, f2) at a tie: the minimal-norm point of [g1, g2] is g1 - t (g1 - g2),
    t = clip(<g1, g1 - g2> / ||g1 - g2||^2, 0, 1) (jax.grad gives the midpoint at an
    exact tie, see test_kinks.py)."""
    rng = np.random.default_rng(1)
    n = 20
    a1, a2 = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    q = rng.normal(size=(n, 1))
    x0 = rng.normal(size=(n, 3))
    # f1 = <a1, x> + q |x|^2, f2 = <a2, x> + c with c chosen so that f1(x0) = f2(x0);
    # the data ride along in the input (stop_gradient) so one program serves all 20.
    c = np.sum(a1 * x0, 1, keepdims=True) + q * np.sum(x0**2, 1, keepdims=True)
    c = c - np.sum(a2 * x0, 1, keepdims=True)

    def f(z):
        x = z[:3]
        p = jax.lax.stop_gradient(z[3:])
        f1 = p[:3] @ x + p[6] * (x @ x)
        f2 = p[3:6] @ x + p[7]
        return jnp.max(jnp.stack([f1, f2]))

    zs = np.concatenate([x0, a1, a2, q, c], axis=1)
    res = jf.minnorm_subgradient(jf.Problem(f, dim=11, nonsmooth=True), jnp.asarray(zs))
    g1, g2 = a1 + 2 * q * x0, a2
    t = np.clip(np.sum(g1 * (g1 - g2), 1) / np.sum((g1 - g2) ** 2, 1), 0, 1)[:, None]
    np.testing.assert_allclose(np.asarray(res.v)[:, :3], g1 - t * (g1 - g2), atol=1e-12)
    assert np.all(np.isin(np.asarray(res.exactness), [EX.LIKQ, EX.CONVEX_COMPOSITE]))
    assert np.all(np.asarray(res.n_active) == 1)  # the rounding band found every tie


def test_reordering_and_duplicating_pieces_gives_the_same_answer():
    rng = np.random.default_rng(4)
    x0 = jnp.asarray(rng.normal(size=3))
    base = [lambda x: x @ x, lambda x: 2 * x[0] - x[1], lambda x: x[2] ** 3]
    vals = [float(p(x0)) for p in base]
    shifted = [
        lambda x, p=p, c=c: p(x) - c for p, c in zip(base, vals, strict=True)
    ]  # all tied at x0

    def make(order):
        return lambda x: jnp.max(jnp.stack([shifted[i](x) for i in order]))

    answers = []
    for order in ([0, 1, 2], [2, 0, 1, 1, 2]):  # reordered, with duplicated pieces
        res = jf.minnorm_subgradient(jf.Problem(make(order), dim=3, nonsmooth=True), x0)
        answers.append(np.asarray(res.v))
    np.testing.assert_allclose(answers[1], answers[0], atol=1e-12)
    ref = hull_reference(np.array([jax.grad(p)(x0) for p in base]))
    np.testing.assert_allclose(answers[0], ref, atol=1e-10)


# --------------------------------------------------------------------------- flags
def test_figure2_kink_and_flat_region():
    """(x2 max(x1, 0) - 1)^2: on {x1 < 0} f = 1 and v = 0 (Clarke-critical); at x1 = 0,
    x2 > 0 the hull is [0, (-2 x2, 0)], so v = 0 too (a downward kink)."""
    p = problems.get("relu-flat")
    pts = jnp.array([[-1.0, 0.5], [-0.2, -3.0], [0.0, 1.0], [0.0, -2.0], [0.5, 1.0]])
    res = jf.minnorm_subgradient(p, pts)
    np.testing.assert_array_equal(np.asarray(res.v[:4]), 0.0)
    np.testing.assert_allclose(np.asarray(res.f[:4]), 1.0)
    assert list(np.asarray(res.exactness[:4])) == [EX.SMOOTH, EX.SMOOTH, EX.LIKQ, EX.LIKQ]
    np.testing.assert_allclose(np.asarray(res.v[4]), [-1.0, -0.5])  # smooth: jax.grad


def test_realisability_fixes_spurious_stationarity():
    r"""relu(t) - relu(-t) = t: the sum rule gives [0, 2] (min-norm 0, as jax.grad);
    only 2 of the 4 selections are realised nearby, which gives the true {1}."""
    p = jf.Problem(
        lambda z: jax.nn.relu(z[0]) - jax.nn.relu(-z[0]) + z[1] ** 2, dim=2, nonsmooth=True
    )
    res = jf.minnorm_subgradient(p, jnp.zeros(2))
    assert float(jax.grad(p.f)(jnp.zeros(2))[0]) == 0.0
    np.testing.assert_allclose(np.asarray(res.v), [1.0, 0.0], atol=1e-12)
    assert EX(int(res.exactness)) == EX.REALISABLE


def test_negative_weights_are_flagged_superset():
    """sum|R1| - 1/2 sum|R2| with more ties than the vertex slots: no certificate."""
    rng = np.random.default_rng(9)
    m, n = 4, 3
    x, y = rng.normal(size=m), rng.normal(size=n)
    m1 = np.outer(x, y)
    m2 = np.outer(x, y)

    def f(z):
        r1 = jnp.outer(z[:m], z[m:]) - m1
        r2 = jnp.outer(z[:m], z[m:]) - m2 + 1e-300
        return jnp.sum(jnp.abs(r1)) - 0.5 * jnp.sum(jnp.abs(r2 * 1.0001))

    res = jf.minnorm_subgradient(jf.Problem(f, dim=m + n, nonsmooth=True), jnp.asarray(np.r_[x, y]))
    assert EX(int(res.exactness)) in (EX.SUPERSET, EX.TRUNCATED)
    assert not bool(res.exact)


def test_bundle_fallback_is_labelled_approximate():
    def f(z):
        return jnp.sign(z[0]) * z[0] + (z[1] - 1.0) ** 2  # |z0| written with sign

    p = jf.Problem(f, dim=2, nonsmooth=True)
    with pytest.raises(jf.UnsupportedKinkError):
        jf.minnorm_subgradient(p, jnp.array([0.0, 1.0]))
    res = jf.minnorm_subgradient(p, jnp.array([0.0, 1.0]), fallback="bundle")
    assert EX(int(res.exactness)) == EX.APPROXIMATE
    assert float(res.stationarity) < 1e-6  # 0 in [-1, 1] x {0}
    res = jf.minnorm_subgradient(p, jnp.array([0.3, 1.5]), fallback="bundle")
    np.testing.assert_allclose(np.asarray(res.v), [1.0, 1.0], atol=1e-6)


def test_single_point_batch_and_pytree_agree():
    p = problems.get("nonsmooth-factorization", m=3, n=3, r=1, seed=0)
    mm = np.asarray(p.data["M"])
    x = jnp.asarray(mm[:, 0] / mm[0, 0] * 1.0)
    y = jnp.asarray(mm[0])  # residual row 0 vanishes: XY^T = M on row 0
    pt = {"X": x[:, None], "Y": y[:, None]}
    one = jf.minnorm_subgradient(p, pt)
    flat = jf.minnorm_subgradient(p, p.ravel(pt))
    batch = jf.minnorm_subgradient(p, jnp.stack([p.ravel(pt)] * 3))
    assert one.v.shape == (6,) and batch.v.shape == (3, 6)
    np.testing.assert_allclose(np.asarray(one.v), np.asarray(flat.v))
    np.testing.assert_allclose(np.asarray(batch.v[2]), np.asarray(one.v))
    assert int(one.n_active) >= 3


def test_options_are_validated():
    with pytest.raises(ValueError, match="fallback"):
        jf.MinNormOptions(fallback="sampling")
    with pytest.raises(ValueError, match="max_active"):
        jf.MinNormOptions(max_active=0)
    with pytest.raises(TypeError, match="Problem"):
        jf.minnorm_subgradient(lambda x: x, jnp.zeros(2))


def test_inside_jit_matches_eager():
    """Inside jit the whole pipeline (tiers, realisability) is one traced program."""
    p = problems.get("relu-flat")
    pts = jnp.array([[-1.0, 0.5], [0.0, 1.0], [0.5, 1.0], [0.0, -2.0]])
    eager = jf.minnorm_subgradient(p, pts)
    traced = jax.jit(lambda x: jf.minnorm_subgradient(p, x))(pts)
    np.testing.assert_allclose(np.asarray(traced.v), np.asarray(eager.v), atol=1e-14)
    np.testing.assert_array_equal(np.asarray(traced.exactness), np.asarray(eager.exactness))
