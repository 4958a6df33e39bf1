"""Objectives given to scans by reference (`scan_problems:double_well`), as a user would."""

import jax.numpy as jnp


def double_well(x):
    r"""$f(x) = \sum_i x_i^2 - x_i^4/4$: the flow $x' = -2x + x^3$ converges to 0 from
    $|x_0| < \sqrt 2$ and blows up in finite time $t^* = \tfrac14\log(x_0^2/(x_0^2 - 2))$
    from $|x_0| > \sqrt 2$ (so it overflows unless an escape radius stops it)."""
    return jnp.sum(x**2 - x**4 / 4)
