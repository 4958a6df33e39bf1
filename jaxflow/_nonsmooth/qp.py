r"""Minimal-norm quadratic programs with fixed iteration budgets (jit- and vmap-safe).

Three shapes of the problem "the point of a polytope closest to the origin":

- **box** $\min_{s \in [-w, w]} \tfrac12\|g_0 + Js\|^2$: the min-norm element of
  $\nabla g + \sum_i w_i [-1, 1]\,\nabla r_i$, i.e. of the Clarke subdifferential of
  $\sum_i w_i|r_i| + g$ at points where the $r_i$ vanish (Clarke, Theorem 2.3.10);
- **product of simplices** $\min_{\lambda_k \in \Delta} \tfrac12\|g_0 + \sum_k J_k(\lambda_k
  - \lambda_k^0)\|^2$: one simplex per kink (the pieces of `max`, `abs`, `reduce_max`);
- **hull** $\min_{\mu \in \Delta} \tfrac12\|P^T\mu\|^2$: the convex hull of a few points
  (vertex gradients, or a bundle of nearby gradients for the black-box fallback).

Every solver runs a fixed number of iterations (`fori_loop`): under `vmap` a
`while_loop` runs until its slowest member finishes anyway. Each returns the
Frank–Wolfe duality gap, which bounds the error of the returned vector: the objective
is $\tfrac12\|v\|^2$ over a convex set, so $\tfrac12\|v - v^*\|^2 \le \tfrac12\|v\|^2 -
\tfrac12\|v^*\|^2 \le \text{gap}$, i.e. $\|v - v^*\| \le \sqrt{2\,\text{gap}}$.

An optional linear term $\langle c, y\rangle$ turns each problem into the dual of a
prox-linear step (see `jaxflow._stepper.prox_linear`); the gap then certifies that problem instead.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

from .._linalg import cho_factor, cho_solve

__all__ = [
    "QPSolution",
    "box_method",
    "box_minnorm",
    "simplex_product_minnorm",
    "hull_minnorm",
    "project_simplex",
]

# Above this size the Lipschitz constant comes from power iteration instead of eigvalsh.
_EIG_MAX = 128


class QPSolution(eqx.Module):
    r"""Solution of a min-norm QP.

    - `y`: the weights ($s$ for the box, $\lambda$ for simplices, $\mu$ for a hull);
    - `v`: the vector $g_0 + J(y - y^0)$ (the candidate minimal-norm element);
    - `gap`: the Frank–Wolfe duality gap; $\|v - v^*\| \le \sqrt{2\,\mathrm{gap}}$ when
      there is no linear term.
    """

    y: jax.Array
    v: jax.Array
    gap: jax.Array

    @property
    def error_bound(self):
        r"""$\sqrt{2\,\mathrm{gap}} \ge \|v - v^*\|$."""
        return jnp.sqrt(2.0 * jnp.maximum(self.gap, 0.0))


# --------------------------------------------------------------------------- helpers
def _lipschitz(m, gram=None):
    r"""$\|M\|_2^2$ for a 2-D matrix (the Lipschitz constant of $y \mapsto M^T(g + My)$);
    `gram`: $M^TM$ when it is at hand (callers pass it when it is not the larger product)."""
    d, n = m.shape
    small = min(d, n)
    if small <= _EIG_MAX:
        g = gram if gram is not None else (m @ m.T if d <= n else m.T @ m)
        lmax = jnp.linalg.eigvalsh(g)[-1]
        # eigvalsh is accurate to ~eps * ||G||: pad by that so 1/L stays a safe step.
        lmax = lmax + 8 * jnp.finfo(m.dtype).eps * jnp.sum(jnp.abs(g))
    else:
        g = gram if gram is not None else (m @ m.T if d <= n else m.T @ m)
        u = jnp.ones((g.shape[0],), m.dtype) / math.sqrt(g.shape[0])

        def it(_, u):
            w = g @ u
            return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(m.dtype).tiny)

        u = jax.lax.fori_loop(0, 50, it, u)
        # Power iteration approaches from below; 1.25 covers the slow cases and is still
        # far below the Frobenius bound for the matrices met here.
        lmax = 1.25 * jnp.vdot(u, g @ u)
        lmax = jnp.minimum(lmax, jnp.sum(m * m))
    return jnp.maximum(lmax, jnp.finfo(m.dtype).tiny)


def project_simplex(y, valid=None):
    r"""Euclidean projection of each row of `y` onto the simplex of its `valid` entries.

    Entries with `valid=False` are set to 0 (every row needs at least one valid entry).
    Held's sort-based algorithm (Duchi et al. 2008); rows of length 2 in closed form.
    """
    if valid is None:
        valid = jnp.ones(y.shape, bool)
    m = y.shape[-1]
    if m == 1:
        return jnp.ones_like(y)
    if m == 2:
        both = valid[..., 0] & valid[..., 1]
        a = jnp.clip((y[..., 0] - y[..., 1] + 1.0) / 2.0, 0.0, 1.0)
        a = jnp.where(both, a, valid[..., 0].astype(y.dtype))
        return jnp.stack([a, 1.0 - a], axis=-1)
    neg = jnp.asarray(-jnp.inf, y.dtype)
    ys = jnp.where(valid, y, neg)
    u = -jnp.sort(-ys, axis=-1)
    fin = jnp.isfinite(u)
    css = jnp.cumsum(jnp.where(fin, u, 0.0), axis=-1)
    j = jnp.arange(1, m + 1, dtype=y.dtype)
    cond = fin & (u - (css - 1.0) / j > 0)
    rho = jnp.maximum(jnp.sum(cond, axis=-1), 1)
    tau = (jnp.take_along_axis(css, (rho - 1)[..., None], axis=-1)[..., 0] - 1.0) / rho.astype(
        y.dtype
    )
    return jnp.where(valid, jnp.maximum(y - tau[..., None], 0.0), 0.0)


def _fista(grad_fn, proj, y0, step, iterations):
    """FISTA with O'Donoghue–Candès gradient restart, a fixed number of iterations."""

    def body(_, st):
        x, y, t = st
        x_new = proj(y - step * grad_fn(y))
        restart = jnp.vdot(y - x_new, x_new - x) > 0
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        beta = jnp.where(restart, 0.0, (t - 1.0) / t_new)
        t_new = jnp.where(restart, jnp.ones_like(t), t_new)
        return x_new, x_new + beta * (x_new - x), t_new

    x0 = proj(y0)
    x, _, _ = jax.lax.fori_loop(0, iterations, body, (x0, x0, jnp.ones((), y0.dtype)))
    return x


