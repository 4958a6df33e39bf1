"""Explicit Runge–Kutta steps from a diffrax tableau, stages unrolled.

diffrax's own `solver.step` carries per-step bookkeeping (an inner loop over stages, dense
output) that dominates for the small states of landscape studies; reading the Butcher
tableau and emitting the stages as straight-line code removes it.
"""

from __future__ import annotations

import jax.numpy as jnp

from .base import AbstractTableauStepper
from .._linalg import lincomb

__all__ = ["ERKStepper"]


class ERKStepper(AbstractTableauStepper):
    """Explicit Runge–Kutta (`Tsit5`, `Dopri5`, `Dopri8`, `Bosh3`, `Heun`, ...) fused."""

    def step(self, field, x, f, v, h, state):
        tab = self.solver.tableau
        stage_derivs = [-v]
        n_stages = len(tab.b_sol)
        # With FSAL the last stage sits at x1 and equals -v(x1), which we evaluate anyway.
        last_at_x1 = tab.fsal and float(tab.b_sol[-1]) == 0.0
        n_explicit = n_stages - 1 if last_at_x1 else n_stages
        for i in range(1, n_explicit):
            a_i = tab.a_lower[i - 1]
            z = x + h * lincomb(a_i, stage_derivs)
            stage_derivs.append(-field.velocity(z))
        x1 = x + h * lincomb(tab.b_sol[:n_explicit], stage_derivs)
        f1, v1 = field.value_and_velocity(x1)
        if last_at_x1:
            stage_derivs.append(-v1)
        err = h * lincomb(tab.b_error, stage_derivs)
        if err is None:
            err = jnp.zeros_like(x)
        return x1, err, f1, v1, jnp.array(True), state
