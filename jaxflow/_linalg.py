r"""Small dense linear algebra, unrolled at trace time.

Steppers solve with $I + h\gamma\nabla^2 f(x)$ once or several times per step. For the
small dimensions of landscape problems an unrolled factorisation is straight-line code
that stays elementwise under vmap; above `UNROLL_MAX_DIM` LAPACK's batched LU is used.

The active-set QP of the nonsmooth field solves with a face of $J^TJ$ + ridge at every one
of its iterations. There LAPACK's Cholesky factorisation is kept and only the triangular
solves are unrolled (`cho_factor`, `cho_solve`): measured on a 2-core CPU, 64 rows of
9 x 9, one factorisation and two solves, 16 times in a loop: LAPACK 0.79 ms, solves
unrolled 0.37 ms (0.44 s more to compile), everything unrolled 0.20 ms (0.81 s more);
inside the prox-linear flow of (4.14) the last two ran equally fast, and the fully
unrolled factorisation cost 1.1 s more compilation, so it is not used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["lu_factor", "lu_solve", "cho_factor", "cho_solve", "lincomb", "UNROLL_MAX_DIM"]

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
    return _back_substitute(lambda i, j: a[i][j], y)


def _back_substitute(upper, y):
    """$x$ with $Ux = y$ for the upper triangular $U$ whose entry $(i, j)$ is `upper(i, j)`."""
    d = len(y)
    x = [None] * d
    for i in reversed(range(d)):
        s = y[i]
        for j in range(i + 1, d):
            s = s - upper(i, j) * x[j]
        x[i] = s / upper(i, i)
    return jnp.stack(x)


def cho_factor(m, unroll: bool = True):
    """Cholesky factorisation of a small symmetric positive definite matrix, for
    `cho_solve`. The factor is LAPACK's; with `unroll` (and at most `UNROLL_MAX_DIM` rows)
    its entries are kept as scalars so that `cho_solve`'s triangular solves are unrolled
    at trace time, several times faster under `vmap` than XLA:CPU's batched triangular
    solves, at about half a second more compilation per call site: for solves that run
    at every step."""
    d = m.shape[-1]
    if d > UNROLL_MAX_DIM or not unroll:
        return ("lapack", jax.scipy.linalg.cho_factor(m))
    c = jax.scipy.linalg.cho_factor(m, lower=True)[0]
    return ("unrolled", [[c[i, j] for j in range(i + 1)] for i in range(d)])


def cho_solve(fac, b):
    """Solves $m x = b$ with the factor of `cho_factor(m)`."""
    kind, low = fac
    if kind == "lapack":
        return jax.scipy.linalg.cho_solve(low, b)
    # Only the lower triangle's entries (row i: columns 0..i), as `cho_factor` keeps them.
    d = b.shape[-1]
    y = [None] * d
    for i in range(d):
        s = b[i]
        for p in range(i):
            s = s - low[i][p] * y[p]
        y[i] = s / low[i][i]
    return _back_substitute(lambda i, j: low[j][i], y)


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