# --------------------------------------------------------------------------- box
def _ridge(dtype):
    return 1e-13 if dtype == jnp.float64 else 1e-6


def _box_gap(jm, g0, w, lin, s):
    v = g0 + jm @ s
    q = jm.T @ v + lin
    return v, _box_gap_of(q, w, s)


def _box_gap_of(q, w, s):
    """The box QP's duality gap at `s` from its gradient `q` there."""
    return jnp.maximum(jnp.vdot(q, s) + jnp.sum(w * jnp.abs(q)), 0.0)


def _normal_equations(jm, g0):
    r"""$(J^TJ, J^Tg_0)$: the box objective's gradient is $J^Tg_0 + J^TJs + c$, which costs
    $O(k^2)$ per evaluation instead of $O(dk)$ (for the $k \le d$ slots of a network
    with $d$ weights: FISTA's iterations, the polish and the active set's)."""
    return jm.T @ jm, jm.T @ g0


def _box_polish(jm, g0, w, lin, s, step, rounds: int = 10, normal=None):
    r"""Active-set Newton steps from the FISTA point (kept only if they lower the gap).

    Each round guesses the optimal face from a projected-gradient step
    ($s - q/L$ beyond a bound: at that bound), minimises the least-squares objective on
    the face (a ridge keeps rank-deficient faces well posed), and moves from $s$ toward
    that minimiser as far as the box allows — the objective decreases along the
    segment, as in Lawson–Hanson's inner loop. FISTA finds the face long before it
    resolves the free coordinates, so one or two rounds recover machine precision.
    `normal`: `_normal_equations(jm, g0)` when at hand.
    """
    h_full, b = _normal_equations(jm, g0) if normal is None else normal

    def grad(s):
        return b + h_full @ s + lin

    def one_round(_, carry):
        s, best, best_gap = carry
        y = s - step * grad(s)
        lower = (y <= -w) & (w > 0)
        upper = (y >= w) & (w > 0)
        free = (w > 0) & ~lower & ~upper
        s_fix = jnp.where(lower, -w, jnp.where(upper, w, 0.0))
        ff = free.astype(jm.dtype)
        h = h_full * ff[:, None] * ff[None, :]
        scale = jnp.trace(h) / jnp.maximum(jnp.sum(ff), 1.0) + jnp.finfo(jm.dtype).tiny
        h = h + jnp.diag(jnp.where(free, _ridge(jm.dtype) * scale, 1.0))
        rhs = -grad(s_fix) * ff
        sol = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(h), rhs)
        target = jnp.where(free, sol, s_fix)
        # Largest step toward the face minimiser that stays in the box.
        dlt = target - s
        room = jnp.where(
            dlt > 0,
            (w - s) / jnp.where(dlt > 0, dlt, 1.0),
            jnp.where(dlt < 0, (-w - s) / jnp.where(dlt < 0, dlt, 1.0), jnp.inf),
        )
        alpha = jnp.clip(jnp.min(room), 0.0, 1.0)
        s = jnp.clip(s + alpha * dlt, -w, w)
        gap = _box_gap_of(grad(s), w, s)
        better = gap < best_gap
        return s, jnp.where(better, s, best), jnp.where(better, gap, best_gap)

    init = (s, s, _box_gap_of(grad(s), w, s))
    _, best, _ = jax.lax.fori_loop(0, rounds, one_round, init)
    return best


