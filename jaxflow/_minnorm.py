r"""The minimal-norm Clarke subgradient of a nonsmooth loss, with a certificate.

For a locally Lipschitz $f$ the subgradient flow is the differential inclusion
$x'(t) \in -\partial f(x(t))$ (Clarke subdifferential). Its solutions are "slow": for
almost every $t$ the velocity is $-v(x)$ with $v(x) = \operatorname{argmin}\{\|g\| : g
\in \partial f(x)\}$ (the chain rule holds for tame $f$, Assumption 3.1 of the paper),
and $\|v(x)\| = \operatorname{dist}(0, \partial f(x))$ is the stationarity measure: it
vanishes exactly at Clarke-critical points, e.g. on the flat region of Figure 2.

`jax.grad` returns one element of a conservative field instead (`abs'(0) = 1`,
`max` ties split 0.5/0.5, `relu'(0) = 0`). Here the kinks of $f$ are found in its
jaxpr (`jaxflow._kinks`), the kinks that are tied at $x$ (within a rounding band) get
selector weights, and the minimal-norm selection gradient is a small QP
(`jaxflow._qp`):

- kinks that do not feed each other: $\nabla_x F$ is affine in the selectors, the
  selection gradients form $g_0 + J\Lambda$ over a product of simplices (a box for the
  two-piece kinks `abs`/`max`/`relu`/`where`), solved by FISTA plus a Newton polish;
- nested kinks (`max(|x_1|, |x_2|)`): the hull of the vertex gradients, by Wolfe's
  method, for up to `vertex_slots` tied kinks.

Every answer carries an `Exactness` flag saying why the hull is $\partial f(x)$, or that
it may be larger (then $\|v\|$ may be too small: a spurious stationary point) or
approximate. With the duality gap, $\|v - v^*\| \le \sqrt{2\,\mathrm{gap}}$ where $v^*$
is the exact minimal-norm element of the hull.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._field import AbstractField
from ._kinks import KinkProgram, UnsupportedKinkError
from ._qp import QPSolution, box_minnorm, hull_minnorm, simplex_product_minnorm

__all__ = [
    "Exactness",
    "MinNormOptions",
    "MinNormResult",
    "MinNormField",
    "minnorm_subgradient",
    "box_minnorm",
    "simplex_product_minnorm",
    "hull_minnorm",
    "QPSolution",
    "UnsupportedKinkError",
]


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


@dataclasses.dataclass(frozen=True)
class MinNormOptions:
    r"""Static options of the minimal-norm computation.

    - `band_ulps`: a kink counts as tied when its pieces differ by at most
      `band_ulps` $\cdot\,\epsilon\,\cdot$ (a running bound of the rounding error of
      the difference); scaled by the dtype's $\epsilon$, so float32 gets a wider band.
    - `max_active`: kink groups given selector slots (all of them when the loss has
      fewer); more tied kinks than slots gives `TRUNCATED`.
    - `max_pieces`: pieces per group kept (ties of a `jnp.max` over many entries).
    - `vertex_slots`: tied kinks enumerated when kinks are nested, and for the
      realisability test (at most $2^{\text{vertex\_slots}}$ vertices).
    - `qp_iterations`: FISTA budget (a Newton polish follows); `polish`.
    - `reach`: in the prox-linear stepper a kink is a candidate when a step of length
      $h$ at the current speed could reach it, times this safety factor.
    - `fallback`: `None` (unsupported primitives raise) or `"bundle"` (black-box
      gradient sampling, flagged `APPROXIMATE`); `method="bundle"` forces it.
    - `bundle_size`, `bundle_radius`: samples (default $\min(2d, 32) + 1$) and relative
      radius (default $\sqrt{\epsilon}$) of the gradient bundle.
    """

    band_ulps: float = 64.0
    max_active: int = 256
    max_pieces: int = 8
    vertex_slots: int = 6
    qp_iterations: int = 300
    polish: bool = True
    reach: float = 2.0
    fallback: str | None = None
    method: str = "kinks"
    bundle_size: int | None = None
    bundle_radius: float | None = None

    def __post_init__(self):
        if self.fallback not in (None, "bundle"):
            raise ValueError(f"fallback must be None or 'bundle', got {self.fallback!r}.")
        if self.method not in ("kinks", "bundle"):
            raise ValueError(f"method must be 'kinks' or 'bundle', got {self.method!r}.")
        for name in ("max_active", "max_pieces", "vertex_slots", "qp_iterations"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ValueError(f"MinNormOptions.{name} must be a positive integer, got {v!r}.")
        if not self.band_ulps >= 0:
            raise ValueError(f"MinNormOptions.band_ulps must be >= 0, got {self.band_ulps!r}.")
        if self.vertex_slots > 10:
            raise ValueError("MinNormOptions.vertex_slots must be <= 10 (2^slots vertices).")


class MinNormResult(eqx.Module):
    r"""The minimal-norm subgradient at one point or a batch (leading axis).

    - `v`: the minimal-norm element of the selection hull (flat);
    - `f`: $f(x)$;
    - `gap`: duality gap of the QP; `error_bound` $= \sqrt{2\,\mathrm{gap}} \ge
      \|v - v^*\|$;
    - `exactness`: `Exactness` codes (int8);
    - `n_active`: number of kinks tied at $x$.
    """

    v: jax.Array
    f: jax.Array
    gap: jax.Array
    error_bound: jax.Array
    exactness: jax.Array
    n_active: jax.Array

    @property
    def stationarity(self):
        r"""$\|v\|$, the distance from 0 to $\partial f(x)$ when exact."""
        return jnp.sqrt(jnp.sum(self.v * self.v, axis=-1))

    @property
    def exact(self):
        return self.exactness <= int(Exactness.REALISABLE)


# --------------------------------------------------------------------------- internals
class _Cache:
    """Identity-hashed holder of per-dtype programs (a static field of the module)."""

    def __init__(self):
        self.programs: dict = {}


def _eps(dtype):
    return float(jnp.finfo(dtype).eps)


def _choose_jac(fun, n_in: int, n_out: int):
    return jax.jacfwd(fun) if n_in <= n_out else jax.jacrev(fun)


class _Groups(eqx.Module):
    """Kink groups of all sites, flattened (traced arrays; static layout)."""

    valid: jax.Array  # (G, R) piece allowed (tied with the natural one)
    nat: jax.Array  # (G, R) natural piece
    pos: jax.Array  # (G, R) int: piece index within the site
    score: jax.Array  # (G,) smallest normalised gap among other pieces (inf: none)
    gamma: jax.Array  # (G, R) first-order value change when switching (prox penalty)
    c: jax.Array  # (G,) cotangent of the kink output
    trunc_pieces: jax.Array  # () more tied pieces than max_pieces somewhere


def _groups(prog: KinkProgram, probe, g_dth, c, wdot, h, opts: MinNormOptions, dtype):
    """Tied pieces per group, padded to a common width R."""
    eps = _eps(dtype)
    r_max = max(min(s.npieces, opts.max_pieces) for s in prog.sites)
    cols = dict(valid=[], nat=[], pos=[], score=[], gamma=[], c=[])
    trunc = jnp.array(False)
    for i, site in enumerate(prog.sites):
        m = site.npieces
        g = site.size
        w = probe.w[i].reshape(g, m)
        nat = probe.nat[i].reshape(g)
        mag = probe.mag[i].reshape(g, m)
        w_nat = jnp.take_along_axis(w, nat[:, None], axis=-1)
        gap = jnp.maximum(w_nat - w, 0.0)
        band = opts.band_ulps * eps * mag
        if wdot is not None:
            wd = wdot[i].reshape(g, m)
            rate = jnp.abs(jnp.take_along_axis(wd, nat[:, None], axis=-1) - wd)
            band = jnp.maximum(band, opts.reach * h * rate)
        is_nat = jnp.arange(m)[None, :] == nat[:, None]
        valid = (gap <= band) | is_nat
        gd = g_dth[i].reshape(g, m)
        gamma = jnp.abs(gd - jnp.take_along_axis(gd, nat[:, None], axis=-1))
        norm_gap = jnp.where(is_nat, jnp.inf, gap / jnp.maximum(band, jnp.finfo(dtype).tiny))
        norm_gap = jnp.where(valid & ~is_nat, jnp.minimum(norm_gap, 1.0), norm_gap)
        r = min(m, opts.max_pieces)
        if r < m:
            # Keep the natural piece and the r - 1 closest others.
            key = jnp.where(is_nat, -1.0, norm_gap)
            _, pos = jax.lax.top_k(-key, r)
            nvalid = jnp.sum(valid, axis=-1)
            trunc = trunc | jnp.any(nvalid > r)
        else:
            pos = jnp.broadcast_to(jnp.arange(m), (g, m))
        v_, n_, gm_, ng_ = (
            jnp.take_along_axis(a, pos, axis=-1) for a in (valid, is_nat, gamma, norm_gap)
        )
        pad = r_max - r
        if pad:
            v_ = jnp.pad(v_, ((0, 0), (0, pad)))
            n_ = jnp.pad(n_, ((0, 0), (0, pad)))
            gm_ = jnp.pad(gm_, ((0, 0), (0, pad)))
            ng_ = jnp.pad(ng_, ((0, 0), (0, pad)), constant_values=jnp.inf)
            pos = jnp.pad(pos, ((0, 0), (0, pad)))
        score = jnp.min(jnp.where(v_ & ~n_, ng_, jnp.inf), axis=-1)
        cols["valid"].append(v_)
        cols["nat"].append(n_)
        cols["pos"].append(pos.astype(jnp.int32))
        cols["score"].append(score)
        cols["gamma"].append(gm_)
        cols["c"].append(c[i].reshape(g))
    cat = {k: jnp.concatenate(v, axis=0) for k, v in cols.items()}
    return _Groups(trunc_pieces=trunc, **cat)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Static description of the groups: site and index within the site per group."""

    site: np.ndarray  # (G,)
    index: np.ndarray  # (G,)
    orient: np.ndarray  # (G,)
    upstream: np.ndarray  # (S, S) bool: upstream[a, b] = kink b feeds kink a

    @classmethod
    def of(cls, prog: KinkProgram):
        site = np.concatenate([np.full(s.size, s.index, np.int32) for s in prog.sites])
        index = np.concatenate([np.arange(s.size, dtype=np.int32) for s in prog.sites])
        orient = np.concatenate([np.full(s.size, s.orientation, np.int32) for s in prog.sites])
        n = len(prog.sites)
        up = np.zeros((n, n), bool)
        for s in prog.sites:
            for b in s.upstream:
                up[s.index, b] = True
        return cls(site=site, index=index, orient=orient, upstream=up)


