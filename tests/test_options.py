"""`FlowOptions`: validated once, the same run whichever way it is given, spec round trip."""

from __future__ import annotations

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow import problems
from jaxflow._controller import ConstantStep, PIDControl
from jaxflow._json import canonical_json


def test_controller_parsed_once_into_the_engine_rule():
    opts = jf.FlowOptions(t1=10.0, stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-7))
    assert isinstance(opts.control, PIDControl)
    assert (opts.control.rtol, opts.control.atol) == (1e-5, 1e-7)
    const = jf.FlowOptions(t1=1.0, stepsize_controller=diffrax.ConstantStepSize(), dt0=0.1)
    assert const.control == ConstantStep(dt0=0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(t1=-1.0), "t1 must be a positive finite"),
        (dict(t1=1.0, escape_radius=0.0), "escape_radius"),
        (dict(t1=1.0, max_steps=0), "max_steps"),
        (dict(t1=1.0, gtol=-1.0), "gtol"),
        (dict(t1=1.0, lanes=0), "lanes"),
        (dict(t1=1.0, save_states=-2), "save_states"),
        (dict(t1=1.0, checkpoints_per_decade=2.5), "checkpoints_per_decade"),
        (dict(t1=1.0, stepsize_controller=diffrax.ConstantStepSize()), "dt0"),
        (dict(t1=1.0, solver="NoSuchSolver"), "unknown diffrax solver"),
        (dict(t1=1.0, stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8, dtmin=1e-3)),
         "dtmin"),
        (dict(t1=1.0, stepsize_controller=diffrax.PIDController(rtol=float("nan"), atol=1e-8)),
         "rtol"),
        (dict(t1=1.0, stepsize_controller=diffrax.PIDController(rtol=-1.0, atol=1e-8)), "rtol"),
        (dict(t1=1.0, stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=float("inf"))),
         "atol"),
        (dict(t1=1.0, dt0=-1.0), "dt0"),
    ],
)
def test_bad_options_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jf.FlowOptions(**kwargs)


def test_options_object_and_keywords_give_the_same_run(getkey):
    problem = problems.get("matrix-completion")
    x0 = problem.sample(getkey(), 32, jnp.float64)
    opts = jf.FlowOptions(t1=50.0, solver=jf.Rodas4(), gtol=1e-7)
    a = jf.flow(problem, x0, opts)
    b = jf.flow(problem, x0, t1=50.0, solver=jf.Rodas4(), gtol=1e-7)
    c = jf.flow(problem, x0, opts.replace(t1=1.0), t1=50.0)  # keywords override the object
    for other in (b, c):
        np.testing.assert_array_equal(np.asarray(a.x), np.asarray(other.x))
        np.testing.assert_array_equal(np.asarray(a.status), np.asarray(other.status))
    assert a.meta["solver"] == "Rodas4" and a.meta["gtol"] == 1e-7


@pytest.mark.parametrize(
    "options",
    [
        jf.FlowOptions(t1=2e4),
        jf.FlowOptions(t1=10.0, solver=jf.Rodas4(), gtol=1e-3, lanes=64, t_first=0.5,
                       stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-6,
                                                                 dtmax=2.0)),
        jf.FlowOptions(t1=5.0, solver=diffrax.Tsit5(), dt0=0.01,
                       stepsize_controller=diffrax.ConstantStepSize(), stop_at_convergence=False),
        jf.FlowOptions(t1=5.0, solver=jf.ProxLinear(estimate="midpoint")),
    ],
)
def test_spec_round_trip(options):
    problem = problems.get("matrix-completion")
    spec = options.to_spec(problem, jnp.float32)
    canonical_json(spec)  # JSON-able as it stands
    back = jf.FlowOptions.from_spec(spec)
    assert back.to_spec(problem, jnp.float32) == spec
    assert back.control == options.control
    assert type(back.stepper(problem)) is type(options.stepper(problem))
    assert spec["gtol"] == (1e-4 if options.gtol is None else options.gtol)


def test_auto_solver_is_recorded_resolved():
    opts = jf.FlowOptions(t1=1.0)
    assert opts.to_spec(problems.get("matrix-completion"), jnp.float64)["solver"] == (
        "jaxflow.Rodas4"
    )
    assert opts.to_spec(problems.get("nonsmooth-factorization"), jnp.float64)["solver"] == (
        "jaxflow.ProxLinear"
    )
    # A stepper's non-default parameters are recorded with it.
    assert jf.FlowOptions(t1=1.0, solver=jf.ProxLinear(estimate="midpoint")).to_spec(
        problems.get("nonsmooth-factorization"), jnp.float64
    )["solver"] == {"class": "jaxflow.ProxLinear", "params": {"estimate": "midpoint"}}
