r"""The integration engine: many trajectories of $x' = -v(x)$ in one compiled loop.

Design (measured on Example 1.1, see `benchmarks/`):

- **Fused steps.** Each step is straight-line code from a stepper (`jaxflow._stepper`),
  vmapped over *lanes* (`AbstractStepper.batched_step`; `ProxLinear` runs its QP only on
  the lanes that need it).
- **Lane refill instead of lockstep.** A naive `vmap(diffeqsolve)` runs its adaptive
  loop until the slowest trajectory ends, so one stiff escaping trajectory sets the
  cost of the whole batch. Here a fixed number of lanes pulls trajectories from a
  queue: when a trajectory finishes (converged, escaped, reached `t1`, ...), its results
  are written out and the lane loads the next pending start. Only the tail of the queue
  runs partly empty. The result of a trajectory depends only on its start (no
  cross-lane arithmetic), never on the lane or the order it ran in.
- **Narrowed tail.** Once the queue is empty and few lanes are still active, they
  continue, from their exact state, in a program with fewer lanes (`run`), so that one
  long trajectory costs about what it costs alone rather than a full batch of masked
  lanes per step. A narrower program that would first have to be compiled (or loaded)
  is used only once the tail has cost that much at its width (rent or buy, see
  `RENT_TAIL`): short tails never pay a compilation.
- **Checkpoints** at log-spaced times $0 = t_0 < t_1 < \dots < t_{K-1} = t_1$ (or at
  iteration counts for optimisers): steps are clipped to land on them exactly, and
  $(\|x\|, f, \|v\|)$ is recorded there. Time is kept as (segment index, offset within the
  segment), so float32 runs keep full relative precision of the step size even at
  $t = 10^5$.

The stepper proposes a step, the controller (`jaxflow._controller`) accepts or rejects it
and chooses the next; the loop itself knows neither. A width with no narrower rung runs in
one compiled program (`_started`); a wider one in two: `_start` (everything at t = 0, the
queue, the first lanes) and `_run`, one `while_loop` that any call of its width continues
(the narrowed tail in one more per width of `run`'s ladder); the same shapes never
recompile.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._controller import AbstractController
from ._executables import accepted_options, call_cached, compile_seconds, last_measured, lookup
from ._field import AbstractField, stationarity
from ._memory import lane_memory_budget as _lane_memory_budget
from ._status import Status
from ._stepper import AbstractStepper

__all__ = ["Engine", "run", "default_lanes", "MIN_LANES"]


class Engine(eqx.Module):
    """Static configuration of one compiled integration program."""

    field: AbstractField
    stepper: AbstractStepper
    controller: AbstractController
    lanes: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    stop_at_convergence: bool = eqx.field(static=True, default=True)
    # States recorded at the checkpoints for trajectories 0 .. save_states - 1.
    save_states: int = eqx.field(static=True, default=0)


def _pack(out):
    """The output arrays in the loop's packed layout (see `_run`); exact, no arithmetic."""
    packed = dict(
        finals=jnp.concatenate(
            [out["x"], *(out[k][:, None] for k in ("f", "stat", "t", "path"))], axis=1
        ),
        counters=jnp.stack(
            [out["status"].astype(jnp.int32), out["steps"], out["rejected"]], axis=1
        ),
        checkpoints=jnp.stack([out["cp_norm"], out["cp_f"], out["cp_stat"]], axis=2),
    )
    if "cp_x" in out:
        packed["cp_x"] = out["cp_x"]
    return packed


def _unpack(out, d):
    """The inverse of `_pack`."""
    finals, counters, checkpoints = out.pop("finals"), out.pop("counters"), out.pop("checkpoints")
    out.update(
        x=finals[:, :d], f=finals[:, d], stat=finals[:, d + 1], t=finals[:, d + 2],
        path=finals[:, d + 3], status=counters[:, 0].astype(jnp.int8), steps=counters[:, 1],
        rejected=counters[:, 2], cp_norm=checkpoints[:, :, 0], cp_f=checkpoints[:, :, 1],
        cp_stat=checkpoints[:, :, 2],
    )
    return out


