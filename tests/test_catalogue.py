"""The detectors on the calibration catalogue (small version of
`benchmarks/detector_catalogue.py`), and `extend_undecided`.

The fates are known from the landscapes (closed-form flows, no critical point in reach,
coercivity; `tests/catalogue.py`), checked once with float64 SciPy to 10x the longest
horizon (`benchmarks/results/detector_catalogue_reference.json`).
"""

import functools
import json
import pathlib

import catalogue as C
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf

S = jf.Status
REFERENCE = (
    pathlib.Path(__file__).resolve().parents[1]
    / "benchmarks" / "results" / "detector_catalogue_reference.json"
)
# One or two landscapes per family, the hardest ones (the slowest escapes, the slowest
# convergence from below, late departures); the benchmark runs all of them. (Example 1.1
# is stiff in its valley, a job for the benchmark's implicit solver.)
NAMES = [
    "power-1/8", "remark-3.3", "log-potential", "log-loglog", "log-wobble", "log-rotating",
    "example-4.3", "late-departure-escape", "plateau-escape", "octic-from-below",
    "quartic-ring", "late-departure-minimum",
]


@functools.cache
def catalogue_run():
    """2 starts per landscape, float32, t1 = 1e5 (Tsit5: one program, compiled once)."""
    x0, idx = C.catalogue_starts(2, seed=0, names=NAMES)
    res = jf.flow(C.catalogue_problem(NAMES), jnp.asarray(x0, jnp.float32), t1=1e5,
                  solver=diffrax.Tsit5())
    return x0, idx, res


def test_reference_fates_agree_with_scipy():
    # The committed float64 SciPy check of the landscapes without a closed-form flow.
    ref = json.loads(REFERENCE.read_text())
    assert ref["t_end"] >= 1e6
    for name, entry in ref["landscapes"].items():
        assert entry["agrees_with_catalogue"], name
        if C.BY_NAME[name].fate == C.ESCAPING:
            # Still growing between t_end / 10 and t_end.
            assert np.all(np.array(entry["norm_t_end"]) > np.array(entry["norm_t_end_over_10"]))


def test_catalogue_has_the_required_families():
    families = {ls.family for ls in C.LANDSCAPES}
    assert len(C.LANDSCAPES) >= 20
    for fam in ("power escape", "log escape", "log escape (wobble)", "log escape (rotating)",
                "f -> -inf", "degenerate minimum", "late saddle departure",
                "plateau then escape"):
        assert fam in families, fam


def test_catalogue_confusion():
    x0, idx, res = catalogue_run()
    fates = C.reference_fates(x0, idx)
    st = np.asarray(jf.classify(res).status)
    esc = fates == C.ESCAPING
    names = np.array([C.LANDSCAPES[i].name for i in idx])
    caught = np.isin(st, (S.ESCAPING, S.ESCAPED))
    # Never wrong: no escaping trajectory BOUNDED/CONVERGED, no bounded one ESCAPING.
    wrong = esc & np.isin(st, (S.BOUNDED, S.CONVERGED))
    assert not wrong.any(), sorted(set(names[wrong]))
    assert not (~esc & caught).any(), sorted(set(names[~esc & caught]))
    # Every escape of the catalogue is decided by t1 = 1e5 (the goal is 95 %).
    c = jf.classify(res)
    assert caught[esc].all(), [
        (n, float(g), float(p), float(b))
        for n, g, p, b in zip(
            names, c.deceleration, c.velocity_exponent, c.value_exponent, strict=True
        )
        if n in set(names[esc & ~caught])
    ]
    # Earlier horizons: undecided at worst, never wrong.
    for T in (1e3, 1e4):
        st_T = np.asarray(jf.classify(res, horizon=T).status)
        assert not (esc & np.isin(st_T, (S.BOUNDED, S.CONVERGED))).any(), T
        assert not (~esc & np.isin(st_T, (S.ESCAPING, S.ESCAPED))).any(), T


