r"""`MinNormField`: the minimal-norm Clarke subgradient as the vector field of a flow.

For a locally Lipschitz $f$ the subgradient flow is the differential inclusion
$x'(t) \in -\partial f(x(t))$ (Clarke subdifferential). Its solutions are "slow": for
almost every $t$ the velocity is $-v(x)$ with $v(x) = \operatorname{argmin}\{\|g\| : g
\in \partial f(x)\}$ (the chain rule holds for tame $f$, Assumption 3.1 of the paper),
and $\|v(x)\| = \operatorname{dist}(0, \partial f(x))$ is the stationarity measure: it
vanishes exactly at Clarke-critical points, e.g. on the flat region of Figure 2.

The field dispatches per dtype to the kink path (`KinkProgram` + `kink_solve`), to
`jax.grad` when the traced loss has no kink, or to the bundle fallback. `MinNormResult`
is the certified answer of `minnorm_subgradient`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._field import AbstractField, cached_field
from .bundle import bundle_solve
from .certificates import Exactness, realise
from .kinks import KinkProgram, UnsupportedKinkError
from .options import MinNormOptions, machine_eps
from .selection import kink_solve, prox_screen, selection_gradient

__all__ = ["NO_KINKS", "MinNormField", "MinNormResult", "minnorm_field_of"]


class MinNormResult(eqx.Module):
    r"""The minimal-norm subgradient at one point or a batch (leading axis).

    - `v`: the minimal-norm element of the selection hull (flat);
    - `f`: $f(x)$;
    - `gap`: duality gap of the QP; `error_bound` $= \sqrt{2\,\mathrm{gap}} \ge
      \|v - v^*\|$;
    - `exactness`: `Exactness` codes (int8);
    - `n_active`: number of kinks tied at $x$.
    """

    v: jax.Array
    f: jax.Array
    gap: jax.Array
    error_bound: jax.Array
    exactness: jax.Array
    n_active: jax.Array

    @property
    def stationarity(self):
        r"""$\|v\|$, the distance from 0 to $\partial f(x)$ when exact."""
        return jnp.sqrt(jnp.sum(self.v * self.v, axis=-1))

    @property
    def exact(self):
        return self.exactness <= int(Exactness.REALISABLE)


class _ProgramCache:
    """Identity-hashed holder of per-dtype programs (a static field of the module)."""

    def __init__(self):
        self.programs: dict = {}


class MinNormField(AbstractField):
    r"""$v(x)$ = the minimal-norm element of the Clarke subdifferential of $f$.

    Build it with `MinNormField.for_problem(problem, **options)` (options: see
    `MinNormOptions`); `jaxflow.flow` does so for `Problem(..., nonsmooth=True)`. To
    run `flow`/`descend` with other options, pass the field:
    `flow(problem, x0, field=MinNormField.for_problem(problem, fallback="bundle"))`.

    `value_and_velocity(x)` uses the exact rounding band; `prox_velocity(x, h)` is the
    velocity of the prox-linear step of size $h$ (see `jaxflow.ProxLinear`).
    """

    f: Callable = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    name: str = eqx.field(static=True)
    options: MinNormOptions = eqx.field(static=True)
    _cache: _ProgramCache = eqx.field(static=True)

    @classmethod
    def for_problem(cls, problem, **options) -> MinNormField:
        """The field of `problem`; analyses the kinks now, so unsupported primitives
        raise `UnsupportedKinkError` here (before anything is compiled)."""
        opts = options.pop("options", None) or MinNormOptions(**options)
        fld = cls(
            f=problem.f_flat,
            dim=problem.dim,
            name=problem.name,
            options=opts,
            _cache=_ProgramCache(),
        )
        fld.program(jnp.result_type(float))
        return fld

    def with_options(self, **changes) -> MinNormField:
        """The same field with other options (sharing the traced kink programs)."""
        opts = dataclasses.replace(self.options, **changes)
        return MinNormField(
            f=self.f, dim=self.dim, name=self.name, options=opts, _cache=self._cache
        )

    def program(self, dtype) -> KinkProgram | None:
        """The kink program for `dtype` (None in black-box mode)."""
        dtype = jnp.dtype(dtype)
        if dtype in self._cache.programs:
            return self._cache.programs[dtype]
        prog = None
        if self.options.method != "bundle":
            try:
                prog = KinkProgram(self.f, self.dim, dtype, name=self.name)
            except UnsupportedKinkError:
                if self.options.fallback != "bundle":
                    raise
            if prog is not None and not prog.sites:
                prog = NO_KINKS
        self._cache.programs[dtype] = prog
        return prog

    @property
    def smooth(self) -> bool:
        return False

    def vectors_per_lane(self) -> int:
        # The kinks' analysis holds a few numbers per piece of every kink group, and the
        # slots' Jacobian a few tangents of the function's intermediates (one per kink
        # output in a network): measured on a ReLU MLP 16-48-1 on 1000 points (d = 865,
        # 48,000 kinks of two pieces) in float32, 14 MB per lane (16 and 48 lanes to
        # t1 = 0.1: 1.00 and 1.44 GiB peak), about 36 float32 numbers per piece;
        # 48 float64 numbers per piece are counted, in vectors of length d.
        prog = self.program(jnp.result_type(float))
        if prog is None or prog is NO_KINKS:
            return 0
        pieces = sum(s.size * s.npieces for s in prog.sites)
        return -(-_NUMBERS_PER_PIECE * pieces // self.dim)

    def _solve(self, x, h=None, with_certificate=False):
        prog = self.program(x.dtype)
        if prog is None:
            return bundle_solve(self.f, x, self.options, h)
        if prog is NO_KINKS:
            f, g = jax.value_and_grad(self.f)(x)
            return dict(
                f=f,
                v=g,
                gap=jnp.zeros((), x.dtype),
                n_active=jnp.zeros((), jnp.int32),
                exactness=jnp.array(Exactness.SMOOTH, jnp.int8),
                selected=jax.grad(self.f),
            )
        return kink_solve(prog, x, self.options, h=h, with_certificate=with_certificate)

    def value(self, x):
        return self.f(x)

    def value_and_velocity(self, x):
        out = self._solve(x)
        return out["f"], out["v"]

    def velocity(self, x):
        return self.value_and_velocity(x)[1]

    def prox_velocity(self, x, h):
        r"""$(f(x), v_h(x))$: $x - h\,v_h(x)$ is the prox-linear step of size $h$."""
        out = self._solve(x, h=h)
        return out["f"], out["v"]

    def prox_linearisation(self, x, h):
        r"""$(f(x), v_h(x), G)$ where $G(y) = \nabla_y F(y, \lambda^*)$ is the gradient of
        the piece selection the prox-linear step chose ($G(x) = v_h(x)$), or `None` in
        black-box mode."""
        out = self._solve(x, h=h)
        return out["f"], out["v"], out.get("selected")

    def screens(self, dtype) -> bool:
        """Whether `prox_screen`/`prox_selection` apply for `dtype`: a kink program
        whose kinks are not nested (the batched prox-linear step, `ProxLinear`)."""
        prog = self.program(dtype)
        return prog is not None and prog is not NO_KINKS and not prog.nested

    def prox_screen(self, x, h):
        r"""$(f(x), g_0, n, \theta^0)$: the natural gradient, the number of kinks a
        prox-linear step of size $h$ can reach, and the natural selection. When $n = 0$
        these are the step's answer (`prox_selection` would return the same); only
        where `screens(x.dtype)`."""
        out = prox_screen(self.program(x.dtype), x, self.options, h)
        return out["f"], out["v"], out["n_active"], out["theta"]

    def prox_selection(self, x, h):
        r"""$(f(x), v_h(x), \theta^*)$: the prox-linear velocity and the absolute piece
        selection that the QP chose (`selection_gradient(theta)` is the $G$ of
        `prox_linearisation`); only where `screens(x.dtype)`."""
        out = kink_solve(self.program(x.dtype), x, self.options, h=h)
        return out["f"], out["v"], out["theta"]

    def selection_gradient(self, theta, dtype):
        r"""$G(y) = \nabla_y F(y, \theta)$ for a selection from `prox_screen` or
        `prox_selection`."""
        return selection_gradient(self.program(dtype), theta)

    def jacobian(self, x):
        return jax.hessian(self.f)(x)

    def certified(self, x) -> MinNormResult:
        """`MinNormResult` at one flat point with the exactness certificates (the
        realisability test included)."""
        out = self.certificate_pass(x)
        real = self.realisability_pass(x)
        use = out.pop("wants_realisability")
        for key in ("v", "gap", "exactness"):
            out[key] = jnp.where(use, real[key], out[key])
        return _result(out)

    def certificate_pass(self, x):
        """Certificates except the realisability test; `wants_realisability` says
        whether it applies (`minnorm_subgradient` runs it only where needed)."""
        out = self._solve(x, with_certificate=True)
        out.pop("selected", None)
        out.setdefault("wants_realisability", jnp.array(False))
        return out

    def realisability_pass(self, x):
        """The realisability test's answer (`v`, `gap`, `exactness`) at one point."""
        prog = self.program(x.dtype)
        if prog is None or prog is NO_KINKS:
            out = self._solve(x, with_certificate=True)
            return dict(v=out["v"], gap=out["gap"], exactness=out["exactness"])
        return realise(prog, x, self.options)

    def needs_qp(self, x):
        """(f, natural gradient, number of tied kinks at x): the cheap first pass."""
        prog = self.program(x.dtype)
        if prog is None or prog is NO_KINKS:
            f, g = jax.value_and_grad(self.f)(x)
            return f, g, jnp.asarray(prog is None, jnp.int32)
        tol = self.options.band_ulps * machine_eps(x.dtype)
        (f, count), g = jax.value_and_grad(lambda y: prog.count_ties(y, tol), has_aux=True)(x)
        return f, g, count


NO_KINKS = object()  # marker: the traced function has no kinks
# Working memory per piece of every kink group and lane (see `vectors_per_lane`).
_NUMBERS_PER_PIECE = 48


def _result(out) -> MinNormResult:
    gap = out["gap"]
    return MinNormResult(
        v=out["v"],
        f=out["f"],
        gap=gap,
        error_bound=jnp.sqrt(2 * jnp.maximum(gap, 0.0)),
        exactness=jnp.asarray(out["exactness"], jnp.int8),
        n_active=out["n_active"],
    )


def minnorm_field_of(problem, options: MinNormOptions) -> MinNormField:
    """The min-norm field of `problem` with `options`: one object per (problem, options),
    cached outside the problem, so repeated calls reuse one compiled program."""
    return cached_field(
        problem, options, lambda: MinNormField.for_problem(problem, options=options)
    )
