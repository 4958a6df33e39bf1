"""A trajectory's result is a function of its start alone: not of the lane count, the
batch it runs in, or its position in the batch. And the engine rules this rests on: a
step lands on a checkpoint instead of leaving a zero-length remainder, a non-finite
trial is a rejected step, a failing implicit solve is not NONFINITE, and the unrolled
LU pivots.

Regression: start 89988 of the README's scan of Example 1.1 (float32) was NONFINITE with
1024 lanes and CONVERGED with 256 lanes.
"""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow import problems
from jaxflow._stepper import AbstractStepper
from jaxflow._linalg import lu_factor, lu_solve

# Whether a trajectory's arithmetic depends on its batch is a property of how XLA
# vectorises: tested with the code generation users get (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("default_codegen")

N = 2000
T1 = 2e4
REPORTED = np.array([0.6504092, 0.11223507, -0.5236714, 0.7368407], np.float32)
FIELDS = ("status", "steps", "rejected", "t", "x", "f")
DTYPES = [jnp.float32, jnp.float64]
PROBLEM = problems.get("matrix-completion")  # one object: its compiled programs are reused


@functools.cache
def _starts(dtype):
    """Example 1.1's uniform starts in [-1, 1]^4, with the reported start as row 0."""
    x0 = jax.random.uniform(jax.random.key(20230), (N, 4), dtype, -1.0, 1.0)
    return x0.at[0].set(jnp.asarray(REPORTED, dtype))


@functools.cache
def _run(dtype, lanes, order=None):
    x0 = _starts(dtype) if order is None else _starts(dtype)[np.array(order)]
    res = jf.flow(PROBLEM, x0, t1=T1, lanes=lanes)
    return {k: np.asarray(getattr(res, k)) for k in FIELDS}


def _assert_same(a, b):
    for k in FIELDS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_lane_count_does_not_change_results(dtype):
    # 1024 lanes of d = 4 cross XLA:CPU's 4096-element threshold for YNNPACK reductions,
    # which used to change the rounding; 2 to 512 lanes compile alike. (One lane:
    # `test_start_alone_matches_start_in_batch`; 2000 starts on one lane take 10 s.)
    _assert_same(_run(dtype, 1024), _run(dtype, 64))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_order_does_not_change_results(dtype):
    order = np.random.default_rng(0).permutation(N)
    shuffled = _run(dtype, 64, tuple(order))
    ref = _run(dtype, 64)
    _assert_same(shuffled, {k: v[order] for k, v in ref.items()})


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_start_alone_matches_start_in_batch(dtype):
    # A single start runs on one requested lane, which XLA used to fuse differently, and
    # its batch of one is below the YNNPACK threshold that a batch of 2000 crosses.
    batch = _run(dtype, 64)
    for i in range(32):  # one compiled program for all
        alone = jf.flow(PROBLEM, _starts(dtype)[i : i + 1], t1=T1)
        _assert_same({k: np.asarray(getattr(alone, k)) for k in FIELDS},
                     {k: v[i : i + 1] for k, v in batch.items()})


@pytest.mark.parametrize("lanes", [256, 1024])
def test_reported_start_converges(lanes):
    x0 = jnp.tile(jnp.asarray(REPORTED)[None], (N, 1))
    res = jf.flow(PROBLEM, x0, t1=T1, lanes=lanes)
    assert res.counts() == {"CONVERGED": N}
    assert int(_run(jnp.float32, 64)["status"][0]) == jf.Status.CONVERGED


@pytest.mark.parametrize("solver", [diffrax.Kvaerno5(), jf.Rodas4(), diffrax.Tsit5()],
                         ids=["Kvaerno5", "Rodas4", "Tsit5"])
def test_step_that_rounds_onto_a_checkpoint_lands_on_it(solver):
    # In float32, 25 steps of this size from t = 0 give t = 0.1 exactly (the first
    # checkpoint) although the 25th step is shorter than what remained. The engine
    # used to take a zero-length step next: 0/0 in the implicit stages, NONFINITE.
    dt0 = 0.003999998793005943
    h, tau, checkpoint = np.float32(dt0), np.float32(0.0), np.float32(0.1)
    for _ in range(24):
        tau = np.float32(tau + h)
    assert h < checkpoint - tau and np.float32(tau + h) == checkpoint
    p = jf.Problem(lambda x: 0.5 * jnp.sum(x**2), dim=1)
    res = jf.flow(p, jnp.array([[1.0], [2.0]], jnp.float32), t1=1.0, t_first=0.1,
                  solver=solver, stepsize_controller=diffrax.ConstantStepSize(), dt0=dt0,
                  gtol=0.0)
    assert res.counts() == {"HORIZON": 2}
    np.testing.assert_allclose(np.asarray(res.t), 1.0)
    np.testing.assert_allclose(np.asarray(res.x)[:, 0], np.exp(-1.0) * np.array([1, 2]),
                               rtol=1e-5)


