r"""`RodasKrylov`: Rodas4 whose stage solves use only Hessian-vector products.

Escaping valleys of factorised models have curvature growing like $\|x\|^2$, so their
flows are stiff, and explicit methods spend their whole step budget there (Tsit5 on
rank-2 completion of a $30\times 30$ matrix: 37 of 64 starts at `MAX_STEPS`). The
dense implicit steppers (`Rodas4`, `Kvaerno5`) see these escapes but cost $O(d^2)$
memory and $O(d^3)$ time per step and trajectory. Here the same L-stable Rosenbrock
method (Hairer & Wanner's RODAS, order 4(3)) solves its six stage systems with
$A = I + h\gamma\nabla^2 f(x_n)$ in a Krylov space (`jaxflow._stepper.krylov`), the
Hessian applied through `jax.linearize` of the gradient at $x_n$ (linearised once per
step): $O(d\,m)$ work and memory per lane for $m$ products.

**One space for the six stages.** All six stages solve with the same $A$, so they share
one space: every product made for a stage stays in it, and a later stage's right-hand
side is first solved there (minimal residual, no new product), then the space is
extended by a few products from that stage's residual (`krylov_extend`), the Krylov
sequence GCRO-type methods use. At $d = 1000$ (rank-5 completion of a $100\times 100$
matrix) this takes 16 + 5·4 products plus one per stage for the error estimate, against
6·32 + 6 for independent GMRES(32) solves: the same number of steps on converging
starts, about 1.5 times as many on escaping ones, each 3-4 times cheaper
(`benchmarks/high_dim.py`).

**Inexact solves.** Rosenbrock methods need the stage equations solved accurately (they
are not W-methods), so each solve is checked: the stage errors the residual vectors
$\rho_i$ cause, $h\gamma(I + h\gamma\nabla^2 f)^{-1}\rho_i$, estimated with the
Rayleigh quotient of $\rho_i$, are added to the embedded error estimate
($\mathrm{err} = \mathrm{err}_{\text{Rodas}} + (\sum_i e_i^2)^{1/2}$ componentwise),
and a step whose relative residual $\|\rho_i\|/\|r_i\|$ exceeds `krylov_rtol` in any
stage is marked failed. The step-size controller then retries with
a smaller $h$, which makes $I + h\gamma\nabla^2 f$ better conditioned (at $h \to 0$ it is
the identity and one product solves it exactly), so the method never accepts a step
its linear algebra could not resolve.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .base import AbstractStepper
from .krylov import gmres, krylov_space, space_add, space_expand, space_grow, space_solve
from .rodas import _GAMMA, rodas_stages

__all__ = ["RodasKrylov"]


class RodasKrylov(AbstractStepper):
    r"""Matrix-free Rodas4: L-stable, order 4(3), stage solves in a Krylov space of
    Hessian-vector products shared by the six stages.

    **Arguments:**

    - `krylov_dim`: products for the first stage's solve (static), a GMRES($m$) solve.
      With `recycle=False`, the GMRES dimension of every stage.
    - `krylov_extend`: new products for each of the five later stages (static): each
      is first solved in the space the earlier stages built, then the space grows by
      this many products from its residual. So a step makes
      `krylov_dim + 5 * krylov_extend` products, plus 6 with `damped_estimate`.
    - `krylov_rtol`: largest accepted relative residual of a stage solve; above it the
      step fails and is retried smaller. A safeguard: the residuals' contribution is in
      the error estimate, which is what limits the step for moderate values. On 4
      escaping starts of $d = 1000$ completion (rate 0.1), with 0.1 the later stages'
      check, not the error, limited $h$: none had reached $t = 2000$ after 2000 steps,
      where independent GMRES(32) solves take about 790; with 0.5 (default) or 1 the
      error estimate decides (about 1260 steps).
    - `damped_estimate`: map each residual $\rho$ to the stage error through
      $(1 + h\gamma q)^{-1}$, $q = \rho^T\nabla^2 f\rho/\rho^T\rho$ (one more product
      per stage, which then joins the space) instead of bounding the damping by 1. The
      solves leave their residual in the stiff directions, where the undamped bound is
      pessimistic by a factor up to $1 + h\gamma\lambda_{\max}$.
    - `recycle`: share the space between the stages (default). `False` gives every stage
      its own GMRES(`krylov_dim`) solve, $6m$ products per step (the method before the
      stages shared their space; use it with `krylov_dim=32, krylov_rtol=0.1` to
      reproduce that).

    Same stages, coefficients and error estimate as `jaxflow.Rodas4` (which factorises
    the dense Hessian), so with exact solves both take the same steps. Use it for smooth
    problems with more than a few dozen variables; `solver="auto"` picks it above
    `jaxflow._stepper.choice.MATRIX_FREE_MIN_DIM`.
    """

    krylov_dim: int = eqx.field(static=True, default=16)
    krylov_rtol: float = eqx.field(static=True, default=0.5)
    damped_estimate: bool = eqx.field(static=True, default=True)
    krylov_extend: int = eqx.field(static=True, default=4)
    recycle: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not (isinstance(self.krylov_dim, int) and self.krylov_dim >= 1):
            raise ValueError(
                f"RodasKrylov(krylov_dim=...) must be a positive integer, got {self.krylov_dim!r}."
            )
        if not (isinstance(self.krylov_extend, int) and self.krylov_extend >= 0):
            raise ValueError(
                "RodasKrylov(krylov_extend=...) must be a non-negative integer, got "
                f"{self.krylov_extend!r}."
            )
        if not (isinstance(self.krylov_rtol, (int, float)) and self.krylov_rtol > 0):
            raise ValueError(
                f"RodasKrylov(krylov_rtol=...) must be positive, got {self.krylov_rtol!r}."
            )

    @property
    def error_order(self):
        return 4

    @property
    def name(self):
        return "RodasKrylov"

    def step(self, field, x, f, v, h, state):
        hg = h * _GAMMA
        _, hvp = jax.linearize(field.velocity, x)
        stages = _StageSolves(self, hvp, hg, x)
        x1, last = rodas_stages(field, x, v, h, stages.solve)
        f1, v1 = field.value_and_velocity(x1)
        err = last + hg * jnp.sqrt(sum(res * res for res in stages.errors))
        ok = stages.ok & jnp.all(jnp.isfinite(x1))
        return x1, err, f1, v1, ok, state


class _StageSolves:
    """The six stage solves of one step, called in order by `rodas_stages` at trace time;
    collects the stage errors of the residuals and whether every solve converged."""

    def __init__(self, stepper: RodasKrylov, hvp, hg, x):
        self.stepper, self.hvp, self.hg = stepper, hvp, hg
        self.errors = []
        self.ok = jnp.array(True)
        self.tiny = jnp.finfo(x.dtype).tiny
        d = x.shape[0]
        self.dim = min(stepper.krylov_dim, d)
        if stepper.recycle:
            self.products = [self.dim] + [min(stepper.krylov_extend, d)] * 5
            self.space = krylov_space(d, 0, 0, x.dtype)
            self.n = self.k = 0

    def matvec(self, y):  # (I + h gamma H) y
        return y + self.hg * self.hvp(y)

    def solve(self, r):
        r"""$h\gamma(I + h\gamma H)^{-1} r = (I/(h\gamma) + H)^{-1} r$, approximately."""
        if self.stepper.recycle:
            y, res = self._recycled(r)
        else:
            y, res = self._independent(r)
        self.errors.append(res)
        return self.hg * y

    def _check(self, r, res_norm):
        r_norm = jnp.sqrt(jnp.sum(r * r))
        self.ok = self.ok & (res_norm <= self.stepper.krylov_rtol * r_norm)

    def _independent(self, r):
        y, res = gmres(self.matvec, r, self.dim)
        res2 = jnp.sum(res * res)
        self._check(r, jnp.sqrt(res2))
        # The stage's error is h gamma (I + h gamma H)^{-1} res. GMRES leaves its residual
        # mostly in the stiff directions, which the inverse damps: estimate the damping
        # by the Rayleigh quotient of the residual (one product).
        if self.stepper.damped_estimate:
            rayleigh = jnp.sum(res * self.hvp(res)) / jnp.maximum(res2, self.tiny)
            res = res / jnp.maximum(1.0, 1.0 + self.hg * rayleigh)
        return y, res

    def _expand(self, e):
        self.space, g = space_expand(self.space, self.n, self.k, e, self.matvec)
        self.n += 1
        self.k += 1
        return g

    def _unit(self, e):
        norm = jnp.sqrt(jnp.sum(e * e))
        return e / jnp.maximum(norm, self.tiny), norm

    def _recycled(self, r):
        m = self.products[len(self.errors)]
        k_max = self.k + m + (1 if self.stepper.damped_estimate else 0)
        self.n_max = self.n + 1 + k_max - self.k
        self.space = space_grow(self.space, self.n_max, k_max)
        self.space, c = space_add(self.space, self.n, r)
        self.n += 1
        if m > 0:
            # A Krylov sequence from the residual the space built so far leaves: the
            # first product is of that residual, each next one of the part of the
            # previous product outside the space (an Arnoldi step).
            start = self._unit(space_solve(self.space, c)[1])[0]
            n0, k0 = self.n, self.k

            def arnoldi(j, space):
                previous = jax.nn.one_hot(n0 + j - 1, self.n_max, dtype=r.dtype)
                e = jnp.where(j == 0, start, previous)
                return space_expand(space, n0 + j, k0 + j, e, self.matvec)[0]

            self.space = jax.lax.fori_loop(0, m, arnoldi, self.space)
            self.n += m
            self.k += m
        y, e = space_solve(self.space, c)
        unit, e_norm = self._unit(e)
        self._check(r, e_norm)
        res = e @ self.space.basis
        if self.stepper.damped_estimate:
            # The Rayleigh quotient of the residual from its product with A, which also
            # joins the space (the later stages use it).
            damping = jnp.sum(unit * self._expand(unit))
            res = res / jnp.maximum(1.0, damping)
        return y, res
