r"""The vector field of a (sub)gradient flow and its stationarity measure.

The flow is $x'(t) = -v(x(t))$ where $v$ is $\nabla f$ for a $C^1$ loss, or the
minimal-norm element of the Clarke subdifferential $\partial f(x)$ for a nonsmooth one
(the "slow" solution of the differential inclusion $x' \in -\partial f(x)$). The
stationarity measure is $\|v(x)\| = \operatorname{dist}(0, \partial f(x))$.

Fields are written for a single point (a flat vector) and vmapped by the engine.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["AbstractField", "GradientField", "field_for"]


class AbstractField(eqx.Module):
    """A vector field $v$ with $x' = -v(x)$, evaluated at one flat point."""

    def value_and_velocity(self, x):
        """Returns $(f(x), v(x))$."""
        raise NotImplementedError

    def velocity(self, x):
        return self.value_and_velocity(x)[1]

    def value(self, x):
        raise NotImplementedError

    def jacobian(self, x):
        r"""$\partial v / \partial x$ (the Hessian of $f$ for a gradient field)."""
        raise NotImplementedError

    @property
    def smooth(self) -> bool:
        return True


class GradientField(AbstractField):
    r"""$v = \nabla f$ for a continuously differentiable $f$."""

    f: Callable = eqx.field(static=True)

    def value_and_velocity(self, x):
        return jax.value_and_grad(self.f)(x)

    def velocity(self, x):
        return jax.grad(self.f)(x)

    def value(self, x):
        return self.f(x)

    def jacobian(self, x):
        return jax.hessian(self.f)(x)


def stationarity(v):
    r"""$\|v\|_2$, the distance from 0 to the (sub)differential when $v$ is min-norm."""
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def field_for(problem) -> AbstractField:
    """The vector field jaxflow integrates for `problem`.

    Smooth problems use `jax.grad`; problems with `nonsmooth=True` use the
    minimal-norm Clarke subgradient.
    """
    cached = getattr(problem, "_jaxflow_field", None)
    if cached is not None:
        return cached
    if getattr(problem, "nonsmooth", False):
        from ._minnorm import MinNormField  # noqa: PLC0415 - optional heavy import

        fld = MinNormField.for_problem(problem)
    else:
        fld = GradientField(problem.f_flat)
    # Cache on the problem so that repeated calls reuse one static object (no retracing).
    problem._jaxflow_field = fld
    return fld
