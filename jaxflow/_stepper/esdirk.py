r"""ESDIRK steps (`Kvaerno3/4/5`) from a diffrax tableau with a chord iteration.

Each implicit stage is solved by a chord iteration with the Jacobian
$I + h\gamma\nabla^2 f$, factorised once per step. For a gradient flow the Jacobian
of $-\nabla f$ is the symmetric $-\nabla^2 f$, so this is cheap for the small dimensions
of landscape problems, and it keeps the L-stability that escaping valleys need (their
curvature grows like $\|x\|^2$).

**Hessian reuse.** Above a few dozen variables the Hessian ($d$ Hessian-vector
products) and the factorisation are most of a step's cost (rank-2 completion at
$d = 120$, 64 lanes, one core: Hessian 79 ms, one step with a given Hessian and LU 33
ms). A chord iteration converges to the same stage values with any matrix close enough
to the Jacobian, only more slowly, so, as in Hairer & Wanner's RADAU5, the Hessian is
kept over steps and recomputed only when the chord iteration contracted poorly on the
last step (`refresh_rate`), when it is `max_age` accepted steps old, or when a step
taken with an old Hessian was rejected; a rejected step keeps a Hessian it computed
(same point). A kept Hessian is stored as its eigendecomposition $Q\Lambda Q^T$ (it is
symmetric), so a step of any size solves with $Q(I + h\gamma\Lambda)^{-1}Q^T$: two
matrix-vector products, no factorisation (one step with a given decomposition: 6–10 ms
instead of 33). The engine computes Hessians only on the lanes that need one
(`jaxflow._compact.on_rows`); each lane's decision uses its own history only, so its
steps do not depend on its batch. With reuse, a stage's chord iteration stops once a
correction is below `NEWTON_STOP` of the tolerance, after at most `REUSE_NEWTON_ITERS`
iterations (more than without reuse: they are cheap, and an old Hessian contracts more
slowly).

Measured on that problem (64 uniform starts, float32, $t_1 = 2\cdot10^3$, one core, compile
excluded, `benchmarks/high_dim.py` has the whole runs): a fresh Hessian and LU at every
step 18–22 s (median 88 steps, max 227, 609 rejected); reuse with LU solves, refresh
at a rate of 0.05 and 6 iterations, 12–14 s (same steps); with the eigendecomposition
11.1 s; with 10–15 iterations and a refresh rate of 0.2–0.3, 7.7–7.8 s (max 192 steps,
321 rejected: fewer stage failures). Same statuses in every run (37 CONVERGED, 27
ESCAPING). Looser still (rate 0.5) costs more rejected steps than it saves.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._compact import on_rows
from .._controller import error_scale
from .base import AbstractTableauStepper
from .._linalg import UNROLL_MAX_DIM, lincomb, lu_factor, lu_solve

__all__ = ["ESDIRKStepper", "REUSE_MIN_DIM"]

# Smallest dimension at which `ESDIRKStepper(reuse_hessian=None)` keeps Hessians over
# steps: below it the dense `Rodas4` is the default anyway, and a step's Hessian costs
# little next to the bookkeeping (a d x d state per lane).
REUSE_MIN_DIM = 33
# Chord iterations per stage (at most, with reuse): measured on Example 1.1
# (benchmarks/solver_choice.py) without reuse, where 6 with a unit tolerance minimise
# wall time (fewer fail stages at large steps, at no gain in accuracy); with reuse on
# completion at d = 120 (module notes).
NEWTON_ITERS = 6
REUSE_NEWTON_ITERS = 15
# With Hessian reuse, a stage's chord iteration stops once a correction is below this
# fraction of `newton_tol` (the next one is smaller by the contraction factor).
NEWTON_STOP = 0.3


class ESDIRKStepper(AbstractTableauStepper):
    r"""ESDIRK (explicit first stage, stiffly accurate) from a diffrax tableau.

    Stage $i$ solves $z_i = x + h\sum_{j<i} a_{ij}k_j + h\gamma k_i$ with
    $k_i = -v(z_i)$ by a chord iteration with matrix $I + h\gamma J$, $J$ the Hessian
    at $x$ (factorised once per step) or, above `REUSE_MIN_DIM` variables, at an
    earlier point of the trajectory (see the module notes), starting from diffrax's
    predictor tableau. The stage derivative is recovered as $k_i = (z_i - \text{base}_i)/(h\gamma)$, which is
    preferable to re-evaluating $v$ for stiff problems (Hairer–Wanner IV.8). A stage
    whose last chord correction exceeds `newton_tol` (in the step's error norm) fails
    the step, and the controller retries with a smaller one.

    **Arguments** (besides the solver and tolerances):

    - `newton_iters`: chord iterations per stage; `None` (default): `NEWTON_ITERS`, or
      at most `REUSE_NEWTON_ITERS` with reuse.
    - `reuse_hessian`: keep Hessians over steps; `None` (default): above
      `REUSE_MIN_DIM` variables.
    - `max_age`: accepted steps after which a kept Hessian is recomputed.
    - `refresh_rate`: recompute the Hessian after a step whose chord iteration
      contracted by less than this factor per iteration (largest ratio of successive
      corrections over the stages, counted while the corrections exceed `newton_tol`).
    """

    newton_iters: int | None = eqx.field(static=True, default=None)
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    newton_tol: float = eqx.field(static=True, default=1.0)
    reuse_hessian: bool | None = eqx.field(static=True, default=None)
    max_age: int = eqx.field(static=True, default=50)
    refresh_rate: float = eqx.field(static=True, default=0.3)

    def __check_init__(self):
        if self.reuse_hessian not in (None, True, False):
            raise ValueError(
                f"{self.name}: reuse_hessian must be None, True or False, "
                f"got {self.reuse_hessian!r}."
            )
        if self.newton_iters is not None and not (
            isinstance(self.newton_iters, int) and self.newton_iters >= 1
        ):
            raise ValueError(
                f"{self.name}: newton_iters must be a positive integer or None, "
                f"got {self.newton_iters!r}."
            )
        if not (isinstance(self.max_age, int) and self.max_age >= 1):
            raise ValueError(
                f"{self.name}: max_age must be a positive integer, got {self.max_age!r}."
            )
        if not (isinstance(self.refresh_rate, (int, float)) and 0 < self.refresh_rate <= 1):
            raise ValueError(
                f"{self.name}: refresh_rate must be in (0, 1], got {self.refresh_rate!r}."
            )

    def _reuses(self, d: int) -> bool:
        return d >= REUSE_MIN_DIM if self.reuse_hessian is None else self.reuse_hessian

    def _iters(self, d: int) -> int:
        if self.newton_iters is not None:
            return self.newton_iters
        return REUSE_NEWTON_ITERS if self._reuses(d) else NEWTON_ITERS

    def init(self, x):
        d = x.shape[0]
        if not self._reuses(d):
            return None
        # `age`: accepted steps since the Hessian was computed (at the next step);
        # `refresh`: recompute it before the next step; `stale`: the last step used
        # a Hessian from an earlier point.
        return dict(
            vecs=jnp.zeros((d, d), x.dtype),
            vals=jnp.zeros((d,), x.dtype),
            age=jnp.int32(0),
            refresh=jnp.array(True),
            stale=jnp.array(False),
        )

    def matrices_per_lane(self, dim: int) -> int:
        # Kept: eigenvectors in the state, in the step's output and in the engine's
        # selects (4); computed: the Hessian and its decomposition (2); without reuse
        # the Hessian, I + h gamma H and its LU.
        if dim <= UNROLL_MAX_DIM:
            return 0
        return 6 if self._reuses(dim) else 3

    def _needs(self, state):
        return state["refresh"] | (state["age"] >= self.max_age)

    def step(self, field, x, f, v, h, state):
        if state is None:
            x1, err, f1, v1, ok, _ = self._step_with(field, x, v, h, field.jacobian(x))
            return x1, err, f1, v1, ok, None
        need = self._needs(state)
        vecs, vals = _eigen(field)(x)
        eig = (jnp.where(need, vecs, state["vecs"]), jnp.where(need, vals, state["vals"]))
        return self._reusing_step(field, x, v, h, eig, need, state)

    def batched_step(self, field, x, f, v, h, state, active):
        if state is None:
            return super().batched_step(field, x, f, v, h, state, active)
        need = self._needs(state) & active
        # Blocks only: a Hessian and its eigendecomposition cost about as much per lane
        # in blocks as in one pass, and one copy of them compiles in half the time.
        eig = on_rows(
            _eigen(field), (x,), need, (state["vecs"], state["vals"]), whole_pass=False
        )

        def one(x, v, h, eig, need, s):
            return self._reusing_step(field, x, v, h, eig, need, s)

        return jax.vmap(one)(x, v, h, eig, need, state)

    def rejected_state(self, state, state1):
        if state is None:
            return None
        # Same point: the Hessian used stays valid (not older); one that was old when
        # the step failed is recomputed.
        return dict(
            vecs=state1["vecs"],
            vals=state1["vals"],
            age=state1["age"] - 1,
            refresh=state1["stale"],
            stale=state1["stale"],
        )

    def _reusing_step(self, field, x, v, h, eig, fresh, state):
        x1, err, f1, v1, ok, rate = self._step_with(field, x, v, h, eig)
        age = jnp.where(fresh, 0, state["age"])
        state1 = dict(
            vecs=eig[0],
            vals=eig[1],
            age=age + 1,
            refresh=~(rate < self.refresh_rate),
            stale=age > 0,
        )
        return x1, err, f1, v1, ok, state1

    def _step_with(self, field, x, v, h, hess):
        r"""The step with chord matrix $I + h\gamma$ `hess` (a Hessian, or its
        `(vectors, values)`); also the chord iteration's worst contraction (largest ratio
        of successive corrections over the stages, see `_chord`)."""
        tab = self.solver.tableau
        gammas = np.asarray(tab.a_diagonal)
        gamma = float(gammas[1])
        if not np.allclose(gammas[1:], gamma) or gammas[0] != 0:
            raise NotImplementedError(f"{self.name}: only SDIRK diagonals are fused.")
        hg = h * gamma
        if isinstance(hess, tuple):  # (vectors, values) of the Hessian: no factorisation
            vecs, vals = hess
            damp = 1.0 / (1.0 + hg * vals)

            def solve(r):
                return vecs @ (damp * (r @ vecs))
        else:
            lu = lu_factor(jnp.eye(x.shape[0], dtype=x.dtype) + hg * hess)

            def solve(r):
                return lu_solve(lu, r)
        stage_derivs = [-v]
        ok = jnp.array(True)
        rate = jnp.zeros((), x.dtype)
        early = self._reuses(x.shape[0])
        scale = error_scale(jnp.abs(x), self.rtol, self.atol)  # the controller's, at x
        z = x
        for i in range(1, len(tab.b_sol)):
            a_i = tab.a_lower[i - 1]
            base = x + h * lincomb(a_i, stage_derivs) if np.any(a_i != 0) else x
            pred = tab.a_predictor[i - 1]
            z = x + h * lincomb(pred, stage_derivs) if np.any(pred != 0) else x
            z, prev, rate = self._chord(field, solve, z, base, hg, scale, rate, early)
            ok = ok & (prev <= self.newton_tol)
            stage_derivs.append((z - base) / (h * gamma))
        x1 = z  # stiffly accurate: the last stage is the solution
        f1, v1 = field.value_and_velocity(x1)
        err = h * lincomb(tab.b_error, stage_derivs)
        return x1, err, f1, v1, ok, rate

    def _chord(self, field, solve, z, base, hg, scale, rate, early):
        r"""`newton_iters` chord iterations for $z = \text{base} - h\gamma v(z)$ from `z`;
        with `early`, fewer once a correction is below `NEWTON_STOP * newton_tol` (a
        `while_loop`: under vmap a lane that stopped keeps its values, so its result does
        not depend on how long other lanes iterate). Returns the iterate, the last
        correction's size (error norm) and the worst contraction ratio so far."""
        tiny = jnp.finfo(z.dtype).tiny

        def iterate(z, prev, rate):
            dz = solve(z - base + hg * field.velocity(z))
            size = jnp.sqrt(jnp.mean((dz / scale) ** 2))
            # Ratios below the tolerance are rounding noise, not contraction.
            counted = prev > self.newton_tol
            rate = jnp.maximum(rate, jnp.where(counted, size / jnp.maximum(prev, tiny), 0.0))
            return z - dz, size, rate

        prev = jnp.zeros((), z.dtype)
        iters = self._iters(z.shape[0])
        if not early:
            for _ in range(iters):
                z, prev, rate = iterate(z, prev, rate)
            return z, prev, rate
        stop = NEWTON_STOP * self.newton_tol

        def cond(c):
            k, _, size, _ = c
            return (k < iters) & ((k == 0) | (size > stop))

        def body(c):
            k, z, size, rate = c
            return (k + 1, *iterate(z, size, rate))

        _, z, prev, rate = jax.lax.while_loop(cond, body, (0, z, prev, rate))
        return z, prev, rate


def _eigen(field):
    """The Hessian's eigendecomposition at a point, as `(vectors, values)`."""

    def eig(x):
        vals, vecs = jnp.linalg.eigh(field.jacobian(x))
        return vecs, vals

    return eig