def _start(engine: Engine, x0, ts, gtol, radius):
    """Everything at t = 0, for all starts at once: the outputs (final values already set
    for starts that need no integration), the queue of the others, and the first
    `engine.lanes` lanes loaded from it.

    Returns `(out, lanes, queue)`, `queue = (order, start_pack, next_ptr, n_todo)`.
    """
    field, stepper, controller = engine.field, engine.stepper, engine.controller
    n, d = x0.shape
    dtype = x0.dtype
    n_cp = ts.shape[0]
    n_lanes = max(engine.lanes, MIN_LANES)
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
    h0 = controller.initial_step(x0, v0)

    zeros = jnp.zeros((n,), dtype)
    nan_cp = jnp.full((n, n_cp), jnp.nan, dtype)
    out = dict(
        x=x0, f=f0, stat=s0, t=zeros, path=zeros, status=status0,
        steps=jnp.zeros((n,), jnp.int32), rejected=jnp.zeros((n,), jnp.int32),
        cp_norm=nan_cp.at[:, 0].set(n0), cp_f=nan_cp.at[:, 0].set(f0),
        cp_stat=nan_cp.at[:, 0].set(s0),
    )
    if engine.save_states:
        out["cp_x"] = jnp.full((engine.save_states, n_cp, d), jnp.nan, dtype).at[:, 0].set(
            x0[: engine.save_states]
        )
    # Queue of the starts that need integrating (stable: original order kept).
    todo = status0 == 0
    order = jnp.argsort(~todo, stable=True).astype(jnp.int32)
    n_todo = jnp.sum(todo, dtype=jnp.int32)
    start_pack = jnp.concatenate([x0, f0[:, None], v0, h0[:, None]], axis=1)
    lane_ids = jnp.arange(n_lanes, dtype=jnp.int32)
    first = jnp.where(lane_ids < n_todo, order[jnp.minimum(lane_ids, n - 1)], n)
    lanes = _load_lanes(stepper, start_pack, first, n, d)
    next_ptr = jnp.minimum(n_todo, n_lanes).astype(jnp.int32)
    return out, lanes, (order, start_pack, next_ptr, n_todo)


def _load_lanes(stepper, start_pack, idx, n, d):
    """Lane state for trajectory indices `idx` (idx == n: idle lane)."""
    dtype = start_pack.dtype
    safe = jnp.minimum(idx, n - 1)
    row = start_pack[safe]  # one gather for everything a fresh lane needs
    x_s, f_s = row[:, :d], row[:, d]
    v_s, h_s = row[:, d + 1 : 2 * d + 1], row[:, 2 * d + 1]
    return dict(
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
        stepper_state=jax.vmap(stepper.init)(x_s),
    )


def _started(engine: Engine, x0, ts, gtol, radius, cp_iters):
    """`_start` and then `_run` to the end, in one program: a width with no narrower rung
    needs no other call, and one program compiles faster than two."""
    out, lanes, queue = _start(engine, x0, ts, gtol, radius)
    out, _, _, iterations, _ = _run(engine, ts, gtol, radius, cp_iters, out, lanes, queue,
                                    jnp.int32(0), jnp.int32(_INT_MAX))
    return out, iterations


def _narrowed(lanes, n, width: int):
    """The lanes of `lanes` moved to a program of `width` lanes: the active ones first
    (stable), then idle ones up to the width. Only whole lane states move: no arithmetic."""
    moved = jnp.argsort(lanes["idx"] >= n, stable=True)[:width]
    return jax.tree.map(lambda a: a[moved], lanes)