def _scatter(prog: KinkProgram, slot_site, slot_index, slot_pos, t, dtype):
    """Selector perturbation pytree with `t[k, r]` on piece `slot_pos[k, r]` of group
    `slot_index[k]` of site `slot_site[k]`."""
    out = []
    for i, site in enumerate(prog.sites):
        base = jnp.zeros((site.size, site.npieces), dtype)
        mask = slot_site == i
        rows = jnp.where(mask, slot_index, site.size)
        base = base.at[rows[:, None], slot_pos].add(
            jnp.where(mask[:, None], t, 0.0).astype(dtype), mode="drop"
        )
        out.append(base.reshape(site.shape + (site.npieces,)))
    return tuple(out)


def _absolute(prog: KinkProgram, probe, dth, dtype):
    """Absolute selector weights: the natural one-hot at x plus `dth`."""
    return tuple(
        jax.nn.one_hot(probe.nat[i], s.npieces, dtype=dtype) + dth[i]
        for i, s in enumerate(prog.sites)
    )


class _Analysis:
    """Everything about the kinks at one point that the QP and the certificates use."""

    def __init__(self, prog: KinkProgram, x, opts: MinNormOptions, h=None):
        dtype = x.dtype
        self.prog, self.x, self.opts, self.h, self.dtype = prog, x, opts, h, dtype
        self.d = x.shape[0]
        dth0, eps0 = prog.zeros(dtype)
        self.dth0, self.eps0 = dth0, eps0
        (f, probe), (g0, g_dth, c) = jax.value_and_grad(
            lambda y, t, e: prog.lift(y, t, e, track_mag=True),
            argnums=(0, 1, 2),
            has_aux=True,
        )(x, dth0, eps0)
        self.f, self.probe, self.g0 = f, probe, g0
        wdot = None
        if h is not None:
            # Rates of the switching scores along the current velocity: the band of
            # kinks a step of size h can reach.
            _, wdot = jax.jvp(lambda y: prog.lift(y, dth0, eps0)[1].w, (x,), (g0,))
        grp = _groups(prog, probe, g_dth, c, wdot, h, opts, dtype)
        lay = _Layout.of(prog)
        self.lay = lay
        n_groups, r_max = grp.valid.shape
        self.r_max = r_max
        active = jnp.sum(grp.valid, axis=-1) > 1
        self.n_active = jnp.sum(active, dtype=jnp.int32)
        self.kv_cap = _vertex_slots(opts, r_max)
        k = min(n_groups, opts.max_active) if not prog.nested else min(n_groups, self.kv_cap)
        self.k = k
        sel = jnp.arange(n_groups) if k == n_groups else jax.lax.top_k(-grp.score, k)[1]
        self.sel = sel
        self.slot_site = jnp.asarray(lay.site)[sel]
        self.slot_index = jnp.asarray(lay.index)[sel]
        self.s_valid, self.s_nat, self.s_pos = grp.valid[sel], grp.nat[sel], grp.pos[sel]
        self.s_gamma, self.s_c = grp.gamma[sel], grp.c[sel]
        self.s_active = active[sel]
        self.truncated = (self.n_active > k) | grp.trunc_pieces
        self.lam0 = self.s_nat.astype(dtype)
        self._jac = None

    def dth(self, t):
        return _scatter(self.prog, self.slot_site, self.slot_index, self.s_pos, t, self.dtype)

    def grad_at(self, t):
        """Selection gradient with slot weights moved by `t` `(k, R)`."""
        dth = self.dth(t)
        return jax.grad(lambda y: self.prog.lift(y, dth, self.eps0)[0])(self.x)

    @property
    def jac(self):
        r"""$\partial_t \nabla_x F$ over the slots, `(d, k, R)` (non-nested kinks)."""
        if self._jac is None:
            kr = self.k * self.r_max
            self._jac = _choose_jac(self.grad_at, kr, self.d)(
                jnp.zeros((self.k, self.r_max), self.dtype)
            )
        return self._jac

    def theta(self, t):
        """Absolute (frozen) selection with slot weights moved by `t`."""
        return _absolute(self.prog, self.probe, self.dth(t), self.dtype)

    def switching_rows(self):
        r"""$\nabla(w_j - w_\text{nat})$ per slot and piece, `(k, R, d)`."""
        prog, k, r_max = self.prog, self.k, self.r_max

        def w_slots(y):
            _, pr = prog.lift(y, self.dth0, self.eps0)
            out = jnp.zeros((k, r_max), self.dtype)
            for i, site in enumerate(prog.sites):
                w = pr.w[i].reshape(site.size, site.npieces)
                mask = self.slot_site == i
                rows = jnp.where(mask, self.slot_index, 0)
                vals = w[rows[:, None], jnp.minimum(self.s_pos, site.npieces - 1)]
                out = jnp.where(mask[:, None], vals, out)
            return out

        jw = _choose_jac(w_slots, self.d, k * r_max)(self.x)  # (k, R, d)
        nat_row = jnp.einsum("kr,krd->kd", self.lam0, jw)
        return jw - nat_row[:, None, :]