def test_log_escape_with_wobble():
    # The case: x ~ log t + 2 log log t with its rate modulated by a factor 2,
    # y tracking sin x, f -> 0. The per-checkpoint rules called none ESCAPING at 1e5
    # (float32 stops it as CONVERGED at ||v|| <= 1e-4, t ~ 3e4, and the re-check failed).
    x0, idx, res = catalogue_run()
    m = np.array([C.LANDSCAPES[i].name == "log-wobble" for i in idx])
    c = jf.classify(res[m])
    assert np.all(np.asarray(c.status) == S.ESCAPING)
    assert np.all(np.asarray(c.log_growth))
    # Growth rate of the norm increments: 0 for log t (2 log log t adds about 0.03).
    assert np.all(np.abs(np.asarray(c.deceleration)) < 0.1)
    # f -> 0 at infinity; f at the stop time is about 1e-4 (f ~ x^2 e^-x ~ (log t)^2 / t).
    # The wobbling tail is too noisy to extrapolate: the limit is the final value, an
    # upper bound within 1e-4 of the true limit 0.
    lim = np.asarray(c.limit_value)
    f_end = np.asarray(res.f)[m]
    assert np.all((lim >= 0) & (lim <= f_end) & (f_end < 2e-4))


@pytest.fixture(scope="module")
def exp_flow():
    # f = e^-x: x(t) = log(t + e^x0). At t1 = 5 there is less history than the detectors
    # need (2 decades after the first checkpoint 0.1), so every trajectory is UNDECIDED.
    p = jf.Problem(lambda x: jnp.exp(-x[0]), dim=1)
    x0 = jnp.array([[0.0], [1.0], [2.0]], jnp.float64)
    kw = dict(t1=5.0, solver=diffrax.Tsit5())
    return x0, jf.flow(p, x0, **kw), jf.flow(p, x0, extend_undecided=1e3, **kw)


def test_extend_undecided(exp_flow):
    x0, short, ext = exp_flow
    assert np.all(np.asarray(jf.classify(short).status) == S.UNDECIDED)
    assert short.decided_at is None
    c = jf.classify(ext)
    assert np.all(np.asarray(c.status) == S.ESCAPING)
    # Continued a decade at a time (to the first checkpoint at or after 50, then 500) and
    # decided there: x0 = 0, 1 after one decade; x0 = 2 (x ~ log(t + 7.4), still flat at
    # the start of its tail) one decade later.
    dec = np.asarray(ext.decided_at)
    assert np.all((dec[:2] >= 50) & (dec[:2] < 70)), dec
    assert 500 <= dec[2] < 1e3, dec
    np.testing.assert_allclose(np.asarray(ext.t), dec)
    # The continuation is the same trajectory: closed form at every checkpoint and at t.
    ts = np.asarray(ext.ts)
    np.testing.assert_allclose(ts[: short.ts.shape[0]], np.asarray(short.ts))
    exact = np.log(ts[None, :] + np.exp(np.asarray(x0)))
    cp = np.asarray(ext.cp_norm)
    seen = np.isfinite(cp)
    np.testing.assert_allclose(cp[seen], exact[seen], rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(ext.x[:, 0]), np.log(np.asarray(ext.t) + np.exp(np.asarray(x0[:, 0]))),
        rtol=1e-5,
    )
    assert ext.meta["extend_undecided"] == 1e3
    tab = jf.trajectory_table(ext, c)
    np.testing.assert_array_equal(tab["decided_at"], dec)
    np.testing.assert_array_equal(jf.trajectory_table(short)["decided_at"], 5.0)


def test_extend_undecided_uses_the_given_detector_options(exp_flow):
    # Three decades of history (t >= 100 after the first checkpoint 0.1) before any
    # verdict: the trajectories decided at ~50 with the defaults are continued past it.
    x0, _, ext = exp_flow
    p = jf.Problem(lambda x: jnp.exp(-x[0]), dim=1)
    strict = jf.DetectorOptions(tail_decades=3.0, min_tail_decades=3.0)
    ext3 = jf.flow(p, x0, t1=5.0, solver=diffrax.Tsit5(), extend_undecided=1e3,
                   detector_options=strict)
    assert np.all(np.asarray(ext.decided_at)[:2] < 70)
    assert np.all(np.asarray(ext3.decided_at) >= 500), ext3.decided_at
    with pytest.raises(TypeError, match="detector_options"):
        jf.flow(p, x0, t1=5.0, extend_undecided=1e3, detector_options={"margin": 2.0})