def _run(engine: Engine, ts, gtol, radius, cp_iters, out, lanes, queue, narrow_at, max_iters):
    """The compiled loop. `cp_iters`: iteration count of each checkpoint (optimisers), or None.

    The lanes `lanes` (`engine.lanes` of them, from `_start` or a previous call) advance
    their trajectories, finished ones writing into `out` and loading the next start of
    `queue` (from `_start`), until every lane is idle, or after `max_iters` iterations,
    or (when `narrow_at > 0`) once the queue is empty and at most `narrow_at` lanes are
    active, for `run` to continue them in a narrower program or in this one again. The
    same program serves every call of its width, and a trajectory's arithmetic does not
    depend on the call, the width or its lane.

    Returns `(out, lanes, next_ptr, iterations, active)`: the outputs, the lane state,
    the queue position, the loop iterations of this call and the lanes still active.
    """
    field, stepper, controller = engine.field, engine.stepper, engine.controller
    queue, start_pack, next_ptr, n_todo = queue
    n, d = out["x"].shape
    dtype = out["x"].dtype
    n_cp = ts.shape[0]
    n_lanes = max(engine.lanes, MIN_LANES)
    seg = jnp.diff(ts)  # (n_cp - 1,)
    order = stepper.error_order
    n_saved = engine.save_states
    # Outputs are packed into few arrays so that each loop iteration does one scatter per
    # array: on CPU every XLA op has a fixed cost, and bookkeeping otherwise rivals the
    # integration itself. `finals`: [x (d), f, ||v||, t, path length]; `counters`:
    # [status, steps, rejected]; `checkpoints`: (n, K, 3) with (||x||, f, ||v||).
    out = _pack(dict(out))

    def load(idx):
        return _load_lanes(stepper, start_pack, idx, n, d)

    def step_fn(x, f, v, h, s, active):
        return stepper.batched_step(field, x, f, v, h, s, active)

    eps = jnp.finfo(dtype).eps

    def cond(carry):
        lanes, _, next_ptr, it = carry
        active = lanes["idx"] < n
        few = jnp.sum(active, dtype=jnp.int32) <= narrow_at
        return jnp.any(active) & (it < max_iters) & ~((next_ptr >= n_todo) & few)

    def body(carry):
        lanes, out, next_ptr, it = carry
        active = lanes["idx"] < n
        k = lanes["k"]
        segment = seg[jnp.minimum(k, n_cp - 2)]
        h, clipped = controller.propose(
            lanes["h"], segment - lanes["tau"], segment, eps, lanes["steps"], k, cp_iters
        )
        x1, err, f1, v1, ok, state1 = step_fn(
            lanes["x"], lanes["f"], lanes["v"], h, lanes["stepper_state"], active
        )
        finite1 = jnp.isfinite(f1) & jnp.all(jnp.isfinite(x1), axis=-1)
        finite1 = finite1 & jnp.all(jnp.isfinite(v1), axis=-1)
        accept, h_next, prev_inv, underflow = controller.decide(
            x=lanes["x"], x1=x1, err=err, valid=ok & finite1, h=h, h_lane=lanes["h"],
            clipped=clipped, prev_inv=lanes["prev_inv"], order=order, active=active,
            segment=segment, eps=eps,
        )
        kept = lanes["stepper_state"]
        if jax.tree.leaves(kept):
            kept = jax.vmap(stepper.rejected_state)(kept, state1)
        stepper_state = jax.tree.map(
            lambda new, old: jnp.where(
                accept.reshape(accept.shape + (1,) * (new.ndim - 1)), new, old
            ),
            state1,
            kept,
        )

        accepted = accept[:, None]
        x_new = jnp.where(accepted, x1, lanes["x"])
        f_new = jnp.where(accept, f1, lanes["f"])
        v_new = jnp.where(accepted, v1, lanes["v"])
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
        out["checkpoints"] = out["checkpoints"].at[rec_idx, k_new].set(cp_val, mode="drop")
        if n_saved:
            save_idx = jnp.where(rec_idx < n_saved, rec_idx, n_saved)
            out["cp_x"] = out["cp_x"].at[save_idx, k_new].set(x_new, mode="drop")

        # Decide which trajectories are finished (first matching rule wins). A non-finite
        # trial is only a rejected step; once the step size has underflowed, the step at
        # the resolution limit is final: the trajectory is NONFINITE if even that step
        # leaves the domain of f (or overflows), and MAX_STEPS otherwise (error too large,
        # or an implicit solve that keeps failing), with the last finite state kept.
        status = jnp.zeros((n_lanes,), jnp.int8)
        rules = [
            (underflow & ~finite1, Status.NONFINITE),
            (accept & (norm_new >= radius), Status.ESCAPED),
            (accept & (stat_new <= gtol) & engine.stop_at_convergence, Status.CONVERGED),
            (accept & (k_new >= n_cp - 1), Status.HORIZON),
            (active & ((steps + rejected >= engine.max_steps) | underflow), Status.MAX_STEPS),
        ]
        for cond_, code in reversed(rules):
            status = jnp.where(cond_, jnp.int8(code), status)
        done = active & (status != 0)

        # Write finished trajectories out.
        w_idx = jnp.where(done, lanes["idx"], n)
        t_now = ts[jnp.minimum(k_new, n_cp - 1)] + tau_new
        finals = jnp.concatenate(
            [x_new, f_new[:, None], stat_new[:, None], t_now[:, None], path[:, None]], axis=1
        )
        counters = jnp.stack([status.astype(jnp.int32), steps, rejected], axis=1)
        out["finals"] = out["finals"].at[w_idx].set(finals, mode="drop")
        out["counters"] = out["counters"].at[w_idx].set(counters, mode="drop")

        keep = dict(
            idx=jnp.where(done, n, lanes["idx"]), x=x_new, f=f_new, v=v_new, k=k_new,
            tau=tau_new, h=h_next, prev_inv=prev_inv, steps=steps, rejected=rejected, path=path,
            stepper_state=stepper_state,
        )
        # Refill finished lanes from the queue.
        rank = jnp.cumsum(done.astype(jnp.int32), dtype=jnp.int32) - 1
        q = next_ptr + rank
        has_new = done & (q < n_todo)
        new_idx = jnp.where(has_new, queue[jnp.minimum(q, n - 1)], n)
        fresh = load(new_idx)
        new_lanes = jax.tree.map(
            lambda fr, val: jnp.where(has_new.reshape(has_new.shape + (1,) * (val.ndim - 1)), fr, val),
            fresh,
            keep,
        )
        next_ptr = next_ptr + jnp.sum(done, dtype=jnp.int32)
        return new_lanes, out, next_ptr, it + 1

    carry = (lanes, out, next_ptr, jnp.zeros((), jnp.int32))
    lanes, out, next_ptr, iterations = jax.lax.while_loop(cond, body, carry)
    active = jnp.sum(lanes["idx"] < n, dtype=jnp.int32)
    return _unpack(out, d), lanes, next_ptr, iterations, active