def _kink_solve(prog: KinkProgram, x, opts: MinNormOptions, *, h=None, certify=False):
    """The minimal-norm selection gradient at one point (exact band, or prox-linear
    with step `h`). Returns a dict; with `certify`, also the exactness flag (without the
    realisability test, see `_kink_realise`) and whether that test is wanted."""
    an = _Analysis(prog, x, opts, h)
    dtype, r_max, k = an.dtype, an.r_max, an.k
    if not prog.nested:
        lin = None if h is None else an.s_gamma / h
        sol = simplex_product_minnorm(
            an.jac,
            an.g0,
            an.lam0,
            an.s_valid,
            iterations=opts.qp_iterations,
            linear=lin,
            polish=opts.polish,
        )
        v, gap = sol.v, sol.gap
        theta_star = an.theta(sol.y - an.lam0)

        def selected(y):
            return jax.grad(lambda z: prog.lift(z, theta=theta_star)[0])(y)
    else:
        table, vvalid, vpen, vgrads = _vertices(
            an.grad_at, an.s_valid, an.lam0, an.s_gamma, r_max, k, dtype
        )
        lin = None if h is None else vpen / h
        sol = hull_minnorm(
            vgrads, valid=vvalid, linear=lin, method="wolfe" if h is None else "fista"
        )
        v, gap = sol.v, sol.gap
        onehot = jax.nn.one_hot(table, r_max, dtype=dtype)
        mu = sol.y

        def selected(y):
            def one(oh):
                th = an.theta(oh - an.lam0)
                return jax.grad(lambda z: prog.lift(z, theta=th)[0])(y)

            return jnp.tensordot(mu, jax.vmap(one)(onehot), axes=1)

    out = dict(f=an.f, v=v, gap=gap, n_active=an.n_active, selected=selected)
    if not certify:
        return out

    # ---- certificates (minnorm_subgradient only)
    rows = an.switching_rows()
    row_ok = an.s_valid & ~an.s_nat & an.s_active[:, None]
    likq = _likq(rows.reshape(k * r_max, an.d), row_ok.reshape(-1), an.d, dtype)
    orient = jnp.asarray(an.lay.orient)[an.sel]
    oc = orient * an.s_c
    conv_ok = jnp.all(jnp.where(an.s_active, (oc >= 0) & (orient != 0), True))
    conc_ok = jnp.all(jnp.where(an.s_active, (oc <= 0) & (orient != 0), True))
    # Site-level test: some tied kink feeds another tied kink.
    n_sites = len(prog.sites)
    site_active = jnp.zeros((n_sites,), bool).at[an.slot_site].max(an.s_active)
    up = jnp.asarray(an.lay.upstream)
    nested_active = jnp.any(up & site_active[:, None] & site_active[None, :])
    sign_ok = (conv_ok | conc_ok) & ~nested_active
    smooth = an.n_active == 0
    ex = jnp.where(an.truncated, Exactness.TRUNCATED, Exactness.SUPERSET)
    ex = jnp.where(~an.truncated & sign_ok, Exactness.CONVEX_COMPOSITE, ex)
    ex = jnp.where(~an.truncated & likq, Exactness.LIKQ, ex)
    ex = jnp.where(smooth, Exactness.SMOOTH, ex).astype(jnp.int8)
    out["exactness"] = ex
    kv = min(k, an.kv_cap)
    out["wants_realisability"] = (ex == Exactness.SUPERSET) & (an.n_active <= kv)
    return out