class _FailingSolve(AbstractStepper):
    """Explicit Euler that reports a failed implicit solve on every step."""

    @property
    def error_order(self):
        return 1

    @property
    def name(self):
        return "FailingSolve"

    def step(self, field, x, f, v, h, state):
        x1 = x - h * v
        f1, v1 = field.value_and_velocity(x1)
        return x1, jnp.zeros_like(x), f1, v1, jnp.array(False), state


def test_failing_implicit_solve_is_max_steps_not_nonfinite():
    p = PROBLEM
    x0 = jnp.asarray(REPORTED, jnp.float64)[None]
    res = jf.flow(p, x0, t1=10.0, solver=_FailingSolve())
    assert int(res.status[0]) == jf.Status.MAX_STEPS
    assert int(res.steps[0]) == 0 and int(res.rejected[0]) > 0
    np.testing.assert_array_equal(np.asarray(res.x), np.asarray(x0))


def test_nonfinite_trial_is_a_rejected_step():
    # f is NaN below x = -0.5; a step of 3 from x = 1 overshoots there and is retried.
    p = jf.Problem(lambda x: jnp.where(x[0] > -0.5, 0.5 * x[0] ** 2, jnp.nan), dim=1)
    res = jf.flow(p, jnp.array([[1.0]]), t1=50.0, solver=diffrax.Tsit5(), dt0=3.0)
    assert int(res.status[0]) == jf.Status.CONVERGED
    assert int(res.rejected[0]) >= 1


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_unrolled_lu_pivots(dtype):
    # I + h*gamma*H with H indefinite: the (0, 0) entry vanishes, the matrix is regular.
    h_gamma = 0.25
    hess = np.array([[-4.0, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0.5], [0, 0, 0.5, -1]])
    m = np.eye(4) + h_gamma * hess
    assert m[0, 0] == 0.0 and np.linalg.cond(m) < 100
    b = np.array([1.0, -2.0, 0.5, 3.0])
    x = np.asarray(lu_solve(lu_factor(jnp.asarray(m, dtype)), jnp.asarray(b, dtype)))
    tol = 1e-5 if dtype == jnp.float32 else 1e-13
    np.testing.assert_allclose(x, np.linalg.solve(m, b), rtol=tol, atol=tol)
    rng = np.random.default_rng(0)
    for d in (2, 3, 5, 12):
        m = rng.standard_normal((d, d))
        m[0, 0] = 0.0
        b = rng.standard_normal(d)
        x = np.asarray(lu_solve(lu_factor(jnp.asarray(m, dtype)), jnp.asarray(b, dtype)))
        resid = np.linalg.norm(m @ x - b) / (np.linalg.norm(m) * np.linalg.norm(x))
        assert resid < 50 * d * np.finfo(dtype).eps


def test_partial_simd_vectors_do_not_change_results():
    # Deep linear (d = 24, LAPACK LU): 1 or 17 starts, or 40 lanes, used to give
    # other last bits than a batch of 64 (XLA:CPU computes a partial SIMD vector of lanes
    # or starts with other code); lanes and starts now come in whole vectors.
    # float64: where the differences showed (float32 agreed on these starts).
    p = problems.get("deep-linear")
    x0 = p.sample(jax.random.key(3), 64, jnp.float64)
    batch = jf.flow(p, x0, t1=50.0)
    runs = {
        "alone": (jf.flow(p, x0[2:3], t1=50.0), slice(2, 3)),
        "17 starts": (jf.flow(p, x0[:17], t1=50.0), slice(0, 17)),
        "40 starts, 40 lanes": (jf.flow(p, x0[:40], t1=50.0, lanes=40), slice(0, 40)),
    }
    for what, (res, rows) in runs.items():
        for name in ("status", "steps", "rejected", "x", "f", "t"):
            np.testing.assert_array_equal(
                np.asarray(getattr(res, name)), np.asarray(getattr(batch, name))[rows],
                err_msg=f"{what}: {name}",
            )