def _face_step(h_full, q, free, unroll: bool):
    r"""The step from a point to the minimiser of the box objective on the face of
    coordinates `free` (the others held), given the objective's gradient `q` there: the
    least-norm step, by a ridge (for rank-deficient faces, whose minimisers form an
    affine set: among them the one nearest the point) and one step of iterated
    Tikhonov, which removes the ridge's bias to first order. `unroll`: the triangular
    solves after the Cholesky factorisation unrolled (`jaxflow._linalg.cho_factor`) or
    LAPACK's."""
    dtype = h_full.dtype
    ff = free.astype(dtype)
    h = h_full * ff[:, None] * ff[None, :]
    scale = jnp.trace(h) / jnp.maximum(jnp.sum(ff), 1.0) + jnp.finfo(dtype).tiny
    ridge = jnp.where(free, _ridge(dtype) * scale, 0.0)
    factor = cho_factor(h + jnp.diag(jnp.where(free, ridge, 1.0)), unroll)
    step = cho_solve(factor, -q * ff)
    step = step + cho_solve(factor, ridge * step)
    return jnp.where(free, step, 0.0)


def _box_active_set(jm, g0, w, lin, s, max_iter: int, unroll: bool = False):
    r"""Primal active-set method for the box QP (Nocedal & Wright, Alg. 16.3), exact in
    finitely many iterations, started from the feasible point `s`.

    The working set holds the coordinates at a bound (those with $w_i = 0$ for good).
    Each iteration solves the QP on the current face (one Cholesky of the free block,
    with a ridge for rank-deficient faces) and moves toward its minimiser: as far as
    the box allows, adding the coordinate that blocks (if any); or, once at the face
    minimiser, releases the bound coordinate whose multiplier has the wrong sign the
    most (none: optimal, and the loop stops). A `while_loop` with at most `max_iter`
    iterations; under `vmap` a finished row keeps its point, so a row's answer does not
    depend on the other rows of its batch.
    """
    dtype = jm.dtype
    eps = jnp.finfo(dtype).eps
    h_full, b = _normal_equations(jm, g0)
    fixed = w <= 0
    s = jnp.clip(s, -w, w)
    lower = fixed | (s <= -w)
    upper = ~fixed & (s >= w) & ~lower
    # Multipliers count as having the right sign up to rounding of the gradient.
    tol = 64 * eps * (
        jnp.max(jnp.abs(b)) + jnp.max(jnp.abs(lin)) + jnp.max(jnp.sum(jnp.abs(h_full), 1))
        * jnp.max(w) + jnp.finfo(dtype).tiny
    )

    def cond(st):
        i, _, _, _, done = st
        return (i < max_iter) & ~done

    def body(st):
        i, s, lower, upper, _ = st
        bound = lower | upper
        s_fix = jnp.where(fixed, 0.0, jnp.where(lower, -w, jnp.where(upper, w, s)))
        s = s_fix  # bound coordinates exactly at their bounds
        dlt = _face_step(h_full, b + h_full @ s + lin, ~bound, unroll)
        room = jnp.where(
            dlt > 0,
            (w - s) / jnp.where(dlt > 0, dlt, 1.0),
            jnp.where(dlt < 0, (-w - s) / jnp.where(dlt < 0, dlt, 1.0), jnp.inf),
        )
        room = jnp.maximum(room, 0.0)
        j_block = jnp.argmin(room)
        blocked = room[j_block] < 1.0
        alpha = jnp.where(blocked, room[j_block], 1.0)
        s_new = jnp.clip(s + alpha * dlt, -w, w)
        # Blocked: the blocking coordinate joins the working set at the bound it hit.
        hit = blocked & (jnp.arange(w.shape[0]) == j_block)
        lower_b = lower | (hit & (dlt < 0))
        upper_b = upper | (hit & (dlt > 0))
        s_new = jnp.where(hit, jnp.where(dlt < 0, -w, w), s_new)
        # Face minimiser reached: release the most violated bound, or stop.
        q = b + h_full @ s_new + lin
        viol = jnp.where(lower & ~fixed, -q, jnp.where(upper, q, -jnp.inf))
        j_rel = jnp.argmax(viol)
        release = ~blocked & (viol[j_rel] > tol)
        rel = release & (jnp.arange(w.shape[0]) == j_rel)
        lower_n = jnp.where(blocked, lower_b, lower & ~rel)
        upper_n = jnp.where(blocked, upper_b, upper & ~rel)
        done = ~blocked & ~release
        return i + 1, s_new, lower_n, upper_n, done

    init = (jnp.zeros((), jnp.int32), s, lower, upper, jnp.zeros((), bool))
    return jax.lax.while_loop(cond, body, init)[1]


