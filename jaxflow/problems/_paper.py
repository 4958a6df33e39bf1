"""Problems from Josz & Li, "Certifying the absence of spurious local minima at
infinity", SIAM J. Optim. 33 (2023)."""

from __future__ import annotations

import jax.numpy as jnp

from .._problem import Problem, Uniform
from ._registry import register


@register("matrix-completion")
def matrix_completion(low: float = -1.0, high: float = 1.0) -> Problem:
    r"""Example 1.1 / Figure 1: a matrix completion instance with a spurious local
    minimum at infinity.

    $f(x_1, x_2, y_1, y_2) = (x_1 y_1 - 1)^2 + (x_2 y_1 - 1)^2 + (x_2 y_2 - 1)^2$.

    Critical values: 0 (global minima $C_1$), 2 (strict saddles $C_2, C_3$),
    3 (the origin, a strict saddle). No spurious local minima, yet gradient methods from
    uniform starts in $[-1, 1]^4$ get stuck at infinity, where $f \to 1$ and
    $\|x\| \sim t^{1/4}$ (the paper's Figure 1: 3 of 10 trials).
    """

    def f(z):
        x1, x2, y1, y2 = z[0], z[1], z[2], z[3]
        return (x1 * y1 - 1) ** 2 + (x2 * y1 - 1) ** 2 + (x2 * y2 - 1) ** 2

    return Problem(
        f,
        dim=4,
        sampler=Uniform(low, high),
        name="matrix-completion",
        global_infimum=0.0,
        facts={
            "equation": "Example 1.1",
            "critical_values": [0.0, 2.0, 3.0],
            "spurious_local_minima": False,
            "value_at_infinity": 1.0,
            "bounded_trajectories": False,
        },
        description="Example 1.1: (x1 y1 - 1)^2 + (x2 y1 - 1)^2 + (x2 y2 - 1)^2",
    )
