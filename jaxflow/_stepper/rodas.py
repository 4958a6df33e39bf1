r"""Rodas4: a linearly implicit (Rosenbrock) stepper; diffrax has none.

Hairer & Wanner, *Solving ODEs II*, Sec. IV.7, the "transformed" coefficients of their
RODAS code: 6 stages, order 4 with an embedded order-3 estimate, L-stable and stiffly
accurate.
"""

from __future__ import annotations

import jax.numpy as jnp

from .base import AbstractStepper
from .._linalg import UNROLL_MAX_DIM, lincomb, lu_factor, lu_solve

__all__ = ["Rodas4"]

_GAMMA = 0.25
_A = (
    (1.544,),
    (0.9466785280815826, 0.2557011698983284),
    (3.314825187068521, 2.896124015972201, 0.9986419139977817),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950),
)
_C = (
    (-5.6688,),
    (-2.430093356833875, -0.2063599157091915),
    (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
    (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160),
    (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136,
     -6.058818238834054),
)


def rodas_stages(field, x, v, h, solve):
    r"""Rodas4's six stages with `solve(r)` = $h\gamma (I + h\gamma H)^{-1} r$ (dense in
    `Rodas4`, Krylov in `RodasKrylov`): the new point and the embedded error estimate
    (the last stage, the method being stiffly accurate)."""
    stages = [solve(-v)]
    u = x
    for i in range(1, 6):
        if i < 5:
            u = x + lincomb(_A[i - 1], stages)
        else:
            u = u + stages[-1]  # stage 6 sits at u5 + k5
        coupling = lincomb(_C[i - 1], stages) / h
        stages.append(solve(-field.velocity(u) + coupling))
    return u + stages[-1], stages[-1]


class Rodas4(AbstractStepper):
    r"""Rodas4: a 6-stage L-stable Rosenbrock method of order 4 (Hairer & Wanner).

    Linearly implicit: one factorisation of $I + h\gamma\nabla^2 f(x_n)$ per step and six
    solves, no Newton iteration. Its stage derivatives are exact Jacobian-weighted, so it
    damps the stiff directions of escaping valleys like an implicit method at the cost
    of an explicit one plus the Hessian. It plugs into the same engine and controller as
    the diffrax solvers.
    """

    def matrices_per_lane(self, dim: int) -> int:
        return 0 if dim <= UNROLL_MAX_DIM else 3  # the Hessian, I + h gamma H, its LU

    @property
    def error_order(self):
        return 4

    @property
    def name(self):
        return "Rodas4"

    def step(self, field, x, f, v, h, state):
        hg = h * _GAMMA
        jac = field.jacobian(x)
        lu = lu_factor(jnp.eye(x.shape[0], dtype=x.dtype) + hg * jac)

        def solve(r):  # (I/(h gamma) + H)^{-1} r
            return hg * lu_solve(lu, r)

        x1, err = rodas_stages(field, x, v, h, solve)
        f1, v1 = field.value_and_velocity(x1)
        return x1, err, f1, v1, jnp.array(True), state