def _kink_realise(prog: KinkProgram, x, opts: MinNormOptions):
    """The hull restricted to realisable selections (`Exactness.REALISABLE`), or the
    unrestricted one (`SUPERSET`) when no selection passes the first-order test."""
    an = _Analysis(prog, x, opts)
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


def _vertex_slots(opts: MinNormOptions, r_max: int) -> int:
    """Kinks enumerated jointly: at most 2**vertex_slots vertices."""
    return max(1, int(math.floor(opts.vertex_slots * math.log(2) / math.log(max(r_max, 2)) + 1e-9)))


def _vertex_table(r_max: int, kv: int) -> np.ndarray:
    return np.array(list(itertools.product(range(r_max), repeat=kv)), np.int32).reshape(-1, kv)


def _vertices(grad_at, s_valid, lam0, s_gamma, r_max, k, dtype):
    """Vertex selections of all k slots, their gradients and penalties."""
    table = jnp.asarray(_vertex_table(r_max, k))  # (V, k)
    onehot = jax.nn.one_hot(table, r_max, dtype=dtype)  # (V, k, R)
    vvalid = jnp.all(jnp.take_along_axis(s_valid[None], table[..., None], axis=-1)[..., 0], -1)
    vpen = jnp.sum(onehot * s_gamma[None], axis=(1, 2))
    vgrads = jax.vmap(lambda oh: grad_at(oh - lam0))(onehot)
    return table, vvalid, vpen, vgrads


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
    table = jnp.asarray(_vertex_table(r_max, kv))  # (V, kv)
    nvert = table.shape[0]
    slots = order  # (kv,) slot indices
    valid_s = s_valid[slots]  # (kv, R)
    rows_s = rows[slots]  # (kv, R, d): grad(w_j - w_nat)
    d = g0.shape[0]

    def one(omega):
        chosen_ok = jnp.all(jnp.take_along_axis(valid_s, omega[:, None], axis=-1)[:, 0])
        rw = jnp.take_along_axis(rows_s, omega[:, None, None], axis=1)  # (kv, 1, d)
        cand = rw - rows_s  # grad(w_omega - w_i), (kv, R, d)
        other = valid_s & (jnp.arange(r_max)[None, :] != omega[:, None])
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


