r"""`flow` and `descend`: integrate many trajectories, return a `FlowResult`.

`flow` integrates the continuous flow $x' = -v(x)$ with a stepper and a step-size
controller; `descend` runs an optax optimiser through the same engine (`jaxflow._engine`),
as one more stepper with one iteration per step. Both take a `jaxflow.FlowOptions` (their
keyword arguments are shorthands for its fields) and return the same `FlowResult`.
"""

from __future__ import annotations

import math
from typing import Unpack

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._controller import IterationCount, PIDControl
from ._engine import MIN_LANES, Engine, default_lanes, run
from ._field import AbstractField
from ._field_choice import field_for
from ._options import FlowOptions, FlowShorthands
from ._problem import Problem
from ._status import Status, status_counts
from ._stepper import OptaxStepper

__all__ = ["flow", "descend", "FlowResult", "iteration_checkpoints"]


# --------------------------------------------------------------------------- result
class FlowResult(eqx.Module):
    r"""Per-trajectory outcome of `jaxflow.flow` (leading axis: trajectories).

    - `x`: final point (flat, `(n, d)`; `problem.unravel(x[i])` gives the pytree);
    - `f`: $f$ at the final point; `stationarity`: $\|v\|$ there;
    - `status`: `jaxflow.Status` codes (int8);
    - `t`: time reached; `steps`, `rejected`: accepted / rejected steps;
    - `path_length`: $\sum \|x_{k+1} - x_k\|$ over accepted steps;
    - `ts` `(K,)`: checkpoint times (`ts[0] = 0`, log-spaced after);
    - `cp_norm`, `cp_f`, `cp_stat` `(n, K)`: $\|x\|$, $f$, $\|v\|$ at the checkpoints,
      NaN after the trajectory stopped;
    - `iterations`, `lanes`: loop iterations and lane count (for lockstep efficiency);
    - `cp_x` `(S, K, d)` or `None`: the flat states of the first `S = save_states`
      trajectories at the checkpoints (NaN after the trajectory stopped), to check
      conserved quantities and bounds along trajectories. Selecting trajectories
      (`res[mask]`) drops it.
    """

    x: jax.Array
    f: jax.Array
    stationarity: jax.Array
    status: jax.Array
    t: jax.Array
    steps: jax.Array
    rejected: jax.Array
    path_length: jax.Array
    ts: jax.Array
    cp_norm: jax.Array
    cp_f: jax.Array
    cp_stat: jax.Array
    iterations: jax.Array
    lanes: int = eqx.field(static=True)
    meta: dict = eqx.field(static=True, default_factory=dict)
    cp_x: jax.Array | None = None

    def __len__(self):
        return int(self.f.shape[0])

    @property
    def norm(self):
        return jnp.linalg.norm(self.x, axis=-1)

    @property
    def lockstep_efficiency(self) -> float:
        """Useful steps / (lanes x loop iterations): 1.0 means no masked-out work."""
        it = int(self.iterations)
        if it == 0:
            return 1.0
        used = int(np.sum(np.asarray(self.steps, np.int64) + np.asarray(self.rejected)))
        return used / (self.lanes * it)

    def counts(self) -> dict[str, int]:
        """Number of trajectories per status name."""
        return status_counts(self.status)

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {
            k: np.asarray(getattr(self, k))
            for k in (
                "x", "f", "stationarity", "status", "t", "steps", "rejected", "path_length",
                "ts", "cp_norm", "cp_f", "cp_stat",
            )
        }

    def __getitem__(self, idx) -> FlowResult:
        """Selects trajectories (`res[mask]`, `res[:10]`)."""
        per_traj = dict(
            x=self.x[idx], f=self.f[idx], stationarity=self.stationarity[idx],
            status=self.status[idx], t=self.t[idx], steps=self.steps[idx],
            rejected=self.rejected[idx], path_length=self.path_length[idx],
            cp_norm=self.cp_norm[idx], cp_f=self.cp_f[idx], cp_stat=self.cp_stat[idx],
        )
        return FlowResult(
            ts=self.ts, iterations=self.iterations, lanes=self.lanes, meta=self.meta, **per_traj
        )


