"""Hessian reuse in the ESDIRK stepper (`Kvaerno5` above `REUSE_MIN_DIM` variables).

References: the same stepper with a fresh Hessian at every step, and SciPy's Radau in
float64; and the rules that keep a trajectory's steps a function of its own history.
"""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import jaxflow as jf
from jaxflow import problems
from jaxflow._field import GradientField
from jaxflow._stepper.esdirk import REUSE_MIN_DIM, ESDIRKStepper

# Rank-2 completion of a 10 x 10 matrix (d = 40 >= REUSE_MIN_DIM), float64.
PROBLEM = problems.get("matrix-completion-nxn", n=10, r=2, rate=0.35, seed=0)
T1 = 10.0


def _stepper(reuse):
    return ESDIRKStepper(diffrax.Kvaerno5(), rtol=1e-6, atol=1e-8, reuse_hessian=reuse)


X0 = PROBLEM.sample(jax.random.key(5), 32, jnp.float64)
PERM = np.random.default_rng(0).permutation(32)


@functools.cache
def _flow(reuse, lanes=16, shuffled=False):
    x0 = X0[PERM] if shuffled else X0
    return jf.flow(PROBLEM, x0, t1=T1, solver=_stepper(reuse), lanes=lanes)


def test_reuse_is_on_above_the_threshold_only():
    st = ESDIRKStepper(diffrax.Kvaerno5())
    assert PROBLEM.dim >= REUSE_MIN_DIM
    assert st.init(jnp.zeros(REUSE_MIN_DIM)) is not None
    assert st.init(jnp.zeros(REUSE_MIN_DIM - 1)) is None
    with pytest.raises(ValueError, match="refresh_rate"):
        ESDIRKStepper(diffrax.Kvaerno5(), refresh_rate=0.0)
    with pytest.raises(ValueError, match="newton_iters"):
        ESDIRKStepper(diffrax.Kvaerno5(), newton_iters=0)
    with pytest.raises(ValueError, match="max_age"):
        ESDIRKStepper(diffrax.Kvaerno5(), max_age=0)


def test_reused_hessians_give_the_fresh_hessian_trajectories():
    """Same statuses, and end points within the tolerance's reach of each other and of
    SciPy's Radau at rtol 1e-11 (the chord iteration converges to the same stage values
    with an older Hessian)."""
    x0 = X0
    fresh, reused = _flow(False), _flow(True)
    # The Hessians were reused: the iterates differ (within the tolerance, below).
    assert not np.array_equal(np.asarray(fresh.x), np.asarray(reused.x))
    np.testing.assert_array_equal(np.asarray(fresh.status), np.asarray(reused.status))
    assert set(np.asarray(reused.status).tolist()) <= {int(jf.Status.HORIZON), int(jf.Status.CONVERGED)}
    grad = jax.jit(jax.grad(PROBLEM.f_flat))
    hess = jax.jit(jax.hessian(PROBLEM.f_flat))
    for i in range(2):
        ref = scipy.integrate.solve_ivp(
            lambda t, x: -np.asarray(grad(jnp.asarray(x))), (0.0, T1), np.asarray(x0[i]),
            method="Radau", rtol=1e-11, atol=1e-13,
            jac=lambda t, x: -np.asarray(hess(jnp.asarray(x))),
        ).y[:, -1]
        for res in (fresh, reused):
            np.testing.assert_allclose(np.asarray(res.x[i]), ref, rtol=1e-4, atol=1e-5)
    # Reuse changes the steps taken, not their number much.
    n_fresh, n_reused = int(np.sum(np.asarray(fresh.steps))), int(np.sum(np.asarray(reused.steps)))
    assert abs(n_reused - n_fresh) <= 0.2 * n_fresh


def test_a_trajectory_does_not_depend_on_its_batch():
    """A lane's Hessians are computed when its own history asks for them, in blocks of
    the lanes that need one: statuses, step counts and end points do not depend on the
    lane count or the order of the starts."""
    a, b, c = _flow(True), _flow(True, lanes=32), _flow(True, lanes=32, shuffled=True)
    inv = np.argsort(PERM)
    for other, idx in ((b, slice(None)), (c, inv)):
        np.testing.assert_array_equal(np.asarray(a.status), np.asarray(other.status)[idx])
        np.testing.assert_array_equal(np.asarray(a.steps), np.asarray(other.steps)[idx])
        np.testing.assert_allclose(np.asarray(a.x), np.asarray(other.x)[idx], rtol=1e-12)


def test_a_rejected_step_keeps_a_fresh_hessian_and_replaces_an_old_one():
    st = _stepper(True)
    field = GradientField(PROBLEM.f_flat)
    step = jax.jit(lambda x, f, v, h, s: st.step(field, x, f, v, h, s))
    x = PROBLEM.sample(jax.random.key(1), 1, jnp.float64)[0]
    f, v = field.value_and_velocity(x)
    state = st.init(x)
    h = jnp.float64(1e3)  # far too large: the chord iteration fails with any Hessian
    *_, ok, s1 = step(x, f, v, h, state)
    kept = st.rejected_state(state, s1)
    vecs, vals = np.asarray(kept["vecs"]), np.asarray(kept["vals"])
    np.testing.assert_allclose((vecs * vals) @ vecs.T, np.asarray(field.jacobian(x)), atol=1e-12)
    assert int(kept["age"]) == 0 and not bool(kept["refresh"])
    # An old Hessian (here a wrong one): after a rejected step it is recomputed.
    old = dict(state, vecs=jnp.eye(PROBLEM.dim), vals=jnp.zeros(PROBLEM.dim),
               age=jnp.int32(1), refresh=jnp.array(False))
    *_, ok, s2 = step(x, f, v, jnp.float64(0.5), old)
    assert not bool(ok)
    assert bool(st.rejected_state(old, s2)["refresh"])
    # Accepted steps age the Hessian; a poorly contracting chord iteration refreshes it.
    *_, ok, s3 = step(x, f, v, jnp.float64(1e-4), s1)
    assert bool(ok) and int(s3["age"]) == 1 and not bool(s3["refresh"])