# --------------------------------------------------------------------------- bundle
def _bundle_solve(fun, x, opts: MinNormOptions, h=None):
    """Gradient sampling (Burke–Lewis–Overton): hull of gradients near x, Wolfe QP."""
    d = x.shape[0]
    dtype = x.dtype
    n = opts.bundle_size or (min(2 * d, 32) + 1)
    key = jax.random.key(0)
    u = jax.random.normal(key, (n - 1, d), dtype)
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    rad = jax.random.uniform(jax.random.fold_in(key, 1), (n - 1, 1), dtype) ** (1.0 / d)
    offsets = u * rad
    rel = opts.bundle_radius if opts.bundle_radius is not None else math.sqrt(_eps(dtype))
    f, g = jax.value_and_grad(fun)(x)
    radius = rel * (1.0 + jnp.linalg.norm(x))
    if h is not None:
        radius = jnp.maximum(radius, h * jnp.linalg.norm(g))
    pts = x + radius * offsets
    grads = jnp.concatenate([g[None], jax.vmap(jax.grad(fun))(pts)], axis=0)
    sol = hull_minnorm(grads, method="wolfe")
    return dict(
        f=f,
        v=sol.v,
        gap=sol.gap,
        n_active=jnp.zeros((), jnp.int32),
        exactness=jnp.array(Exactness.APPROXIMATE, jnp.int8),
    )


