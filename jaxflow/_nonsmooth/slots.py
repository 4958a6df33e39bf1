r"""Tied-kink slots: which kinks are tied at a point, laid out as a fixed number of slots.

The kinks of a `KinkProgram` come in groups (one per element of a kink site's shape).
At a point $x$ a group is *tied* when another piece is within the rounding band of the
natural one (or, for a prox-linear step of size $h$, within reach of the step). The QPs
have static shapes, so the tied groups are gathered into `k` slots of `R` pieces each
(the closest first); `KinkAnalysis` holds everything about one point that the QPs and
the certificates use: $f$, $\nabla f$, the probe, the slots, and the selection
gradient $\nabla_x F(x, \lambda)$ as a function of the slot weights (scattered back to
the per-site selector perturbations). Vertex selections (one piece per slot) are
enumerated here too, for nested kinks and for the realisability test.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .kinks import KinkProgram, Probe
from .options import MinNormOptions, machine_eps

__all__ = ["KinkAnalysis", "vertex_gradients", "vertex_table"]


# Jacobian columns computed together (`KinkAnalysis._relative_columns`).
_COLUMN_BLOCK = 4


def _choose_jac(fun, n_in: int, n_out: int):
    return jax.jacfwd(fun) if n_in <= n_out else jax.jacrev(fun)


class _TiedGroups(eqx.Module):
    """Kink groups of all sites, flattened (traced arrays; static layout)."""

    valid: jax.Array  # (G, R) piece allowed (tied with the natural one)
    nat: jax.Array  # (G, R) natural piece
    pos: jax.Array  # (G, R) int: piece index within the site
    score: jax.Array  # (G,) smallest normalised gap among other pieces (inf: none)
    gamma: jax.Array  # (G, R) first-order value change when switching (prox penalty)
    c: jax.Array  # (G,) cotangent of the kink output
    trunc_pieces: jax.Array  # () more tied pieces than max_pieces somewhere


def _rounding_tied(w, mag, opts: MinNormOptions, dtype):
    """`(..., m)`: the pieces whose switching score is within the rounding band of the
    largest (the natural piece's); a test that depends only on the scores, not on which
    piece the comparisons in `f` happened to pick."""
    top = jnp.max(w, axis=-1, keepdims=True)
    return (top - w) <= opts.band_ulps * machine_eps(dtype) * mag


def _settled(prog: KinkProgram, probe: Probe, opts: MinNormOptions, dtype) -> Probe:
    r"""`probe` with each kink's natural piece decided once, and by a rule that does not
    depend on rounding: the first of the pieces tied within the rounding band.

    At an exact tie (a residual of 0 or an ulp) the piece `f` picks depends on the sign
    of a value within rounding of zero, e.g. on whether XLA:CPU contracts
    $x_1 x_2 - m$ into a fused multiply-add, which differs between the kernels of one
    program and with a row's position in a vectorised batch. Two effects follow, both
    removed here: (1) the probe and the gradient of the natural selection were taken in
    different kernels, so they could disagree on the natural piece, and the QP then
    searched a hull shifted by a piece's gradient (a wrong answer, not a rounding
    difference); (2) the natural piece, hence $g_0$, $\lambda^0$ and the QP's path,
    depended on the batch. The probe goes through an optimisation barrier, so its scores
    are computed once per row and every decision below reads the same values; tied
    pieces are then treated alike (the lowest index is the natural one), so the answer
    is the same in every batch.
    """
    probe = jax.lax.optimization_barrier(probe)
    nat = []
    for i, site in enumerate(prog.sites):
        w, mag, n0 = probe.w[i], probe.mag[i], probe.nat[i]
        is_nat = jnp.arange(site.npieces, dtype=n0.dtype) == n0[..., None]
        # The natural piece is tied with itself; `| is_nat` keeps it where a score is NaN.
        tied = _rounding_tied(w, mag, opts, dtype) | is_nat
        nat.append(jnp.argmax(tied, axis=-1).astype(jnp.int32))
    return probe._replace(nat=tuple(nat))


def _tied_groups(prog: KinkProgram, probe, g_dth, c, wdot, h, opts: MinNormOptions, dtype):
    """Tied pieces per group, padded to a common width R."""
    eps = machine_eps(dtype)
    r_max = max(min(s.npieces, opts.max_pieces) for s in prog.sites)
    cols = dict(valid=[], nat=[], pos=[], score=[], gamma=[], c=[])
    trunc = jnp.array(False)
    for i, site in enumerate(prog.sites):
        m = site.npieces
        g = site.size
        w = probe.w[i].reshape(g, m)
        nat = probe.nat[i].reshape(g)
        mag = probe.mag[i].reshape(g, m)
        # Distances to the largest score: the same whichever tied piece is natural.
        gap = jnp.maximum(jnp.max(w, axis=-1, keepdims=True) - w, 0.0)
        rounding = _rounding_tied(w, mag, opts, dtype)
        band = opts.band_ulps * eps * mag
        if wdot is not None:
            wd = wdot[i].reshape(g, m)
            rate = jnp.abs(jnp.take_along_axis(wd, nat[:, None], axis=-1) - wd)
            band = jnp.maximum(band, opts.reach * h * rate)
        is_nat = jnp.arange(m, dtype=nat.dtype)[None, :] == nat[:, None]
        valid = (gap <= band) | is_nat
        gd = g_dth[i].reshape(g, m)
        gamma = jnp.abs(gd - jnp.take_along_axis(gd, nat[:, None], axis=-1))
        if site.orientation != 0:
            # The scores of max/min/abs are the pieces themselves: pieces tied within
            # rounding differ in value by rounding alone, so switching between them costs
            # nothing (a penalty of that size would follow the rounding of the batch).
            # A comparison's pieces may differ at its tie (a jump): their cost stays.
            gamma = jnp.where(rounding, 0.0, gamma)
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
    return _TiedGroups(trunc_pieces=trunc, **cat)


@dataclasses.dataclass(frozen=True)
class _GroupLayout:
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


class KinkAnalysis:
    """Everything about the kinks at one point that the QP and the certificates use."""

    def __init__(self, prog: KinkProgram, x, opts: MinNormOptions, h=None):
        dtype = x.dtype
        self.prog, self.x, self.opts, self.h, self.dtype = prog, x, opts, h, dtype
        self.d = x.shape[0]
        dth0, eps0 = prog.zeros(dtype)
        self.dth0, self.eps0 = dth0, eps0
        # The natural pieces are decided once (`_settled`), then every evaluation of
        # F around them is told which they are.
        f, probe = prog.lift(x, track_mag=True)
        probe = _settled(prog, probe, opts, dtype)
        self.nat = nat = probe.nat

        def lifted(y, t, e):
            return prog.lift(y, t, e, nat=nat)[0]

        g0, g_dth, c = jax.grad(lifted, argnums=(0, 1, 2))(x, dth0, eps0)
        self.f, self.probe, self.g0 = f, probe, g0
        wdot = None
        if h is not None:
            # Rates of the switching scores along the current velocity: the band of
            # kinks a step of size h can reach.
            _, wdot = jax.jvp(lambda y: prog.lift(y, dth0, eps0, nat=nat)[1].w, (x,), (g0,))
        grp = _tied_groups(prog, probe, g_dth, c, wdot, h, opts, dtype)
        lay = _GroupLayout.of(prog)
        self.lay = lay
        n_groups, r_max = grp.valid.shape
        self.r_max = r_max
        active = jnp.sum(grp.valid, axis=-1) > 1
        self.n_active = jnp.sum(active, dtype=jnp.int32)
        self.kv_cap = _vertex_slots(opts, r_max)
        k = min(n_groups, opts.max_active) if not prog.nested else min(n_groups, self.kv_cap)
        self.k = k
        # With more groups than slots, the slots hold the closest groups in order (the
        # tied ones first: the others score infinity).
        self.by_score = k < n_groups
        sel = jax.lax.top_k(-grp.score, k)[1] if self.by_score else jnp.arange(n_groups)
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
        return self._grad_with(self.dth(t))

    def _grad_with(self, dth):
        """Selection gradient with the per-site selector perturbation `dth`."""
        return jax.grad(lambda y: self.prog.lift(y, dth, self.eps0, nat=self.nat)[0])(self.x)

    @property
    def jac(self):
        r"""$\partial_t \nabla_x F$ over the slots relative to the natural piece, `(d, k, R)`
        (non-nested kinks): column $(k, r)$ is the change of the selection gradient when
        slot $k$ moves its weight from its natural piece to piece $r$ (zero for the
        natural piece itself).

        The QPs use $J(\lambda - \lambda^0)$ with $\lambda_k$ on a simplex, which does not
        change when a column common to a slot is subtracted, so this is the same as the
        plain Jacobian for them; it is formed from $R - 1$ directional derivatives per slot
        instead of $R$ (half of them for `abs`, `relu` and two-way `max`, whose Jacobian
        is most of a prox-linear step on a network with thousands of kinks).
        """
        if self._jac is None:
            k, r_max, d = self.k, self.r_max, self.d
            if r_max == 1:
                self._jac = jnp.zeros((d, k, 1), self.dtype)
                return self._jac
            nat = jnp.argmax(self.s_nat, axis=-1).astype(jnp.int32)  # (k,) slot position
            q = jnp.arange(r_max - 1, dtype=jnp.int32)
            other = q[None, :] + (q[None, :] >= nat[:, None]).astype(jnp.int32)  # (k, R-1)
            place = jax.nn.one_hot(other, r_max, dtype=self.dtype)  # (k, R-1, R)
            n_cols = k * (r_max - 1)
            if n_cols <= d:
                rel = self._relative_columns(nat, other)  # (d, k, R-1)
            else:
                to_t = place - jax.nn.one_hot(nat, r_max, dtype=self.dtype)[:, None, :]

                def grad_rel(s):
                    return self.grad_at(jnp.einsum("kq,kqr->kr", s, to_t))

                rel = jax.jacrev(grad_rel)(jnp.zeros((k, r_max - 1), self.dtype))
            self._jac = jnp.einsum("dkq,kqr->dkr", rel, place)
        return self._jac

    def _relative_columns(self, nat, other):
        r"""Forward-mode columns $\partial_t \nabla_x F \cdot (e_{k,\text{other}} -
        e_{k,\text{nat}})$, `(d, k, R-1)`, with each direction built as a dense one-hot
        selector perturbation by comparisons (`grad_at` scatters its argument instead)."""
        prog, k, r_max = self.prog, self.k, self.r_max
        rows = jnp.arange(k)
        pos_nat = self.s_pos[rows, nat]  # (k,) piece index within the site
        pos_other = jnp.take_along_axis(self.s_pos, other, axis=-1)  # (k, R-1)
        site = jnp.broadcast_to(self.slot_site[:, None], other.shape).reshape(-1)
        index = jnp.broadcast_to(self.slot_index[:, None], other.shape).reshape(-1)
        p_nat = jnp.broadcast_to(pos_nat[:, None], other.shape).reshape(-1)
        p_other = pos_other.reshape(-1)

        def column(s, g, po, pn):
            tangent = []
            for i, st in enumerate(prog.sites):
                piece = jnp.arange(st.npieces, dtype=jnp.int32)
                row = (jnp.arange(st.size, dtype=jnp.int32) == g) & (s == i)
                e = (piece == po).astype(self.dtype) - (piece == pn).astype(self.dtype)
                t = jnp.where(row[:, None], e[None, :], 0.0).astype(self.dtype)
                tangent.append(t.reshape(st.shape + (st.npieces,)))
            return jax.jvp(self._grad_with, (self.dth0,), (tuple(tangent),))[1]

        args = (site, index, p_other, p_nat)
        n, blk = site.shape[0], _COLUMN_BLOCK
        if not self.by_score or n <= blk:
            cols = jax.vmap(column)(*args)  # (k, d)
        else:
            # A function with more kink groups than slots: a few columns at a time, so
            # that their tangents (a copy of every intermediate of the backward pass per
            # column) stay in cache, where all at once they do not (ReLU network, d = 865,
            # 48,000 kinks, 256 slots: 0.30 s a lane against 0.51 s); and only as many as
            # there are tied slots, which come first (the QPs never move a slot with a
            # single valid piece, so the other columns are not used).
            nb = -(-n // blk)
            blocks = tuple(jnp.pad(a, (0, nb * blk - n)).reshape(nb, blk) for a in args)
            used = jnp.minimum(self.n_active, k) * (r_max - 1)

            def body(carry):
                b, buf = carry
                return b + 1, buf.at[b].set(jax.vmap(column)(*(a[b] for a in blocks)))

            buf = jnp.zeros((nb, blk, self.d), self.dtype)
            _, buf = jax.lax.while_loop(
                lambda c: c[0] * blk < used, body, (jnp.zeros((), jnp.int32), buf)
            )
            cols = buf.reshape(nb * blk, self.d)[:n]
        return cols.T.reshape(self.d, k, r_max - 1)

    def theta(self, t):
        """Absolute (frozen) selection with slot weights moved by `t`."""
        return _absolute(self.prog, self.probe, self.dth(t), self.dtype)

    def switching_rows(self):
        r"""$\nabla(w_j - w_\text{nat})$ per slot and piece, `(k, R, d)`."""
        prog, k, r_max = self.prog, self.k, self.r_max

        def w_slots(y):
            _, pr = prog.lift(y, self.dth0, self.eps0, nat=self.nat)
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


def _vertex_slots(opts: MinNormOptions, r_max: int) -> int:
    """Kinks enumerated jointly: at most 2**vertex_slots vertices."""
    return max(1, int(math.floor(opts.vertex_slots * math.log(2) / math.log(max(r_max, 2)) + 1e-9)))


def vertex_table(r_max: int, kv: int) -> np.ndarray:
    return np.array(list(itertools.product(range(r_max), repeat=kv)), np.int32).reshape(-1, kv)


def vertex_gradients(grad_at, s_valid, lam0, s_gamma, r_max, k, dtype):
    """Vertex selections of all k slots, their gradients and penalties."""
    table = jnp.asarray(vertex_table(r_max, k))  # (V, k)
    onehot = jax.nn.one_hot(table, r_max, dtype=dtype)  # (V, k, R)
    vvalid = jnp.all(jnp.take_along_axis(s_valid[None], table[..., None], axis=-1)[..., 0], -1)
    vpen = jnp.sum(onehot * s_gamma[None], axis=(1, 2))
    vgrads = jax.vmap(lambda oh: grad_at(oh - lam0))(onehot)
    return table, vvalid, vpen, vgrads
