r"""Step-size control inside the engine: accept or reject a trial step, choose the next one.

Three controllers, each a small frozen module the engine calls per loop iteration on all
lanes at once:

- `PIDControl`: diffrax's `PIDController` rule (its variant (4)), fused;
- `ConstantStep`: diffrax's `ConstantStepSize` with `dt0`;
- `IterationCount`: one optimiser iteration per step (`jaxflow.descend`), checkpoints at
  given iteration counts.

They are built from diffrax controllers by `jaxflow.FlowOptions`, which parses them once.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp

__all__ = [
    "AbstractController", "PIDControl", "ConstantStep", "IterationCount", "effective_rtol",
    "RTOL_FLOOR", "error_scale",
]

# The rounding floor of the error control, in units of the dtype's machine epsilon: a
# step's error estimate is measured against `atol + max(rtol, RTOL_FLOOR eps) |x_i| +
# RTOL_FLOOR eps rms(x)`. Below that floor the estimate is rounding noise, which the
# controller cannot drive under the tolerance by shrinking the step; the noise of a
# component near 0 is that of the terms of the state's size it is computed from, so an
# absolute tolerance far below eps |x| (the default atol 1e-8 in float32) has no meaning
# either. Measured in float32 (eps 1.2e-7) with rtol 1e-6, atol 1e-8: a start of the
# deep linear network (seed 1, start 6688 of the README scan's chunk 0) took 20,650
# accepted and 15,111 rejected steps to converge at t = 86 (float64: 152 and 4); with
# only `rtol` raised to 100 eps, 4,574 and 3,280; with this floor at 10 eps, 97 and 1,
# final value the same to 3e-7. At 100 eps (SciPy's `solve_ivp` raises `rtol` to 100
# eps) a Tsit5 trajectory of the detector catalogue's rotating log escape ran another
# path and was classified CONVERGED; at 10 eps it was not. In float64 (eps 2.2e-16) the
# floor is below any tolerance in use.
RTOL_FLOOR = 10


def noise_floor(m):
    """Rounding noise of a step's error estimate, per component: `RTOL_FLOOR` epsilons of
    the state's root-mean-square magnitude (a component near 0 is computed from terms of
    the state's size, so its rounding does not shrink with it)."""
    eps = float(jnp.finfo(m.dtype).eps)
    return RTOL_FLOOR * eps * jnp.sqrt(jnp.mean(m * m, axis=-1, keepdims=True))


def effective_rtol(rtol: float, dtype) -> float:
    """The relative tolerance used for `dtype`: `rtol`, at least `RTOL_FLOOR` epsilons."""
    return max(float(rtol), RTOL_FLOOR * float(jnp.finfo(dtype).eps))


def error_scale(m, rtol: float, atol: float):
    """The scale errors are measured in, for components of magnitude `m`:
    `atol + max(rtol, RTOL_FLOOR eps) m + RTOL_FLOOR eps rms(m)`."""
    return atol + effective_rtol(rtol, m.dtype) * m + noise_floor(m)


class AbstractController(eqx.Module):
    """Decides steps for all lanes at once (arrays with a leading lane axis)."""

    @abc.abstractmethod
    def initial_step(self, x, v):
        """First step size of trajectories starting at `x` with velocity `v`."""

    def propose(self, h_lane, remaining, segment, eps, steps, k, cp_iters):
        """The step to try and whether it lands on the next checkpoint.

        `h_lane`: each lane's step size; `remaining`: time to the next checkpoint in the
        current segment of length `segment`; `steps`: accepted steps so far; `k`: the
        current segment.
        """
        del steps, k, cp_iters
        # A step that would end within the segment's time resolution of the checkpoint
        # lands on it. Otherwise `tau + h` can round up to the segment's length while
        # `h < remaining`, and the next step would have length exactly zero (an implicit
        # stage then divides 0 by 0, and the trajectory was lost).
        clipped = h_lane >= remaining - 4 * eps * segment
        return jnp.where(clipped, remaining, h_lane), clipped

    @abc.abstractmethod
    def decide(self, *, x, x1, err, valid, h, h_lane, clipped, prev_inv, order, active,
               segment, eps):
        """`(accept, h_next, prev_inv, underflow)` for the trial steps.

        `valid`: the step's solve succeeded and its outputs are finite; `underflow`: the
        step cannot shrink further (the trajectory ends as `MAX_STEPS` or `NONFINITE`).
        """


class PIDControl(AbstractController):
    """diffrax's `PIDController` rule (its variant (4)), fused."""

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

    def scaled_error(self, x, x1, err):
        scale = error_scale(jnp.maximum(jnp.abs(x), jnp.abs(x1)), self.rtol, self.atol)
        return jnp.sqrt(jnp.mean((err / scale) ** 2, axis=-1))

    def initial_step(self, x, v):
        """Hairer–Nørsett–Wanner's first guess $0.01\\,\\|x\\|/\\|v\\|$ in the error norm."""
        if self.dt0 is not None:
            return jnp.full(x.shape[:-1], self.dt0, x.dtype)
        scale = self.atol + effective_rtol(self.rtol, x.dtype) * jnp.abs(x)
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

    def decide(self, *, x, x1, err, valid, h, h_lane, clipped, prev_inv, order, active,
               segment, eps):
        serr = self.scaled_error(x, x1, err)
        serr = jnp.where(valid, serr, jnp.inf)
        accept, h_next, prev_inv = self.adapt(serr, prev_inv, h, order)
        # A step shortened to land on a checkpoint must not shrink the next one.
        h_next = jnp.where(accept & clipped, jnp.maximum(h_next, h_lane), h_next)
        accept = accept & active
        # Underflow: the step is below what the segment's time resolution can represent.
        underflow = active & ~accept & (h_next <= 4 * eps * segment)
        return accept, h_next, prev_inv, underflow


class ConstantStep(AbstractController):
    """A constant step `dt0` (diffrax `ConstantStepSize`); a failed step ends the trajectory."""

    dt0: float = eqx.field(static=True)

    def initial_step(self, x, v):
        return jnp.full(x.shape[:-1], self.dt0, x.dtype)

    def decide(self, *, x, x1, err, valid, h, h_lane, clipped, prev_inv, order, active,
               segment, eps):
        accept = valid & active
        return accept, jnp.full_like(h, self.dt0), prev_inv, active & ~accept


class IterationCount(AbstractController):
    """One iteration per step of `time_per_step`; checkpoints at iteration counts."""

    time_per_step: float = eqx.field(static=True)

    def initial_step(self, x, v):
        return jnp.full(x.shape[:-1], self.time_per_step, x.dtype)

    def propose(self, h_lane, remaining, segment, eps, steps, k, cp_iters):
        last = cp_iters.shape[0] - 1
        clipped = steps + 1 >= cp_iters[jnp.minimum(k + 1, last)]
        return jnp.full_like(h_lane, self.time_per_step), clipped

    def decide(self, *, x, x1, err, valid, h, h_lane, clipped, prev_inv, order, active,
               segment, eps):
        accept = valid & active
        return accept, h_lane, prev_inv, active & ~accept