# --------------------------------------------------------------------------- field
class MinNormField(AbstractField):
    r"""$v(x)$ = the minimal-norm element of the Clarke subdifferential of $f$.

    Build it with `MinNormField.for_problem(problem, **options)` (options: see
    `MinNormOptions`); `jaxflow.flow` does so for `Problem(..., nonsmooth=True)`. To
    change the options used by `flow`/`descend`, call
    `MinNormField.attach(problem, **options)` first.

    `value_and_velocity(x)` uses the exact rounding band; `prox_velocity(x, h)` is the
    velocity of the prox-linear step of size $h$ (see `jaxflow.ProxLinear`).
    """

    f: Callable = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    name: str = eqx.field(static=True)
    options: MinNormOptions = eqx.field(static=True)
    _cache: _Cache = eqx.field(static=True)

    @classmethod
    def for_problem(cls, problem, **options) -> MinNormField:
        """The field of `problem`; analyses the kinks now, so unsupported primitives
        raise `UnsupportedKinkError` here (before anything is compiled)."""
        opts = options.pop("options", None) or MinNormOptions(**options)
        fld = cls(
            f=problem.f_flat, dim=problem.dim, name=problem.name, options=opts, _cache=_Cache()
        )
        fld.program(jnp.result_type(float))
        return fld

    @classmethod
    def attach(cls, problem, **options) -> MinNormField:
        """Builds the field with `options` and makes `flow`/`descend` use it."""
        fld = cls.for_problem(problem, **options)
        problem._jaxflow_field = fld
        return fld

    def with_options(self, **changes) -> MinNormField:
        """The same field with other options (sharing the traced kink programs)."""
        opts = dataclasses.replace(self.options, **changes)
        return MinNormField(
            f=self.f, dim=self.dim, name=self.name, options=opts, _cache=self._cache
        )

    def program(self, dtype) -> KinkProgram | None:
        """The kink program for `dtype` (None in black-box mode)."""
        dtype = jnp.dtype(dtype)
        if dtype in self._cache.programs:
            return self._cache.programs[dtype]
        prog = None
        if self.options.method != "bundle":
            try:
                prog = KinkProgram(self.f, self.dim, dtype, name=self.name)
            except UnsupportedKinkError:
                if self.options.fallback != "bundle":
                    raise
            if prog is not None and not prog.sites:
                prog = _SMOOTH
        self._cache.programs[dtype] = prog
        return prog

    @property
    def smooth(self) -> bool:
        return False

    def _solve(self, x, h=None, certify=False):
        prog = self.program(x.dtype)
        if prog is None:
            return _bundle_solve(self.f, x, self.options, h)
        if prog is _SMOOTH:
            f, g = jax.value_and_grad(self.f)(x)
            return dict(
                f=f,
                v=g,
                gap=jnp.zeros((), x.dtype),
                n_active=jnp.zeros((), jnp.int32),
                exactness=jnp.array(Exactness.SMOOTH, jnp.int8),
                selected=jax.grad(self.f),
            )
        return _kink_solve(prog, x, self.options, h=h, certify=certify)

    def value(self, x):
        return self.f(x)

    def value_and_velocity(self, x):
        out = self._solve(x)
        return out["f"], out["v"]

    def velocity(self, x):
        return self.value_and_velocity(x)[1]

    def prox_velocity(self, x, h):
        r"""$(f(x), v_h(x))$: $x - h\,v_h(x)$ is the prox-linear step of size $h$."""
        out = self._solve(x, h=h)
        return out["f"], out["v"]

    def prox_linearisation(self, x, h):
        r"""$(f(x), v_h(x), G)$ where $G(y) = \nabla_y F(y, \lambda^*)$ is the gradient of
        the piece selection the prox-linear step chose ($G(x) = v_h(x)$), or `None` in
        black-box mode."""
        out = self._solve(x, h=h)
        return out["f"], out["v"], out.get("selected")

    def jacobian(self, x):
        return jax.hessian(self.f)(x)

    def certified(self, x) -> MinNormResult:
        """`MinNormResult` at one flat point with the exactness certificates (the
        realisability test included)."""
        out = self._certified(x)
        real = self._realised(x)
        use = out.pop("wants_realisability")
        for key in ("v", "gap", "exactness"):
            out[key] = jnp.where(use, real[key], out[key])
        return _result(out)

    def _certified(self, x):
        """Certificates except the realisability test; `wants_realisability` says
        whether it applies (see `_batched`, which runs it only where needed)."""
        out = self._solve(x, certify=True)
        out.pop("selected", None)
        out.setdefault("wants_realisability", jnp.array(False))
        return out

    def _realised(self, x):
        prog = self.program(x.dtype)
        if prog is None or prog is _SMOOTH:
            out = self._solve(x, certify=True)
            return dict(v=out["v"], gap=out["gap"], exactness=out["exactness"])
        return _kink_realise(prog, x, self.options)

    def needs_qp(self, x):
        """(f, natural gradient, number of tied kinks at x): the cheap first pass."""
        prog = self.program(x.dtype)
        if prog is None or prog is _SMOOTH:
            f, g = jax.value_and_grad(self.f)(x)
            return f, g, jnp.asarray(prog is None, jnp.int32)
        tol = self.options.band_ulps * _eps(x.dtype)
        (f, count), g = jax.value_and_grad(lambda y: prog.count_ties(y, tol), has_aux=True)(x)
        return f, g, count