# Largest box QP solved by the active-set method (one k x k Cholesky per iteration);
# larger ones by FISTA and a Newton polish, whose iterations cost O(d k).
ACTIVE_SET_MAX = 64


def box_method(method: str, k: int) -> str:
    """The method `box_minnorm(method=method)` uses for `k` coordinates."""
    if method == "auto":
        return "active_set" if k <= ACTIVE_SET_MAX else "fista"
    return method


def box_minnorm(
    jac,
    g0,
    w,
    *,
    iterations: int = 300,
    linear=None,
    s0=None,
    polish: bool = True,
    method: str = "auto",
    unroll: bool = False,
) -> QPSolution:
    r"""$\min_{s \in [-w, w]} \tfrac12\|g_0 + Js\|^2 + \langle c, s\rangle$.

    **Arguments:** `jac` $J$ `(d, k)`, `g0` `(d,)`, `w` `(k,)` (nonnegative; `w_i = 0`
    freezes $s_i = 0$), `linear` $c$ `(k,)` or `None`, `s0` a warm start (FISTA only),
    `method`:
    `"active_set"` (a primal active-set method, exact in finitely many iterations, at
    most `3k + 10`; one $k \times k$ Cholesky each), `"fista"` (FISTA, `iterations` of
    them, with `polish`: after them, Newton steps on the identified face, kept only if
    they lower the gap), or `"auto"` (the active set for $k \le$ `ACTIVE_SET_MAX`);
    `unroll`: the triangular solves of the active set's Cholesky factorisations unrolled at
    trace time (for up to `jaxflow._linalg.UNROLL_MAX_DIM` coordinates; about twice as fast
    under `vmap`, about half a second more to compile: for QPs solved at every step).

    With $k \le d$ the iterations work on the normal equations ($J^TJ$ and $J^Tg_0$,
    formed once), $O(k^2)$ each instead of $O(dk)$; the active set always does.

    **Returns:** `QPSolution(y=s, v=g0 + J s, gap)` with the gap
    $\langle q, s\rangle + \sum_i w_i|q_i|$, $q = J^T v + c$.
    """
    jac = jnp.asarray(jac)
    g0 = jnp.asarray(g0, jac.dtype)
    w = jnp.maximum(jnp.asarray(w, jac.dtype), 0.0)
    lin = jnp.zeros_like(w) if linear is None else jnp.asarray(linear, jac.dtype)
    jm = jac * (w > 0).astype(jac.dtype)
    k = w.shape[0]
    method = box_method(method, k)
    if method == "active_set":
        # Started from the centre of the box, whatever `s0`: where the minimisers are
        # not unique (more tied kinks than dimensions) the face steps, each the least
        # change, end at the minimiser of least norm on its face, a central selection
        # (the prox-linear stepper's second-order correction lands on kink manifolds
        # to ~1e-12 with it; from the natural selection, a vertex, only to ~1e-5).
        s = _box_active_set(jm, g0, w, lin, jnp.zeros_like(w), 3 * k + 10, unroll)
        v, gap = _box_gap(jm, g0, w, lin, s)
        return QPSolution(y=s, v=v, gap=gap)
    if method != "fista":
        raise ValueError(
            f"box_minnorm: method must be 'auto', 'active_set' or 'fista', got {method!r}."
        )
    d = jm.shape[0]
    normal = _normal_equations(jm, g0) if k <= d else None
    step = 1.0 / _lipschitz(jm, None if normal is None else normal[0])

    def grad(s):
        if normal is not None:
            return normal[1] + normal[0] @ s + lin
        return jm.T @ (g0 + jm @ s) + lin

    def proj(s):
        return jnp.clip(s, -w, w)

    s = jnp.zeros_like(w) if s0 is None else jnp.asarray(s0, jac.dtype)
    s = _fista(grad, proj, s, step, iterations)
    if polish:
        s = _box_polish(jm, g0, w, lin, s, step, normal=normal)
    v, gap = _box_gap(jm, g0, w, lin, s)
    return QPSolution(y=s, v=v, gap=gap)