# XLA:CPU hands reductions whose operands have at least 4096 elements to the YNNPACK
# library, together with the elementwise arithmetic fused into them, and YNNPACK's
# kernels round differently from XLA's own loop code. In the engine that threshold is
# crossed by the lane count (`lanes * d >= 4096`) and by the number of starts, so the
# arithmetic of a trajectory, and through rounding its status, would depend on its
# batch: Example 1.1 with 1024 lanes differed in the last bits from 512 lanes, and one
# start of the README's scan ran into a zero-length step (see
# `AbstractController.propose`) with 1024 lanes only. The engine is therefore compiled
# with XLA's own code for every width; the option is left out where this jaxlib does
# not know it.
_DETERMINISTIC_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

# Fewest lanes the engine runs (the others idle when n is smaller): with fewer lanes than
# a SIMD vector holds, XLA:CPU vectorises the lane loops differently, fuses a single-lane
# program differently and contracts other multiply-adds into FMAs, so a trajectory would
# round differently than in a batch (deep linear, float32, AVX2: 2 and 4 lanes differ from
# 8 to 64 lanes in the last bits and in step counts). 16 lanes fill a 512-bit vector of
# float32.
MIN_LANES = 16

# The tail of the queue continues in programs of `lanes // NARROW_RATIO**j` lanes (see
# `run`), never fewer than `NARROW_MIN_LANES` (= `MIN_LANES`, for the reason above: a
# narrowed trajectory must keep its results bit for bit).
# `NARROW_TAIL = False` turns narrowing off (to measure what it saves).
NARROW_RATIO = 8
NARROW_MIN_LANES = MIN_LANES
# Programs narrower than this are not narrowed further: each rung is one more compiled
# program (~4 s on a 2-core CPU), which small runs (tests, interactive flows of a few
# hundred starts at 64 lanes) would pay without a tail worth saving.
NARROW_FROM = 128


