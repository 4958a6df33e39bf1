r"""The integration engine: many trajectories of $x' = -v(x)$ at once.

Design (measured on Example 1.1, see `benchmarks/`):

- **Fused steps.** Each step is straight-line code from a diffrax tableau
  (`_solver.py`), vmapped over *lanes*.
- **Lane refill instead of lockstep.** A naive `vmap(diffeqsolve)` runs its adaptive
  loop until the slowest trajectory ends, so one stiff escaping trajectory sets the
  cost of the whole batch. Here a fixed number of lanes (`lanes`) pulls trajectories
  from a queue: when a trajectory finishes (converged, escaped, reached `t1`, ...), its
  results are written out and the lane loads the next pending start. Only the tail of
  the queue runs partly empty. The result of a trajectory depends only on its start
  (no cross-lane arithmetic), never on the lane or the order it ran in.
- **Checkpoints** at log-spaced times $0 = t_0 < t_1 < \dots < t_{K-1} = t_1$: steps
  are clipped to land on them exactly, and $(\|x\|, f, \|v\|)$ is recorded there.
  Time is kept as (segment index, offset within the segment), so float32 runs keep
  full relative precision of the step size even at $t = 10^5$.

Everything runs in one compiled `while_loop`; the same shapes never recompile.
"""

from __future__ import annotations

import math
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._field import AbstractField, stationarity
from ._field_choice import field_for
from ._problem import Problem
from ._solver import AbstractStepper, make_stepper
from ._status import Status

__all__ = ["flow", "FlowResult", "checkpoint_times", "default_gtol"]

# Number of times the engine has been traced (tests assert no recompilation).
TRACE_COUNT = {"flow": 0}


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
        st = np.asarray(self.status)
        return {s.name: int(np.sum(st == int(s))) for s in Status if np.any(st == int(s))}

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


# --------------------------------------------------------------------------- options
def checkpoint_times(t1: float, *, per_decade: int = 8, t_first: float | None = None) -> np.ndarray:
    """`[0, t_first, ..., t1]`, log-spaced with `per_decade` points per decade.

    `t_first` defaults to `min(0.1, t1 / 10)`.
    """
    t1 = float(t1)
    if not (math.isfinite(t1) and t1 > 0):
        raise ValueError(f"t1 must be a positive finite time, got {t1!r}.")
    if t_first is None:
        t_first = min(0.1, t1 / 10)
    if not (0 < t_first < t1):
        raise ValueError(f"t_first must lie in (0, t1), got {t_first!r} with t1={t1}.")
    if per_decade < 1:
        raise ValueError(f"checkpoints per_decade must be >= 1, got {per_decade}.")
    n = max(2, int(math.ceil(per_decade * math.log10(t1 / t_first))) + 1)
    return np.concatenate([[0.0], np.geomspace(t_first, t1, n)])


def default_gtol(dtype) -> float:
    r"""Default stationarity tolerance: $10^{-8}$ in float64, $10^{-4}$ in float32.

    In float32 the gradient of a loss of order one cannot be resolved much below
    $\sqrt{\epsilon} \approx 3\cdot 10^{-4}$ times its curvature scale, so a tighter
    tolerance would turn converged trajectories into `HORIZON`.
    """
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-4


