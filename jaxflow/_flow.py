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
from ._detect import DetectorOptions, classify
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
    - `iterations`, `lanes`: loop iterations (of all the engine's programs together) and
      the lane count of the first program;
    - `lane_iterations`: lanes x loop iterations summed over the engine's programs (the
      tail of the queue continues in narrower programs, see `jaxflow._engine.run`); `None`
      when there was one program only, where it is `lanes * iterations`;
    - `cp_x` `(S, K, d)` or `None`: the flat states of the first `S = save_states`
      trajectories at the checkpoints (NaN after the trajectory stopped), to check
      conserved quantities and bounds along trajectories. Selecting trajectories
      (`res[mask]`) drops it.
    - `decided_at` `(n,)` or `None`: with `extend_undecided`, the horizon at which each
      trajectory got its final status (`t1`, or a later horizon for the trajectories
      continued past it; the largest horizon for those still undecided there).
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
    lane_iterations: int | None = None
    decided_at: jax.Array | None = None

    def __len__(self):
        return int(self.f.shape[0])

    @property
    def norm(self):
        return jnp.linalg.norm(self.x, axis=-1)

    @property
    def lockstep_efficiency(self) -> float:
        """Useful steps / lane-iterations (summed over the engine's programs, masked lanes
        included): 1.0 means no masked-out work."""
        work = self.lane_iterations
        if work is None:
            work = self.lanes * int(self.iterations)
        if work == 0:
            return 1.0
        used = int(np.sum(np.asarray(self.steps, np.int64) + np.asarray(self.rejected)))
        return used / work

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
        if self.decided_at is not None:
            per_traj["decided_at"] = self.decided_at[idx]
        return FlowResult(
            ts=self.ts, iterations=self.iterations, lanes=self.lanes, meta=self.meta,
            lane_iterations=self.lane_iterations, **per_traj,
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


def memory_lanes(problem, n: int, stepper=None, field=None, backend=None) -> int:
    """`default_lanes` for `n` starts of `problem`, counting the memory a lane holds: the
    stepper's dense $d\times d$ matrices and the field's vectors (a nonsmooth field's
    kink gradients)."""
    field = field_for(problem) if field is None else field
    matrices = 0 if stepper is None else stepper.matrices_per_lane(problem.dim)
    return default_lanes(n, backend, dim=problem.dim, matrices=matrices,
                         vectors=field.vectors_per_lane())


def _lane_count(lanes: int | None, n: int, problem, stepper=None, field=None) -> int:
    """Lanes for `n` starts: the request (default `memory_lanes`), at most `n`, rounded up
    to a multiple of `MIN_LANES` (XLA:CPU vectorises lanes in SIMD vectors and computes a
    partial vector with other code, so a lane's rounding would depend on the count)."""
    if lanes is None:
        lanes = memory_lanes(problem, n, stepper, field)
    wanted = min(int(lanes), n)
    return -(-wanted // MIN_LANES) * MIN_LANES


def _integrate(engine: Engine, xs, ts, gtol, escape_radius, cp_iters, meta) -> FlowResult:
    """Runs the compiled engine and packs its outputs into a `FlowResult`.

    The starts are padded with NaN rows (finished at t = 0, never integrated) to a multiple
    of `MIN_LANES`: XLA:CPU evaluates the remainder rows of an array of starts with other
    code than a full SIMD vector of rows, so without padding the first evaluation of a
    trajectory, and through rounding its whole path, could depend on how many starts came
    with it.
    """
    dtype = xs.dtype
    n = xs.shape[0]
    n_run = -(-n // MIN_LANES) * MIN_LANES
    if n_run != n:
        xs = jnp.concatenate([xs, jnp.full((n_run - n, xs.shape[1]), jnp.nan, dtype)])
    out, iterations, lane_iterations = run(
        engine, xs, jnp.asarray(ts, dtype), jnp.asarray(gtol, dtype),
        jnp.asarray(escape_radius, dtype),
        None if cp_iters is None else jnp.asarray(cp_iters, jnp.int32),
    )
    if n_run != n:
        out = {k: v if k == "cp_x" else v[:n] for k, v in out.items()}
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
        cp_x=out.get("cp_x"), lane_iterations=lane_iterations,
    )


def flow(
    problem: Problem,
    x0,
    options: FlowOptions | None = None,
    *,
    field: AbstractField | None = None,
    detector_options: DetectorOptions | None = None,
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
    - `detector_options`: the `jaxflow.DetectorOptions` that decide which trajectories are
      still `UNDECIDED` when `extend_undecided` continues them (default: the defaults);
      pass the ones you will classify the result with.

    **Returns:** a `jaxflow.FlowResult`.
    """
    opts = FlowOptions.build(options, shorthands, caller="flow")
    if detector_options is not None and not isinstance(detector_options, DetectorOptions):
        raise TypeError(
            "flow: `detector_options` must be a jaxflow.DetectorOptions, got "
            f"{type(detector_options).__name__}."
        )
    xs = _flat_starts(problem, x0, "flow")
    n = int(xs.shape[0])
    ts = opts.checkpoint_times()
    dtype = xs.dtype
    gtol_value = opts.gtol_for(dtype)
    stepper = opts.stepper(problem)
    field = field_for(problem) if field is None else field
    n_lanes = _lane_count(opts.lanes, n, problem, stepper, field)
    engine = Engine(
        field=field,
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
    res = _integrate(engine, xs, ts, gtol_value, opts.escape_radius, None, meta)
    if opts.extend_undecided is not None:
        res = _extend_undecided(res, engine, opts, gtol_value, detector_options)
    return res


def _extend_undecided(
    res: FlowResult, engine: Engine, opts: FlowOptions, gtol, detector_options=None
) -> FlowResult:
    r"""Continues the trajectories left `UNDECIDED` at `t1`, a decade at a time, up to
    `opts.extend_undecided`.

    The flow is autonomous, so the continuation from $x(T)$ over $[0, T' - T]$ is the
    trajectory on $[T, T']$. Its checkpoints continue the run's log-spaced grid past `t1`
    (same ratio), so the detectors see one series. Each step runs the same compiled
    engine on the remaining trajectories only, with fewer lanes.
    """
    t_max = float(opts.extend_undecided)
    ts0 = np.asarray(res.ts, np.float64)
    t1 = float(ts0[-1])
    ratio = ts0[-1] / ts0[-2] if ts0.shape[0] > 2 else 10.0 ** (1 / opts.checkpoints_per_decade)
    k_new = max(int(math.ceil(math.log(t_max / t1) / math.log(ratio) - 1e-6)), 1)
    extra = t1 * ratio ** np.arange(1, k_new + 1)
    extra[-1] = t_max
    ts_all = np.concatenate([ts0, extra])
    n, k0, k_all = len(res), ts0.shape[0], ts_all.shape[0]
    dtype = res.x.dtype
    pad = jnp.full((n, k_all - k0), jnp.nan, dtype)
    out = dict(
        x=res.x, f=res.f, stationarity=res.stationarity, status=res.status, t=res.t,
        steps=res.steps, rejected=res.rejected, path_length=res.path_length,
        cp_norm=jnp.concatenate([res.cp_norm, pad], axis=1),
        cp_f=jnp.concatenate([res.cp_f, pad], axis=1),
        cp_stat=jnp.concatenate([res.cp_stat, pad], axis=1),
    )
    decided_at = np.full(n, t1)
    horizon, k_end = t1, k0 - 1
    iterations = res.iterations

    def current():
        return FlowResult(
            ts=jnp.asarray(ts_all, dtype), iterations=iterations, lanes=res.lanes,
            meta=dict(res.meta), cp_x=None, decided_at=jnp.asarray(decided_at, dtype), **out
        )

    while horizon < t_max:
        status = np.asarray(
            classify(current(), horizon=horizon, options=detector_options).status
        )
        t_np = np.asarray(out["t"], np.float64)
        todo = np.flatnonzero((status == Status.UNDECIDED) & (t_np >= horizon * (1 - 1e-6)))
        if todo.size == 0:
            break
        k_next = int(np.searchsorted(ts_all, min(10.0 * horizon, t_max) * (1 - 1e-9)))
        nxt = float(ts_all[k_next])  # the first checkpoint a decade on (or t_max)
        seg = ts_all[k_end : k_next + 1] - horizon
        seg[0] = 0.0
        # Rows padded to a power of two (NaN rows are NONFINITE at t = 0, never integrated)
        # so that successive steps with similar counts share one compiled program.
        n_pad = max(1 << (todo.size - 1).bit_length(), MIN_LANES)
        xs = jnp.full((n_pad, out["x"].shape[1]), jnp.nan, dtype).at[: todo.size].set(
            out["x"][todo]
        )
        sub_engine = Engine(
            field=engine.field, stepper=engine.stepper, controller=engine.controller,
            lanes=max(min(engine.lanes, n_pad), MIN_LANES), max_steps=engine.max_steps,
            stop_at_convergence=engine.stop_at_convergence, save_states=0,
        )
        sub = _integrate(sub_engine, xs, seg, gtol, opts.escape_radius, None, {})[: todo.size]
        rows = jnp.asarray(todo)
        cols = jnp.arange(k_end + 1, k_next + 1)
        for key, new in (("cp_norm", sub.cp_norm), ("cp_f", sub.cp_f), ("cp_stat", sub.cp_stat)):
            out[key] = out[key].at[rows[:, None], cols[None, :]].set(new[:, 1:])
        for key in ("x", "f", "stationarity", "status"):
            out[key] = out[key].at[rows].set(getattr(sub, key))
        out["t"] = out["t"].at[rows].set(sub.t + jnp.asarray(horizon, dtype))
        for key, new in (("steps", sub.steps), ("rejected", sub.rejected),
                         ("path_length", sub.path_length)):
            out[key] = out[key].at[rows].add(new)
        iterations = iterations + sub.iterations
        decided_at[todo] = nxt
        horizon, k_end = nxt, k_next
    return FlowResult(
        ts=jnp.asarray(ts_all, dtype), iterations=iterations, lanes=res.lanes,
        meta=dict(res.meta, extend_undecided=t_max, horizon_reached=horizon), cp_x=None,
        decided_at=jnp.asarray(decided_at, dtype), **out,
    )


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
    field = field_for(problem) if field is None else field
    engine = Engine(
        field=field,
        stepper=OptaxStepper(optimizer),
        controller=IterationCount(time_per_step=float(time_per_step)),
        lanes=_lane_count(opts.lanes, n, problem, field=field),
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
