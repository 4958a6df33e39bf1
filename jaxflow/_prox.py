r"""The prox-linear stepper: nonsmooth flows that slide along kinks without chattering.

An explicit step $x - h\,v(x)$ across a kink manifold overshoots it and the next step
comes back: the iterates chatter at the scale of the step (with `jax.grad`, $|xy - 1|
\approx 2\cdot10^{-2}$ at $h = 0.01$ on $|xy - 1| + $ smooth). Implicit Euler (the
proximal point step) is chattering-free (Acary–Brogliato 2010). Here each kink is
linearised instead of the whole function, which keeps the step a small QP:

$$x_+ = \operatorname*{argmin}_y\ \textstyle\sum_k c_k \max_j\big(p_{kj}(x) +
\langle\nabla p_{kj}(x), y - x\rangle\big) + \langle \nabla g(x), y - x\rangle +
\tfrac{1}{2h}\|y - x\|^2,$$

whose dual is the minimal-norm problem of `jaxflow._minnorm` plus a linear term
$\tfrac1h\langle\gamma, \lambda\rangle$, $\gamma_{kj} = |c_k|\,|p_{k,\text{nat}} -
p_{kj}|$ (the cost of switching kink $k$ to piece $j$). So $x_+ = x - h\,v_h(x)$ with
$v_h = g_0 + J(\lambda^* - \lambda^0)$. A kink is a candidate when a step of size $h$
can reach it; its pieces then enter with that penalty, which is the "band" of the
method: it scales with $h$, and for a kink already on the manifold ($\gamma = 0$) it
is exactly the minimal-norm element, so the trajectory slides. For $f = \sum_i w_i
|r_i| + g$ this is the linearised prox step of the research notes ("unifying formula").

The smooth part is explicit, so the method is first order. The local error estimate
is the implicit-Euler one, $\tfrac h2\,(v_h(x_+) - v_h(x))$, which lets
`diffrax.PIDController` choose $h$: at the arrival on a kink the velocity turns, the
estimate is large, and the controller shortens the step there (event location by
rejection); on the manifold the drift off it is second order and stays within the
controller's tolerance.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._solver import AbstractStepper

__all__ = ["ProxLinear"]


class ProxLinear(AbstractStepper):
    r"""Prox-linear step $x_+ = x - h\,v_h(x)$ for nonsmooth fields (order 1).

    With a smooth field (`GradientField`) it is explicit Euler with the same error
    estimate. Use with `diffrax.PIDController` (the default in `jaxflow.flow`) or
    `diffrax.ConstantStepSize()` and `dt0`.
    """

    @property
    def error_order(self) -> int:
        # The estimate h/2 (v(x+) - v(x)) scales like h^2.
        return 2

    @property
    def name(self) -> str:
        return "ProxLinear"

    def step(self, field, x, f, v, h):
        prox = getattr(field, "prox_velocity", None)
        if prox is not None:
            _, v_step = prox(x, h)
            x1 = x - h * v_step
            f1, v1 = prox(x1, h)
        else:
            v_step = v
            x1 = x - h * v_step
            f1, v1 = field.value_and_velocity(x1)
        err = 0.5 * h * (v1 - v_step)
        ok = jnp.all(jnp.isfinite(v_step))
        return x1, err, f1, v1, ok