class _Controller(eqx.Module):
    """diffrax's `PIDController` rule (its variant (4)), fused; or a constant step."""

    adaptive: bool = eqx.field(static=True)
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    pcoeff: float = eqx.field(static=True, default=0.0)
    icoeff: float = eqx.field(static=True, default=1.0)
    dcoeff: float = eqx.field(static=True, default=0.0)
    safety: float = eqx.field(static=True, default=0.9)
    factormin: float = eqx.field(static=True, default=0.2)
    factormax: float = eqx.field(static=True, default=10.0)
    dtmax: float | None = eqx.field(static=True, default=None)
    dt0: float | None = eqx.field(static=True, default=None)

    @classmethod
    def from_diffrax(cls, ctrl, dt0):
        if ctrl is None:
            ctrl = diffrax.PIDController(rtol=1e-6, atol=1e-8)
        if isinstance(ctrl, diffrax.ConstantStepSize):
            if dt0 is None or not dt0 > 0:
                raise ValueError(
                    "stepsize_controller=ConstantStepSize() needs a positive `dt0` (the step)."
                )
            return cls(adaptive=False, dt0=float(dt0))
        if isinstance(ctrl, diffrax.PIDController):
            def num(v, name):
                try:
                    return float(v)
                except TypeError as e:
                    raise TypeError(
                        f"PIDController.{name} must be a scalar for jaxflow, got {v!r}."
                    ) from e

            if ctrl.dtmin is not None:
                raise ValueError(
                    "PIDController(dtmin=...) is not supported: jaxflow gives a trajectory "
                    "whose step underflows the status MAX_STEPS instead of forcing steps."
                )
            return cls(
                adaptive=True,
                rtol=num(ctrl.rtol, "rtol"),
                atol=num(ctrl.atol, "atol"),
                pcoeff=num(ctrl.pcoeff, "pcoeff"),
                icoeff=num(ctrl.icoeff, "icoeff"),
                dcoeff=num(ctrl.dcoeff, "dcoeff"),
                safety=num(ctrl.safety, "safety"),
                factormin=num(ctrl.factormin, "factormin"),
                factormax=num(ctrl.factormax, "factormax"),
                dtmax=None if ctrl.dtmax is None else num(ctrl.dtmax, "dtmax"),
                dt0=None if dt0 is None else float(dt0),
            )
        raise TypeError(
            "stepsize_controller must be diffrax.PIDController(...) or "
            f"diffrax.ConstantStepSize(), got {type(ctrl).__name__}."
        )

    def scaled_error(self, x, x1, err):
        scale = self.atol + self.rtol * jnp.maximum(jnp.abs(x), jnp.abs(x1))
        return jnp.sqrt(jnp.mean((err / scale) ** 2, axis=-1))

    def initial_step(self, x, v):
        """Hairer–Nørsett–Wanner's first guess $0.01\\,\\|x\\|/\\|v\\|$ in the error norm."""
        if not self.adaptive:
            return jnp.full(x.shape[:-1], self.dt0, x.dtype)
        if self.dt0 is not None:
            return jnp.full(x.shape[:-1], self.dt0, x.dtype)
        scale = self.atol + self.rtol * jnp.abs(x)
        d0 = jnp.sqrt(jnp.mean((x / scale) ** 2, axis=-1))
        d1 = jnp.sqrt(jnp.mean((v / scale) ** 2, axis=-1))
        small = (d0 < 1e-5) | (d1 < 1e-5) | ~jnp.isfinite(d1)
        h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
        return h0.astype(x.dtype)

    def adapt(self, serr, prev_inv, h, order):
        """Accept/reject and the next step size (diffrax `PIDController`, variant (4))."""
        accept = serr < 1
        inv = jnp.where(jnp.isfinite(serr), 1.0 / serr, 0.0)
        c1 = (self.icoeff + self.pcoeff + self.dcoeff) / order
        c2 = -(self.pcoeff + 2 * self.dcoeff) / order
        factor = inv**c1 if c1 != 0 else 1.0
        if c2 != 0:
            factor = factor * prev_inv**c2
        fmin = jnp.where(accept, 1.0, self.factormin)
        fmax = jnp.where(accept, self.factormax, self.safety)
        factor = jnp.clip(self.safety * factor, fmin, fmax)
        h_new = h * factor
        if self.dtmax is not None:
            h_new = jnp.minimum(h_new, self.dtmax)
        bad = (inv == 0) | jnp.isinf(inv)
        inv = jnp.where(bad, 1.0, inv)
        prev_inv = jnp.where(accept, inv, prev_inv)
        return accept, h_new.astype(h.dtype), prev_inv


# --------------------------------------------------------------------------- engine
class _Engine(eqx.Module):
    """Static configuration of one compiled integration program."""

    field: AbstractField
    stepper: AbstractStepper
    ctrl: _Controller
    lanes: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    stop_at_convergence: bool = eqx.field(static=True, default=True)
    # States recorded at the checkpoints for trajectories 0 .. save_states - 1.
    save_states: int = eqx.field(static=True, default=0)
    # Discrete mode: an optax GradientTransformation drives x_{k+1} = x_k + update_k,
    # one iteration per loop step; checkpoints sit at given iteration counts.
    optimizer: Any = eqx.field(static=True, default=None)