# --------------------------------------------------------------------------- simplices
def _simplex_gap(jm, g0, lam0, valid, free, lin, lam):
    v = g0 + jnp.einsum("dkr,kr->d", jm, lam - lam0)
    q = jnp.einsum("dkr,d->kr", jm, v) + lin
    qmin = jnp.min(jnp.where(valid, q, jnp.inf), axis=-1)
    per_row = jnp.sum(q * lam, axis=-1) - qmin
    return v, jnp.maximum(jnp.sum(jnp.where(free, per_row, 0.0)), 0.0)


def _simplex_polish(jm, g0, lam0, valid, free, lin, lam):
    """Newton (KKT) step on the support that `lam` suggests; see `_box_polish`."""
    d, kk, rr = jm.shape
    n = kk * rr
    supp = (valid & free[:, None] & (lam > 1e-9)).reshape(n)
    sf = supp.astype(jm.dtype)
    jf = jm.reshape(d, n)
    b = g0 - jf @ lam0.reshape(n)
    h = (jf.T @ jf) * sf[:, None] * sf[None, :]
    scale = jnp.trace(h) / jnp.maximum(jnp.sum(sf), 1.0) + jnp.finfo(jm.dtype).tiny
    h = h + jnp.diag(jnp.where(supp, _ridge(jm.dtype) * scale, 1.0))
    a = jnp.repeat(jnp.eye(kk, dtype=jm.dtype), rr, axis=1) * sf[None, :]  # (K, n)
    a_ok = jnp.sum(a, axis=1) > 0
    kkt = jnp.block([[h, a.T], [a, jnp.diag(jnp.where(a_ok, 0.0, 1.0))]])
    rhs = jnp.concatenate([-(jf.T @ b + lin.reshape(n)) * sf, a_ok.astype(jm.dtype)])
    z = jnp.linalg.solve(kkt, rhs)[:n].reshape(kk, rr)
    new = jnp.where(free[:, None], jnp.where(supp.reshape(kk, rr), z, 0.0), lam)
    return project_simplex(new, valid)


