import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxflow as jf
from jaxflow import problems


def test_sgd_is_gradient_descent(getkey):
    problem = problems.get("matrix-completion")
    x0 = problem.sample(getkey(), 50, jnp.float64)
    h, n = 0.01, 3000
    res = jf.descend(problem, x0, optax.sgd(h), num_steps=n, time_per_step=h, gtol=0.0)
    grad = jax.jit(jax.vmap(jax.grad(problem.f_flat)))
    x = x0
    for _ in range(n):
        x = x - h * grad(x)
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(x), rtol=1e-12, atol=1e-12)
    assert np.all(np.asarray(res.steps) == n)
    np.testing.assert_allclose(np.asarray(res.t), n * h, rtol=1e-12)
    assert res.meta["kind"] == "discrete"


def test_checkpoints_at_iteration_counts(getkey):
    problem = problems.get("matrix-completion")
    x0 = problem.sample(getkey(), 4, jnp.float64)
    res = jf.descend(problem, x0, optax.sgd(0.01), num_steps=1000, gtol=0.0)
    its = jf.iteration_checkpoints(1000)
    np.testing.assert_array_equal(np.asarray(res.ts), its.astype(float))
    # The recorded f at iteration k equals a direct recomputation (plain gradient steps
    # in a compiled scan: f after each of the 1000 iterations).
    grad = jax.vmap(jax.grad(problem.f_flat))

    def sgd_step(x, _):
        x = x - 0.01 * grad(x)
        return x, jax.vmap(problem.f_flat)(x)

    _, f_after = jax.jit(lambda x: jax.lax.scan(sgd_step, x, None, length=1000))(x0)
    for j, k in enumerate(its):
        if k == 0:
            continue
        np.testing.assert_allclose(np.asarray(res.cp_f[:, j]), np.asarray(f_after[int(k) - 1]),
                                   rtol=1e-10, atol=1e-15)


def test_adam_runs_and_reports_statuses(getkey):
    problem = problems.get("matrix-completion")
    x0 = problem.sample(getkey(), 200, jnp.float32)
    res = jf.descend(problem, x0, optax.adam(1e-2), num_steps=2000)
    assert set(res.counts()) <= {"CONVERGED", "HORIZON"}
    assert len(res) == 200


def test_descend_rejects_bad_input():
    problem = problems.get("matrix-completion")
    with pytest.raises(TypeError, match="GradientTransformation"):
        jf.descend(problem, jnp.zeros((2, 4)), "sgd", num_steps=10)
    with pytest.raises(ValueError, match="num_steps"):
        jf.descend(problem, jnp.zeros((2, 4)), optax.sgd(0.1), num_steps=0)