def test_extend_undecided_report_states_it(exp_flow):
    _, _, ext = exp_flow
    p = jf.Problem(lambda x: jnp.exp(-x[0]), dim=1)
    rep = jf.Report.from_flow(p, ext)
    assert "continued to" in rep.evidence and "3 decided there" in rep.evidence


def test_extend_undecided_bad_input():
    with pytest.raises(ValueError, match="extend_undecided"):
        jf.FlowOptions(t1=10.0, extend_undecided=5.0)
    with pytest.raises(ValueError, match="extend_undecided"):
        jf.FlowOptions(t1=10.0, extend_undecided=float("inf"))
    opts = jf.FlowOptions(t1=10.0, extend_undecided=1e3)
    spec = opts.to_spec(jf.Problem(lambda x: jnp.sum(x**2), dim=1), jnp.float32)
    assert jf.FlowOptions.from_spec(spec).extend_undecided == 1e3


def test_classify_cost_is_one_program():
    # Thresholds are traced: changing the margin does not recompile.
    from jaxflow._detect import _classify_arrays

    _, _, res = catalogue_run()
    jf.classify(res)
    size = _classify_arrays._cache_size()
    jf.classify(res, margin=9.0, recent_growth=0.5)
    assert _classify_arrays._cache_size() == size
    assert jax.tree.leaves(jf.DetectorOptions(margin=9.0))  # a pytree of traced thresholds


def test_fast_convergence_is_not_an_escape():
    # Example 1.1, float32, t1 = 2e4 (seed 0 of the paper acceptance benchmark, N = 5000):
    # 11 starts that reach a global minimum by t ~ 11, their norm rising and f falling
    # fast on the way. Over the two decades before the stop a rising norm and a falling f
    # fit the escape models; the velocity exponent (p ~ 4.4, exponential convergence)
    # rules it out. These series are committed: the case was a bounded -> ESCAPING
    # (limit -inf) error of an early version of the model selection.
    d = np.load(pathlib.Path(__file__).parent / "data" / "example_1_1_fast_convergence.npz")
    c = jf.classify_arrays(d["ts"], d["cp_norm"], d["cp_f"], d["cp_stat"], d["norm"], d["f"],
                           d["stationarity"], d["t"], d["status"])
    assert np.all(np.asarray(c.status) == S.CONVERGED)
    np.testing.assert_array_equal(np.asarray(c.limit_value), d["f"])
    assert np.all(np.asarray(c.velocity_exponent) > 3)


def test_late_saddle_departure_into_a_minimum_is_not_an_escape():
    # Matrix sensing, float32, the paper acceptance benchmark at full size (start 1158 of
    # 2000): ||x|| jumps from 3.46 to 3.73 at t ~ 10 (leaving a saddle) and the flow
    # stops at t = 25.7 by stationarity, f = 1.4e-8 (a global minimum). Over its tail the
    # norm grew and f settled like an escape, and the half-window velocity slope (p = 3.05,
    # standard error large from the bump) allowed a divergent path; over the last quarter
    # window ||v|| collapses (p > 2), which no escape does.
    d = json.loads((pathlib.Path(__file__).parent / "data" / "late_saddle_departure.json")
                   .read_text())
    row = lambda k: np.asarray([d[k]], np.float32)  # noqa: E731
    args = (np.asarray(d["ts"], np.float32), row("cp_norm"), row("cp_f"), row("cp_stat"),
            row("norm"), row("f"), row("stationarity"), row("t"),
            np.asarray([d["status"]], np.int8))
    assert int(jf.classify_arrays(*args).status[0]) == S.CONVERGED
    # The rule is what decides it: without it the tail is a complete escape signature.
    loose = jf.DetectorOptions(recent_velocity_exponent=1e9)
    assert int(jf.classify_arrays(*args, options=loose).status[0]) == S.ESCAPING
