"""Choosing the vector field jaxflow integrates for a problem.

Here because it needs both families: `jaxflow._field` (the gradient field) and
`jaxflow._nonsmooth` (the minimal-norm field), which themselves never import this.
"""

from __future__ import annotations

from ._field import AbstractField, GradientField, cached_field
from ._nonsmooth import MinNormOptions, minnorm_field_of

__all__ = ["field_for"]


def field_for(problem) -> AbstractField:
    """The vector field jaxflow integrates for `problem`.

    Smooth problems use `jax.grad`; problems with `nonsmooth=True` use the
    minimal-norm Clarke subgradient with default `MinNormOptions` (pass another field to
    `flow`/`descend` with `field=` to change them). One object per problem, cached
    outside it, so repeated calls reuse compiled programs.
    """
    if getattr(problem, "nonsmooth", False):
        return minnorm_field_of(problem, MinNormOptions())
    return cached_field(problem, GradientField, lambda: GradientField(problem.f_flat))
