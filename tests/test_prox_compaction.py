"""The prox-linear stepper runs its QP only on the lanes with a candidate kink
(`ProxLinear.batched_step`): the same answers as the QP on every lane, bit for bit, and a
lane's answer does not depend on which other lanes needed the QP; nor, at a point exactly on
a kink, on the rounding of its batch."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import jaxflow as jf
from jaxflow import problems
from jaxflow._nonsmooth import MinNormOptions, minnorm_field_of

# (4.14): ||XY^T - M||_1, 3x3, rank 1; one object, so the compiled programs are reused.
PROBLEM = problems.get("nonsmooth-factorization", m=3, n=3, r=1, rank_m=1, seed=2)
FIELDS = ("status", "steps", "rejected", "t", "x", "f")
SOLVER = jf.ProxLinear(estimate="midpoint")
H = 1e-2


def _on_kink(x, offset=1e-5):
    """`x` moved within reach of the kink of residual (0, 0): X_00 Y_00 - M_00 = `offset`,
    which a step of size H reaches; `offset=0` puts it on the kink (a residual of 0 or
    an ulp, whose sign depends on whether XLA:CPU fuses the product into an FMA)."""
    p = PROBLEM.unravel(x)
    m00 = PROBLEM.data["M"][0, 0]
    p = dict(p, X=p["X"].at[0, 0].set((m00 + offset) / p["Y"][0, 0]))
    return PROBLEM.ravel(p)


def _batch(tied, key):
    """A batch of `len(tied)` points, those where `tied` holds on a kink."""
    x = PROBLEM.sample(jax.random.key(key), len(tied), jnp.float64)
    return jnp.where(jnp.asarray(tied)[:, None], jax.vmap(_on_kink)(x), x)


FIELD = minnorm_field_of(PROBLEM, MinNormOptions())


@jax.jit
def _compare(x):
    """One step of size H from every row of `x`, through the compacted QP and through the
    QP on every lane, the number of candidate kinks per lane, and the exact field."""
    f, v = jax.vmap(FIELD.value_and_velocity)(x)
    h = jnp.full(x.shape[:1], H)
    active = jnp.ones(x.shape[:1], bool)
    compact = SOLVER.batched_step(FIELD, x, f, v, h, None, active)[:5]
    every = jax.vmap(lambda *a: SOLVER.step(FIELD, *a, None))(x, f, v, h)[:5]
    count = jax.vmap(FIELD.prox_screen)(x, h)[2]
    return compact, every, count, v


def _steps(x):
    compact, every, count, _ = _compare(x)
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


# ------------------------------------------------------------------- exact kink ties
def _reference_minnorm(x, tie=1e-12):
    r"""The minimal-norm element of $\partial\|XY^T - M\|_1$ at `x` by scipy (float64):
    Clarke's chain rule for this convex composite, $\{\sum_{ij} s_{ij}\nabla R_{ij}\}$ with
    $s_{ij} = \operatorname{sign} R_{ij}$, or $s_{ij} \in [-1, 1]$ where $|R_{ij}| \le$ `tie`:
    a box-constrained least-squares problem."""
    p = PROBLEM.unravel(jnp.asarray(x))
    xm, ym = np.asarray(p["X"]), np.asarray(p["Y"])
    r = xm @ ym.T - PROBLEM.data["M"]
    fixed, free = np.zeros(x.shape), []
    for (i, j), rij in np.ndenumerate(r):
        dx, dy = np.zeros_like(xm), np.zeros_like(ym)
        dx[i], dy[j] = ym[j], xm[i]
        grad = np.asarray(PROBLEM.ravel({"X": jnp.asarray(dx), "Y": jnp.asarray(dy)}))
        if abs(rij) <= tie:
            free.append(grad)
        else:
            fixed += np.sign(rij) * grad
    a = np.stack(free, axis=1)
    s = so.lsq_linear(a, -fixed, bounds=(-1.0, 1.0), method="bvls", tol=1e-15).x
    return fixed + a @ s


@functools.partial(jax.jit, static_argnames="estimates")
def _at_ties(x, estimates):
    """The exact field (`value_and_velocity`, the engine's first evaluation) and its QP
    gap, and one ProxLinear step of size H of each estimate, from every row (and with one
    row, the prox-linear velocity)."""
    f, v = jax.vmap(FIELD.value_and_velocity)(x)
    h = jnp.full(x.shape[:1], H)
    active = jnp.ones(x.shape[:1], bool)
    out = dict(v=v, gap=jax.vmap(lambda y: FIELD._solve(y)["gap"])(x))
    if len(x) == 1:
        out["v_h"] = jax.vmap(FIELD.prox_selection)(x, h)[1]
    for est in estimates:
        out[est] = jf.ProxLinear(estimate=est).batched_step(FIELD, x, f, v, h, None, active)[:5]
    return out


def test_exact_kink_tie_gives_one_answer_in_every_batch_and_it_is_the_minimal_norm_one():
    # X_00 = M_00 / Y_00 in float64: the residual R_00 is 0 or an ulp, and XLA:CPU computes
    # its sign with or without an FMA depending on the kernel and the row's position. The
    # natural piece must not follow that sign: the field and the step are the same in a
    # batch of 1, 16 or 32 rows at any position, bit for bit, and right.
    ties = np.asarray(jax.vmap(lambda y: _on_kink(y, 0.0))(PROBLEM.sample(jax.random.key(0), 4)))
    free = np.asarray(PROBLEM.sample(jax.random.key(5), 32))
    for x in ties[1:3]:  # two whose batched answers used to differ (ties[0, 3] did not)
        one = jax.tree.map(lambda a: np.asarray(a)[0], _at_ties(x[None], ("euler", "midpoint")))
        ref = _reference_minnorm(x)
        bound = np.sqrt(2 * one.pop("gap")) + 1e-13 * np.linalg.norm(ref)
        assert np.linalg.norm(one["v"] - ref) <= bound
        # Only this kink is within reach of the step, and it is on its manifold (no
        # switching cost): the prox-linear velocity is the same minimal-norm element.
        np.testing.assert_allclose(one.pop("v_h"), ref, rtol=0, atol=1e-13)
        # 16 rows, neighbours all tied (one QP pass over every lane), the Euler estimate;
        # 32 rows, free neighbours (compacted QP blocks, and the QP on every lane), the
        # midpoint one. (The estimates differ only in the error they report.)
        for n in (16, 32):
            for pos in (0, n // 2 - 1, n - 1):
                batch = ties[[1, 2, 3] * 6][:16] if n == 16 else free.copy()
                batch[pos] = x
                if n == 16:
                    got = _at_ties(batch, ("euler",))
                    got = {"v": got["v"], "euler": got["euler"]}
                else:
                    compact, every, _, v = _compare(batch)
                    got = {"v": v, "midpoint": compact, "every lane": every}
                got = jax.tree.map(lambda a, i=pos: np.asarray(a)[i], got)
                want = {k: one["midpoint" if k == "every lane" else k] for k in got}
                jax.tree.map(np.testing.assert_array_equal, got, want)


def test_flow_from_exact_kink_ties_is_batch_independent():
    # Every start on the kink: 16 lanes against 32, and shuffled.
    starts = jax.vmap(lambda y: _on_kink(y, 0.0))(PROBLEM.sample(jax.random.key(3), 24))
    ref = _flow(starts, 32)
    order = np.random.default_rng(2).permutation(len(starts))
    runs = ((_flow(starts, 16), np.arange(len(starts))), (_flow(starts[order], 32), order))
    for got, perm in runs:
        for k in FIELDS:
            np.testing.assert_array_equal(got[k], ref[k][perm], err_msg=k)


# --------------------------------------------------------------------------- few kinks
def test_few_tied_kinks_solve_a_small_qp_with_the_same_answers():
    """A ReLU network has more kinks (here 4 x 40 = 160) than `few_kinks` slots; lanes
    with at most `few_kinks` candidate kinks solve the QP over that many slots (with
    tiers, over the smallest tier that holds them). Same statuses and step counts as the
    QP over all `max_active` slots, end points to rounding (float64), and a lane's
    answer does not depend on the lanes around it. With rtol 1e-3 the steps reach
    0 to 4 kinks (161, 44, 19, 5 and 2 of the steps), so every tier and the full QP
    are used."""
    tiers = (1, 2)
    p = problems.get("mlp", widths=[2, 4, 1], activation="relu", n_samples=40)
    x0 = p.sample(jax.random.key(3), 16, jnp.float64)
    kw = dict(t1=0.2, lanes=16, stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-8))
    small = jf.flow(p, x0, solver=jf.ProxLinear(few_kinks=tiers), **kw)
    full = jf.flow(p, x0, solver=jf.ProxLinear(few_kinks=0), **kw)
    np.testing.assert_array_equal(np.asarray(small.status), np.asarray(full.status))
    np.testing.assert_array_equal(np.asarray(small.steps), np.asarray(full.steps))
    np.testing.assert_allclose(np.asarray(small.x), np.asarray(full.x), rtol=1e-9, atol=1e-11)
    perm = np.random.default_rng(0).permutation(16)
    shuffled = jf.flow(p, x0[perm], solver=jf.ProxLinear(few_kinks=tiers), **kw)
    np.testing.assert_array_equal(np.asarray(shuffled.x), np.asarray(small.x)[perm])


def test_few_kinks_tiers_are_validated_and_normalised():
    assert jf.ProxLinear().few_kinks == (16,)
    assert jf.ProxLinear(few_kinks=0).few_kinks == ()
    assert jf.ProxLinear(few_kinks=(64, 16, 0)).few_kinks == (16, 64)
    for bad in (-1, (16, -2), "16", 1.5, True):
        with pytest.raises(ValueError, match="few_kinks"):
            jf.ProxLinear(few_kinks=bad)
