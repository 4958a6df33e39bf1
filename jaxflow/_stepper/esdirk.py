r"""ESDIRK steps (`Kvaerno3/4/5`) from a diffrax tableau with a chord iteration.

Each implicit stage is solved by a chord iteration with the Jacobian
$I + h\gamma\nabla^2 f$, factorised once per step. For a gradient flow the Jacobian
of $-\nabla f$ is the symmetric $-\nabla^2 f$, so this is cheap for the small dimensions
of landscape problems, and it keeps the L-stability that escaping valleys need (their
curvature grows like $\|x\|^2$).

**Hessian reuse.** Above a few dozen variables the Hessian ($d$ Hessian-vector
products) is most of a step's cost: rank-2 completion at $d = 120$, 64 lanes, 54 of
109 ms. A chord iteration converges to the same stage values with any matrix close
enough to the Jacobian, only more slowly, so, as in Hairer & Wanner's RADAU5, the
Hessian is kept over steps and recomputed only when the chord iteration contracted
poorly on the last step (`refresh_rate`), when it is `max_age` accepted steps old, or
when a step taken with an old Hessian was rejected; a rejected step keeps a Hessian it
computed (same point). The engine computes the Hessian only on the lanes that need one
(`jaxflow._compact.on_rows`); each lane's decision uses its own history only, so its
steps do not depend on its batch. With reuse, a stage's chord iteration also stops once
a correction is below `NEWTON_STOP` of the tolerance (at most `newton_iters`).

Measured on that problem (64 starts, float32, $t_1 = 2\cdot10^3$, one core, side by
side): 22.2 / 20.5 s with a fresh Hessian at every step; with reuse at `refresh_rate`
0.05, 14.2 / 14.5 s with the same statuses and the same step counts (median 88, max
229 against 227), and 12.4 s with the early stop; a looser 0.1 saved fewer Hessians
than it cost in rejected steps (715 against 609), 0.3 more so (1532).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._compact import on_rows
from .base import AbstractTableauStepper
from .linalg import lincomb, lu_factor, lu_solve

__all__ = ["ESDIRKStepper", "REUSE_MIN_DIM"]

# Smallest dimension at which `ESDIRKStepper(reuse_hessian=None)` keeps Hessians over
# steps. Below it the Hessian costs about as much as the bookkeeping (d^2 state per lane).
REUSE_MIN_DIM = 33
# With Hessian reuse, a stage's chord iteration stops once a correction is below this
# fraction of `newton_tol` (the next one is smaller by the contraction factor).
NEWTON_STOP = 0.3


class ESDIRKStepper(AbstractTableauStepper):
    r"""ESDIRK (explicit first stage, stiffly accurate) from a diffrax tableau.

    Stage $i$ solves $z_i = x + h\sum_{j<i} a_{ij}k_j + h\gamma k_i$ with
    $k_i = -v(z_i)$ by a chord iteration with matrix $I + h\gamma J$, $J$ the Hessian
    at $x$ or at an earlier point of the trajectory (see the module notes), factorised
    once per step, starting from diffrax's predictor tableau. The stage
    derivative is recovered as $k_i = (z_i - \text{base}_i)/(h\gamma)$, which is
    preferable to re-evaluating $v$ for stiff problems (Hairer–Wanner IV.8). A stage
    whose last chord correction exceeds `newton_tol` (in the step's error norm) fails
    the step, and the controller retries with a smaller one.

    **Arguments** (besides the solver and tolerances):

    - `reuse_hessian`: keep Hessians over steps; `None` (default): above
      `REUSE_MIN_DIM` variables.
    - `max_age`: accepted steps after which a kept Hessian is recomputed.
    - `refresh_rate`: recompute the Hessian after a step whose chord iteration
      contracted by less than this factor per iteration (largest ratio of successive
      corrections over the stages, counted while the corrections exceed `newton_tol`).
    """

    # Measured on Example 1.1 (benchmarks/solver_choice.py): 6 chord iterations with a
    # unit tolerance minimise wall time; fewer iterations fail stages at large steps and
    # inflate the number of rejected steps, at no gain in accuracy.
    newton_iters: int = eqx.field(static=True, default=6)
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    newton_tol: float = eqx.field(static=True, default=1.0)
    reuse_hessian: bool | None = eqx.field(static=True, default=None)
    max_age: int = eqx.field(static=True, default=10)
    refresh_rate: float = eqx.field(static=True, default=0.05)

    def __check_init__(self):
        if self.reuse_hessian not in (None, True, False):
            raise ValueError(
                f"{self.name}: reuse_hessian must be None, True or False, "
                f"got {self.reuse_hessian!r}."
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

    def init(self, x):
        d = x.shape[0]
        if not self._reuses(d):
            return None
        # `age`: accepted steps since the Hessian was computed (at the next step);
        # `refresh`: recompute it before the next step; `stale`: the last step used
        # a Hessian from an earlier point.
        return dict(
            hess=jnp.zeros((d, d), x.dtype),
            age=jnp.int32(0),
            refresh=jnp.array(True),
            stale=jnp.array(False),
        )

    def _needs(self, state):
        return state["refresh"] | (state["age"] >= self.max_age)

    def step(self, field, x, f, v, h, state):
        if state is None:
            x1, err, f1, v1, ok, _ = self._step_with(field, x, v, h, field.jacobian(x))
            return x1, err, f1, v1, ok, None
        need = self._needs(state)
        hess = jnp.where(need, field.jacobian(x), state["hess"])
        return self._reusing_step(field, x, v, h, hess, need, state)

    def batched_step(self, field, x, f, v, h, state, active):
        if state is None:
            return super().batched_step(field, x, f, v, h, state, active)
        need = self._needs(state) & active
        hess = on_rows(field.jacobian, (x,), need, state["hess"])

        def one(x, v, h, hess, need, s):
            return self._reusing_step(field, x, v, h, hess, need, s)

        return jax.vmap(one)(x, v, h, hess, need, state)

    def rejected_state(self, state, state1):
        if state is None:
            return None
        # Same point: the Hessian used stays valid (not older); one that was old when
        # the step failed is recomputed.
        return dict(
            hess=state1["hess"],
            age=state1["age"] - 1,
            refresh=state1["stale"],
            stale=state1["stale"],
        )

    def _reusing_step(self, field, x, v, h, hess, fresh, state):
        x1, err, f1, v1, ok, rate = self._step_with(field, x, v, h, hess)
        age = jnp.where(fresh, 0, state["age"])
        state1 = dict(
            hess=hess,
            age=age + 1,
            refresh=~(rate < self.refresh_rate),
            stale=age > 0,
        )
        return x1, err, f1, v1, ok, state1

    def _step_with(self, field, x, v, h, hess):
        r"""The step with chord matrix $I + h\gamma$ `hess`; also the chord iteration's
        worst contraction (ratio of the last two corrections' norms over the stages)."""
        tab = self.solver.tableau
        gammas = np.asarray(tab.a_diagonal)
        gamma = float(gammas[1])
        if not np.allclose(gammas[1:], gamma) or gammas[0] != 0:
            raise NotImplementedError(f"{self.name}: only SDIRK diagonals are fused.")
        lu = lu_factor(jnp.eye(x.shape[0], dtype=x.dtype) + (h * gamma) * hess)
        stage_derivs = [-v]
        ok = jnp.array(True)
        rate = jnp.zeros((), x.dtype)
        early = self._reuses(x.shape[0])
        z = x
        for i in range(1, len(tab.b_sol)):
            a_i = tab.a_lower[i - 1]
            base = x + h * lincomb(a_i, stage_derivs) if np.any(a_i != 0) else x
            pred = tab.a_predictor[i - 1]
            z = x + h * lincomb(pred, stage_derivs) if np.any(pred != 0) else x
            scale = self.atol + self.rtol * jnp.abs(x)
            z, prev, rate = self._chord(field, lu, z, base, h * gamma, scale, rate, early)
            ok = ok & (prev <= self.newton_tol)
            stage_derivs.append((z - base) / (h * gamma))
        x1 = z  # stiffly accurate: the last stage is the solution
        f1, v1 = field.value_and_velocity(x1)
        err = h * lincomb(tab.b_error, stage_derivs)
        return x1, err, f1, v1, ok, rate

    def _chord(self, field, lu, z, base, hg, scale, rate, early):
        r"""`newton_iters` chord iterations for $z = \text{base} - h\gamma v(z)$ from `z`;
        with `early`, fewer once a correction is below `NEWTON_STOP * newton_tol` (a
        `while_loop`: under vmap a lane that stopped keeps its values, so its result does
        not depend on how long other lanes iterate). Returns the iterate, the last
        correction's size (error norm) and the worst contraction ratio so far."""
        tiny = jnp.finfo(z.dtype).tiny

        def iterate(z, prev, rate):
            dz = lu_solve(lu, z - base + hg * field.velocity(z))
            size = jnp.sqrt(jnp.mean((dz / scale) ** 2))
            # Ratios below the tolerance are rounding noise, not contraction.
            counted = prev > self.newton_tol
            rate = jnp.maximum(rate, jnp.where(counted, size / jnp.maximum(prev, tiny), 0.0))
            return z - dz, size, rate

        prev = jnp.zeros((), z.dtype)
        if not early:
            for _ in range(self.newton_iters):
                z, prev, rate = iterate(z, prev, rate)
            return z, prev, rate
        stop = NEWTON_STOP * self.newton_tol

        def cond(c):
            k, _, size, _ = c
            return (k < self.newton_iters) & ((k == 0) | (size > stop))

        def body(c):
            k, z, size, rate = c
            return (k + 1, *iterate(z, size, rate))

        _, z, prev, rate = jax.lax.while_loop(cond, body, (0, z, prev, rate))
        return z, prev, rate
