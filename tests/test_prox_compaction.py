"""The prox-linear stepper runs its QP only on the lanes with a candidate kink
(`ProxLinear.batched_step`): the same answers as the QP on every lane, bit for bit, and a
lane's answer does not depend on which other lanes needed the QP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow import problems
from jaxflow._nonsmooth import MinNormOptions, minnorm_field_of

# (4.14): ||XY^T - M||_1, 3x3, rank 1; one object, so the compiled programs are reused.
PROBLEM = problems.get("nonsmooth-factorization", m=3, n=3, r=1, rank_m=1, seed=2)
FIELDS = ("status", "steps", "rejected", "t", "x", "f")
SOLVER = jf.ProxLinear(estimate="midpoint")
H = 1e-2


def _on_kink(x):
    """`x` moved within reach of the kink of residual (0, 0): X_00 Y_00 - M_00 = 1e-5,
    which a step of size H reaches. (Not onto it: at a residual of an ulp, whether
    XLA:CPU fuses the product into an FMA, which depends on the row's position in a
    vectorised batch, decides its sign and with it the natural piece.)"""
    p = PROBLEM.unravel(x)
    m00 = PROBLEM.data["M"][0, 0]
    p = dict(p, X=p["X"].at[0, 0].set((m00 + 1e-5) / p["Y"][0, 0]))
    return PROBLEM.ravel(p)


def _batch(tied, key):
    """A batch of `len(tied)` points, those where `tied` holds on a kink."""
    x = PROBLEM.sample(jax.random.key(key), len(tied), jnp.float64)
    return jnp.where(jnp.asarray(tied)[:, None], jax.vmap(_on_kink)(x), x)


FIELD = minnorm_field_of(PROBLEM, MinNormOptions())


@jax.jit
def _compare(x):
    """One step of size H from every row of `x`, through the compacted QP and through the
    QP on every lane, and the number of candidate kinks per lane."""
    f, v = jax.vmap(FIELD.value_and_velocity)(x)
    h = jnp.full(x.shape[:1], H)
    active = jnp.ones(x.shape[:1], bool)
    compact = SOLVER.batched_step(FIELD, x, f, v, h, None, active)[:5]
    every = jax.vmap(lambda *a: SOLVER.step(FIELD, *a, None))(x, f, v, h)[:5]
    count = jax.vmap(FIELD.prox_screen)(x, h)[2]
    return compact, every, count


def _steps(x):
    compact, every, count = _compare(x)
    return [np.asarray(a) for a in compact], [np.asarray(a) for a in every], np.asarray(count)


def test_compacted_qp_matches_qp_on_every_lane_with_mixed_lanes():
    tied = np.arange(32) % 4 == 0  # 8 of 32 lanes on a kink: the compacted blocks run
    compact, every, count = _steps(_batch(tied, 0))
    assert np.all(count[tied] >= 1) and np.sum(count == 0) >= 16
    for a, b in zip(compact, every, strict=True):
        np.testing.assert_array_equal(a, b)
    # Lanes without a candidate take the natural gradient's step: f1 below f.
    f0 = np.asarray(jax.vmap(PROBLEM.f_flat)(_batch(tied, 0)))
    assert np.all(compact[2][count == 0] < f0[count == 0])


def test_a_lane_does_not_depend_on_which_other_lanes_need_the_qp():
    tied = np.arange(32) % 4 == 0
    x = _batch(tied, 0)
    ref = _steps(x)[0]
    # The same tied lanes among other, all tied neighbours (more than half need the QP:
    # one pass over every lane instead of blocks), in another order.
    others = _batch(np.ones(32, bool), 1)
    perm = np.random.default_rng(0).permutation(32)
    mixed = others.at[perm[:8]].set(x[np.nonzero(tied)[0]])
    got, _, count = _steps(mixed)
    assert np.sum(count > 0) > 16 and np.sum(_steps(x)[2] > 0) <= 16
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a[perm[:8]], b[tied])


def _flow(x0, lanes):
    res = jf.flow(PROBLEM, x0, t1=3.0, solver=SOLVER, lanes=lanes)
    return {k: np.asarray(getattr(res, k)) for k in FIELDS}


@pytest.fixture(scope="module")
def starts():
    # Half the starts on a kink from the beginning, half reaching kinks later.
    return _batch(np.arange(24) % 2 == 0, 3)


def test_nonsmooth_flow_is_batch_independent_and_keeps_the_invariant(starts):
    # One program (32 lanes, compacted QP blocks of 16): the same starts in another
    # order, with other neighbours in each block, give the same trajectories.
    ref = _flow(starts, 32)
    order = np.random.default_rng(1).permutation(len(starts))
    shuffled = _flow(starts[order], 32)
    for k in FIELDS:
        np.testing.assert_array_equal(shuffled[k], ref[k][order], err_msg=k)

    # Proposition 4.5: X^T X - Y^T Y is constant along the flow.
    def inv(x):
        p = PROBLEM.unravel(x)
        return p["X"].T @ p["X"] - p["Y"].T @ p["Y"]

    i0, i1 = np.asarray(jax.vmap(inv)(starts)), np.asarray(jax.vmap(inv)(ref["x"]))
    drift = np.linalg.norm((i1 - i0).reshape(len(i0), -1), axis=1)
    assert np.all(drift <= 1e-12 * np.linalg.norm(i0.reshape(len(i0), -1), axis=1))
    assert np.all(ref["steps"] > 10)