# --------------------------------------------------------------------------- entry points
def _flat_starts(problem, x0, caller: str):
    if not isinstance(problem, Problem):
        raise TypeError(
            f"{caller}: `problem` must be a jaxflow.Problem, got {type(problem).__name__}."
        )
    xs = problem.flatten_batch(x0)
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(
            f"{caller}: x0 has dtype {xs.dtype}; pass floating-point starts (float32 or float64)."
        )
    if int(xs.shape[0]) == 0:
        raise ValueError(f"{caller}: x0 has no rows.")
    return xs


def _integrate(engine: Engine, xs, ts, gtol, escape_radius, cp_iters, meta) -> FlowResult:
    """Runs the compiled engine and packs its outputs into a `FlowResult`."""
    dtype = xs.dtype
    out, iterations = run(
        engine, xs, jnp.asarray(ts, dtype), jnp.asarray(gtol, dtype),
        jnp.asarray(escape_radius, dtype),
        None if cp_iters is None else jnp.asarray(cp_iters, jnp.int32),
    )
    status = out["status"]
    if not engine.stop_at_convergence:
        status = jnp.where(
            (status == Status.HORIZON) & (out["stat"] <= gtol), jnp.int8(Status.CONVERGED), status
        )
    return FlowResult(
        x=out["x"], f=out["f"], stationarity=out["stat"], status=status, t=out["t"],
        steps=out["steps"], rejected=out["rejected"], path_length=out["path"],
        ts=jnp.asarray(ts, dtype), cp_norm=out["cp_norm"], cp_f=out["cp_f"],
        cp_stat=out["cp_stat"], iterations=iterations, lanes=engine.lanes, meta=meta,
        cp_x=out.get("cp_x"),
    )


def flow(
    problem: Problem,
    x0,
    options: FlowOptions | None = None,
    *,
    field: AbstractField | None = None,
    **shorthands: Unpack[FlowShorthands],
) -> FlowResult:
    r"""Integrates $x'(t) = -v(x(t))$ from every row of `x0` up to time `t1`.

    **Arguments:**

    - `problem`: a `jaxflow.Problem`.
    - `x0`: starts, `(n, d)` flat (or a pytree batched along a leading axis), float32 or
      float64 — the run uses this dtype.
    - `options`: a `jaxflow.FlowOptions`; the keyword arguments below are shorthands for
      its fields (and override them when both are given): `t1` (required), `solver`,
      `stepsize_controller`, `dt0`, `gtol`, `escape_radius`, `max_steps`,
      `checkpoints_per_decade`, `t_first`, `lanes`, `stop_at_convergence`, `save_states`.
    - `field`: the vector field to integrate (default: $\nabla f$, or for a nonsmooth
      problem the minimal-norm Clarke subgradient, `jaxflow.MinNormField`; pass
      `MinNormField.for_problem(problem, fallback="bundle")` for kinks jaxflow cannot read).

    **Returns:** a `jaxflow.FlowResult`.
    """
    opts = FlowOptions.build(options, shorthands, caller="flow")
    xs = _flat_starts(problem, x0, "flow")
    n = int(xs.shape[0])
    ts = opts.checkpoint_times()
    dtype = xs.dtype
    gtol_value = opts.gtol_for(dtype)
    stepper = opts.stepper(problem)
    n_lanes = max(min(default_lanes(n, dim=problem.dim) if opts.lanes is None
                      else int(opts.lanes), n), MIN_LANES)
    engine = Engine(
        field=field_for(problem) if field is None else field,
        stepper=stepper,
        controller=opts.control,
        lanes=n_lanes,
        max_steps=int(opts.max_steps),
        stop_at_convergence=bool(opts.stop_at_convergence),
        save_states=min(int(opts.save_states), n),
    )
    control = opts.control
    adaptive = isinstance(control, PIDControl)
    meta = dict(
        solver=stepper.name,
        controller="pid" if adaptive else "constant",
        rtol=control.rtol if adaptive else None,
        atol=control.atol if adaptive else None,
        dt0=control.dt0,
        gtol=gtol_value,
        escape_radius=float(opts.escape_radius),
        t1=float(opts.t1),
        max_steps=int(opts.max_steps),
        dtype=str(jnp.dtype(dtype)),
        kind="flow",
    )
    return _integrate(engine, xs, ts, gtol_value, opts.escape_radius, None, meta)


