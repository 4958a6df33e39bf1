"""Any other diffrax ODE solver, through its own `solver.step` (slower than the fused ones)."""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import optimistix as optx

from .base import AbstractStepper

__all__ = ["DiffraxStepper", "with_root_finder_tols"]


class DiffraxStepper(AbstractStepper):
    """Any diffrax solver with a plain `ODETerm`, through `solver.step`."""

    solver: Any = eqx.field(static=True)

    @property
    def error_order(self):
        return int(self.solver.order(None) or 1)

    @property
    def adaptive(self):
        return isinstance(self.solver, diffrax.AbstractAdaptiveSolver)

    @property
    def name(self):
        return type(self.solver).__name__

    def step(self, field, x, f, v, h, state):
        term = diffrax.ODETerm(lambda t, y, args: -field.velocity(y))
        t0 = jnp.zeros((), x.dtype)
        solver_state = self.solver.init(term, t0, t0 + h, x, None)
        x1, err, _, _, result = self.solver.step(
            term, t0, t0 + h, x, None, solver_state, made_jump=False
        )
        f1, v1 = field.value_and_velocity(x1)
        if err is None:
            err = jnp.zeros_like(x)
        return x1, err, f1, v1, result == diffrax.RESULTS.successful, state


def with_root_finder_tols(solver, rtol, atol):
    """Implicit diffrax solvers take their root-finder tolerances from the step-size
    controller inside `diffeqsolve`; outside it we must set them ourselves."""
    rf = getattr(solver, "root_finder", None)
    if rf is None or not hasattr(rf, "rtol"):
        return solver

    def fix(v, default):
        return v if isinstance(v, (int, float)) else default

    return eqx.tree_at(
        lambda s: (s.root_finder.rtol, s.root_finder.atol, s.root_finder.norm),
        solver,
        (fix(rf.rtol, float(rtol)), fix(rf.atol, float(atol)), optx.rms_norm),
        is_leaf=lambda x: x is None,
    )