def simplex_product_minnorm(
    jac,
    g0,
    lam0,
    valid,
    *,
    iterations: int = 300,
    linear=None,
    polish: bool = True,
    method: str = "auto",
    unroll: bool = False,
) -> QPSolution:
    r"""$\min \tfrac12\|g_0 + \sum_{k,r} J_{kr}(\lambda_{kr} - \lambda^0_{kr})\|^2 +
    \langle c, \lambda\rangle$ over $\lambda_k \in \Delta(\text{valid}_k)$ for every $k$.

    **Arguments:** `jac` `(d, K, R)`: column $J_{kr}$ is the velocity change when kink
    $k$ moves its weight to piece $r$; `g0` `(d,)` the velocity at `lam0`; `lam0`
    `(K, R)` one-hot rows (the natural pieces, which must be valid); `valid` `(K, R)`
    the pieces allowed (active ones); `linear` $c$ `(K, R)` or `None`; `polish` as in
    `box_minnorm`. With two pieces per kink ($R = 2$) this is a box problem in
    $\sigma = \lambda_{k0} - \lambda_{k1} \in [-1, 1]$ and is solved as one, by
    `box_minnorm(method=method, unroll=unroll)`; otherwise by FISTA.

    **Returns:** `QPSolution(y=lambda, v, gap)`.
    """
    jac = jnp.asarray(jac)
    d, kk, rr = jac.shape
    dtype = jac.dtype
    g0 = jnp.asarray(g0, dtype)
    lam0 = jnp.asarray(lam0, dtype)
    valid = jnp.asarray(valid, bool) | (lam0 > 0)
    lin = jnp.zeros((kk, rr), dtype) if linear is None else jnp.asarray(linear, dtype)
    # Rows with a single valid piece never move.
    free = jnp.sum(valid, axis=-1) > 1
    jm = jac * (valid & free[:, None]).astype(dtype)
    if rr == 2:
        ja, jb = jm[:, :, 0], jm[:, :, 1]
        ff = free.astype(dtype)
        base = g0 + (-(ja * lam0[:, 0]) - jb * lam0[:, 1] + 0.5 * (ja + jb)) @ ff
        col = 0.5 * (ja - jb)
        sol = box_minnorm(
            col,
            base,
            ff,
            iterations=iterations,
            linear=0.5 * (lin[:, 0] - lin[:, 1]) * ff,
            s0=(lam0[:, 0] - lam0[:, 1]) * ff,
            polish=polish,
            method=method,
            unroll=unroll,
        )
        sig = sol.y
        lam = jnp.where(free[:, None], jnp.stack([0.5 * (1 + sig), 0.5 * (1 - sig)], -1), lam0)
        return QPSolution(y=lam, v=sol.v, gap=sol.gap)
    if kk == 1 and linear is None:
        # A single simplex is a hull problem: Wolfe's method is exact where first-order
        # methods stall (the origin inside the hull, near-duplicate pieces).
        pts = (g0[:, None] + jm[:, 0, :] - jm[:, 0, :] @ lam0[0][:, None]).T  # (R, d)
        sol = hull_minnorm(pts, valid=valid[0], method="wolfe", iterations=3 * rr + 10)
        lam = jnp.where(free[:, None], sol.y[None, :], lam0)
        v, gap = _simplex_gap(jm, g0, lam0, valid, free, lin, lam)
        return QPSolution(y=lam, v=v, gap=gap)
    step = 1.0 / _lipschitz(jm.reshape(d, kk * rr))

    def grad(lam):
        v = g0 + jnp.einsum("dkr,kr->d", jm, lam - lam0)
        return jnp.einsum("dkr,d->kr", jm, v) + lin

    def proj(lam):
        return project_simplex(lam, valid)

    lam = lam0
    rounds = 2 if polish else 1
    for _ in range(rounds):
        lam = _fista(grad, proj, lam, step, max(iterations // rounds, 1))
        if polish:
            lam_p = _simplex_polish(jm, g0, lam0, valid, free, lin, lam)
            better = (
                _simplex_gap(jm, g0, lam0, valid, free, lin, lam_p)[1]
                < _simplex_gap(jm, g0, lam0, valid, free, lin, lam)[1]
            )
            lam = jnp.where(better, lam_p, lam)
    v, gap = _simplex_gap(jm, g0, lam0, valid, free, lin, lam)
    return QPSolution(y=lam, v=v, gap=gap)


# --------------------------------------------------------------------------- hull
def _affine_min(gram, lin, mask, ridge):
    r"""Minimiser of $\tfrac12\mu^TG\mu + c^T\mu$ over
    $\{\sum\mu = 1,\ \mu_i = 0 \ (i \notin S)\}$."""
    v = gram.shape[0]
    mf = mask.astype(gram.dtype)
    g = gram * mf[:, None] * mf[None, :] + jnp.diag(jnp.where(mask, ridge, 1.0))
    top = jnp.concatenate([g, mf[:, None]], axis=1)
    bot = jnp.concatenate([mf, jnp.zeros((1,), gram.dtype)])[None, :]
    kkt = jnp.concatenate([top, bot], axis=0)
    rhs = jnp.concatenate([-lin * mf, jnp.ones((1,), gram.dtype)])
    sol = jnp.linalg.solve(kkt, rhs)
    return jnp.where(mask, sol[:v], 0.0)


def _hull_enumerate(points, valid, lin):
    """Exact: the best feasible face among all 2^V - 1 subsets (V small, branch-free)."""
    nv = points.shape[0]
    subsets = np.array([[(i >> j) & 1 for j in range(nv)] for i in range(1, 2**nv)], dtype=bool)
    gram = points @ points.T
    scale = jnp.max(jnp.abs(jnp.diag(gram))) + jnp.finfo(points.dtype).tiny
    ridge = 1e-13 * scale if points.dtype == jnp.float64 else 1e-6 * scale
    masks = jnp.asarray(subsets) & valid[None, :]
    mus = jax.vmap(lambda m: _affine_min(gram, lin, m, ridge))(masks)
    ok = jnp.all(mus >= -1e-12, axis=-1) & jnp.any(masks, axis=-1)
    ok = ok & jnp.all(masks == jnp.asarray(subsets), axis=-1)  # no invalid point used
    mus = jnp.maximum(mus, 0.0)
    mus = mus / jnp.maximum(jnp.sum(mus, axis=-1, keepdims=True), jnp.finfo(points.dtype).tiny)
    vals = 0.5 * jnp.sum((mus @ points) ** 2, axis=-1) + mus @ lin
    best = jnp.argmin(jnp.where(ok, vals, jnp.inf))
    return mus[best]


def _hull_wolfe(points, valid, iterations):
    r"""Wolfe's minimum-norm-point algorithm (1976) with masks and a fixed budget.

    Each iteration either accepts the corral's affine minimiser and adds the most
    promising vertex (major cycle) or moves toward it and drops a vertex (minor cycle).
    A stopped run keeps its state, so a fixed budget is safe under vmap.
    """
    nv, d = points.shape
    dtype = points.dtype
    gram = points @ points.T
    scale = jnp.max(jnp.where(valid, jnp.diag(gram), 0.0)) + jnp.finfo(dtype).tiny
    ridge = (1e-14 if dtype == jnp.float64 else 1e-7) * scale
    tol = (1e-15 if dtype == jnp.float64 else 1e-7) * scale
    zeros = jnp.zeros((nv,), dtype)
    # Start at the valid vertex of least norm.
    j0 = jnp.argmin(jnp.where(valid, jnp.diag(gram), jnp.inf))
    mu0 = zeros.at[j0].set(1.0)
    s0 = mu0 > 0

    def body(_, st):
        mu, s, done = st
        alpha = _affine_min(gram, zeros, s, ridge)
        good = jnp.all(jnp.where(s, alpha > 0, True))
        # Major cycle: accept alpha, test optimality, add a vertex.
        x = alpha @ points
        scores = jnp.where(valid, points @ x, jnp.inf)
        j = jnp.argmin(scores)
        optimal = jnp.vdot(x, x) - scores[j] <= tol
        stuck = s[j]  # the best vertex is already in the corral: numerically optimal
        s_major = s.at[j].set(True)
        # Minor cycle: line search toward alpha, drop the vertex that hits zero.
        neg = s & (alpha <= 0)
        ratios = jnp.where(neg, mu / jnp.maximum(mu - alpha, jnp.finfo(dtype).tiny), jnp.inf)
        theta = jnp.clip(jnp.min(ratios), 0.0, 1.0)
        mu_minor = jnp.maximum(mu + theta * (alpha - mu), 0.0)
        drop = jnp.argmin(ratios)
        s_minor = s & (mu_minor > 0)
        s_minor = s_minor.at[drop].set(False)
        s_minor = jnp.where(jnp.any(s_minor), s_minor, s)
        mu_minor = jnp.where(s_minor, mu_minor, 0.0)
        mu_minor = mu_minor / jnp.sum(mu_minor)
        new_mu = jnp.where(good, jnp.where(s, alpha, 0.0), mu_minor)
        new_s = jnp.where(good, jnp.where(optimal | stuck, s, s_major), s_minor)
        done_now = good & (optimal | stuck)
        mu = jnp.where(done, mu, new_mu)
        s = jnp.where(done, s, new_s)
        return mu, s, done | done_now

    mu, _, _ = jax.lax.fori_loop(0, iterations, body, (mu0, s0, jnp.array(False)))
    mu = jnp.maximum(mu, 0.0)
    return mu / jnp.sum(mu)


def hull_minnorm(
    points,
    *,
    valid=None,
    linear=None,
    method: str = "auto",
    iterations: int | None = None,
) -> QPSolution:
    r"""$\min_{\mu \in \Delta(\text{valid})} \tfrac12\|P^T\mu\|^2 + \langle c, \mu\rangle$:
    the point of $\operatorname{conv}\{p_i\}$ nearest the origin.

    **Arguments:** `points` $P$ `(V, d)`; `valid` `(V,)` which points count (at least
    one); `linear` $c$ `(V,)`; `method`: `"enumerate"` (exact, all $2^V - 1$ faces,
    $V \le 6$), `"wolfe"` (Wolfe's algorithm; exact in finitely many steps, robust to
    near-duplicate points where first-order methods stall; no linear term), `"fista"`,
    or `"auto"` (enumerate for $V \le 4$, Wolfe otherwise, FISTA with a linear term);
    `iterations`: the budget (default $3V + 10$ for Wolfe, 500 for FISTA).

    **Returns:** `QPSolution(y=mu, v=P^T mu, gap)`.
    """
    points = jnp.asarray(points)
    nv, d = points.shape
    dtype = points.dtype
    valid = jnp.ones((nv,), bool) if valid is None else jnp.asarray(valid, bool)
    lin = jnp.zeros((nv,), dtype) if linear is None else jnp.asarray(linear, dtype)
    if method == "auto":
        method = "enumerate" if nv <= 4 else ("wolfe" if linear is None else "fista")
    if method == "enumerate":
        if nv > 6:
            raise ValueError(f"hull_minnorm: method='enumerate' needs V <= 6 points, got {nv}.")
        mu = _hull_enumerate(points, valid, lin)
    elif method == "wolfe":
        if linear is not None:
            raise ValueError(
                "hull_minnorm: method='wolfe' solves the pure min-norm problem; "
                "use method='fista' or 'enumerate' with a linear term."
            )
        mu = _hull_wolfe(points, valid, 3 * nv + 10 if iterations is None else iterations)
    elif method == "fista":
        its = 500 if iterations is None else iterations
        # One simplex over the V points: column r is p_r (relative to the start p_j0).
        j0 = jnp.argmin(jnp.where(valid, jnp.sum(points**2, -1), jnp.inf))
        lam0 = jnp.zeros((nv,), dtype).at[j0].set(1.0)
        sol = simplex_product_minnorm(
            points.T[:, None, :],
            points[j0],
            lam0[None, :],
            valid[None, :],
            iterations=its,
            linear=lin[None, :],
        )
        mu = sol.y[0]
    else:
        raise ValueError(
            f"hull_minnorm: method must be 'auto', 'enumerate', 'wolfe' or 'fista', got {method!r}."
        )
    v = mu @ points
    q = points @ v + lin
    gap = jnp.vdot(q, mu) - jnp.min(jnp.where(valid, q, jnp.inf))
    return QPSolution(y=mu, v=v, gap=jnp.maximum(gap, 0.0))
