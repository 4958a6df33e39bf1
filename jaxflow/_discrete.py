"""Discrete trajectories: the same engine driven by an optax `GradientTransformation`.

`x_{k+1} = x_k + u_k` with `u_k, s_{k+1} = optimizer.update(v(x_k), s_k, x_k)`, so
`optax.sgd(h)` is explicit Euler on the flow with step `h` (the paper's Figure 1 uses
gradient descent with step 0.01), and `optax.adam(...)` asks whether Adam gets stuck at
infinity where the flow does not.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax

from ._field import AbstractField
from ._field_choice import field_for
from ._flow import FlowResult, _default_lanes, _Engine, _run_jit, default_gtol
from ._problem import Problem
from ._status import Status

__all__ = ["descend", "iteration_checkpoints"]


def iteration_checkpoints(num_steps: int, per_decade: int = 8) -> np.ndarray:
    """`[0, 1, ..., num_steps]` thinned to about `per_decade` counts per decade."""
    if not (isinstance(num_steps, (int, np.integer)) and num_steps >= 1):
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
    n = max(2, int(math.ceil(per_decade * math.log10(max(num_steps, 10)))) + 1)
    its = np.unique(np.round(np.geomspace(1, num_steps, n)).astype(np.int64))
    return np.concatenate([[0], its])


def descend(
    problem: Problem,
    x0,
    optimizer: optax.GradientTransformation,
    *,
    num_steps: int,
    time_per_step: float = 1.0,
    gtol: float | None = None,
    escape_radius: float = 1e6,
    checkpoints_per_decade: int = 8,
    lanes: int | None = None,
    stop_at_convergence: bool = True,
    field: AbstractField | None = None,
) -> FlowResult:
    r"""Runs `num_steps` iterations of `optimizer` from every row of `x0`.

    Same result type and statuses as `jaxflow.flow`; `t` is
    `iterations * time_per_step` (pass the learning rate of `optax.sgd` to compare
    with the flow's time), `steps` counts iterations, and the checkpoints sit at
    log-spaced iteration counts. For a nonsmooth problem the optimizer receives the
    minimal-norm subgradient; `field` replaces the problem's own field (as in
    `jaxflow.flow`).

    The optimizer is part of the compiled program: reuse the same object across calls
    (`opt = optax.sgd(0.01)` once), since a fresh `optax.sgd(0.01)` is a new function
    and recompiles.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"descend: `problem` must be a jaxflow.Problem, got {type(problem).__name__}.")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"descend: `optimizer` must be an optax.GradientTransformation, got {optimizer!r}."
        )
    if not time_per_step > 0:
        raise ValueError(f"descend: time_per_step must be positive, got {time_per_step!r}.")
    xs = problem.flatten_batch(x0)
    n = int(xs.shape[0])
    dtype = xs.dtype
    cp_iters = iteration_checkpoints(num_steps, checkpoints_per_decade)
    gtol = default_gtol(dtype) if gtol is None else float(gtol)
    from ._flow import _Controller

    lanes = min(_default_lanes(n) if lanes is None else int(lanes), n)
    engine = _Engine(
        field=field_for(problem) if field is None else field,
        stepper=None,
        ctrl=_Controller(adaptive=False, dt0=float(time_per_step)),
        lanes=lanes,
        max_steps=int(num_steps) + 1,
        stop_at_convergence=bool(stop_at_convergence),
        optimizer=optimizer,
    )
    ts = cp_iters.astype(np.float64) * float(time_per_step)
    out, iterations = _run_jit(
        engine, xs, jnp.asarray(ts, dtype), jnp.asarray(gtol, dtype),
        jnp.asarray(escape_radius, dtype), jnp.asarray(cp_iters, jnp.int32),
        jnp.asarray(time_per_step, dtype),
    )
    status = out["status"]
    if not stop_at_convergence:
        status = jnp.where(
            (status == Status.HORIZON) & (out["stat"] <= gtol), jnp.int8(Status.CONVERGED), status
        )
    meta = dict(
        solver=f"optax:{getattr(optimizer, '__name__', type(optimizer).__name__)}",
        controller="discrete",
        time_per_step=float(time_per_step),
        num_steps=int(num_steps),
        gtol=gtol,
        escape_radius=float(escape_radius),
        t1=float(ts[-1]),
        dtype=str(jnp.dtype(dtype)),
        kind="discrete",
    )
    return FlowResult(
        x=out["x"], f=out["f"], stationarity=out["stat"], status=status, t=out["t"],
        steps=out["steps"], rejected=out["rejected"], path_length=out["path"],
        ts=jnp.asarray(ts, dtype), cp_norm=out["cp_norm"], cp_f=out["cp_f"],
        cp_stat=out["cp_stat"], iterations=iterations, lanes=lanes, meta=meta,
    )
