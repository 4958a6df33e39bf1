"""The tail of the queue continues in narrower programs (`jaxflow._engine.run`): a few long
trajectories no longer run with all other lanes masked, and their results are those of
the wide program, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow import _engine, problems

# Whether a trajectory's arithmetic depends on its batch is a property of how XLA
# vectorises: tested with the code generation users get (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("default_codegen")

FIELDS = (
    "status", "steps", "rejected", "t", "x", "f", "stationarity", "path_length", "cp_norm",
    "cp_f", "cp_stat", "cp_x",
)
PROBLEM = problems.get("matrix-completion")  # one object: its compiled programs are reused


def _flow(x0, narrow, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(_engine, "NARROW_TAIL", narrow)
        m.setattr(_engine, "NARROW_FROM", 64)
        m.setattr(_engine, "RENT_TAIL", False)  # narrow at once (see the rent tests below)
        res = jf.flow(PROBLEM, x0, t1=2e3, lanes=64, save_states=32)
    return res


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
def test_narrowed_tail_gives_identical_results(dtype, monkeypatch):
    # Example 1.1: most starts converge within tens of steps, the escaping valley runs to
    # t1; rows 0 .. 31 include long ones, so the saved states cover moved trajectories.
    x0 = jax.random.uniform(jax.random.key(7), (300, 4), dtype, -1.0, 1.0)
    wide = _flow(x0, False, monkeypatch)
    narrowed = _flow(x0, True, monkeypatch)
    st = np.asarray(wide.status)
    assert np.sum(st == jf.Status.HORIZON) > 0 and np.sum(st == jf.Status.CONVERGED) > 0
    assert np.any(st[:32] == jf.Status.HORIZON)
    for k in FIELDS:
        np.testing.assert_array_equal(
            np.asarray(getattr(narrowed, k)), np.asarray(getattr(wide, k)), err_msg=k
        )
    # Narrowing happened, and the masked-out work it saves shows in the efficiency; the
    # loop iterations, summed over the programs, are those of the wide program.
    assert wide.lane_iterations is None
    assert int(narrowed.iterations) == int(wide.iterations)
    assert narrowed.lane_iterations < wide.lanes * int(wide.iterations)
    assert wide.lockstep_efficiency < narrowed.lockstep_efficiency <= 1


def test_narrowed_programs_are_cached(monkeypatch, compilations):
    # 64 lanes: the ladder of narrower programs is one rung (16 lanes); this tail reaches
    # it. Once every rung is compiled, no call of the same shapes compiles anything.
    x0 = jax.random.uniform(jax.random.key(8), (300, 4), jnp.float64, -1.0, 1.0)
    before = compilations()
    res = _flow(x0, True, monkeypatch)
    assert compilations() - before <= 3  # none if an earlier test compiled these shapes
    assert res.lane_iterations < res.lanes * int(res.iterations)  # the rung was reached
    before = compilations()
    _flow(x0 * 0.999, True, monkeypatch)
    _flow(x0[::-1], True, monkeypatch)
    assert compilations() == before


def test_narrowed_tail_deep_linear_identical(monkeypatch):
    # Matrix products: XLA:CPU rounds differently below a SIMD vector of lanes, which is
    # why the ladder stops at `NARROW_MIN_LANES`.
    problem = problems.get("deep-linear")
    x0 = problem.sample(jax.random.key(1), 128, jnp.float64)
    results = []
    for narrow in (False, True):
        monkeypatch.setattr(_engine, "NARROW_TAIL", narrow)
        monkeypatch.setattr(_engine, "NARROW_FROM", 64)
        monkeypatch.setattr(_engine, "RENT_TAIL", False)
        results.append(jf.flow(problem, x0, t1=100.0, lanes=64))
    wide, narrowed = results
    for k in FIELDS[:-1]:
        np.testing.assert_array_equal(
            np.asarray(getattr(narrowed, k)), np.asarray(getattr(wide, k)), err_msg=k
        )
    assert narrowed.lane_iterations < wide.lanes * int(wide.iterations)


# ------------------------------------------------------------- the error control's floor
def test_error_control_has_a_rounding_floor():
    """Errors at the rounding level of float32 pass (`atol` far below eps |x| means
    nothing for a component near 0, computed from terms of the state's size); errors
    above it do not; float64 keeps the tolerances as asked."""
    from jaxflow._controller import PIDControl

    ctrl = PIDControl(rtol=1e-6, atol=1e-8)
    for dtype in (jnp.float32, jnp.float64):
        x = jnp.asarray([[1.5, -2.0, 3e-9, 0.7]], dtype)
        eps = float(jnp.finfo(dtype).eps)
        noise = jnp.full_like(x, 5 * eps)  # a few ulps of the state's size, every component
        big = jnp.full_like(x, 1e-5)
        got = float(ctrl.scaled_error(x, x, noise)[0])
        if dtype == jnp.float32:
            assert got < 1
        else:  # 5 eps against atol 1e-8 on the third component: still far below 1
            assert got < 1e-5
        assert float(ctrl.scaled_error(x, x, big)[0]) > 1


def test_float32_trajectory_at_the_rounding_floor_takes_the_float64_step_count():
    # Deep linear, seed 1, start 6688 of the README scan's chunk 0: before the floor, 20,650
    # accepted and 15,111 rejected steps in float32 (float64: 152 and 4).
    problem = problems.get("deep-linear")
    x = problem.sample(jax.random.fold_in(jax.random.key(1), 0), 6689, jnp.float32)[6688]
    out = {}
    for dtype in (jnp.float32, jnp.float64):
        res = jf.flow(problem, jnp.tile(x.astype(dtype), (16, 1)), t1=2e4, lanes=16)
        assert res.counts() == {"CONVERGED": 16}
        out[dtype] = res
    work = {k: int(r.steps[0]) + int(r.rejected[0]) for k, r in out.items()}
    assert work[jnp.float32] <= 2 * work[jnp.float64], work
    np.testing.assert_allclose(float(out[jnp.float32].f[0]), float(out[jnp.float64].f[0]),
                               rtol=1e-5)


def _priced(monkeypatch, price):
    """Every narrower program costs `price` seconds (inf: never worth it; 0: at hand)."""
    real = _engine._price
    monkeypatch.setattr(_engine, "_price", lambda *a: (real(*a)[0], price))
    monkeypatch.setattr(_engine, "_RENT", {})


def test_tail_rents_its_width_until_the_narrower_program_is_worth_it(monkeypatch, compilations):
    # Rent or buy (`_engine.RENT_TAIL`): a narrower program that is not at hand is used
    # only once the tail has cost its price at the current width, in slices of the same
    # program. Wherever the slices end and whichever width runs the tail, every result is
    # bit for bit that of narrowing at once.
    x0 = jax.random.uniform(jax.random.key(7), (300, 4), jnp.float64, -1.0, 1.0)
    at_once = _flow(x0, True, monkeypatch)
    monkeypatch.setattr(_engine, "NARROW_FROM", 64)
    for price in (float("inf"), 0.0, 1e-4):
        _priced(monkeypatch, price)
        before = compilations()
        rented = jf.flow(PROBLEM, x0, t1=2e3, lanes=64, save_states=32)
        for k in FIELDS:
            np.testing.assert_array_equal(
                np.asarray(getattr(rented, k)), np.asarray(getattr(at_once, k)), err_msg=k
            )
        assert int(rented.iterations) == int(at_once.iterations)
        full = rented.lanes * int(rented.iterations)
        if price == float("inf"):  # never narrowed: every iteration at 64 lanes, in slices
            assert rented.lane_iterations == full
            assert compilations() == before  # the 64-lane program exists already
            assert len(_engine._RENT) == 1 and next(iter(_engine._RENT.values())) > 0
        elif price == 0.0:  # narrowed at once, as without rent
            assert rented.lane_iterations == at_once.lane_iterations
        else:  # a first slice of rent, then narrowed
            assert at_once.lane_iterations < rented.lane_iterations < full


def test_rent_ledgers_are_bounded(monkeypatch):
    # Their keys keep objectives alive: a sweep through many problems must not grow them
    # without bound. Forgetting only costs another rent or compilation.
    monkeypatch.setattr(_engine, "_CALLED", {("old", i) for i in range(_engine._LEDGER_MAX)})
    x0 = jax.random.uniform(jax.random.key(9), (32, 4), jnp.float64, -1.0, 1.0)
    res = jf.flow(PROBLEM, x0, t1=10.0, lanes=16)
    assert len(_engine._CALLED) == 1 and not any(k[0] == "old" for k in _engine._CALLED)
    assert res.counts()  # the flow itself is unaffected