def iteration_checkpoints(num_steps: int, per_decade: int = 8) -> np.ndarray:
    """`[0, 1, ..., num_steps]` thinned to about `per_decade` counts per decade."""
    if not (isinstance(num_steps, (int, np.integer)) and num_steps >= 1):
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
    n = max(2, int(math.ceil(per_decade * math.log10(max(num_steps, 10)))) + 1)
    its = np.unique(np.round(np.geomspace(1, num_steps, n)).astype(np.int64))
    return np.concatenate([[0], its])


# The `FlowOptions` fields that apply to an optimiser (no solver, controller or horizon).
_DESCEND_OPTIONS = frozenset(
    {"gtol", "escape_radius", "checkpoints_per_decade", "lanes", "stop_at_convergence"}
)


def descend(
    problem: Problem,
    x0,
    optimizer: optax.GradientTransformation,
    *,
    num_steps: int,
    time_per_step: float = 1.0,
    options: FlowOptions | None = None,
    field: AbstractField | None = None,
    **shorthands: Unpack[FlowShorthands],
) -> FlowResult:
    r"""Runs `num_steps` iterations of `optimizer` from every row of `x0`.

    Same result type and statuses as `jaxflow.flow`; `t` is
    `iterations * time_per_step` (pass the learning rate of `optax.sgd` to compare
    with the flow's time), `steps` counts iterations, and the checkpoints sit at
    log-spaced iteration counts. For a nonsmooth problem the optimizer receives the
    minimal-norm subgradient. Of `options` (or the keyword shorthands), `gtol`,
    `escape_radius`, `checkpoints_per_decade`, `lanes` and `stop_at_convergence` apply.

    The optimizer is part of the compiled program: reuse the same object across calls
    (`opt = optax.sgd(0.01)` once), since a fresh `optax.sgd(0.01)` is a new function
    and recompiles.
    """
    if not isinstance(problem, Problem):
        raise TypeError(
            f"descend: `problem` must be a jaxflow.Problem, got {type(problem).__name__}."
        )
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"descend: `optimizer` must be an optax.GradientTransformation, got {optimizer!r}."
        )
    if not time_per_step > 0:
        raise ValueError(f"descend: time_per_step must be positive, got {time_per_step!r}.")
    opts = FlowOptions.build(options, shorthands, caller="descend", allowed=_DESCEND_OPTIONS)
    xs = _flat_starts(problem, x0, "descend")
    n = int(xs.shape[0])
    dtype = xs.dtype
    cp_iters = iteration_checkpoints(num_steps, opts.checkpoints_per_decade)
    gtol_value = opts.gtol_for(dtype)
    engine = Engine(
        field=field_for(problem) if field is None else field,
        stepper=OptaxStepper(optimizer),
        controller=IterationCount(time_per_step=float(time_per_step)),
        lanes=max(min(default_lanes(n, dim=problem.dim) if opts.lanes is None
                      else int(opts.lanes), n), MIN_LANES),
        max_steps=int(num_steps) + 1,
        stop_at_convergence=bool(opts.stop_at_convergence),
    )
    ts = cp_iters.astype(np.float64) * float(time_per_step)
    meta = dict(
        solver=engine.stepper.name,
        controller="discrete",
        time_per_step=float(time_per_step),
        num_steps=int(num_steps),
        gtol=gtol_value,
        escape_radius=float(opts.escape_radius),
        t1=float(ts[-1]),
        dtype=str(jnp.dtype(dtype)),
        kind="discrete",
    )
    return _integrate(engine, xs, ts, gtol_value, opts.escape_radius, cp_iters, meta)
