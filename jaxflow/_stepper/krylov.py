r"""Fixed-dimension GMRES for the matrix-free implicit steppers.

The implicit steppers solve $(I + h\gamma\nabla^2 f(x))\,y = r$. Above a few dozen
variables the dense Hessian ($O(d^2)$ memory, $O(d^3)$ factorisation per step and
trajectory) dominates everything; GMRES needs only Hessian-vector products, $O(d\,m)$
work and memory for a Krylov dimension $m$.

The matrix is symmetric but indefinite at saddles ($h\gamma\lambda_{\min} < -1$ is
possible), so conjugate gradients may break down; GMRES minimises the residual for any
matrix. The iteration count is fixed: under `vmap` a loop with early exit runs until the
slowest lane has converged anyway, with a `select` on every lane at every iteration, so a
fixed dimension costs no more and keeps the step straight-line code. The caller decides
what to do with the residual (a stepper rejects the step when it is too large).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["gmres"]


def gmres(matvec, b, dim: int):
    r"""$m$ = `dim` steps of GMRES for $A y = b$ from $y_0 = 0$ (no restart).

    Arnoldi with classical Gram–Schmidt applied twice ("CGS2": as accurate as modified
    Gram–Schmidt in float32, and two matrix-vector products with the basis instead of
    $m$ dot products), then the small least-squares problem
    $\min_z \|\beta e_1 - \bar H_m z\|$, solved by SVD so that a lucky breakdown (an exact
    solution in fewer than $m$ steps, leaving zero columns) is harmless.

    **Arguments:**

    - `matvec`: $v \mapsto A v$ on flat vectors.
    - `b`: right-hand side, shape `(d,)`.
    - `dim`: Krylov dimension $m$ (static).

    **Returns:** `(y, residual)`: the approximate solution and the residual vector
    $b - A y$ (from the Arnoldi relation, without another product with $A$).
    """
    d = b.shape[0]
    dtype = b.dtype
    tiny = jnp.finfo(dtype).tiny
    beta = jnp.sqrt(jnp.sum(b * b))
    nonzero = beta > tiny
    q0 = jnp.where(nonzero, b / jnp.where(nonzero, beta, 1.0), 0.0)
    basis = jnp.zeros((dim + 1, d), dtype).at[0].set(q0)
    hess = jnp.zeros((dim + 1, dim), dtype)

    def arnoldi(j, carry):
        basis, hess = carry
        w = matvec(basis[j])
        # Rows of `basis` beyond j are still zero, so they contribute nothing.
        c1 = basis @ w
        w = w - c1 @ basis
        c2 = basis @ w
        w = w - c2 @ basis
        norm = jnp.sqrt(jnp.sum(w * w))
        ok = norm > tiny * jnp.maximum(1.0, jnp.sqrt(jnp.sum(c1 * c1)))
        basis = basis.at[j + 1].set(jnp.where(ok, w / jnp.where(ok, norm, 1.0), 0.0))
        column = (c1 + c2).at[j + 1].set(jnp.where(ok, norm, 0.0))
        hess = hess.at[:, j].set(column)
        return basis, hess

    basis, hess = jax.lax.fori_loop(0, dim, arnoldi, (basis, hess))
    rhs = jnp.zeros((dim + 1,), dtype).at[0].set(beta)
    z = jnp.linalg.lstsq(hess, rhs)[0]
    y = z @ basis[:dim]
    residual = (rhs - hess @ z) @ basis
    return y, residual