def _run(engine: _Engine, x0, ts, gtol, radius, cp_iters=None, dt=None):
    """The compiled loop. `cp_iters` (discrete mode): iteration count of each checkpoint."""
    TRACE_COUNT["flow"] += 1
    discrete = engine.optimizer is not None
    field, stepper, ctrl = engine.field, engine.stepper, engine.ctrl
    n, d = x0.shape
    dtype = x0.dtype
    K = ts.shape[0]
    W = engine.lanes
    seg = jnp.diff(ts)  # (K-1,)
    order = None if discrete else stepper.error_order

    # Everything at t = 0, for all starts at once.
    f0, v0 = jax.vmap(field.value_and_velocity)(x0)
    s0 = stationarity(v0)
    n0 = jnp.sqrt(jnp.sum(x0 * x0, axis=-1))
    finite0 = jnp.isfinite(f0) & jnp.all(jnp.isfinite(x0), axis=-1) & jnp.isfinite(s0)
    status0 = jnp.where(
        ~finite0,
        Status.NONFINITE,
        jnp.where(
            n0 >= radius,
            Status.ESCAPED,
            jnp.where((s0 <= gtol) & engine.stop_at_convergence, Status.CONVERGED, 0),
        ),
    ).astype(jnp.int8)
    h0 = ctrl.initial_step(x0, v0)

    # Outputs are packed into few arrays so that each loop iteration does one scatter per
    # array: on CPU every XLA op has a fixed cost, and bookkeeping otherwise rivals the
    # integration itself. Float part: [x (d), f, ||v||, t, path length]; int part:
    # [status, steps, rejected]; checkpoints: (n, K, 3) with (||x||, f, ||v||).
    zeros_n = jnp.zeros((n, 1), dtype)
    out = dict(
        real=jnp.concatenate([x0, f0[:, None], s0[:, None], zeros_n, zeros_n], axis=1),
        int=jnp.stack(
            [status0.astype(jnp.int32), jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32)],
            axis=1,
        ),
        cp=jnp.full((n, K, 3), jnp.nan, dtype).at[:, 0].set(jnp.stack([n0, f0, s0], axis=1)),
    )
    S = engine.save_states
    if S:
        out["cp_x"] = jnp.full((S, K, d), jnp.nan, dtype).at[:, 0].set(x0[:S])
    # Queue of the starts that need integrating (stable: original order kept).
    todo = status0 == 0
    queue = jnp.argsort(~todo, stable=True).astype(jnp.int32)
    m = jnp.sum(todo, dtype=jnp.int32)
    start_pack = jnp.concatenate([x0, f0[:, None], v0, h0[:, None]], axis=1)

    def load(idx):
        """Lane state for trajectory indices `idx` (idx == n: idle lane)."""
        safe = jnp.minimum(idx, n - 1)
        row = start_pack[safe]  # one gather for everything a fresh lane needs
        x_s, f_s, v_s, h_s = row[:, :d], row[:, d], row[:, d + 1 : 2 * d + 1], row[:, 2 * d + 1]
        extra = {}
        if discrete:
            extra["opt"] = jax.vmap(engine.optimizer.init)(x_s)
        return dict(
            **extra,
            idx=idx,
            x=x_s,
            f=f_s,
            v=v_s,
            k=jnp.zeros(idx.shape, jnp.int32),  # current segment [ts[k], ts[k+1]]
            tau=jnp.zeros(idx.shape, dtype),  # offset in the segment
            h=h_s,
            prev_inv=jnp.ones(idx.shape, dtype),
            steps=jnp.zeros(idx.shape, jnp.int32),
            rejected=jnp.zeros(idx.shape, jnp.int32),
            path=jnp.zeros(idx.shape, dtype),
        )

    lane_ids = jnp.arange(W, dtype=jnp.int32)
    first = jnp.where(lane_ids < m, queue[jnp.minimum(lane_ids, n - 1)], n)
    lanes = load(first)
    if not discrete:
        step_fn = jax.vmap(lambda x, f, v, h: stepper.step(field, x, f, v, h))
    eps = jnp.finfo(dtype).eps

    def cond(carry):
        lanes, _, _, _, _ = carry
        return jnp.any(lanes["idx"] < n)

    def body(carry):
        lanes, out, next_ptr, it, _ = carry
        active = lanes["idx"] < n
        k = lanes["k"]
        extra = {}
        if discrete:
            updates, opt_new = jax.vmap(engine.optimizer.update)(
                lanes["v"], lanes["opt"], lanes["x"]
            )
            x1 = lanes["x"] + updates
            f1, v1 = jax.vmap(field.value_and_velocity)(x1)
            ok = jnp.ones((W,), bool)
            h = jnp.full((W,), 1.0, dtype) if dt is None else jnp.full((W,), dt, dtype)
            clipped = lanes["steps"] + 1 >= cp_iters[jnp.minimum(k + 1, K - 1)]
        else:
            remaining = seg[jnp.minimum(k, K - 2)] - lanes["tau"]
            clipped = lanes["h"] >= remaining
            h = jnp.where(clipped, remaining, lanes["h"])
            x1, err, f1, v1, ok = step_fn(lanes["x"], lanes["f"], lanes["v"], h)
        finite1 = jnp.isfinite(f1) & jnp.all(jnp.isfinite(x1), axis=-1)
        finite1 = finite1 & jnp.all(jnp.isfinite(v1), axis=-1)
        if discrete:
            accept = finite1
            h_next = lanes["h"]
            prev_inv = lanes["prev_inv"]
            extra["opt"] = jax.tree.map(
                lambda new, old: jnp.where(
                    accept.reshape(accept.shape + (1,) * (new.ndim - 1)), new, old
                ),
                opt_new,
                lanes["opt"],
            )
        elif ctrl.adaptive:
            serr = ctrl.scaled_error(lanes["x"], x1, err)
            serr = jnp.where(ok & finite1, serr, jnp.inf)
            accept, h_next, prev_inv = ctrl.adapt(serr, lanes["prev_inv"], h, order)
            # A step shortened to land on a checkpoint must not shrink the next one.
            h_next = jnp.where(accept & clipped, jnp.maximum(h_next, lanes["h"]), h_next)
        else:
            accept = ok & finite1
            h_next = jnp.full_like(h, ctrl.dt0)
            prev_inv = lanes["prev_inv"]
        accept = accept & active
        # Underflow: the step is below what the segment's time resolution can represent.
        underflow = active & ~accept & (h_next <= 4 * eps * seg[jnp.minimum(k, K - 2)])
        if discrete or not ctrl.adaptive:
            underflow = active & ~accept

        a1 = accept[:, None]
        x_new = jnp.where(a1, x1, lanes["x"])
        f_new = jnp.where(accept, f1, lanes["f"])
        v_new = jnp.where(a1, v1, lanes["v"])
        reached = accept & clipped
        k_new = jnp.where(reached, k + 1, k)
        tau_new = jnp.where(reached, 0.0, jnp.where(accept, lanes["tau"] + h, lanes["tau"]))
        dx = jnp.sqrt(jnp.sum((x1 - lanes["x"]) ** 2, axis=-1))
        path = jnp.where(accept, lanes["path"] + dx, lanes["path"])
        steps = lanes["steps"] + accept.astype(jnp.int32)
        rejected = lanes["rejected"] + (active & ~accept).astype(jnp.int32)
        stat_new = stationarity(v_new)
        norm_new = jnp.sqrt(jnp.sum(x_new * x_new, axis=-1))

        # Record checkpoints reached on this step.
        rec_idx = jnp.where(reached, lanes["idx"], n)
        cp_val = jnp.stack([norm_new, f_new, stat_new], axis=1)
        out["cp"] = out["cp"].at[rec_idx, k_new].set(cp_val, mode="drop")
        if S:
            save_idx = jnp.where(rec_idx < S, rec_idx, S)
            out["cp_x"] = out["cp_x"].at[save_idx, k_new].set(x_new, mode="drop")

        # Decide which trajectories are finished (first matching rule wins).
        status = jnp.zeros((W,), jnp.int8)
        rules = [
            (underflow & ~(ok & finite1), Status.NONFINITE),
            (accept & (norm_new >= radius), Status.ESCAPED),
            (accept & (stat_new <= gtol) & engine.stop_at_convergence, Status.CONVERGED),
            (accept & (k_new >= K - 1), Status.HORIZON),
            (active & ((steps + rejected >= engine.max_steps) | underflow), Status.MAX_STEPS),
        ]
        for cond_, code in reversed(rules):
            status = jnp.where(cond_, jnp.int8(code), status)
        done = active & (status != 0)

        # Write finished trajectories out.
        w_idx = jnp.where(done, lanes["idx"], n)
        t_now = ts[jnp.minimum(k_new, K - 1)] + tau_new
        real = jnp.concatenate(
            [x_new, f_new[:, None], stat_new[:, None], t_now[:, None], path[:, None]], axis=1
        )
        ints = jnp.stack([status.astype(jnp.int32), steps, rejected], axis=1)
        out["real"] = out["real"].at[w_idx].set(real, mode="drop")
        out["int"] = out["int"].at[w_idx].set(ints, mode="drop")

        # Refill finished lanes from the queue.
        rank = jnp.cumsum(done.astype(jnp.int32), dtype=jnp.int32) - 1
        q = next_ptr + rank
        has_new = done & (q < m)
        new_idx = jnp.where(has_new, queue[jnp.minimum(q, n - 1)], n)
        fresh = load(new_idx)
        keep = dict(
            idx=jnp.where(done, n, lanes["idx"]), x=x_new, f=f_new, v=v_new, k=k_new,
            tau=tau_new, h=h_next, prev_inv=prev_inv, steps=steps, rejected=rejected, path=path,
            **extra,
        )
        new_lanes = jax.tree.map(
            lambda fr, val: jnp.where(has_new.reshape(has_new.shape + (1,) * (val.ndim - 1)), fr, val),
            fresh,
            keep,
        )
        next_ptr = next_ptr + jnp.sum(done, dtype=jnp.int32)
        return new_lanes, out, next_ptr, it + 1, None

    next_ptr = jnp.minimum(m, W).astype(jnp.int32)
    carry = (lanes, out, next_ptr, jnp.zeros((), jnp.int32), None)
    _, out, _, iterations, _ = jax.lax.while_loop(cond, body, carry)
    real, ints, cp = out.pop("real"), out.pop("int"), out.pop("cp")
    out.update(
        x=real[:, :d], f=real[:, d], stat=real[:, d + 1], t=real[:, d + 2], path=real[:, d + 3],
        status=ints[:, 0].astype(jnp.int8), steps=ints[:, 1], rejected=ints[:, 2],
        cp_norm=cp[:, :, 0], cp_f=cp[:, :, 1], cp_stat=cp[:, :, 2],
    )
    return out, iterations


