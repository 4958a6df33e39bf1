r"""A catalogue of landscapes with known fates, to calibrate the detectors.

Every landscape comes with a region of starts whose fate is known from the landscape
itself (closed-form flows, or a theorem applied to the landscape):

- **escaping**: $f$ bounded below along the flow and no critical point in the region the
  flow can reach, so no trajectory is bounded (a bounded trajectory of a gradient flow
  of a real-analytic $f$ converges to a critical point, Łojasiewicz); or $f \to -\infty$;
- **bounded**: $f$ coercive, or a closed-form flow that converges.

Where a landscape has no closed-form flow (wobble, rotating direction, plateaus, late
saddle departures, the paper's examples), `benchmarks/detector_catalogue.py` checks the
fate with a float64 SciPy integration to ten times the longest horizon, and its result is
recorded in `benchmarks/results/detector_catalogue-*.json`.

All landscapes live on $\mathbb{R}^4$ (unused coordinates start at 0 and stay there) so
that one compiled program integrates the whole catalogue: `catalogue_problem()` selects
the landscape by a fifth coordinate that the flow never moves (its gradient is
stopped) and that is scaled by $10^{-4}$: it adds at most $(2.4\cdot10^{-3})^2$ to
$\|x\|^2$, far below the detectors' resolution (the escaping trajectories have $\|x\| > 1$).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

DIM = 4
SELECT_SCALE = 1e-4
ESCAPING, BOUNDED = "escaping", "bounded"


@dataclasses.dataclass(frozen=True)
class Landscape:
    """One entry: `f` on $\\mathbb{R}^4$, a start sampler, the fate of those starts."""

    name: str
    family: str
    fate: str  # ESCAPING or BOUNDED (for every start of `starts`)
    f: Callable
    starts: Callable  # (rng: np.random.Generator, n) -> (n, DIM) float64
    reference: str  # why the fate is known
    check_with_scipy: bool = False


def _pad(cols, n):
    out = np.zeros((n, DIM))
    for j, c in enumerate(cols):
        out[:, j] = c
    return out


def _signed(rng, n, lo, hi):
    return rng.choice([-1.0, 1.0], n) * rng.uniform(lo, hi, n)


def _line(lo, hi, signed=True):
    def sample(rng, n):
        x = _signed(rng, n, lo, hi) if signed else rng.uniform(lo, hi, n)
        return _pad([x], n)

    return sample


def _box(*ranges):
    def sample(rng, n):
        return _pad([rng.uniform(lo, hi, n) for lo, hi in ranges], n)

    return sample


def _sigmoid(z):
    return 1.0 / (1.0 + jnp.exp(-z))


def _r(z, k=2):
    return jnp.sqrt(jnp.sum(z[:k] ** 2))


def _example_1_1(z):
    x1, x2, y1, y2 = z[0], z[1], z[2], z[3]
    return (x1 * y1 - 1) ** 2 + (x2 * y1 - 1) ** 2 + (x2 * y2 - 1) ** 2


def _example_4_3(w):
    return 0.5 * ((w[1] * _sigmoid(w[0]) - 1.0) ** 2 + (w[1] * _sigmoid(-w[0]) + 1.0) ** 2)


def _remark_3_3(z):
    x2 = z[0] ** 2
    return x2 * (1.0 + x2) / (1.0 + x2**2)


def _wobble(z):
    # The issue's case: x escapes like log t + 2 log log t (x' = x^2 e^-x on the valley),
    # the rate modulated by (1 + 0.15 sin 2x - 0.3 cos 2x (...)): increments per
    # checkpoint vary by a factor 2; y tracks sin x. f -> 0 at infinity.
    x, y = z[0], z[1]
    return (x**2 + 2 * x + 2) * jnp.exp(-x) * (1 + 0.15 * jnp.sin(2 * x)) + 0.5 * (
        y - jnp.sin(x)
    ) ** 2


def _rotating(z):
    # e^-r pulls outwards (r ~ log t); the valley's direction turns like 2 log(1 + r).
    r = jnp.sqrt(z[0] ** 2 + z[1] ** 2 + 1e-12)
    phi = 2.0 * jnp.log1p(r)
    cos_gap = (z[0] * jnp.cos(phi) + z[1] * jnp.sin(phi)) / r
    return jnp.exp(-r) + 0.5 * r**2 * (1.0 - cos_gap)


def _plateau(z):
    # f' = -x^2/(1+x^6) - eps/(1+x^2) < 0: no critical point. From x0 < 0 the flow crawls
    # to the plateau near 0 (x' ~ x^2 + eps: crossing time ~ pi/sqrt(eps) = 100), then
    # escapes like x^5 ~ 5t; f -> -pi/6 - eps pi/2. eps = 1e-3 keeps |f'| above float32's
    # default gtol on the plateau.
    x = z[0]
    return -jnp.arctan(x**3) / 3.0 - 1e-3 * jnp.arctan(x)


LANDSCAPES: tuple[Landscape, ...] = (
    # ---- power escapes, f -> finite value (alpha = 1/(k+2) for f = |x|^-k)
    Landscape("power-1/3", "power escape", ESCAPING, lambda z: 1.0 / jnp.sqrt(z[0] ** 2 + 1e-30),
              _line(0.5, 2.0), "f = 1/|x|: |x|^3 = |x0|^3 + 3t"),
    Landscape("power-1/4", "power escape", ESCAPING, lambda z: 1.0 / (z[0] ** 2 + 1e-30),
              _line(0.5, 2.0), "f = x^-2: x^4 = x0^4 + 8t"),
    Landscape("power-1/6", "power escape", ESCAPING, lambda z: 1.0 / (z[0] ** 4 + 1e-30),
              _line(0.7, 2.0), "f = x^-4: x^6 = x0^6 + 24t"),
    Landscape("power-1/8", "power escape", ESCAPING, lambda z: 1.0 / (z[0] ** 6 + 1e-30),
              _line(0.8, 2.0), "f = x^-6: x^8 = x0^8 + 48t"),
    Landscape("remark-3.3", "power escape (paper)", ESCAPING, _remark_3_3, _line(1.7, 3.0),
              "Remark 3.3: |x0| > 1.554 escapes, x ~ (8t)^(1/4)"),
    Landscape("valley-1/3", "power escape", ESCAPING,
              lambda z: 1.0 / jnp.sqrt(z[0] ** 2 + 1e-30) + 2.0 * (z[1] - 0.5) ** 2,
              _box((0.5, 2.0), (-1.0, 1.0)), "1/|x| + 2(y - 1/2)^2: y -> 1/2, x^3 ~ 3t"),
    # ---- escapes with f -> -infinity (alpha >= 1/2)
    Landscape("linear", "f -> -inf", ESCAPING, lambda z: -z[0], _line(-1.0, 1.0, False),
              "f = -x: x = x0 + t"),
    Landscape("power-2/3", "f -> -inf", ESCAPING, lambda z: -((1.0 + z[0] ** 2) ** 0.25),
              _line(1.0, 3.0), "f = -(1+x^2)^(1/4): x^(3/2) ~ 3t/4"),
    Landscape("log-potential", "f -> -inf", ESCAPING, lambda z: -0.5 * jnp.log1p(z[0] ** 2),
              _line(0.5, 2.0), "f = -log(1+x^2)/2: x^2 + 2 log x ~ 2t"),
    # ---- logarithmic escapes
    Landscape("log", "log escape", ESCAPING, lambda z: jnp.exp(-z[0]), _line(-1.0, 3.0, False),
              "f = e^-x: x = log(t + e^x0)"),
    Landscape("log-loglog", "log escape", ESCAPING,
              lambda z: (z[0] ** 2 + 2 * z[0] + 2) * jnp.exp(-z[0]), _line(1.0, 3.0, False),
              "f = (x^2+2x+2) e^-x: x' = x^2 e^-x, x ~ log t + 2 log log t"),
    Landscape("log-wobble", "log escape (wobble)", ESCAPING, _wobble,
              _box((3.0, 5.0), (-1.0, 1.0)), "no critical point for x > 2 (SciPy check)",
              check_with_scipy=True),
    Landscape("log-rotating", "log escape (rotating)", ESCAPING, _rotating,
              lambda rng, n: _pad([2.5 * np.cos(a := rng.uniform(0, 2 * np.pi, n)),
                                   2.5 * np.sin(a)], n),
              "e^-r along a spiral valley (SciPy check)", check_with_scipy=True),
    Landscape("example-4.3", "log escape (paper)", ESCAPING, _example_4_3,
              _box((-3.0, 3.0), (-3.0, 3.0)),
              "Example 4.3: only critical point (0, 0), a strict saddle; |w1| ~ log t",
              check_with_scipy=True),
    # ---- late departures and plateaus
    Landscape("late-departure-escape", "late saddle departure", ESCAPING,
              lambda z: 0.5 * z[1] ** 2 + (1.0 + z[0] ** 6) ** (-1.0 / 6.0),
              lambda rng, n: _pad([_signed(rng, n, 0.18, 0.3), rng.uniform(-1, 1, n)], n),
              "(1+x^6)^(-1/6): x' ~ x^5 near 0 (departure t ~ 1/(4 x0^4)), x^3 ~ 3t after",
              check_with_scipy=True),
    Landscape("plateau-escape", "plateau then escape", ESCAPING, _plateau,
              _line(-2.0, -0.5, False), "f' < 0 everywhere: no critical point",
              check_with_scipy=True),
    # ---- bounded: slow convergence and degenerate minima
    Landscape("quartic", "degenerate minimum", BOUNDED, lambda z: z[0] ** 4, _line(0.5, 2.0),
              "f = x^4: x = x0 / sqrt(1 + 8 x0^2 t)"),
    Landscape("sextic", "degenerate minimum", BOUNDED, lambda z: z[0] ** 6, _line(0.5, 2.0),
              "f = x^6: x^-4 = x0^-4 + 24t"),
    Landscape("sextic-from-below", "degenerate minimum", BOUNDED,
              lambda z: (z[0] - 3.0) ** 6 + 0.5 * z[1] ** 2, _box((0.0, 2.0), (-1.0, 1.0)),
              "(x-3)^6: ||x|| rises to 3 like 3 - c t^(-1/4)"),
    Landscape("octic-from-below", "degenerate minimum", BOUNDED,
              lambda z: (z[0] - 3.0) ** 8 + 0.5 * z[1] ** 2, _box((0.0, 2.0), (-1.0, 1.0)),
              "(x-3)^8: ||x|| rises to 3 like 3 - c t^(-1/6)"),
    Landscape("quartic-ring", "degenerate minimum", BOUNDED,
              lambda z: (_r(z) - 3.0) ** 4, _box((0.3, 1.5), (0.3, 1.5)),
              "(r-3)^4: r rises to 3 like 3 - c t^(-1/2)"),
    Landscape("bowl", "exponential convergence", BOUNDED,
              lambda z: 0.5 * ((z[0] - 1.0) ** 2 + 2 * (z[1] + 2.0) ** 2),
              _box((-3.0, 3.0), (-3.0, 3.0)), "quadratic bowl, minimum (1, -2)"),
    Landscape("rosenbrock", "slow valley", BOUNDED,
              lambda z: (1 - z[0]) ** 2 + 100 * (z[1] - z[0] ** 2) ** 2,
              _box((-2.0, 2.0), (-1.0, 3.0)), "coercive, minimum (1, 1)"),
    Landscape("late-departure-minimum", "late saddle departure", BOUNDED,
              lambda z: 0.5 * z[1] ** 2 - z[0] ** 6 + z[0] ** 8 / 8.0,
              lambda rng, n: _pad([_signed(rng, n, 0.13, 0.2), rng.uniform(-1, 1, n)], n),
              "coercive; x' ~ 6x^5 near 0 (departure t ~ 1/(24 x0^4)), then x -> +-sqrt 6"),
    Landscape("example-1.1", "paper, mixed", "example-1.1", _example_1_1,
              lambda rng, n: rng.uniform(-1, 1, (n, DIM)),
              "Example 1.1: escaping iff f -> 1 (float64 SciPy to 10x the horizon)",
              check_with_scipy=True),
)

BY_NAME = {ls.name: ls for ls in LANDSCAPES}


def _selected(names):
    return [ls for ls in LANDSCAPES if names is None or ls.name in names]


def catalogue_problem(names=None):
    r"""One `jaxflow.Problem` on $\mathbb{R}^5$ for the landscapes `names` (default all):
    landscape `round(z[4] / SELECT_SCALE)` of that selection, at `z[:4]`."""
    import jaxflow as jf

    chosen = _selected(names)
    branches = [lambda y, ls=ls: ls.f(y).astype(y.dtype) for ls in chosen]

    def f(z):
        idx = jnp.round(jax.lax.stop_gradient(z[DIM]) / SELECT_SCALE).astype(jnp.int32)
        return jax.lax.switch(jnp.clip(idx, 0, len(chosen) - 1), branches, z[:DIM])

    return jf.Problem(f, dim=DIM + 1, name="detector-catalogue")


MAX_STARTS = 32


def catalogue_starts(per_landscape: int, seed: int = 0, names=None):
    """`(x0, landscape_index)`: the first `per_landscape` (at most `MAX_STARTS`) starts of
    the landscapes `names` (default all; float64; the starts of a smaller catalogue are
    those of a larger one). `landscape_index` indexes `LANDSCAPES`; the selector
    coordinate `x0[:, 4]` indexes the selection, as `catalogue_problem(names)` expects."""
    if not 1 <= per_landscape <= MAX_STARTS:
        raise ValueError(f"per_landscape must lie in [1, {MAX_STARTS}], got {per_landscape}.")
    rows, idx = [], []
    for pos, ls in enumerate(_selected(names)):
        i = LANDSCAPES.index(ls)
        pts = ls.starts(np.random.default_rng([seed, i]), MAX_STARTS)[:per_landscape]
        sel = np.full((per_landscape, 1), pos * SELECT_SCALE)
        rows.append(np.concatenate([pts, sel], axis=1))
        idx.append(np.full(per_landscape, i))
    return np.concatenate(rows), np.concatenate(idx)


def reference_fates(x0, idx, example_1_1_escapes=None):
    """Known fate per start (`example_1_1_escapes`: bool per Example 1.1 start)."""
    fates = np.array([LANDSCAPES[i].fate for i in idx], dtype=object)
    ex = fates == "example-1.1"
    if ex.any():
        if example_1_1_escapes is None:
            raise ValueError("Example 1.1 fates need the SciPy reference.")
        fates[ex] = np.where(example_1_1_escapes, ESCAPING, BOUNDED)
    return fates.astype(str)


def scipy_fate(ls: Landscape, x0, t_end: float, rtol: float = 1e-9):
    """float64 SciPy (LSODA) flow of landscape `ls` from `x0` (R^4) to `t_end`:
    returns (||x||, f) at t_end / 10 and t_end."""
    from scipy.integrate import solve_ivp

    jax.config.update("jax_enable_x64", True)
    f = jax.jit(lambda z: ls.f(z))
    g = jax.jit(jax.grad(lambda z: ls.f(z)))
    sol = solve_ivp(lambda t, z: -np.asarray(g(jnp.asarray(z))), (0.0, t_end),
                    np.asarray(x0, np.float64), method="LSODA", rtol=rtol, atol=1e-12,
                    t_eval=[t_end / 10, t_end])
    zs = sol.y.T
    return np.linalg.norm(zs, axis=1), np.array([float(f(jnp.asarray(z))) for z in zs])
