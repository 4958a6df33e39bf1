r"""Fixed-dimension Krylov solves for the matrix-free implicit steppers: GMRES, and a
space shared by several right-hand sides with the same matrix.

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

A Rosenbrock step solves with one matrix six times. `KrylovSpace` keeps every product
made for one solve for the next ones (`space_add` a right-hand side, `space_solve` in the
space without a product, `space_expand` by one product): the minimal-residual solution
over the whole space, as in GCRO-type recycling (de Sturler 1996; Parks et al. 2006).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

__all__ = [
    "KrylovSpace",
    "gmres",
    "krylov_space",
    "space_add",
    "space_expand",
    "space_grow",
    "space_solve",
]


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
    # A zero right-hand side leaves H zero, whose least-squares solution is z = 0 (some jax
    # versions' SVD-based lstsq return NaN for an all-zero matrix).
    z = jnp.where(nonzero, jnp.linalg.lstsq(hess, rhs)[0], 0.0)
    y = z @ basis[:dim]
    residual = (rhs - hess @ z) @ basis
    return y, residual


# --- A Krylov space shared by several solves with the same matrix ------------------------
#
# Rosenbrock stages solve with one matrix A = I + h gamma H and six right-hand sides. The
# space is kept as an orthonormal basis V (rows of `basis`) and the products of A with
# some combinations of it ("expanded" vectors P = E^T V) written in that basis:
# A E^T V = G^T V, i.e. A P_j = sum_i G[i, j] V_i. Every right-hand side is added to the
# basis first (its component outside V), so r = V^T c exactly; then any y = P^T z has the
# residual r - A y = V^T (c - G z), and minimising it is a small least-squares problem in
# G, kept as G = Q R (Gram-Schmidt on its columns, one column per product) with R^{-1}
# updated column by column, so a solve in the space is two small matrix-vector products
# and no product with A. Rows, columns and counts are fixed when the step is traced:
# unused rows of V are zero and unused columns of R^{-1} the identity's, so they
# contribute nothing.


class KrylovSpace(NamedTuple):
    """Orthonormal basis and products with $A$ of a space shared by several solves."""

    basis: Array  # (n_max, d): orthonormal rows V, zero beyond the ones in use
    expanded: Array  # (n_max, k_max): E, the vectors multiplied by A are E^T V
    q: Array  # (n_max, k_max): orthonormal columns, G = Q R (A E^T V = G^T V)
    r_inv: Array  # (k_max, k_max): R^{-1}, upper triangular, identity beyond the products


def _orthogonalise(basis, w):
    """`w` minus its projection on the rows of `basis` (classical Gram-Schmidt twice),
    and the coefficients of that projection."""
    c1 = basis @ w
    w = w - c1 @ basis
    c2 = basis @ w
    return w - c2 @ basis, c1 + c2


def _dependent(norm, scale, dtype):
    # A component this small relative to the vector it came from is rounding noise:
    # normalising it would put a direction that is not orthogonal to the basis into it.
    return norm <= 16 * jnp.finfo(dtype).eps * scale


def krylov_space(d: int, n_max: int, k_max: int, dtype) -> KrylovSpace:
    """An empty space for at most `n_max` basis vectors and `k_max` products in $R^d$."""
    return KrylovSpace(
        basis=jnp.zeros((n_max, d), dtype),
        expanded=jnp.zeros((n_max, k_max), dtype),
        q=jnp.zeros((n_max, k_max), dtype),
        r_inv=jnp.eye(k_max, dtype=dtype),
    )


def space_grow(space: KrylovSpace, n_max: int, k_max: int) -> KrylovSpace:
    """The same space with room for `n_max` basis vectors and `k_max` products.

    The work of every product grows with the rows of the basis, so a space is grown stage
    by stage rather than allocated for the whole step at once.
    """
    dn, dk = n_max - space.basis.shape[0], k_max - space.r_inv.shape[0]
    eye = jnp.eye(k_max, dtype=space.r_inv.dtype)
    return KrylovSpace(
        basis=jnp.pad(space.basis, ((0, dn), (0, 0))),
        expanded=jnp.pad(space.expanded, ((0, dn), (0, dk))),
        q=jnp.pad(space.q, ((0, dn), (0, dk))),
        r_inv=eye.at[: k_max - dk, : k_max - dk].set(space.r_inv),
    )


def space_add(space: KrylovSpace, n, b):
    """Adds the component of `b` outside the basis as basis vector `n`.

    **Returns:** `(space, c)` with $b = V^T c$ (to rounding).
    """
    w, c = _orthogonalise(space.basis, b)
    norm = jnp.sqrt(jnp.sum(w * w))
    new = ~_dependent(norm, jnp.sqrt(jnp.sum(b * b)), b.dtype)
    basis = space.basis.at[n].set(jnp.where(new, w / jnp.where(new, norm, 1.0), 0.0))
    return space._replace(basis=basis), c.at[n].set(jnp.where(new, norm, 0.0))


def space_expand(space: KrylovSpace, n, k, e, matvec):
    r"""Product number `k`: multiplies $p = V^T e$ by $A$ and adds the component of $Ap$
    outside the basis as basis vector `n` (one Arnoldi step when $e$ is a unit vector).

    **Returns:** `(space, g)`: the space, and $g$ with $Ap = V^T g$ (so $p^T A p = e^T g$
    for a unit $e$).
    """
    w = matvec(e @ space.basis)
    w, c = _orthogonalise(space.basis, w)
    norm = jnp.sqrt(jnp.sum(w * w))
    scale = jnp.sqrt(jnp.sum(c * c) + norm * norm)
    new = ~_dependent(norm, scale, w.dtype)
    basis = space.basis.at[n].set(jnp.where(new, w / jnp.where(new, norm, 1.0), 0.0))
    g = c.at[n].set(jnp.where(new, norm, 0.0))
    # Next column of G = Q R, by Gram-Schmidt (twice) in the small space, and the next
    # column of R^{-1}: [[R, s], [0, rho]]^{-1} = [[R^{-1}, -R^{-1} s / rho], [0, 1 / rho]].
    # A column that depends on the earlier ones (A applied to a zero or repeated vector)
    # gets a zero column of Q and a unit one of R, so its coefficient in every solve is 0.
    s1 = g @ space.q
    u = g - space.q @ s1
    s2 = u @ space.q
    u = u - space.q @ s2
    rho = jnp.sqrt(jnp.sum(u * u))
    independent = ~_dependent(rho, scale, w.dtype)
    rho = jnp.where(independent, rho, 1.0)
    q = space.q.at[:, k].set(jnp.where(independent, u / rho, 0.0))
    column = jnp.where(independent, -(space.r_inv @ (s1 + s2)) / rho, 0.0).at[k].set(1.0 / rho)
    space = KrylovSpace(
        basis=basis,
        expanded=space.expanded.at[:, k].set(e),
        q=q,
        r_inv=space.r_inv.at[:, k].set(column),
    )
    return space, g


def space_solve(space: KrylovSpace, c):
    r"""Minimal-residual solution of $Ay = V^T c$ over the products made so far.

    **Returns:** `(y, e)`: the solution $y = P^T z$ and the coefficients $e = c - Gz$ of
    its residual $V^T e$ (no product with $A$).
    """
    t = c @ space.q
    z = space.r_inv @ t
    y = (space.expanded @ z) @ space.basis
    return y, c - space.q @ t
