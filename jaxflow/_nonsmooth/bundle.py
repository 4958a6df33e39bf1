r"""The black-box fallback: gradient sampling (Burke–Lewis–Overton).

For losses whose kinks `KinkProgram` cannot represent (jumps such as `sign`, kinks
inside loops), $v$ is approximated by the minimal-norm point of the hull of gradients
at random points near $x$: a Goldstein $\epsilon$-subgradient rather than a Clarke one,
flagged `Exactness.APPROXIMATE`. Opt in with `MinNormOptions(fallback="bundle")` (or
force it with `method="bundle"`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .certificates import Exactness
from .options import MinNormOptions, machine_eps
from .qp import hull_minnorm

__all__ = ["bundle_solve"]


def bundle_solve(fun, x, opts: MinNormOptions, h=None):
    """Gradient sampling (Burke–Lewis–Overton): hull of gradients near x, Wolfe QP."""
    d = x.shape[0]
    dtype = x.dtype
    n = opts.bundle_size or (min(2 * d, 32) + 1)
    key = jax.random.key(0)
    u = jax.random.normal(key, (n - 1, d), dtype)
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    rad = jax.random.uniform(jax.random.fold_in(key, 1), (n - 1, 1), dtype) ** (1.0 / d)
    offsets = u * rad
    rel = opts.bundle_radius if opts.bundle_radius is not None else math.sqrt(machine_eps(dtype))
    f, g = jax.value_and_grad(fun)(x)
    radius = rel * (1.0 + jnp.linalg.norm(x))
    if h is not None:
        radius = jnp.maximum(radius, h * jnp.linalg.norm(g))
    pts = x + radius * offsets
    grads = jnp.concatenate([g[None], jax.vmap(jax.grad(fun))(pts)], axis=0)
    sol = hull_minnorm(grads, method="wolfe")
    return dict(
        f=f,
        v=sol.v,
        gap=sol.gap,
        n_active=jnp.zeros((), jnp.int32),
        exactness=jnp.array(Exactness.APPROXIMATE, jnp.int8),
    )