def _rung_below(width: int) -> int:
    """The next narrower width of the ladder: `width // NARROW_RATIO`, rounded down to a
    multiple of `MIN_LANES` (whole SIMD vectors of lanes), at least `NARROW_MIN_LANES`;
    `width` itself below `NARROW_FROM` (no narrower program)."""
    if width < NARROW_FROM:
        return width
    return max(width // NARROW_RATIO // MIN_LANES * MIN_LANES, NARROW_MIN_LANES)
NARROW_TAIL = True


def _engine_compiler_options() -> tuple[tuple[str, str], ...]:
    """The options of `_DETERMINISTIC_OPTIONS` that this jaxlib accepts."""
    return accepted_options(tuple(_DETERMINISTIC_OPTIONS.items()))


@functools.cache
def _programs():
    options = dict(_engine_compiler_options())
    return dict(
        _start=eqx.filter_jit(_start, compiler_options=options),
        _run=eqx.filter_jit(_run, compiler_options=options),
        _started=eqx.filter_jit(_started, compiler_options=options),
        _narrowed=jax.jit(_narrowed, static_argnums=(1, 2)),
    )


# Rent or buy. Narrowing the tail needs a narrower program, which a new scan must first
# compile (~2 s each on a 2-core CPU: more than the whole tail of many chunks) or, when
# stored, load (~0.1 s). When the program is neither compiled in this process nor
# stored, the tail first continues at its width, in slices of the same (already
# compiled) program, until the time spent this way (its *rent*, summed over the calls
# of this process that wanted that program) reaches the program's price (the compile or
# load time measured for the engine in this process); then it narrows. A tail that ends
# sooner never pays the compilation; a long one pays at most about twice what narrowing
# at once would have cost (the ski-rental bound). Results are the same either way.
# `RENT_TAIL = False` narrows at once (as before).
RENT_TAIL = True
_INT_MAX = 2**31 - 1
# Prices before anything was measured in this process (2-core CPU figures).
_DEFAULT_PRICE = {"compile": 2.0, "load": 0.1}
_RENT: dict = {}  # narrower program -> seconds its absence cost so far (this process)
_CALLED: set = set()  # programs called in this process (outside the executable cache)
# Both ledgers hold keys that keep the engines' static parts (objectives, their data)
# alive; past this many entries they start over (a sweep through many problems would
# otherwise grow them without bound). Forgetting costs at most one more rent or compile.
_LEDGER_MAX = 256
_MEASURED: dict = {}  # "compile" / "load" -> seconds of the engine loop's latest one
_FIRST_SLICE = 16  # loop iterations of the first slice of rent


def _i32(v):
    return np.asarray(v, np.int32)


def _static_of(name: str, engine: Engine, args) -> dict:
    return dict(
        program=name, lanes=engine.lanes, max_steps=engine.max_steps,
        save_states=engine.save_states, stop_at_convergence=engine.stop_at_convergence,
        field=type(engine.field).__qualname__, stepper=type(engine.stepper).__qualname__,
        controller=type(engine.controller).__qualname__,
        # `cp_iters` is the 4th argument of `_run`, the 5th of `_started` (none of
        # `_start`); the shapes of the arrays are part of the key already.
        cp_iters=name != "_start" and args[{"_run": 3, "_started": 4}[name]] is not None,
    )


def _local_key(name: str, engine: Engine, args):
    """A hashable identity of the program `name` would compile for these arguments (its
    configuration and array shapes), or None if it cannot be formed."""
    is_leaf = lambda a: isinstance(a, jax.ShapeDtypeStruct)  # noqa: E731
    leaves, treedef = jax.tree.flatten((engine, args), is_leaf=is_leaf)
    try:
        key = (name, treedef, tuple(
            (tuple(a.shape), str(a.dtype)) if hasattr(a, "shape") and hasattr(a, "dtype")
            else a for a in leaves
        ))
        hash(key)
    except TypeError:
        return None
    return key


def _call(name: str, engine: Engine, *args):
    """`name(engine, *args)` (`_start`, `_run` or `_started`), through the executable
    cache when a scan set a program identity (`jaxflow._executables`), else traced and
    compiled as usual; the compile or load time of a loop program (`_run`, `_started`)
    is measured, as the price of the narrower ones (`_price`)."""
    fn = {"_start": _start, "_run": _run, "_started": _started}[name]
    clock = compile_seconds()
    out = call_cached(fn, (engine, *args), static=_static_of(name, engine, args),
                      compiler_options=dict(_engine_compiler_options()))
    if out is None:
        out = _programs()[name](engine, *args)
        key = _local_key(name, engine, args)
        if key is not None:
            if len(_CALLED) >= _LEDGER_MAX:
                _CALLED.clear()
            _CALLED.add(key)
        spent = compile_seconds() - clock
        if name != "_start" and spent > 0:
            _MEASURED["compile"] = spent
    elif name != "_start":
        _MEASURED.update(last_measured(name))
    return out


def _price(name: str, engine: Engine, args):
    """(key, seconds): an identity of the program `name(engine, *args)` for the rent
    ledger, and what using it would cost now (0 when it is at hand)."""
    where = lookup(args=(engine, *args), static=_static_of(name, engine, args),
                   compiler_options=dict(_engine_compiler_options()))
    if where is None:  # no executable cache: this process's own programs
        key = _local_key(name, engine, args)
        where = (key, "memory" if key in _CALLED else None)
    key, at = where
    if at == "memory":
        return key, 0.0
    kind = "load" if at == "disk" else "compile"
    return key, _MEASURED.get(kind, _DEFAULT_PRICE[kind])


def run(engine: Engine, x0, ts, gtol, radius, cp_iters):
    """The compiled engine: `_start`, then `_run` until every trajectory is finished.

    Narrowing of the tail: once the queue is empty and the active lanes fit in
    `max(lanes // NARROW_RATIO, NARROW_MIN_LANES)` lanes, the program stops and the
    remaining trajectories continue, from their exact state, in a program of that width,
    and so on down the ladder `lanes // NARROW_RATIO**j` (at least `NARROW_MIN_LANES`,
    skipping rungs the active lanes fit under), so that a few long trajectories do not
    run with all other lanes masked. Their results are those of the wide program, bit for
    bit, as the engine's arithmetic does not depend on the lane count from
    `NARROW_MIN_LANES` lanes up. Each rung is one more program: at most
    `log(lanes / NARROW_MIN_LANES) / log(NARROW_RATIO)` more per configuration (2 for
    1024 lanes: 128 and 16; 1 for 64 or 128 lanes: 16), whatever the starts. A rung whose
    program is not at hand is reached only once the tail has cost its price (see
    `RENT_TAIL`): until then the tail continues at its width.

    **Returns:** `(out, iterations, lane_iterations)`: the outputs, the loop iterations of
    all calls together, and the sum over calls of lanes x iterations (the work done,
    masked lanes included; `None` when narrowing is off or there is no narrower rung,
    where it is `lanes * iterations`). With narrowing, `run` waits for each call's
    results (it needs the number of active lanes); without, it returns at once.
    """
    width = max(engine.lanes, MIN_LANES)
    # Whether there is a narrower rung (the same flag, hence the same program, otherwise).
    narrow = bool(NARROW_TAIL) and _narrower_width(width, 0) < width
    if not narrow:  # one program, and no wait for its results
        out, iterations = _call("_started", engine, x0, ts, gtol, radius, cp_iters)
        return out, iterations, None
    common = (ts, gtol, radius, cp_iters)
    out, lanes, queue = _call("_start", engine, x0, ts, gtol, radius)
    out, lanes, next_ptr, iterations, active = _call(
        "_run", engine, *common, out, lanes, queue, _i32(_rung_below(width)), _i32(_INT_MAX)
    )
    n = x0.shape[0]
    queue = (queue[0], queue[1], next_ptr, queue[3])  # empty from here on
    # Python integers: lanes x iterations can pass 2^31.
    lane_iterations = int(iterations) * width
    iterations = int(iterations)
    slice_iters, per_iter = 0, None
    while (n_active := int(active)) > 0:
        target = _narrower_width(width, n_active)
        limit = _INT_MAX
        if target < width:
            narrower = dataclasses.replace(engine, lanes=target)
            shapes = jax.tree.map(
                lambda a, w=target: jax.ShapeDtypeStruct(
                    (w,) + a.shape[1:], a.dtype, weak_type=getattr(a, "weak_type", False)
                ),
                lanes,
            )
            key, price = _price("_run", narrower, (*common, out, shapes, queue,
                                                   _i32(0), _i32(0)))
            rent = _RENT.get(key, 0.0)
            if not RENT_TAIL or rent >= price:
                lanes = _programs()["_narrowed"](lanes, n, target)
                engine, width, slice_iters, per_iter = narrower, target, 0, None
            else:
                # Rent: one more slice at this width, sized to the price still unpaid.
                slice_iters = min(2 * slice_iters, 2**30) if slice_iters else _FIRST_SLICE
                if per_iter and math.isfinite(price):
                    slice_iters = min(slice_iters, max(_FIRST_SLICE,
                                                       int((price - rent) / per_iter) + 1))
                limit = slice_iters
        rung = _rung_below(width)
        narrow_at = rung if rung < width and limit == _INT_MAX else 0
        t0 = time.perf_counter()
        out, lanes, _, it, active = _call(
            "_run", engine, *common, out, lanes, queue, _i32(narrow_at), _i32(limit)
        )
        it = int(it)  # waits for the call
        if limit != _INT_MAX:
            spent = time.perf_counter() - t0
            if len(_RENT) >= _LEDGER_MAX:
                _RENT.clear()
            _RENT[key] = rent + spent
            per_iter = spent / max(it, 1)
        iterations += it
        lane_iterations += it * width
    return out, iterations, lane_iterations


def _narrower_width(width: int, active: int) -> int:
    """The narrowest width of the ladder `width // NARROW_RATIO**j` (at least
    `NARROW_MIN_LANES`) that the `active` lanes fit in."""
    while (nxt := _rung_below(width)) < width and active <= nxt:
        width = nxt
    return width


# Working memory of one lane, in vectors of length d: RodasKrylov's Krylov basis (48 by
# default: 6 right-hand sides, 16 + 5 * 4 products and 6 for the error estimate), its
# six stages and residuals, the engine's per-lane state, and the temporaries of the
# Hessian-vector products.
_VECTORS_PER_LANE = 80


def default_lanes(
    n: int, backend: str | None = None, *, dim: int | None = None, matrices: int = 0,
    vectors: int = 0,
) -> int:
    """Lanes per loop iteration.

    On CPU the cost of an iteration grows with the lanes, so we want enough of them to
    amortise the fixed per-iteration cost (tens of microseconds) and few enough that the
    drained tail of the queue (lanes running partly empty) stays small: up to 1024
    (measured on Example 1.1: 1024 lanes beat 4096 and 16384 at N = 1e5). On an
    accelerator an iteration costs about the same for any lane count up to the device's
    parallelism, so lanes go up to 2^18.

    With the dimension `dim`, lanes are also capped (to a power of two) so that their
    working memory, about 64 vectors of length `dim` per lane in float64 plus `matrices`
    $d\times d$ matrices (a dense stepper's Hessians and factorisations,
    `AbstractStepper.matrices_per_lane`) and `vectors` more vectors (a nonsmooth field's
    kink gradients, `AbstractField.vectors_per_lane`), stays within a quarter of the
    device's memory (never below `MIN_LANES` lanes):
    at $d = 10^5$ on a host with 16 GiB, 64 lanes; at $d = 120$ with a dense stepper on
    a card with 139 GiB, 65,536 lanes instead of $2^{18}$. At
    large $d$ a step's own work (Hessian-vector products) dwarfs the per-iteration
    overhead, so few lanes lose nothing. `lanes=` in the options overrides this.
    """
    backend = backend or jax.default_backend()
    cap = 1024 if backend == "cpu" else 2**18
    if dim is not None and dim > 0:
        per_lane = (_VECTORS_PER_LANE + int(vectors) + int(matrices) * int(dim)) * int(dim) * 8
        fit = max(1, _lane_memory_budget(backend) // per_lane)
        cap = min(cap, max(MIN_LANES, 2 ** int(math.log2(fit))))
    lanes = int(min(n, max(64, min(cap, 2 ** int(math.log2(max(n, 1) / 8 + 1))))))
    return min(lanes, max(cap, MIN_LANES)) if dim is not None else lanes