_SMOOTH = object()  # marker: the traced function has no kinks


def _result(out) -> MinNormResult:
    gap = out["gap"]
    return MinNormResult(
        v=out["v"],
        f=out["f"],
        gap=gap,
        error_bound=jnp.sqrt(2 * jnp.maximum(gap, 0.0)),
        exactness=jnp.asarray(out["exactness"], jnp.int8),
        n_active=out["n_active"],
    )


# --------------------------------------------------------------------------- public API
def _field_of(problem, options) -> MinNormField:
    """The problem's min-norm field (cached on the problem per options, so repeated
    calls reuse one compiled program)."""
    cached = getattr(problem, "_jaxflow_field", None)
    opts = MinNormOptions(**options)
    if isinstance(cached, MinNormField) and (not options or cached.options == opts):
        return cached
    fields = problem.__dict__.setdefault("_jaxflow_minnorm_fields", {})
    if opts not in fields:
        fields[opts] = MinNormField.for_problem(problem, options=opts)
    return fields[opts]


def _compacted(fn, xs, mask, res, chunk):
    """Runs `vmap(fn)` only on the rows of `xs` where `mask` holds, `chunk` at a time,
    and writes its outputs into `res` (a while loop outside vmap: real work skipping)."""
    n = xs.shape[0]
    order = jnp.argsort(~mask, stable=True)
    m = jnp.sum(mask, dtype=jnp.int32)
    nchunks = (m + chunk - 1) // chunk
    padded = jnp.concatenate([order, jnp.full((chunk,), n, order.dtype)])

    def body(i, res):
        idx = jax.lax.dynamic_slice(padded, (i * chunk,), (chunk,))
        live = (i * chunk + jnp.arange(chunk)) < m
        idx = jnp.where(live, idx, n)
        new = jax.vmap(fn)(xs[jnp.minimum(idx, n - 1)])
        return {
            k: (
                res[k].at[idx].set(new[k].astype(res[k].dtype), mode="drop") if k in new else res[k]
            )
            for k in res
        }

    return jax.lax.fori_loop(0, nchunks, body, res)


def _tiers(field: MinNormField, dtype) -> list[int]:
    """Slot counts compiled for the batched path: a few small ones below the full count
    so that points with few tied kinks solve a small QP."""
    prog = field.program(dtype)
    if prog is None or prog is _SMOOTH or prog.nested:
        return [0]
    full = min(prog.n_groups, field.options.max_active)
    return sorted({t for t in (8, 32) if 2 * t <= full} | {full})


@eqx.filter_jit
def _batched(field: MinNormField, xs, chunk: int):
    n, d = xs.shape
    dtype = xs.dtype
    f, g, count = jax.vmap(field.needs_qp)(xs)
    res = dict(
        v=g,
        f=f,
        gap=jnp.zeros((n,), dtype),
        exactness=jnp.full((n,), int(Exactness.SMOOTH), jnp.int8),
        n_active=jnp.zeros((n,), jnp.int32),
        wants_realisability=jnp.zeros((n,), bool),
    )
    # Only points with a tied kink need the QP, sized by how many kinks are tied, and
    # only those without a certificate the (costlier) realisability test.
    tiers = _tiers(field, dtype)
    lo = 0
    for k in tiers:
        last = k == tiers[-1]
        fld = field if last else field.with_options(max_active=k)
        mask = (count > lo) & ((count <= k) | last)
        res = _compacted(fld._certified, xs, mask, res, chunk)
        lo = k
    res = _compacted(field._realised, xs, res.pop("wants_realisability"), res, chunk)
    res["error_bound"] = jnp.sqrt(2 * jnp.maximum(res["gap"], 0.0))
    return res


@eqx.filter_jit
def _cheap(field: MinNormField, xs):
    return jax.vmap(field.needs_qp)(xs)


