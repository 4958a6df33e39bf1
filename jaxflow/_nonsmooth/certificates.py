r"""Certificates: why the hull of selection gradients is the Clarke subdifferential.

`Exactness` is the flag every minimal-norm answer carries. `certify` computes it at a
point from the tied slots of a `KinkAnalysis` (LIKQ, then the convex-composite sign
test); `realise` is the costlier realisability test (Gordan's alternative per vertex
selection), run only where no other certificate applies.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp

from .kinks import KinkProgram
from .options import MinNormOptions
from .qp import hull_minnorm
from .slots import KinkAnalysis, vertex_table

__all__ = ["Exactness", "certify", "realise"]


class Exactness(enum.IntEnum):
    r"""Why a minimal-norm answer is exact, or how it may be off.

    Exact (up to the QP tolerance, certified by the gap):

    - `SMOOTH`: no kink is tied at $x$; $v = \nabla f(x)$.
    - `LIKQ`: the gradients of the tied kinks' switching functions are linearly
      independent, so every selection is realised nearby and the hull of selection
      gradients is $\partial f(x)$.
    - `CONVEX_COMPOSITE`: $f = H(\text{kinks}, x)$ near $x$ with $H$ smooth,
      nondecreasing in the convex kinks (`abs`, `max`, `relu`) and nonincreasing in the
      concave ones (`min`), none nested (or all reversed); then $f$ (or $-f$) is regular
      and Clarke's chain rule holds with equality (Theorems 2.3.9–2.3.10 of Clarke's
      book). This covers $\|XY^T - M\|_1$ (Section 4.4) and Figure 2.
    - `REALISABLE`: only the selections realised on an open set near $x$ (first-order
      test, Gordan's alternative) enter the hull.

    Not exact:

    - `SUPERSET`: no certificate applies; the hull may be larger than $\partial f(x)$,
      so $\|v\|$ may be too small (e.g. $\mathrm{relu}(t) - \mathrm{relu}(-t) = t$ at 0
      with many tied kinks, or negative weights on $|r_i|$ terms).
    - `TRUNCATED`: more kinks are tied than the static slots (`max_active`,
      `vertex_slots`, `max_pieces`) hold; the answer uses the closest ones only.
    - `APPROXIMATE`: the black-box fallback (gradient sampling), a Goldstein
      $\epsilon$-subgradient rather than a Clarke one.
    """

    SMOOTH = 0
    LIKQ = 1
    CONVEX_COMPOSITE = 2
    REALISABLE = 3
    SUPERSET = 4
    TRUNCATED = 5
    APPROXIMATE = 6

    @property
    def exact(self) -> bool:
        return self <= Exactness.REALISABLE


def certify(an: KinkAnalysis):
    """`(exactness, wants_realisability)` at the analysed point, without the
    realisability test (see `realise`): whether that test is wanted."""
    k, r_max = an.k, an.r_max
    rows = an.switching_rows()
    row_ok = an.s_valid & ~an.s_nat & an.s_active[:, None]
    likq = _likq(rows.reshape(k * r_max, an.d), row_ok.reshape(-1), an.d, an.dtype)
    orient = jnp.asarray(an.lay.orient)[an.sel]
    oc = orient.astype(an.s_c.dtype) * an.s_c
    conv_ok = jnp.all(jnp.where(an.s_active, (oc >= 0) & (orient != 0), True))
    conc_ok = jnp.all(jnp.where(an.s_active, (oc <= 0) & (orient != 0), True))
    # Site-level test: some tied kink feeds another tied kink.
    n_sites = len(an.prog.sites)
    site_active = jnp.zeros((n_sites,), bool).at[an.slot_site].max(an.s_active)
    up = jnp.asarray(an.lay.upstream)
    nested_active = jnp.any(up & site_active[:, None] & site_active[None, :])
    sign_ok = (conv_ok | conc_ok) & ~nested_active
    smooth = an.n_active == 0
    ex = jnp.where(an.truncated, Exactness.TRUNCATED, Exactness.SUPERSET)
    ex = jnp.where(~an.truncated & sign_ok, Exactness.CONVEX_COMPOSITE, ex)
    ex = jnp.where(~an.truncated & likq, Exactness.LIKQ, ex)
    ex = jnp.where(smooth, Exactness.SMOOTH, ex).astype(jnp.int8)
    kv = min(k, an.kv_cap)
    return ex, (ex == Exactness.SUPERSET) & (an.n_active <= kv)


def realise(prog: KinkProgram, x, opts: MinNormOptions):
    """The hull restricted to realisable selections (`Exactness.REALISABLE`), or the
    unrestricted one (`SUPERSET`) when no selection passes the first-order test."""
    an = KinkAnalysis(prog, x, opts)
    kv = min(an.k, an.kv_cap)
    order = jnp.argsort(~an.s_active, stable=True)[:kv]
    jac = None if prog.nested else an.jac
    v, gap, any_real = _realisable(
        an.grad_at,
        jac,
        an.g0,
        an.lam0,
        an.s_valid,
        an.switching_rows(),
        order,
        kv,
        an.r_max,
        an.k,
        an.dtype,
    )
    ex = jnp.where(any_real, Exactness.REALISABLE, Exactness.SUPERSET).astype(jnp.int8)
    return dict(v=v, gap=gap, exactness=ex)


def _likq(rows, ok, d, dtype):
    """Linear independence of the rows marked `ok`: at most d of them (else False),
    gathered and tested through the normalised Gram matrix's smallest eigenvalue."""
    n = rows.shape[0]
    m = min(n, d)
    idx = jnp.argsort(~ok, stable=True)[:m]
    sub, sub_ok = rows[idx], ok[idx]
    nrm = jnp.linalg.norm(sub, axis=-1)
    nonzero = nrm > 0
    u = sub / jnp.where(nonzero, nrm, 1.0)[:, None]
    okf = (sub_ok & nonzero).astype(dtype)
    g = (u @ u.T) * okf[:, None] * okf[None, :] + jnp.diag(1.0 - okf)
    lmin = jnp.linalg.eigvalsh(g)[0]
    tol = 1e-8 if dtype == jnp.float64 else 1e-3
    # A tied kink whose switching gradient vanishes is degenerate: no certificate.
    return (lmin > tol) & jnp.all(jnp.where(sub_ok, nonzero, True)) & (jnp.sum(ok) <= d)


def _realisable(grad_at, jac, g0, lam0, s_valid, rows, order, kv, r_max, k, dtype):
    r"""Hull of the vertex gradients whose selection is realised on an open set.

    Selection $\omega$ (piece $\omega_g$ for each tied kink $g$) is realised near $x$
    to first order iff some direction $\Delta$ makes every chosen piece strictly
    larger than the other tied pieces of its kink: $\langle \nabla(w_{\omega_g} -
    w_i), \Delta\rangle > 0$. By Gordan's alternative this fails iff 0 lies in the
    convex hull of those gradients, a min-norm problem itself.
    """
    table = jnp.asarray(vertex_table(r_max, kv))  # (V, kv)
    nvert = table.shape[0]
    slots = order  # (kv,) slot indices
    valid_s = s_valid[slots]  # (kv, R)
    rows_s = rows[slots]  # (kv, R, d): grad(w_j - w_nat)
    d = g0.shape[0]

    def one(omega):
        chosen_ok = jnp.all(jnp.take_along_axis(valid_s, omega[:, None], axis=-1)[:, 0])
        rw = jnp.take_along_axis(rows_s, omega[:, None, None], axis=1)  # (kv, 1, d)
        cand = rw - rows_s  # grad(w_omega - w_i), (kv, R, d)
        other = valid_s & (jnp.arange(r_max, dtype=omega.dtype)[None, :] != omega[:, None])
        pts = cand.reshape(kv * r_max, d)
        pv = other.reshape(-1)
        has = jnp.any(pv)
        sol = hull_minnorm(jnp.where(pv[:, None], pts, 0.0) + 0.0, valid=pv | ~has, method="wolfe")
        scale = jnp.max(jnp.where(pv, jnp.linalg.norm(pts, axis=-1), 0.0))
        tol = (1e-10 if dtype == jnp.float64 else 1e-4) * scale
        realised = ~has | (jnp.linalg.norm(sol.v) > tol)
        sel = jnp.zeros((k, r_max), dtype).at[slots].set(jax.nn.one_hot(omega, r_max, dtype=dtype))
        lam = jnp.where(jnp.zeros((k,), bool).at[slots].set(True)[:, None], sel, lam0)
        if jac is not None:
            grad = g0 + jnp.einsum("dkr,kr->d", jac, lam - lam0)
        else:
            grad = grad_at(lam - lam0)
        return chosen_ok & realised, grad

    ok, grads = jax.vmap(one)(table)
    any_real = jnp.any(ok)
    sol = hull_minnorm(grads, valid=ok | ~any_real, method="wolfe", iterations=3 * nvert + 10)
    return sol.v, sol.gap, any_real


