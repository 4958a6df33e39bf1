r"""Small dense linear algebra for the implicit steppers, unrolled at trace time.

Steppers solve with $I + h\gamma\nabla^2 f(x)$ once or several times per step. For the
small dimensions of landscape problems an unrolled factorisation is straight-line code
that stays elementwise under vmap; above `UNROLL_MAX_DIM` LAPACK's batched LU is used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["lu_factor", "lu_solve", "lincomb", "UNROLL_MAX_DIM"]

# Unrolled LU below this dimension; LAPACK (batched) above.
UNROLL_MAX_DIM = 12


def lu_factor(m):
    """LU factorisation with partial pivoting of a small dense matrix, unrolled at trace time.

    The matrices factorised here are $I + h\\gamma H$ with $H$ a Hessian: symmetric but
    indefinite at saddles, so a diagonal entry can vanish ($h\\gamma H_{kk} = -1$) while
    the matrix is well conditioned. Row $k$ is exchanged with a row below it only when
    that row's entry in column $k$ is strictly larger in magnitude, so the common
    diagonally dominant case ($h\\gamma\\|H\\| < 1$) does exactly the arithmetic of
    elimination without pivoting. Row exchanges are elementwise selects, which keeps the
    factorisation straight-line code under vmap. Returned as the rows of the factors
    and the exchanges made, for `lu_solve`.
    """
    d = m.shape[-1]
    if d > UNROLL_MAX_DIM:
        return ("lapack", jax.scipy.linalg.lu_factor(m))
    a = [[m[i, j] for j in range(d)] for i in range(d)]
    swaps = []
    for k in range(d):
        # Bring the largest |a[i][k]| (i >= k) to row k; ties keep the upper row.
        for i in range(k + 1, d):
            swap = jnp.abs(a[i][k]) > jnp.abs(a[k][k])
            row_k = [jnp.where(swap, a[i][j], a[k][j]) for j in range(d)]
            a[i] = [jnp.where(swap, a[k][j], a[i][j]) for j in range(d)]
            a[k] = row_k
            swaps.append((k, i, swap))
        inv = 1.0 / a[k][k]
        for i in range(k + 1, d):
            a[i][k] = a[i][k] * inv
            for j in range(k + 1, d):
                a[i][j] = a[i][j] - a[i][k] * a[k][j]
    return ("unrolled", (a, swaps))


def lu_solve(lu, b):
    """Solves $m x = b$ with the factorisation of `lu_factor(m)`."""
    kind, fac = lu
    if kind == "lapack":
        return jax.scipy.linalg.lu_solve(fac, b)
    a, swaps = fac
    d = b.shape[-1]
    y = [b[i] for i in range(d)]
    for k, i, swap in swaps:
        y[k], y[i] = jnp.where(swap, y[i], y[k]), jnp.where(swap, y[k], y[i])
    for i in range(d):
        for j in range(i):
            y[i] = y[i] - a[i][j] * y[j]
    x = [None] * d
    for i in reversed(range(d)):
        s = y[i]
        for j in range(i + 1, d):
            s = s - a[i][j] * x[j]
        x[i] = s / a[i][i]
    return jnp.stack(x)


def lincomb(coeffs, vecs):
    """$\\sum_i c_i v_i$ skipping exact zeros (coefficients are trace-time constants)."""
    out = None
    for c, v in zip(coeffs, vecs):
        c = float(c)
        if c == 0.0:
            continue
        term = v if c == 1.0 else c * v
        out = term if out is None else out + term
    return out
