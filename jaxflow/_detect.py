r"""Per-trajectory classification from the log-spaced checkpoints of a flow.

The engine (`jaxflow.flow`) stops a trajectory when it is stationary (`CONVERGED`), when
$\|x\|$ reaches the escape radius (`ESCAPED`), or at the horizon (`HORIZON`). A slow escape
to infinity, like Example 1.1 ($\|x\| \sim t^{1/4}$) or Example 4.3 ($\|x\| \sim \log t$),
never reaches any practical radius, and its velocity $\|v\| \to 0$ so it can even meet a
loose stationarity tolerance. This module decides, from the recorded
$(t_k, \|x(t_k)\|, f(x(t_k)), \|v(x(t_k))\|)$ on the *tail* of each trajectory, whether the
evidence shows an escape, a bounded trajectory, or neither.

**The tail.** With $t_c$ the last time of a trajectory (its stop time; the final state is
appended to the checkpoints), and a half-window ratio $q = 10^{w/2}$ ($w$ =
`tail_decades`, shrunk to the history available), the three anchor times are
$t_a = t_c/q^2$, $t_b = t_c/q$, $t_c$. Values there are interpolated linearly in $\log t$.

**Tail models** (model selection, all per trajectory). With $s = \log t$ and
$u = s - \log t_c$ on the tail $[t_a, t_c]$, the norm series is fitted by weighted least
squares with each model of the one-parameter family
$$\|x\| \approx A + B\,\frac{e^{\lambda u} - 1}{\lambda},
\qquad \lambda \in \{-1.5, -1.45, \dots, 1.5\},$$
whose rate $\lambda$ names the hypothesis: $\lambda > 0$ a power escape
$\|x\| \sim t^{\lambda}$; $\lambda = 0$ a logarithmic escape $\|x\| \approx B \log t$ (lower
order terms such as $2\log\log t$ show as $|\lambda| \lesssim 0.05$); $\lambda < 0$
convergence of $\|x\|$ to $A - B/\lambda$ like $t^{\lambda}$. $B$ is the growth per unit of
$\log t$ at $t_c$. The noise level comes from the series itself: $\sigma^2$ = residual sum
of squares of the best model / (points − 3). Every rate whose residual sum is within
`margin` $\sigma^2$ of the best is *plausible* (a profile-likelihood interval
$[\lambda_{lo}, \lambda_{hi}]$), so a wobble that the models cannot follow widens the
interval instead of breaking a rule at one checkpoint. $f$ is fitted the same way: its
rate $-\beta$ ($f - \lim f \sim t^{-\beta}$ when $\beta > 0$, $f \to -\infty$ when
$\beta \le 0$) and the extrapolated limit $\lim f = A - B/\lambda$ (exact for
$f - c \propto t^{-\beta}$, like Aitken's three-point rule it generalises).

Also recorded: the growth exponent $\alpha$ (least-squares slope of $\log\|x\|$ against
$\log t$ on $[t_b, t_c]$), the velocity exponent $p$ (slope of $-\log\|v\|$; the path
length $\int^\infty\|v\|\,dt$ converges when $p > 1$) and the Malgrange indicator
$\|x\|\,\|v(x)\|$ at $t_c$ (it tends to 0 along a sequence when the limit value is an
asymptotic critical value, Kurdyka–Orro–Simon).

**Rules** (thresholds in `DetectorOptions`, defaults in brackets). A verdict needs
`min_tail_decades` [2] of history ($t_c \ge 100\,t_1$ with the default checkpoints) and
three checkpoints in $[t_b, t_c]$; otherwise `UNDECIDED`.

- *Sustained growth*: every plausible rate has $\lambda \ge -$`escape_deceleration` [0.1]
  (the norm increments decay no faster than $t^{-0.1}$) with $B > 0$; the norm grew by
  `escape_growth` [5 %] of $\|x(t_c)\|$ over the last half window; the last quarter
  window grew by at least `recent_growth` [0.3] of what the selected model predicts (a
  trajectory that grew and then stopped, between two critical points, falls short);
  $f$ never increased; and a path length that may diverge, $p <$
  `bounded_velocity_exponent` [1.1] within two standard errors of the slope (an
  unbounded trajectory has infinite length; an exponentially fast convergence has
  $p \gg 1$), and over the last quarter window alone $p \le$
  `recent_velocity_exponent` [2] (a late saddle departure that settles into a minimum
  has $\|v\|$ collapsing there).
- `ESCAPING` with a finite limit: sustained growth, $f$ settles (flat to rounding, or
  every plausible $f$ rate is $\le -$`value_exponent_min` [0.1]) and
  $p >$ `escape_velocity_exponent` [1/2] ($\int^\infty\|v\|^2 = f - \lim f$ finite).
- `ESCAPING` with limit $-\infty$: sustained growth, $f$ falling with every plausible
  $f$ rate $\ge -0.1$, $\|x\|$ at least doubled over the tail (a trajectory that
  accelerates away from a saddle looks the same for a while), and $p \le 1/2$ within two
  standard errors plus `exponent_tolerance` [0.05] (otherwise
  $\int\|v\|^2 = f(0) - \lim f$ is finite).
- `log_growth`: an escape whose selected rate is below $\alpha/2$ (power growth has
  $\lambda = \alpha$, logarithmic growth 0).
- `BOUNDED`: an integrable velocity, $p \ge$ `bounded_velocity_exponent` [1.1], $f$
  never increased, and either the norm grew by at most `plateau_rtol` [1 %] of
  $\max(\|x\|, 1)$ over the last half window (a shrinking norm included), or the path
  still to travel if $\|v\| \sim t^{-p}$ persists, $\|v(t_c)\|\,t_c/(p-1)$, is that
  small, or every plausible rate is $\le -$`bounded_deceleration` [0.3].
- `UNDECIDED`: everything else — in particular when the plausible rates straddle the
  thresholds ($-0.3 < \lambda < -0.1$ cannot tell a slow escape from a slow
  convergence within the window; `FlowOptions.extend_undecided` continues those).

`CONVERGED` trajectories are re-checked with the same models anchored at their stop
time: one whose tail meets every `ESCAPING` rule becomes `ESCAPING` (float32 Example 4.3
meets $\|v\| \le 10^{-4}$ at $t \approx 10^4$ while $\|x\| \sim \log t$; Example 1.1 with
`gtol=5e-3` at $t \approx 600$; the wobbling log escape of the calibration catalogue at
$t \approx 3\cdot10^4$). Partial evidence does not overturn the stationarity test.
`ESCAPED`, `MAX_STEPS` and `NONFINITE` are kept from the engine; `ESCAPED` trajectories get
an extrapolated limit when their tail allows one. A limit is extrapolated only when the
$f$ fit's residual noise is at most `extrapolation_noise` [2 %] of the tail's decrease;
otherwise the final value (an upper bound of the limit) is kept.

**Cost.** The tail models are the expensive part, so only the trajectories whose verdict
can depend on them get them: trajectories with enough history get the statistics, and of
those the `HORIZON`, `ESCAPED` and `MAX_STEPS` ones and the `CONVERGED` ones whose tail grew
like an escape get the models, gathered (compacted) into sub-batches inside the one compiled
program and fitted on the tail window only (`_window_size` slots); `deceleration` and
`value_exponent` stay NaN for the others (their verdict never depended on them). Those
that reached the horizon with every checkpoint of their tail window have the same points
and weights, so they share one basis of the models (`_template_series`; decided per row).

Calibration: `benchmarks/detector_catalogue.py` (25 landscapes with known fates; see
`docs/concepts/detectors.md` for the confusion matrices); cost: `benchmarks/classify_cost.py`.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._compact import blocks as _blocks
from ._compact import compact as _compact
from ._executables import call_cached
from ._status import Status, status_counts

__all__ = ["classify", "classify_arrays", "Classification", "DetectorOptions"]


class DetectorOptions(eqx.Module):
    r"""Thresholds of the detectors (see the module docstring for the rules).

    All fields are traced, so changing a threshold does not recompile.

    - `tail_decades`: length $w$ of the tail window in decades of time (default 2).
    - `min_tail_decades`: less history than this gives `UNDECIDED` (default 2).
    - `escape_growth`: least relative growth of $\|x\|$ over the last half window for
      `ESCAPING` (default 0.05, i.e. $\alpha \gtrsim 0.02$ over a decade).
    - `escape_deceleration`: largest decay rate of the norm increments, $-\lambda$, that
      a plausible model of an escape may have (default 0.1; logarithmic growth has 0).
      Also the bound on the $f$ rate for a limit $-\infty$.
    - `escape_velocity_exponent`: least $p$ ($\|v\| \sim t^{-p}$) of an escape with a
      finite limit (default 1/2, where $\int \|v\|^2\,dt$ starts to converge).
    - `value_exponent_min`: least $\beta$ in $f - c \sim t^{-\beta}$, for every
      plausible $f$ model, for $f$ to settle (default 0.1).
    - `bounded_deceleration`: least decay rate $-\lambda$ of every plausible norm model
      for `BOUNDED` by decaying increments (default 0.3).
    - `plateau_rtol`: the norm has plateaued when its growth over the last half window,
      or the path length still to travel if $\|v\| \sim t^{-p}$ persists
      ($\|v(t_c)\|\,t_c/(p-1)$), is at most this fraction of $\max(\|x\|, 1)$
      (default 0.01).
    - `bounded_velocity_exponent`: least $p$ for `BOUNDED` (default 1.1:
      $\int \|v\|\,dt$ converges for $p > 1$).
    - `margin`: a model is plausible when its residual sum of squares is within
      `margin` noise variances of the best one (default 4, about two standard errors).
    - `recent_growth`: least ratio of the last quarter window's growth to the selected
      model's prediction for an escape (default 0.3).
    - `recent_velocity_exponent`: largest velocity exponent over the last quarter window
      of an escape (default 2: escapes have $p \le 1$ asymptotically; a trajectory
      settling into a minimum after leaving a saddle late shows local exponents of 8 and
      more there).
    - `exponent_tolerance`: slack of the test $p \le 1/2$ for a limit $-\infty$, on top
      of two standard errors: logarithmic factors ($\|v\| \sim t^{-1/2}(\log t)^k$)
      shift a fitted exponent by about $k/\log t$ (default 0.05).
    - `extrapolation_noise`: largest residual noise of the $f$ fit, relative to the
      tail's decrease of $f$, for the limit to be extrapolated (default 0.02).
    """

    tail_decades: float = 2.0
    min_tail_decades: float = 2.0
    escape_growth: float = 0.05
    escape_deceleration: float = 0.1
    escape_velocity_exponent: float = 0.5
    value_exponent_min: float = 0.1
    bounded_deceleration: float = 0.3
    plateau_rtol: float = 1e-2
    bounded_velocity_exponent: float = 1.1
    margin: float = 4.0
    recent_growth: float = 0.3
    extrapolation_noise: float = 0.02
    exponent_tolerance: float = 0.05
    recent_velocity_exponent: float = 2.0

    def __check_init__(self):
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not np.isfinite(value):
                raise ValueError(f"DetectorOptions.{name} must be finite, got {value!r}.")
        if isinstance(self.tail_decades, (int, float)) and not self.tail_decades > 0:
            raise ValueError(f"DetectorOptions.tail_decades must be > 0, got {self.tail_decades}.")
        if isinstance(self.min_tail_decades, (int, float)) and isinstance(
            self.tail_decades, (int, float)
        ):
            if not 0 < self.min_tail_decades <= self.tail_decades:
                raise ValueError(
                    "DetectorOptions.min_tail_decades must lie in (0, tail_decades], got "
                    f"{self.min_tail_decades} with tail_decades={self.tail_decades}."
                )
        if isinstance(self.escape_deceleration, (int, float)) and isinstance(
            self.bounded_deceleration, (int, float)
        ):
            if not self.escape_deceleration < self.bounded_deceleration:
                raise ValueError(
                    "DetectorOptions: escape_deceleration must be below bounded_deceleration "
                    f"(got {self.escape_deceleration} and {self.bounded_deceleration}); "
                    "otherwise one trajectory could be both escaping and bounded."
                )


class Classification(eqx.Module):
    r"""Per-trajectory verdicts of `jaxflow.classify` (leading axis: trajectories).

    - `status`: refined `jaxflow.Status` (int8);
    - `growth_exponent`: $\alpha$ in $\|x\| \sim t^\alpha$ on the tail (NaN without
      enough history); it tends to 0 for logarithmic growth, see `log_growth`;
    - `log_growth`: the norm grows like $\log t$ rather than a power (escaping only);
    - `limit_value`: extrapolated $\lim f$ for `ESCAPING` and `ESCAPED` trajectories
      when $f$ settles ($-\infty$ when $f$ keeps decreasing without deceleration),
      else the final $f$;
    - `malgrange`: $\|x\|\,\|v(x)\|$ at the last time;
    - `deceleration` ($\gamma = -\lambda$, the decay rate of the norm increments of the
      selected tail model: $-\alpha$ for power growth, 0 for logarithmic growth, $> 0$
      when $\|x\|$ converges), `velocity_exponent` ($p$), `value_exponent` ($\beta$ of
      the selected $f$ model, NaN when $f$ does not fall): the tail statistics behind
      the verdict (NaN where undefined, and for a `CONVERGED` trajectory whose tail did
      not grow like an escape: its verdict needs no tail model, so none is fitted).
    """

    status: jax.Array
    growth_exponent: jax.Array
    log_growth: jax.Array
    limit_value: jax.Array
    malgrange: jax.Array
    deceleration: jax.Array
    velocity_exponent: jax.Array
    value_exponent: jax.Array

    def __len__(self):
        return int(self.status.shape[0])

    def counts(self) -> dict[str, int]:
        """Number of trajectories per status name."""
        return status_counts(self.status)

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k)) for k in self.__dataclass_fields__}

    def __getitem__(self, idx) -> Classification:
        return jax.tree.map(lambda a: a[idx], self)


# --------------------------------------------------------------------------- one trajectory
def _wslope(x, y, w):
    """Weighted least-squares slope of y on x (NaN with fewer than 3 points) and its
    standard error from its own residuals (0 with fewer than 4 points)."""
    x = jnp.where(w > 0, x, 0.0)  # masked entries may be NaN, and 0 * NaN = NaN
    y = jnp.where(w > 0, y, 0.0)
    sw = jnp.sum(w)
    xm = jnp.sum(w * x) / jnp.maximum(sw, 1)
    ym = jnp.sum(w * y) / jnp.maximum(sw, 1)
    sxx = jnp.sum(w * (x - xm) ** 2)
    slope = jnp.sum(w * (x - xm) * (y - ym)) / jnp.where(sxx > 0, sxx, 1.0)
    rss = jnp.sum(w * (y - ym - slope * (x - xm)) ** 2)
    var = rss / jnp.maximum(sw - 2, 1.0) / jnp.where(sxx > 0, sxx, 1.0)
    return (
        jnp.where((sw >= 3) & (sxx > 0), slope, jnp.nan),
        jnp.where(sw >= 4, jnp.sqrt(jnp.maximum(var, 0.0)), 0.0),
    )


# Rates lambda of the tail models y(s) = A + B (e^{lambda (s - s_c)} - 1) / lambda, s = log t:
# lambda > 0 power growth (y ~ t^lambda), lambda = 0 logarithmic (y linear in log t),
# lambda < 0 convergence to A - B / lambda like t^lambda.
_RATES = np.linspace(-1.5, 1.5, 61)


def _basis(lam, u):
    r"""$(e^{\lambda u} - 1)/\lambda$, continuous at $\lambda = 0$ (where it is $u$)."""
    small = jnp.abs(lam) < 1e-6
    safe = jnp.where(small, 1.0, lam)
    return jnp.where(small, u + 0.5 * lam * u**2, jnp.expm1(safe * u) / safe)


def _basis_grid(u):
    """`_basis(_RATES[:, None, None], u[None])`: the rate 0 (the only one below 1e-6 in
    magnitude) is $u$ itself; the others need no branch."""
    zero = int(np.argmin(np.abs(_RATES)))
    nonzero = np.delete(_RATES, zero).astype(np.dtype(u.dtype))[:, None, None]
    phi = jnp.expm1(nonzero * u[None]) * (1 / nonzero)
    return jnp.concatenate([phi[:zero], u[None], phi[zero:]], axis=0)


def _fit(lam, u, y, w):
    """Weighted least squares of y on [1, basis(lam, u)]: (A, B, residual sum of squares).

    Points on axis 0 of `u`, `y`, `w`; any trailing axes are a batch (as is `lam`)."""
    phi = _basis(lam, u)
    sw = jnp.maximum(jnp.sum(w, axis=0), 1.0)
    pm = jnp.sum(w * phi, axis=0) / sw
    ym = jnp.sum(w * y, axis=0) / sw
    spp = jnp.sum(w * (phi - pm) ** 2, axis=0)
    b = jnp.sum(w * (phi - pm) * (y - ym), axis=0) / jnp.where(spp > 0, spp, 1.0)
    a = ym - b * pm
    rss = jnp.sum(w * (y - a - b * phi) ** 2, axis=0)
    return a, b, rss


def _select_rate(dphi, spp, u, y, w, margin, floor):
    r"""Model selection over the rates: the best rate, and the range of rates whose fit is
    within `margin` noise variances of the best (the noise variance estimated from the
    best fit's own residuals, at least `floor`): the profile-likelihood interval.

    `dphi` `(rates, points, batch)` is `_basis(_RATES, u)` minus its weighted mean, zero
    at the points of weight 0, and `spp` `(rates, batch)` its sum of squares: shared by
    the fits of the norm and of $f$; `u`, `y`, `w` are `(points, batch)`. The batch is
    the minor axis, so the sums over points vectorise across trajectories. Residuals are
    formed explicitly (not as a difference of sums of squares), so a fit at the rounding
    level keeps residual sums at the rounding level, also in float32."""
    rates = jnp.asarray(_RATES, y.dtype)[:, None]
    nr = rates.shape[0]
    sw = jnp.maximum(jnp.sum(w, axis=0), 1.0)
    dy = w * (y - jnp.sum(w * y, axis=0) / sw)
    # Sums over points as contractions: XLA:CPU fuses a reduction whose operand depends
    # on another reduction by recomputing it per element (~100x slower at these shapes).
    b = jnp.einsum("rkb,kb->rb", dphi, dy) / jnp.where(spp > 0, spp, 1.0)
    res = dy - b[:, None] * dphi
    rss = jnp.einsum("rkb,rkb->rb", res, res)
    rss = jnp.where(jnp.isfinite(rss), rss, jnp.inf)
    j = jnp.argmin(rss, axis=0)
    take = lambda a, i: jnp.take_along_axis(a, i[None], axis=0)[0]  # noqa: E731
    rss_best = take(rss, j)
    m = jnp.sum(w, axis=0)
    sigma2 = jnp.maximum(rss_best / jnp.maximum(m - 3, 1.0), floor)
    accepted = rss <= rss_best + margin * sigma2
    lo = jnp.min(jnp.where(accepted, rates, jnp.inf), axis=0)
    hi = jnp.max(jnp.where(accepted, rates, -jnp.inf), axis=0)
    # Refine the best rate between grid points (parabola through three residual sums).
    jm, jp = jnp.clip(j - 1, 0, nr - 1), jnp.clip(j + 1, 0, nr - 1)
    r0, r1, r2 = take(rss, jm), rss_best, take(rss, jp)
    curv = r0 - 2 * r1 + r2
    step = (_RATES[1] - _RATES[0]).astype(y.dtype)
    shift = jnp.where((jm < j) & (jp > j) & (curv > 0), 0.5 * step * (r0 - r2) / curv, 0.0)
    best = jnp.asarray(_RATES, y.dtype)[j] + jnp.clip(shift, -step, step)
    a_best, b_best, _ = _fit(best, u, y, w)
    b_lo = take(b, jnp.argmax(jnp.where(accepted, -rates, -jnp.inf), axis=0))
    b_hi = take(b, jnp.argmax(jnp.where(accepted, rates, -jnp.inf), axis=0))
    return best, lo, hi, a_best, b_best, jnp.minimum(b_lo, b_hi), jnp.sqrt(sigma2)


def _tail_span(ts, x_norm, f_end, s_end, t_end, opt):
    r"""The half-window ratio $q$ of a trajectory's tail, whether its final state is finite
    (`end_ok`), and whether it ran long enough for a verdict (`min_tail_decades`)."""
    end_ok = (t_end > 0) & jnp.isfinite(x_norm) & jnp.isfinite(f_end) & jnp.isfinite(s_end)
    q = jnp.minimum(10.0 ** (opt.tail_decades / 2), jnp.sqrt(jnp.maximum(t_end / ts[1], 1.0)))
    long_enough = end_ok & (2 * jnp.log10(q) >= opt.min_tail_decades * (1 - 1e-6))
    return q, end_ok, long_enough


def _tail(ts, norm, fv, stat, x_norm, f_end, s_end, t_end, status, opt):
    r"""Everything but the tail models, for one trajectory: the anchors, the slopes, the
    cheap necessary conditions of each verdict, and the series the models are fitted
    on."""
    dtype = norm.dtype
    eps = jnp.finfo(dtype).eps
    tiny = jnp.finfo(dtype).tiny
    # Checkpoints after t = 0 plus the final state (which may lie between checkpoints).
    tk = ts[1:]
    nk, fk, sk = norm[1:], fv[1:], stat[1:]
    valid = jnp.isfinite(nk) & jnp.isfinite(fk) & jnp.isfinite(sk) & (tk <= t_end)
    last_cp = jnp.max(jnp.where(valid, tk, 0.0))
    q, end_ok, enough_time = _tail_span(ts, x_norm, f_end, s_end, t_end, opt)
    end_new = end_ok & (t_end > last_cp * (1 + 16 * eps))
    # Per-trajectory scalars are materialised before the sums that use them: XLA:CPU
    # would otherwise recompute a reduction inside the loop of each dependent reduction.
    end_new, last_cp = jax.lax.optimization_barrier((end_new, last_cp))
    # Forward fill with the final state so that times are non-decreasing for interp.
    norms_ff = jnp.concatenate([jnp.where(valid, nk, x_norm), x_norm[None]])
    values_ff = jnp.concatenate([jnp.where(valid, fk, f_end), f_end[None]])
    # Logarithms of the shared checkpoint times are taken once for the batch (unbatched
    # under vmap); only the final time is per trajectory.
    log_tk = jnp.log(jnp.maximum(tk, tiny))
    log_t_end = jnp.log(jnp.maximum(t_end, tiny))
    log_times_ff = jnp.concatenate([jnp.where(valid, log_tk, log_t_end), log_t_end[None]])

    # The series: the checkpoints then the final state (masked by `has_point`).
    times = jnp.concatenate([tk, t_end[None]])
    norms = jnp.concatenate([nk, x_norm[None]])
    speeds = jnp.concatenate([sk, s_end[None]])
    has_point = jnp.concatenate([valid, end_new[None]])
    log_times = jnp.concatenate([log_tk, log_t_end[None]])
    last = jnp.max(jnp.where(valid, jnp.arange(tk.shape[0]), -1))  # last valid checkpoint

    t_c = t_end
    logq = jnp.log(q)
    lt_c = log_t_end
    lt_b, lt_a = lt_c - logq, lt_c - 2 * logq

    def at(lt, vals):
        # Linear interpolation on the sorted log_times_ff (counting instead of jnp.interp's
        # searchsorted keeps the compiled program small).
        m = log_times_ff.shape[0]
        j = jnp.clip(jnp.sum(log_times_ff <= lt) - 1, 0, m - 2)
        x0, x1 = log_times_ff[j], log_times_ff[j + 1]
        w = jnp.clip((lt - x0) / jnp.where(x1 > x0, x1 - x0, 1.0), 0.0, 1.0)
        return vals[j] + w * (vals[j + 1] - vals[j])

    norm_a, norm_b = at(lt_a, norms_ff), at(lt_b, norms_ff)
    value_a, value_b = at(lt_a, values_ff), at(lt_b, values_ff)
    norm_m = at(lt_c - 0.5 * logq, norms_ff)
    norm_c, value_c = x_norm, f_end

    slack = 1e-9
    in_last = has_point & (log_times >= lt_b - slack) & (times <= t_c)
    enough = enough_time & (jnp.sum(in_last) >= 3)

    w_last = in_last.astype(dtype)
    # Logarithms once (XLA:CPU would otherwise recompute them inside every sum below).
    log_norms, log_speeds = jax.lax.optimization_barrier(
        (jnp.log(jnp.maximum(norms, tiny)), jnp.log(jnp.maximum(speeds, tiny)))
    )
    alpha, _ = _wslope(log_times, log_norms, w_last)
    p_vel, p_se = _wslope(log_times, log_speeds, w_last)
    p_vel = -p_vel
    # The velocity exponent over the last quarter window only: where a trajectory that
    # left a saddle settles into a minimum, ||v|| collapses (exponentially: local
    # exponents of 8 to 14 within a decade) while the half-window slope, mixing the
    # departure's bump with the collapse, stays moderate with a large standard error.
    in_quarter = has_point & (log_times >= lt_c - 0.5 * logq - slack) & (times <= t_c)
    p_recent, _ = _wslope(log_times, log_speeds, in_quarter.astype(dtype))
    p_recent = -p_recent

    # What the tail models are fitted to (scaled to order one).
    n_scale = jnp.maximum(jnp.abs(norm_c), 1.0)
    f_span = jnp.maximum(jnp.abs(value_a - value_c), 16 * eps * jnp.maximum(jnp.abs(value_c), 1.0))
    # Where the tail models' series come from (built by `_series` for the rows that
    # need them).
    anchors = dict(
        last=last, end_new=end_new, lt_a=lt_a, lt_c=lt_c, n_scale=n_scale, value_c=value_c,
        f_span=f_span, floor_f=(16 * eps * jnp.maximum(jnp.abs(value_c), 1.0) / f_span) ** 2,
    )

    # Necessary conditions of the verdicts that need no model.
    n_noise = 16 * eps * jnp.maximum(norm_c, 1.0)
    f_noise = 16 * eps * jnp.maximum(jnp.abs(value_c), 1.0)
    d1, d2 = norm_b - norm_a, norm_c - norm_b
    e1, e2 = value_a - value_b, value_b - value_c
    f_increased = (e2 < -f_noise) | (e1 < -f_noise)
    # An unbounded trajectory has an infinite path length, so a velocity that is
    # integrable beyond doubt (p above the bound by more than two standard errors)
    # rules an escape out: this separates a slow escape from the transient growth of a
    # trajectory that converges exponentially fast (p >> 1).
    # An escape keeps moving: over the last quarter window its ||v|| decays no faster
    # than t^-recent_velocity_exponent (NaN, too few points, does not rule it out).
    path_diverges = (p_vel - 2 * p_se < opt.bounded_velocity_exponent) & ~(
        p_recent > opt.recent_velocity_exponent
    )
    may_escape = (
        enough & (d2 >= opt.escape_growth * norm_c) & (d1 > n_noise) & path_diverges
        & ~f_increased
    )
    # The models decide HORIZON trajectories, may overturn CONVERGED ones (only to
    # ESCAPING), and extrapolate the limits of ESCAPED ones; the rest keep the engine's
    # status whatever the models say.
    needs_models = enough & (
        (status == Status.HORIZON)
        | (status == Status.ESCAPED)
        | (status == Status.MAX_STEPS)
        | ((status == Status.CONVERGED) & may_escape)
    )
    stats = dict(
        status=status, enough=enough, needs_models=needs_models, alpha=alpha, p_vel=p_vel,
        p_se=p_se, path_diverges=path_diverges, f_increased=f_increased, d1=d1, d2=d2,
        d4=norm_c - norm_m, e1=e1, e2=e2, n_noise=n_noise, f_noise=f_noise,
        norm_a=norm_a, norm_c=norm_c, value_c=value_c, f_end=f_end, x_norm=x_norm,
        s_end=s_end, t_c=t_c, logq=logq, n_scale=n_scale, f_span=f_span,
    )
    return stats, anchors


def _series(ts, norm, fv, stat, x_norm, f_end, t_end, anchors, window):
    r"""What the tail models of one trajectory are fitted to: $u = \log t - \log t_c$,
    the norm over its final value, $f$ relative to its tail decrease, and the 0/1 weights
    of the tail, on the tail window (the last `window - 1` checkpoint slots up to the last
    valid checkpoint, then the final state; `window` covers every checkpoint of the tail,
    `_window_size`)."""
    dtype = norm.dtype
    tiny = jnp.finfo(dtype).tiny
    tk, nk, fk, sk = ts[1:], norm[1:], fv[1:], stat[1:]
    kk = tk.shape[0]
    if window is None or window - 1 >= kk:
        idx = jnp.arange(kk)
    else:
        idx = anchors["last"] - (window - 2) + jnp.arange(window - 1)
    ok = idx >= 0
    idx = jnp.clip(idx, 0, kk - 1)
    tw, nw, fw = tk[idx], nk[idx], fk[idx]
    valid = ok & jnp.isfinite(nw) & jnp.isfinite(fw) & jnp.isfinite(sk[idx]) & (tw <= t_end)
    times = jnp.concatenate([tw, t_end[None]])
    log_times = jnp.concatenate([jnp.log(jnp.maximum(tk, tiny))[idx], anchors["lt_c"][None]])
    norms = jnp.concatenate([nw, x_norm[None]])
    values = jnp.concatenate([fw, f_end[None]])
    has_point = jnp.concatenate([valid, anchors["end_new"][None]])
    in_tail = has_point & (log_times >= anchors["lt_a"] - 1e-9) & (times <= t_end)
    return dict(
        u=jnp.where(in_tail, log_times - anchors["lt_c"], 0.0),
        y_n=jnp.where(in_tail, norms / anchors["n_scale"], 0.0),
        y_f=jnp.where(in_tail, (values - anchors["value_c"]) / anchors["f_span"], 0.0),
        w=in_tail.astype(dtype),
        floor_f=anchors["floor_f"],
    )


def _centred_basis(u, w):
    """The basis of every rate at the points `u` minus its weighted mean (zero where
    `w` is), and its sum of squares: `(rates, points, batch)`, `(rates, batch)`."""
    phi = _basis_grid(u)
    pm = jnp.einsum("rkb,kb->rb", phi, w) / jnp.maximum(jnp.sum(w, axis=0), 1.0)
    dphi = w * (phi - pm[:, None])
    return dphi, jnp.einsum("rkb,rkb->rb", dphi, dphi)


def _template_series(ts, opt, window, dtype):
    """The series of a trajectory that reached the horizon `ts[-1]` with every
    checkpoint finite: the points `u` and weights `w` that such trajectories share."""
    ones = jnp.ones(ts.shape, dtype)
    one, t_end = jnp.ones((), dtype), ts[-1]
    _, anchors = _tail(ts, ones, ones, ones, one, one, one, t_end,
                       jnp.asarray(Status.HORIZON, jnp.int8), opt)
    return _series(ts, ones, ones, ones, one, one, t_end, anchors, window)


def _models(fit, opt, basis=None):
    """The tail models (the costly part: every rate, both series) of a batch of
    trajectories, the batch on the last axis of `fit["u"]` etc. `(points, batch)`.

    `basis`: the trajectories' `_centred_basis`, when the caller has it (shared by
    trajectories with the same `u` and `w`)."""
    u, w = fit["u"], fit["w"]
    dtype = u.dtype
    eps = jnp.finfo(dtype).eps
    dphi, spp = _centred_basis(u, w) if basis is None else basis
    shared = (dphi, spp, u)
    lam_n, lam_n_lo, lam_n_hi, a_n, b_n, b_n_min, _ = _select_rate(
        *shared, fit["y_n"], w, opt.margin, (16 * eps) ** 2
    )
    lam_f, lam_f_lo, lam_f_hi, a_f, b_f, _, sig_f = _select_rate(
        *shared, fit["y_f"], w, opt.margin, fit["floor_f"]
    )
    return dict(
        lam_n=lam_n, lam_n_lo=lam_n_lo, lam_n_hi=lam_n_hi, b_n=b_n, b_n_min=b_n_min,
        lam_f=lam_f, lam_f_lo=lam_f_lo, lam_f_hi=lam_f_hi, a_f=a_f, b_f=b_f, sig_f=sig_f,
    )


def _verdict(s, m, opt):
    """The rules (module docstring), from the statistics `s` and the models `m` (NaN
    where the models were not needed)."""
    dtype = s["alpha"].dtype
    enough, status = s["enough"], s["status"]
    gamma = -m["lam_n"]  # deceleration of the norm increments (0 for log t growth)
    beta = -m["lam_f"]  # f - lim f ~ t^-beta
    # The fitted model's growth over the last quarter window: a trajectory that grew and
    # then stopped (moving between two critical points) falls short of it.
    fit_d4 = m["b_n"] * (0.0 - _basis(m["lam_n"], -0.5 * s["logq"])) * s["n_scale"]

    f_flat = (jnp.abs(s["e1"]) <= s["f_noise"]) & (jnp.abs(s["e2"]) <= s["f_noise"])
    f_falls = (m["b_f"] < 0) & (s["e1"] + s["e2"] > s["f_noise"])
    # Extrapolated limit from the selected model (Aitken's rule is its three-point
    # version; both are exact for f - c proportional to t^-beta).
    extrap = s["value_c"] + s["f_span"] * (
        m["a_f"] - m["b_f"] / jnp.where(m["lam_f"] < 0, m["lam_f"], -1.0)
    )
    settles = f_flat | (f_falls & (m["lam_f_hi"] <= -opt.value_exponent_min))
    diverges = f_falls & (m["lam_f_lo"] >= -opt.escape_deceleration)

    # --- escape evidence: every model within the margin has increments decaying no faster
    # than t^-escape_deceleration (log t growth has none), and the norm grew.
    norm_c, p_vel = s["norm_c"], s["p_vel"]
    growing = (
        (s["d2"] >= opt.escape_growth * norm_c)
        & (s["d1"] > s["n_noise"])
        & (m["b_n_min"] > 0)
        & (s["d4"] >= opt.recent_growth * fit_d4)
    )
    not_decel = m["lam_n_lo"] >= -opt.escape_deceleration
    sustained = enough & growing & not_decel & s["path_diverges"] & ~s["f_increased"]
    escape_finite = sustained & settles & (p_vel > opt.escape_velocity_exponent)
    # f -> -inf needs more: the norm at least doubled over the tail (a trajectory that
    # accelerates away from a saddle at the horizon looks the same for a while), and
    # ||v|| ~ t^-p with p <= 1/2 (up to two standard errors): otherwise
    # int ||v||^2 dt = f(0) - lim f converges.
    escape_inf = (
        sustained
        & diverges
        & (norm_c >= 2 * s["norm_a"])
        & (p_vel - 2 * s["p_se"] <= opt.escape_velocity_exponent + opt.exponent_tolerance)
        & ~escape_finite
    )
    log_growth = sustained & (m["lam_n"] < s["alpha"] / 2)

    # --- bounded evidence
    integrable = p_vel >= opt.bounded_velocity_exponent
    # If ||v|| keeps decaying like t^-p (p > 1), the path left to travel is at most
    # int_{t_c}^inf ||v(t_c)|| (t / t_c)^-p dt = ||v(t_c)|| t_c / (p - 1).
    remaining_path = s["s_end"] * s["t_c"] / jnp.where(integrable, p_vel - 1, 1.0)
    scale = jnp.maximum(norm_c, 1.0)
    plateau = (s["d2"] <= opt.plateau_rtol * scale) | (remaining_path <= opt.plateau_rtol * scale)
    decays = (s["d1"] > s["n_noise"]) & (m["lam_n_hi"] <= -opt.bounded_deceleration)
    bounded = enough & (plateau | decays) & integrable & ~s["f_increased"]

    refined_horizon = jnp.where(
        escape_finite | escape_inf,
        Status.ESCAPING,
        jnp.where(bounded, Status.BOUNDED, Status.UNDECIDED),
    )
    # CONVERGED (positive evidence: ||v|| <= gtol) is kept unless the tail is a complete
    # escape signature; partial evidence does not overturn it.
    refined_converged = jnp.where(escape_finite | escape_inf, Status.ESCAPING, Status.CONVERGED)
    new_status = jnp.where(
        status == Status.HORIZON,
        refined_horizon,
        jnp.where(status == Status.CONVERGED, refined_converged, status),
    ).astype(jnp.int8)

    is_esc = new_status == Status.ESCAPING
    extrapolable = enough & settles & ~s["f_increased"]
    # Only escapes are extrapolated: along them f settles like a power of t. A bounded
    # trajectory converging exponentially has tail decrements dominated by its
    # transient, where extrapolation overshoots; its final f is the better estimate.
    escaped = new_status == Status.ESCAPED
    f_end, value_c = s["f_end"], s["value_c"]
    limit = jnp.where(
        (is_esc & escape_inf & ~escape_finite) | (escaped & enough & diverges),
        -jnp.inf,
        jnp.where(
            (is_esc | (escaped & (p_vel > opt.escape_velocity_exponent))) & extrapolable,
            # A noisy tail (wobble) makes the end slope, and so the extrapolation,
            # unreliable: the final value (an upper bound of the limit) is kept then.
            jnp.where(f_flat | (m["sig_f"] > opt.extrapolation_noise), value_c, extrap),
            f_end,
        ),
    )
    nan = jnp.asarray(jnp.nan, dtype)
    modelled = s["needs_models"]
    return dict(
        status=new_status,
        growth_exponent=jnp.where(enough, s["alpha"], nan),
        log_growth=log_growth & is_esc,
        limit_value=limit.astype(dtype),
        malgrange=(s["x_norm"] * s["s_end"]).astype(dtype),
        deceleration=jnp.where(enough & modelled, gamma, nan),
        velocity_exponent=jnp.where(enough, p_vel, nan),
        value_exponent=jnp.where(enough & modelled & f_falls, beta, nan),
    )


def _block(n: int) -> int:
    """Sub-batch size of the tail models: a 32nd of the batch (at least 16). Their
    intermediates are `(rates, points, rows)`: larger blocks leave the caches (a 4th of
    10^4 rows is 5x slower per row on a 2-core EPYC), smaller ones pay per iteration."""
    return max(16, n // 32)


# Batches up to this many rows are classified in one pass over every row (a smaller
# program, compiled in about half the time); larger ones (a scan's chunks) in compacted
# sub-batches of the rows that need each stage. Both give the same verdicts.
DIRECT_MAX_ROWS = 2048


def _classify_batch(ts, cp_norm, cp_f, cp_stat, x_norm, f, stat, t, status, opt, window=None,
                    blocked=None):
    opt = jax.tree.map(lambda v: jnp.asarray(v, cp_norm.dtype), opt)
    n = cp_norm.shape[0]
    blocked = n > DIRECT_MAX_ROWS if blocked is None else blocked
    rows_in = (cp_norm, cp_f, cp_stat, x_norm, f, stat, t, status)
    # Only trajectories that ran long enough for a tail (as `_tail` decides it) get
    # statistics: most of a scan converges early and keeps its engine status whatever its
    # checkpoints say.
    _, _, long_enough = _tail_span(ts, x_norm, f, stat, t, opt)

    def models_of(*rows):
        series = jax.vmap(lambda *r: _series(ts, *r, window))(*rows)
        # Trajectories on the minor axis: the sums over points vectorise across them.
        return _models(jax.tree.map(lambda a: a.T, series), opt)

    # The tail models cost ~100x the rest; only trajectories whose verdict can depend on
    # them get them (HORIZON, ESCAPED, MAX_STEPS, and CONVERGED ones that grew like an
    # escape); the others get NaN.
    if blocked:
        # Rows with a tail gathered to the front (compacted order c1), those that need
        # the models compacted again (order c2), each processed `_block(n)` at a time:
        # a scan that mostly converges pays for a few blocks.
        order1, count1, slot1 = _compact(long_enough)
        stats, anchors = _blocks(
            jax.vmap(lambda *r: _tail(ts, *r, opt)),
            lambda k: jax.tree.map(lambda a: a[order1[k]], rows_in), count1, n, _block(n),
        )
        need = stats["needs_models"] & (jnp.arange(n) < count1)
        order2, count2, slot2 = _compact(need)

        def models_at(k):
            c = order2[k]
            r = order1[c]
            return (cp_norm[r], cp_f[r], cp_stat[r], x_norm[r], f[r], t[r],
                    jax.tree.map(lambda a: a[c], anchors))

        # Trajectories that reached the horizon with every checkpoint of their tail
        # window (most of those that need models in a scan) have the same points `u`
        # and weights: they share one basis (the rates' `expm1` and centring, half the
        # models' cost). Whether a row shares is decided by its own series alone.
        size = _block(n)
        series = _blocks(jax.vmap(lambda *r: _series(ts, *r, window)), models_at, count2, n,
                         size)
        tmpl = _template_series(ts, opt, window, cp_norm.dtype)
        in_c2 = jnp.arange(n) < count2
        shares = (jnp.all(series["u"] == tmpl["u"], axis=1)
                  & jnp.all(series["w"] == tmpl["w"], axis=1) & in_c2)
        basis = _centred_basis(tmpl["u"][:, None], tmpl["w"][:, None])
        # The sharing rows first, then the others: blocks are all sharing but one.
        order3, count3, slot3 = _compact(shares)
        order4, _, slot4 = _compact(~shares & in_c2)
        order = jnp.where(jnp.arange(n) < count3, order3,
                          order4[jnp.clip(jnp.arange(n) - count3, 0, n - 1)])

        def models_block(fit, sh):
            # A row's basis is the template's if it shares, else its own: decided per
            # row (the block only skips computing own bases that no row uses).
            own = jax.lax.cond(
                jnp.all(sh), lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                                                  jax.eval_shape(_centred_basis, fit["u"],
                                                                 fit["w"])),
                lambda: _centred_basis(fit["u"], fit["w"]))
            dphi = jnp.where(sh[None, None], basis[0], own[0])
            spp = jnp.where(sh[None], basis[1], own[1])
            return _models(fit, opt, (dphi, spp))

        def fits_at(k):
            # Rows from `count2` on are junk: marked sharing, so they cost nothing.
            j = order[k]
            return (jax.tree.map(lambda a: a[j].T, series), shares[j] | ~in_c2[k])

        models = _blocks(models_block, fits_at, count2, n, size)
        back2 = jnp.clip(jnp.where(shares, slot3, count3 + slot4), 0, n - 1)
        models = jax.tree.map(lambda m: m[back2], models)
        models = jax.tree.map(
            lambda m: jnp.where(need, m[jnp.clip(slot2, 0, n - 1)], jnp.nan), models
        )
        back = jnp.clip(slot1, 0, n - 1)
    else:
        stats, anchors = jax.vmap(lambda *r: _tail(ts, *r, opt))(*rows_in)
        need = stats["needs_models"] & long_enough
        models = models_of(cp_norm, cp_f, cp_stat, x_norm, f, t, anchors)
        models = jax.tree.map(lambda m: jnp.where(need, m, jnp.nan), models)
        back = jnp.arange(n)
    verdict = jax.vmap(lambda s_, m_: _verdict(s_, m_, opt))(stats, models)

    # Rows without a tail: what `_verdict` says without evidence (HORIZON -> UNDECIDED,
    # the other engine statuses kept, the final value as the limit, no statistics).
    nan = jnp.full_like(f, jnp.nan)
    fallback = dict(
        status=jnp.where(status == Status.HORIZON, Status.UNDECIDED, status).astype(jnp.int8),
        growth_exponent=nan, log_growth=jnp.zeros_like(long_enough), limit_value=f,
        malgrange=x_norm * stat, deceleration=nan, velocity_exponent=nan, value_exponent=nan,
    )
    return jax.tree.map(lambda v, d: jnp.where(long_enough, v[back], d), verdict, fallback)


def _as_array(v, dtype, on_host: bool):
    if on_host and not isinstance(v, jax.core.Tracer):
        return np.asarray(v, dtype)
    return jnp.asarray(v, dtype)


def _on_cpu(a) -> bool:
    try:
        return all(d.platform == "cpu" for d in a.devices())
    except Exception:  # tracers, foreign array types
        return False


def _padded_rows(n: int) -> int:
    """Rows a batch of `n` is padded to, so that batches of similar size share one
    compiled program: the next power of two (at least 16) below 4096 rows; above, none
    for a multiple of 16 (a scan's chunks all have the chunk size), else a multiple of
    an eighth to a quarter of `n`'s power of two (at most 25 % padding)."""
    n = int(n)
    if n < 4096:
        return max(16, 1 << max(n - 1, 1).bit_length())
    if n % 16 == 0:
        return n
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step


def _window_size(ts, tail_decades) -> int | None:
    """Slots of the tail window: the most checkpoints of `ts` in any span of
    `tail_decades` decades (counted with a margin above float32 rounding of the
    logarithms), plus the final state; `None` (the whole series) when the threshold is
    not a concrete number."""
    try:
        w = float(tail_decades)
        lt = np.log(np.asarray(ts, np.float64)[1:])
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None
    if lt.shape[0] == 0 or not np.isfinite(w):
        return None
    lo = np.searchsorted(lt, lt - w * np.log(10.0) * (1 + 1e-6) - 1e-9, side="left")
    most = int(np.max(np.arange(lt.shape[0]) - lo + 1))
    return most + 1


# One program for every path (the classification of a scan's chunk is the same program,
# stored, `jaxflow._executables`): its verdicts and statistics must not depend on which
# path computed them. Without XLA:CPU's fusion emitters it compiled faster in a process
# (1.67 -> 1.28 s for 1024 rows) but slower as a stored executable, which is compiled as
# one object file (2.33 -> 2.68 s for a chunk of 10^4), and with the emitters on one path
# only, `deceleration` differed in the last bit for a few rows: not done.
_classify_arrays = jax.jit(_classify_batch, static_argnames=("window", "blocked"))


def classify_arrays(
    ts,
    cp_norm,
    cp_f,
    cp_stat,
    x_norm,
    f,
    stationarity,
    t,
    status,
    options: DetectorOptions | None = None,
) -> Classification:
    """`classify` on plain arrays (e.g. columns read back from a stored scan).

    `ts` `(K,)`; `cp_*` `(n, K)`; `x_norm`, `f`, `stationarity`, `t`, `status` `(n,)`.
    """
    options = DetectorOptions() if options is None else options
    cp_norm = jnp.asarray(cp_norm)
    dtype = cp_norm.dtype if jnp.issubdtype(cp_norm.dtype, jnp.floating) else jnp.float32
    n, k = cp_norm.shape
    if jnp.shape(ts) != (k,):
        raise ValueError(f"classify: ts has shape {jnp.shape(ts)}, expected ({k},) like cp_norm.")
    for name, a in (("cp_f", cp_f), ("cp_stat", cp_stat)):
        if jnp.shape(a) != (n, k):
            raise ValueError(f"classify: {name} has shape {jnp.shape(a)}, expected {(n, k)}.")
    for name, a in (
        ("x_norm", x_norm),
        ("f", f),
        ("stationarity", stationarity),
        ("t", t),
        ("status", status),
    ):
        if jnp.shape(a) != (n,):
            raise ValueError(f"classify: {name} has shape {jnp.shape(a)}, expected ({n},).")
    # Pad the batch so that batches of similar size share one compiled program (padded
    # rows have status RUNNING, which no rule touches).
    n_pad = _padded_rows(n)

    # On the host (numpy inputs, or arrays on a CPU device) numpy pads in one copy; eager
    # `jnp.pad` dispatches several small programs per column.
    on_host = all(
        isinstance(a, np.ndarray) or _on_cpu(a)
        for a in (cp_norm, cp_f, cp_stat, x_norm, f, stationarity, t, status)
    )

    def cast(a, dt=dtype, fill=np.nan):
        if n_pad == n:  # a scan's chunk: the arrays go to the program as they are
            return jnp.asarray(a, dt) if isinstance(a, jax.Array) else np.asarray(a, dt)
        if on_host:  # numpy arguments go to the program as they are (no eager dispatch)
            a = np.asarray(a, dt)
            out = np.full((n_pad,) + a.shape[1:], fill, dt)
            out[:n] = a
            return out
        a = jnp.asarray(a, dt)
        pad = [(0, n_pad - n)] + [(0, 0)] * (a.ndim - 1)
        return jnp.pad(a, pad, constant_values=fill)

    args = (
        np.asarray(ts, dtype) if on_host else jnp.asarray(ts, dtype),
        cast(cp_norm),
        cast(cp_f),
        cast(cp_stat),
        cast(x_norm),
        cast(f),
        cast(stationarity),
        cast(t),
        cast(status, jnp.int8, 0),
        # Thresholds as arrays: traced, and never baked into a stored executable.
        jax.tree.map(lambda v: _as_array(v, dtype, on_host), options),
    )
    window = _window_size(ts, options.tail_decades)
    # Inside a scan of a built-in problem the program comes from the executable cache
    # (`jaxflow._executables`); elsewhere it is traced and compiled as usual.
    program = functools.partial(_classify_batch, window=window)
    out = call_cached(
        functools.update_wrapper(program, _classify_batch), args,
        static={"fn": "classify", "window": window}, compiler_options={}, problem_free=True,
    )
    if out is None:
        out = _classify_arrays(*args, window=window)
    return Classification(**{k: v if n_pad == n else v[:n] for k, v in out.items()})


def classify(
    result,
    *,
    options: DetectorOptions | None = None,
    horizon: float | None = None,
    **thresholds,
) -> Classification:
    r"""Refines the engine's statuses from the checkpoints (jit-compiled, vectorised).

    `HORIZON` becomes `ESCAPING`, `BOUNDED` or `UNDECIDED`; a `CONVERGED` trajectory whose
    tail is a complete escape signature becomes `ESCAPING`; the other engine statuses are
    kept. The rules and statistics are in the module docstring of `jaxflow._detect`;
    Remark 3.3 of Josz & Li (2023) is the prototype of an escape caught without reaching
    any radius ($\|x\| \sim (8t)^{1/4}$).

    **Arguments:**

    - `result`: a `jaxflow.FlowResult` (from `flow` or `descend`).
    - `options`: a `DetectorOptions`, or its fields as keywords
      (`classify(res, tail_decades=1.5)`).
    - `horizon`: classify as if the run had stopped at the last checkpoint time
      $\le$ `horizon` (trajectories still running then count as `HORIZON` there). Shows
      when a verdict was first reached, without integrating again.

    **Returns:** a `jaxflow.Classification`.
    """
    # Duck-typed (`jaxflow._flow` imports this module to extend undecided trajectories).
    if not all(hasattr(result, k) for k in ("ts", "cp_norm", "cp_f", "cp_stat", "status", "x")):
        raise TypeError(
            f"classify: `result` must be a jaxflow.FlowResult, got {type(result).__name__}."
        )
    if options is not None and thresholds:
        raise TypeError("classify: pass either `options=` or threshold keywords, not both.")
    if options is None:
        unknown = set(thresholds) - set(DetectorOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(
                f"classify: unknown option(s) {sorted(unknown)}; valid: "
                f"{sorted(DetectorOptions.__dataclass_fields__)}."
            )
        options = DetectorOptions(**{k: float(v) for k, v in thresholds.items()})
    elif not isinstance(options, DetectorOptions):
        raise TypeError(
            f"classify: `options` must be a DetectorOptions, got {type(options).__name__}."
        )
    cols = (
        result.cp_norm,
        result.cp_f,
        result.cp_stat,
        result.norm,
        result.f,
        result.stationarity,
        result.t,
        result.status,
    )
    if horizon is not None:
        cols = _truncate(result.ts, *cols, horizon=horizon)
    return classify_arrays(result.ts, *cols, options)


def _truncate(ts, cp_norm, cp_f, cp_stat, x_norm, f, stat, t, status, *, horizon):
    """The columns as they would be had the run stopped at checkpoint `ts[k] <= horizon`."""
    ts_np = np.asarray(ts, np.float64)
    if not (np.isfinite(horizon) and horizon > 0):
        raise ValueError(f"classify: horizon must be a positive time, got {horizon!r}.")
    k = int(np.searchsorted(ts_np, horizon * (1 + 1e-9), side="right")) - 1
    if k < 1:
        raise ValueError(
            f"classify: horizon={horizon!r} is before the first checkpoint {ts_np[1]:g}."
        )
    t_k = jnp.asarray(ts)[k]
    running = jnp.asarray(t) > t_k * (1 + 1e-6)
    keep = jnp.arange(ts_np.shape[0]) <= k
    mask = lambda a: jnp.where(keep[None, :], a, jnp.nan)  # noqa: E731
    pick = lambda late, a: jnp.where(running, late, a)  # noqa: E731
    return (
        mask(cp_norm),
        mask(cp_f),
        mask(cp_stat),
        pick(cp_norm[:, k], x_norm),
        pick(cp_f[:, k], f),
        pick(cp_stat[:, k], stat),
        pick(t_k, t),
        pick(jnp.int8(Status.HORIZON), jnp.asarray(status)).astype(jnp.int8),
    )