_run_jit = eqx.filter_jit(_run)


def _default_lanes(n: int, backend: str | None = None) -> int:
    """Lanes per loop iteration.

    On CPU the cost of an iteration grows with the lanes, so we want enough of them to
    amortise the fixed per-iteration cost (tens of microseconds) and few enough that the
    drained tail of the queue (lanes running partly empty) stays small: up to 1024
    (measured on Example 1.1: 1024 lanes beat 4096 and 16384 at N = 1e5). On an
    accelerator an iteration costs about the same for any lane count up to the device's
    parallelism, so lanes go up to 2^18.
    """
    backend = backend or jax.default_backend()
    cap = 1024 if backend == "cpu" else 2**18
    return int(min(n, max(64, min(cap, 2 ** int(math.log2(max(n, 1) / 8 + 1))))))


def flow(
    problem: Problem,
    x0,
    *,
    t1: float,
    solver: Any = "auto",
    stepsize_controller: Any = None,
    dt0: float | None = None,
    gtol: float | None = None,
    escape_radius: float = 1e6,
    max_steps: int = 65536,
    checkpoints_per_decade: int = 8,
    t_first: float | None = None,
    lanes: int | None = None,
    stop_at_convergence: bool = True,
    save_states: int = 0,
    field: AbstractField | None = None,
) -> FlowResult:
    r"""Integrates $x'(t) = -v(x(t))$ from every row of `x0` up to time `t1`.

    **Arguments:**

    - `problem`: a `jaxflow.Problem`.
    - `x0`: starts, `(n, d)` flat (or a pytree batched along a leading axis), float32 or
      float64 — the run uses this dtype.
    - `t1`: horizon.
    - `solver`: any diffrax ODE solver, or `"auto"`: `Kvaerno5` (L-stable ESDIRK with
      the exact Hessian) for $d \le 32$, where escaping valleys are stiff, and `Tsit5`
      above (Hessians cost $O(d^2)$ memory and $O(d^3)$ time).
    - `stepsize_controller`: `diffrax.PIDController(rtol, atol)` (default rtol
      $10^{-6}$, atol $10^{-8}$) or `diffrax.ConstantStepSize()` with `dt0`.
    - `gtol`: stationarity tolerance for `CONVERGED` (default `default_gtol(dtype)`).
    - `escape_radius`: $\|x\|$ at which a trajectory is `ESCAPED`.
    - `max_steps`: per-trajectory step budget (accepted + rejected).
    - `checkpoints_per_decade`, `t_first`: the log-spaced checkpoint grid.
    - `lanes`: trajectories advanced per loop iteration (default from `n`).
    - `stop_at_convergence`: stop a trajectory once `CONVERGED` (default). When
      `False`, trajectories run to `t1` and the status is decided at the end.
    - `save_states`: also record the full state at every checkpoint for the first this
      many trajectories (`FlowResult.cp_x`, memory `save_states * K * d`).
    - `field`: the vector field to integrate (default: the problem's own, `jax.grad` or
      the minimal-norm subgradient), e.g.
      `jaxflow.MinNormField.for_problem(problem, fallback="bundle")`.

    **Returns:** a `jaxflow.FlowResult`.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"flow: `problem` must be a jaxflow.Problem, got {type(problem).__name__}.")
    xs = problem.flatten_batch(x0)
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(
            f"flow: x0 has dtype {xs.dtype}; pass floating-point starts (float32 or float64)."
        )
    n = int(xs.shape[0])
    if n == 0:
        raise ValueError("flow: x0 has no rows.")
    ts = checkpoint_times(t1, per_decade=checkpoints_per_decade, t_first=t_first)
    if not (escape_radius > 0):
        raise ValueError(f"flow: escape_radius must be positive, got {escape_radius!r}.")
    if not (isinstance(max_steps, (int, np.integer)) and max_steps > 0):
        raise ValueError(f"flow: max_steps must be a positive integer, got {max_steps!r}.")
    dtype = xs.dtype
    gtol = default_gtol(dtype) if gtol is None else float(gtol)
    if not gtol >= 0:
        raise ValueError(f"flow: gtol must be >= 0, got {gtol!r}.")
    ctrl = _Controller.from_diffrax(stepsize_controller, dt0)
    if isinstance(solver, str):
        if solver != "auto":
            raise ValueError(f"flow: solver must be a diffrax solver or 'auto', got {solver!r}.")
        solver = default_solver(problem)
    stepper = make_stepper(solver, rtol=ctrl.rtol, atol=ctrl.atol)
    if ctrl.adaptive and not stepper.adaptive:
        raise ValueError(
            f"{stepper.name} has no error estimate; use "
            "stepsize_controller=diffrax.ConstantStepSize() with dt0=..."
        )
    lanes = _default_lanes(n) if lanes is None else int(lanes)
    if lanes < 1:
        raise ValueError(f"flow: lanes must be >= 1, got {lanes}.")
    lanes = min(lanes, n)
    if not (isinstance(save_states, (int, np.integer)) and save_states >= 0):
        raise ValueError(f"flow: save_states must be an integer >= 0, got {save_states!r}.")
    engine = _Engine(
        field=field_for(problem) if field is None else field,
        stepper=stepper,
        ctrl=ctrl,
        lanes=lanes,
        max_steps=int(max_steps),
        stop_at_convergence=bool(stop_at_convergence),
        save_states=min(int(save_states), n),
    )
    out, iterations = _run_jit(
        engine, xs, jnp.asarray(ts, dtype), jnp.asarray(gtol, dtype),
        jnp.asarray(escape_radius, dtype),
    )
    status = out["status"]
    if not stop_at_convergence:
        status = jnp.where(
            (status == Status.HORIZON) & (out["stat"] <= gtol), jnp.int8(Status.CONVERGED), status
        )
    meta = dict(
        solver=stepper.name,
        controller="pid" if ctrl.adaptive else "constant",
        rtol=ctrl.rtol if ctrl.adaptive else None,
        atol=ctrl.atol if ctrl.adaptive else None,
        dt0=ctrl.dt0,
        gtol=gtol,
        escape_radius=float(escape_radius),
        t1=float(t1),
        max_steps=int(max_steps),
        dtype=str(jnp.dtype(dtype)),
        kind="flow",
    )
    return FlowResult(
        x=out["x"], f=out["f"], stationarity=out["stat"], status=status, t=out["t"],
        steps=out["steps"], rejected=out["rejected"], path_length=out["path"],
        ts=jnp.asarray(ts, dtype), cp_norm=out["cp_norm"], cp_f=out["cp_f"],
        cp_stat=out["cp_stat"], iterations=iterations, lanes=lanes, meta=meta,
        cp_x=out.get("cp_x"),
    )


def default_solver(problem: Problem):
    """`Kvaerno5` for small smooth problems (stiff escapes), `Tsit5` otherwise;
    `jaxflow.ProxLinear` for nonsmooth problems (slides along kinks, no chattering)."""
    if getattr(problem, "nonsmooth", False):
        from ._prox import ProxLinear  # noqa: PLC0415

        return ProxLinear()
    if problem.dim <= 32:
        return diffrax.Kvaerno5()
    return diffrax.Tsit5()