@eqx.filter_jit
def _stage(fn, xs):
    return jax.vmap(fn)(xs)


def _run_rows(fn, xs, rows: np.ndarray) -> dict:
    """`vmap(fn)` on `xs[rows]`, padded to a few bucket sizes (8, 64, 512 per call) so
    that varying counts reuse compiled programs."""
    outs = []
    for start in range(0, len(rows), 512):
        part = rows[start : start + 512]
        size = next(b for b in (8, 64, 512) if b >= len(part))
        padded = np.concatenate([part, np.full(size - len(part), part[0])])
        out = _stage(fn, xs[jnp.asarray(padded)])
        outs.append({k: np.asarray(v)[: len(part)] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _eager(field: MinNormField, xs) -> dict:
    """`_batched` for concrete inputs: the QP tiers and the realisability test are
    compiled and run only for the points (and tiers) that need them."""
    n = xs.shape[0]
    f, g, count = (np.asarray(a) for a in _cheap(field, xs))
    res = dict(
        v=g.copy(),
        f=f.copy(),
        gap=np.zeros((n,), g.dtype),
        exactness=np.full((n,), int(Exactness.SMOOTH), np.int8),
        n_active=np.zeros((n,), np.int32),
        wants_realisability=np.zeros((n,), bool),
    )
    tiers = _tiers(field, xs.dtype)
    lo = 0
    for k in tiers:
        last = k == tiers[-1]
        rows = np.nonzero((count > lo) & ((count <= k) | last))[0]
        lo = k
        if rows.size == 0:
            continue
        fld = field if last else field.with_options(max_active=k)
        out = _run_rows(fld._certified, xs, rows)
        for key in res:
            if key in out:
                res[key][rows] = out[key]
    rows = np.nonzero(res.pop("wants_realisability"))[0]
    if rows.size:
        out = _run_rows(field._realised, xs, rows)
        for key in ("v", "gap", "exactness"):
            res[key][rows] = out[key]
    res["error_bound"] = np.sqrt(2 * np.maximum(res["gap"], 0.0))
    return {k: jnp.asarray(v) for k, v in res.items()}


def minnorm_subgradient(problem, x, **options) -> MinNormResult:
    r"""The minimal-norm element $v$ of $\partial f(x)$, with a certificate.

    **Arguments:**

    - `problem`: a `jaxflow.Problem` (smooth or not; its kinks are found in `f`).
    - `x`: one point (flat `(d,)` or a pytree like `problem.example`) or a batch
      (`(n, d)` or a pytree with a leading axis); float32 or float64.
    - `**options`: `MinNormOptions` fields (e.g. `fallback="bundle"`, `band_ulps`).

    **Returns:** a `MinNormResult` (`v`, `f`, `gap`, `error_bound` $\ge \|v - v^*\|$,
    `exactness`, `n_active`; `stationarity` $= \|v\|$), batched like `x`. Points with no
    tied kink cost one interpreted gradient; only the others run the QP (sized by the
    number of tied kinks), and only uncertified ones the realisability test. Called on
    concrete arrays it compiles only the stages some point needs; inside `jit`/`vmap` it
    is one traced program with fixed budgets.
    """
    from ._problem import Problem  # noqa: PLC0415

    if not isinstance(problem, Problem):
        raise TypeError(
            f"minnorm_subgradient: `problem` must be a jaxflow.Problem, got "
            f"{type(problem).__name__}."
        )
    field = _field_of(problem, options)
    single = False
    leaves = jax.tree_util.tree_leaves(x)
    if len(leaves) == 1 and jax.tree_util.tree_structure(x) == jax.tree_util.tree_structure(0):
        arr = jnp.asarray(leaves[0])
        if arr.ndim == 1 and arr.shape[0] == problem.dim and problem.dim != 1:
            single, xs = True, arr[None]
        elif arr.ndim == 0 and problem.dim == 1:
            single, xs = True, arr.reshape(1, 1)
        else:
            xs = problem.flatten_batch(arr, what="x")
    else:
        try:
            xs = problem.flatten_batch(x, what="x")
        except ValueError:
            xs = problem.ravel(x)[None]
            single = True
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"minnorm_subgradient: x has dtype {xs.dtype}; pass floating point.")
    n = int(xs.shape[0])
    if isinstance(xs, jax.core.Tracer):  # inside jit / vmap: one traced program
        out = _batched(field, xs, min(n, 512))
    else:  # eager: compile and run only the stages some point needs
        out = _eager(field, xs)
    res = MinNormResult(**out)
    if single:
        res = jax.tree.map(lambda a: a[0], res)
    return res
