r"""The vector field of a (sub)gradient flow and its stationarity measure.

The flow is $x'(t) = -v(x(t))$ where $v$ is $\nabla f$ for a $C^1$ loss, or the
minimal-norm element of the Clarke subdifferential $\partial f(x)$ for a nonsmooth one
(the "slow" solution of the differential inclusion $x' \in -\partial f(x)$). The
stationarity measure is $\|v(x)\| = \operatorname{dist}(0, \partial f(x))$.

Fields are written for a single point (a flat vector) and vmapped by the engine. This
module owns the field interface, the gradient field and the per-problem field cache; the
minimal-norm field is `jaxflow._nonsmooth`, and `jaxflow._field_choice.field_for` picks
one for a problem.
"""

from __future__ import annotations

import abc
import weakref
from collections.abc import Callable, Hashable

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["AbstractField", "GradientField", "cached_field", "stationarity"]


class AbstractField(eqx.Module):
    """A vector field $v$ with $x' = -v(x)$, evaluated at one flat point."""

    @abc.abstractmethod
    def value_and_velocity(self, x):
        """Returns $(f(x), v(x))$."""

    def velocity(self, x):
        return self.value_and_velocity(x)[1]

    @abc.abstractmethod
    def value(self, x):
        """Returns $f(x)$."""

    @abc.abstractmethod
    def jacobian(self, x):
        r"""$\partial v / \partial x$ (the Hessian of $f$ for a gradient field)."""

    @property
    def smooth(self) -> bool:
        return True

    def vectors_per_lane(self) -> int:
        """Length-$d$ vectors (counted in float64) that evaluating the field holds per
        lane beyond a gradient's, for the engine's choice of lanes by memory
        (`jaxflow._engine.default_lanes`). 0 for gradient fields."""
        return 0


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


def cached_field(problem, key: Hashable, build: Callable[[], AbstractField]) -> AbstractField:
    """The field of `problem` under `key`, built by `build()` on first use.

    One static field object per (problem, key), so repeated calls reuse compiled
    programs instead of retracing. Held outside the (immutable) problem in a weak-key
    cache: the entry goes away with the problem (fields hold `problem.f_flat`, which does
    not refer back to the problem).
    """
    per_problem = _FIELDS.get(problem)
    if per_problem is None:
        per_problem = _FIELDS[problem] = {}
    if key not in per_problem:
        per_problem[key] = build()
    return per_problem[key]


_FIELDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
