"""Flows of the paper's examples shared by test_detect, test_values and test_report.

Each run is computed once per test session (compilation dominates the cost on CPU).
"""

import functools

import diffrax
import jax
import jax.numpy as jnp

import jaxflow as jf
from jaxflow import problems


@functools.cache
def example_1_1():
    """Example 1.1: 256 uniform starts in [-1, 1]^4, float32, t1 = 2000; and the same
    starts with gtol = 5e-3, which the escaping trajectories meet at t ~ 600."""
    p = problems.get("matrix-completion")
    x0 = p.sample(jax.random.key(0), 256, jnp.float32)
    return p, x0, jf.flow(p, x0, t1=2e3), jf.flow(p, x0, t1=2e3, gtol=5e-3)


@functools.cache
def example_4_3(dtype=jnp.float64, t1=1e4):
    """Example 4.3 (4.9): 64 uniform starts in [-3, 3]^2."""
    p = problems.get("sigmoid-example-4-3")
    x0 = p.sample(jax.random.key(1), 64, dtype)
    # (0, 0), the only critical point, a strict saddle with value 1.
    x0 = x0.at[0].set(0.0)
    return p, x0, jf.flow(p, x0, t1=t1)


@functools.cache
def figure_3():
    """Figure 3: 96 uniform starts in [-4, 4]^2, float64, t1 = 1e4."""
    p = problems.get("sigmoid-two-points")
    x0 = p.sample(jax.random.key(3), 96, jnp.float64)
    return p, x0, jf.flow(p, x0, t1=1e4)


@functools.cache
def remark_3_2():
    """Remark 3.2: 128 uniform starts in [-7, 7], float32 (gtol 1e-4), t1 = 1e4."""
    p = problems.get("infinitely-many-critical-values")
    x0 = p.sample(jax.random.key(4), 128, jnp.float32)
    return p, x0, jf.flow(p, x0, t1=1e4)


@functools.cache
def remark_3_3():
    """Remark 3.3 from x0 = +-2 (escapes, Remark 3.3) and |x0| < 1.5 (converges to 0)."""
    p = problems.get("unbounded-trajectory")
    x0 = jnp.array([[2.0], [-2.0], [1.4], [-1.4], [0.5], [-1.0], [1.49]])
    return p, x0, jf.flow(p, x0, t1=1e4, solver=diffrax.Tsit5())


SECTION_4 = {
    "deep-linear": (dict(depth=2, widths=(2, 2, 2), n_samples=4, rank_x=1), 32),
    "deep-sigmoid-1d": (dict(depth=3), 32),
    "matrix-sensing": (dict(n1=3, n2=3, r=1, m=12), 24),
}


@functools.cache
def section_4(name):
    """Section 4's smooth problems (Propositions 4.1, 4.2, 4.4), float64, t1 = 1000."""
    params, n = SECTION_4[name]
    p = problems.get(name, **params)
    x0 = p.sample(jax.random.key(2), n, jnp.float64)
    return p, x0, jf.flow(p, x0, t1=1e3)


@functools.cache
def nonsmooth_factorization():
    """(4.11) ||X Y^T - M||_1 (Proposition 4.5), 3x3, r = rank M = 1: 8 Gaussian starts,
    float64, t1 = 100, the min-norm Clarke subgradient flow. With the midpoint error
    estimate: the same statuses as the default in ~15x fewer steps (the default's
    invariants are tested in test_nonsmooth_flow)."""
    p = problems.get("nonsmooth-factorization")
    x0 = p.sample(jax.random.key(5), 8, jnp.float64)
    return p, x0, jf.flow(p, x0, t1=1e2, solver=jf.ProxLinear(estimate="midpoint"))
