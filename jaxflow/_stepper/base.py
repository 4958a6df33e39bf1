r"""`AbstractStepper`: one step of $x' = -v(x)$ for a single trajectory, state in and out.

The engine (`jaxflow._engine`) calls `batched_step` on all its lanes, which vmaps `step`
unless a stepper overrides it, so a stepper is written for one flat point. Steppers that
carry state between steps (an optax optimiser's moments) return it from `init` and thread
it through `step`; the others use `None`.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax

from .._field import AbstractField

__all__ = ["AbstractStepper", "AbstractTableauStepper"]


class AbstractStepper(eqx.Module):
    r"""One step of $x' = -v(x)$ for a single trajectory.

    `step(field, x, f, v, h, state)` takes the state with its cached value $f(x)$ and
    velocity $v(x)$ (first-same-as-last) and returns `(x1, err, f1, v1, ok, state1)`: the
    candidate, the local error estimate (a vector, or `None` without one), $f$ and $v$ at
    the candidate, `ok=False` when an implicit solve failed, and the stepper's state after
    the step (kept if the engine accepts the step; otherwise `rejected_state` says what
    is kept).
    """

    def init(self, x) -> Any:
        """The stepper's state for a trajectory starting at `x` (`None`: stateless)."""
        del x
        return None

    @abc.abstractmethod
    def step(
        self, field: AbstractField, x, f, v, h, state
    ) -> tuple[Any, Any, Any, Any, Any, Any]:
        """`(x1, err, f1, v1, ok, state1)` for a step of size `h` from `x`."""

    def rejected_state(self, state, state1):
        """The state to continue from after the step that returned `state1` from `state`
        was rejected (same point, smaller step). By default `state`: a rejected step
        leaves no trace. A stepper overrides it to keep what is still valid at the same
        point (a Hessian computed there)."""
        del state1
        return state

    def batched_step(self, field: AbstractField, x, f, v, h, state, active):
        """`step` for every lane (leading axis of all arguments); `active` marks the lanes
        whose results are used. By default `step` vmapped; a stepper overrides it to skip
        work per lane (the results of a lane must still depend on its own inputs only)."""
        del active
        return jax.vmap(lambda x, f, v, h, s: self.step(field, x, f, v, h, s))(x, f, v, h, state)

    def matrices_per_lane(self, dim: int) -> int:
        """How many $d\times d$ matrices a lane holds at a time (dense Hessians, their
        factorisations, copies kept over steps), for the engine's choice of lanes by
        memory (`jaxflow._engine.default_lanes`). 0 for matrix-free steppers."""
        del dim
        return 0

    @property
    @abc.abstractmethod
    def error_order(self) -> int:
        """Order of the local error estimate (the step-size controller's exponent)."""

    @property
    def adaptive(self) -> bool:
        """Whether `step` returns an error estimate (usable with a PID controller)."""
        return True

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Name recorded in results (`FlowResult.meta["solver"]`)."""


class AbstractTableauStepper(AbstractStepper):
    """A stepper that reads the Butcher tableau of a diffrax solver (`solver.tableau`)."""

    solver: Any = eqx.field(static=True)

    @property
    def error_order(self) -> int:
        return int(self.solver.order(None))

    @property
    def name(self) -> str:
        return type(self.solver).__name__
