"""The unrolled dense linear algebra (`jaxflow._linalg`) against NumPy/SciPy in float64 and
float32, and the compaction that orders rows by their predicted cost (`jaxflow._compact`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sl

from jaxflow._compact import compact, on_rows
from jaxflow._linalg import UNROLL_MAX_DIM, cho_factor, cho_solve

DTYPES = [jnp.float32, jnp.float64]


def _face_matrix(rng, d, k, free):
    """The active-set QP's face matrix: J^T J (rank <= d) on the free coordinates, a ridge
    of 1e-13 (float64) of its mean diagonal there, and 1 on the bound ones."""
    jac = rng.standard_normal((d, k))
    h = jac.T @ jac * np.outer(free, free)
    scale = np.trace(h) / max(free.sum(), 1)
    return h + np.diag(np.where(free, 1e-13 * scale, 1.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("d", [1, 2, 5, 9, UNROLL_MAX_DIM, UNROLL_MAX_DIM + 1])
def test_cholesky_solves_like_scipy(d, dtype):
    # Unrolled triangular solves up to UNROLL_MAX_DIM, LAPACK's above.
    rng = np.random.default_rng(d)
    a = rng.standard_normal((d, d + 3))
    m = a @ a.T + 0.1 * np.eye(d)  # well conditioned, SPD
    b = rng.standard_normal(d)
    fac = cho_factor(jnp.asarray(m, dtype))
    assert fac[0] == ("unrolled" if d <= UNROLL_MAX_DIM else "lapack")
    x = np.asarray(cho_solve(fac, jnp.asarray(b, dtype)), np.float64)
    ref = sl.cho_solve(sl.cho_factor(m), b)
    eps = np.finfo(dtype).eps
    tol = 50 * d * eps * np.linalg.cond(m)
    np.testing.assert_allclose(x, ref, rtol=tol, atol=tol * np.linalg.norm(ref))
    if fac[0] == "unrolled":
        low = np.zeros((d, d))
        for i, row in enumerate(fac[1]):
            low[i, : i + 1] = [float(e) for e in row]
        np.testing.assert_allclose(low, np.linalg.cholesky(m), rtol=tol, atol=tol)


def test_cholesky_of_rank_deficient_faces_is_backward_stable():
    # More slots than dimensions (k = 9 > d = 6, as for ||XY^T - M||_1 at its minimum): the
    # face matrix is singular up to the ridge, condition ~1e13, yet the unrolled solves are
    # backward stable, as LAPACK's, and both agree to what the conditioning allows.
    rng = np.random.default_rng(0)
    for trial in range(20):
        free = rng.uniform(size=9) < 0.7
        m = _face_matrix(rng, 6, 9, free)
        b = rng.standard_normal(9) * free
        x = np.asarray(cho_solve(cho_factor(jnp.asarray(m)), jnp.asarray(b)))
        resid = np.linalg.norm(m @ x - b) / (np.linalg.norm(m, 2) * np.linalg.norm(x))
        assert resid < 100 * np.finfo(np.float64).eps, trial
        ref = sl.cho_solve(sl.cho_factor(m), b)
        err = np.linalg.norm(x - ref) / np.linalg.norm(ref)
        assert err < 1e3 * np.finfo(np.float64).eps * np.linalg.cond(m), trial


def test_cholesky_under_vmap_matches_one_at_a_time():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((64, 9, 12))
    m = jnp.asarray(a @ np.swapaxes(a, 1, 2))
    b = jnp.asarray(rng.standard_normal((64, 9)))
    batched = np.asarray(jax.jit(jax.vmap(lambda m, b: cho_solve(cho_factor(m), b)))(m, b))
    one = np.stack([np.asarray(cho_solve(cho_factor(m[i]), b[i])) for i in range(64)])
    np.testing.assert_allclose(batched, one, rtol=1e-12)


# ------------------------------------------------------------------- compaction by cost
def test_compact_orders_needed_rows_by_key_then_position():
    mask = jnp.array([True, False, True, True, False, True, True])
    key = jnp.array([3, 0, 1, 3, 9, 0, 1])
    order, count, slot = compact(mask, key)
    assert int(count) == 5
    np.testing.assert_array_equal(np.asarray(order)[:5], [5, 2, 6, 0, 3])
    # `slot` inverts `order` on the needed rows.
    np.testing.assert_array_equal(np.asarray(slot)[np.asarray(order)[:5]], np.arange(5))
    # Without a key: in order of position, as before.
    order, count, slot = compact(mask)
    np.testing.assert_array_equal(np.asarray(order)[:5], [0, 2, 3, 5, 6])


def _loop_rows(cost, x):
    """A row whose work is `cost` iterations of a `while_loop` (as the active-set QP)."""

    def body(c):
        i, y = c
        return i + 1, jnp.sin(y) + 0.5 * y

    return jax.lax.while_loop(lambda c: c[0] < cost, body, (jnp.int32(0), x))[1]


@pytest.mark.parametrize("share", [0.4, 0.8])  # blocks; one pass over every row
@pytest.mark.parametrize("whole_pass", [False, True])
def test_on_rows_by_cost_gives_each_row_its_own_answer(share, whole_pass):
    rng = np.random.default_rng(2)
    n = 64
    cost = jnp.asarray(rng.integers(0, 30, n), jnp.int32)
    x = jnp.asarray(rng.standard_normal((n, 3)))
    need = jnp.asarray(rng.uniform(size=n) < share)
    fallback = jnp.full((n, 3), -7.0)
    exact = np.where(np.asarray(need)[:, None], np.asarray(jax.vmap(_loop_rows)(cost, x)), -7.0)

    @jax.jit
    def run(cost_key):
        return on_rows(_loop_rows, (cost, x), need, fallback, whole_pass=whole_pass, cost=cost_key)

    by_cost = np.asarray(run(cost))
    by_position = np.asarray(jax.jit(
        lambda: on_rows(_loop_rows, (cost, x), need, fallback, whole_pass=whole_pass)
    )())
    np.testing.assert_array_equal(by_cost, by_position)
    np.testing.assert_allclose(by_cost, exact, rtol=1e-14)
