r"""An optax optimiser as one more stepper: discrete trajectories through the same engine.

$x_{k+1} = x_k + u_k$ with $u_k, s_{k+1} = \text{optimizer.update}(v(x_k), s_k, x_k)$, so
`optax.sgd(h)` is explicit Euler on the flow with step $h$ (the paper's Figure 1 uses
gradient descent with step 0.01), and `optax.adam(...)` asks whether Adam gets stuck at
infinity where the flow does not. The optimiser's state is the stepper's state. Used with
`jaxflow._controller.IterationCount`, which places checkpoints at iteration counts.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .base import AbstractStepper

__all__ = ["OptaxStepper"]


class OptaxStepper(AbstractStepper):
    """One iteration of an `optax.GradientTransformation` fed the field's velocity."""

    optimizer: Any = eqx.field(static=True)

    def init(self, x):
        with jax.numpy_dtype_promotion("standard"):
            return self.optimizer.init(x)

    def step(self, field, x, f, v, h, state):
        # optax mixes Python and integer scalars internally (Adam's bias correction), which
        # fails under `jax_numpy_dtype_promotion="strict"`; its own code runs under the
        # standard rules, jaxflow's stays strict-clean.
        with jax.numpy_dtype_promotion("standard"):
            updates, state1 = self.optimizer.update(v, state, x)
        x1 = x + updates
        f1, v1 = field.value_and_velocity(x1)
        return x1, None, f1, v1, jnp.array(True), state1

    @property
    def error_order(self) -> int:
        return 1

    @property
    def adaptive(self) -> bool:
        return False

    @property
    def name(self) -> str:
        return f"optax:{getattr(self.optimizer, '__name__', type(self.optimizer).__name__)}"
