r"""The minimal-norm selection gradient at one point: the QP over the tied slots.

With the tied kinks of a `KinkAnalysis` in slots, the selection gradients are
$g_0 + J(\lambda - \lambda^0)$ over a product of simplices when no kink feeds another
(solved by `simplex_product_minnorm`), or the hull of the vertex gradients when kinks are
nested (`hull_minnorm`). With a step $h$ the same QP gets the prox-linear penalty
$\tfrac1h\langle\gamma, \lambda\rangle$ (see `jaxflow._stepper.prox_linear`). The chosen selection is
returned as a smooth field $G(y) = \nabla_y F(y, \lambda^*)$ for the stepper's
second-order correction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .certificates import certify
from .kinks import KinkProgram
from .options import MinNormOptions
from .qp import hull_minnorm, simplex_product_minnorm
from .slots import KinkAnalysis, vertex_gradients

__all__ = ["kink_solve", "prox_screen", "selection_gradient"]


def kink_solve(
    prog: KinkProgram, x, opts: MinNormOptions, *, h=None, with_certificate: bool = False
) -> dict:
    """The minimal-norm selection gradient at one point (exact band, or prox-linear
    with step `h`). Returns a dict; `with_certificate` adds the exactness flag (without
    the realisability test, see `jaxflow._nonsmooth.certificates.realise`) and whether
    that test is wanted."""
    an = KinkAnalysis(prog, x, opts, h)
    dtype, r_max, k = an.dtype, an.r_max, an.k
    if not prog.nested:
        lin = None if h is None else an.s_gamma / h
        sol = simplex_product_minnorm(
            an.jac,
            an.g0,
            an.lam0,
            an.s_valid,
            iterations=opts.qp_iterations,
            linear=lin,
            polish=opts.polish,
            method=opts.qp_method,
            # The prox-linear QP runs at every step of a flow: its triangular solves are
            # unrolled (faster); the exact one (checkpoints, ends) compiles in less time.
            unroll=h is not None,
        )
        v, gap = sol.v, sol.gap
        theta_star = an.theta(sol.y - an.lam0)
        selected = selection_gradient(prog, theta_star)
    else:
        table, vvalid, vpen, vgrads = vertex_gradients(
            an.grad_at, an.s_valid, an.lam0, an.s_gamma, r_max, k, dtype
        )
        lin = None if h is None else vpen / h
        sol = hull_minnorm(
            vgrads, valid=vvalid, linear=lin, method="wolfe" if h is None else "fista"
        )
        v, gap = sol.v, sol.gap
        onehot = jax.nn.one_hot(table, r_max, dtype=dtype)
        mu = sol.y

        def selected(y):
            def one(oh):
                th = an.theta(oh - an.lam0)
                return jax.grad(lambda z: prog.lift(z, theta=th)[0])(y)

            return jnp.tensordot(mu, jax.vmap(one)(onehot), axes=1)

    out = dict(f=an.f, v=v, gap=gap, n_active=an.n_active, selected=selected)
    if not prog.nested:
        out["theta"] = theta_star
    if not with_certificate:
        return out
    # Certificates (minnorm_subgradient only).
    out["exactness"], out["wants_realisability"] = certify(an)
    return out


def selection_gradient(prog: KinkProgram, theta):
    r"""$G(y) = \nabla_y F(y, \theta)$: the gradient of the frozen (absolute) piece
    selection `theta`, a smooth field."""

    def selected(y):
        return jax.grad(lambda z: prog.lift(z, theta=theta)[0])(y)

    return selected


def prox_screen(prog: KinkProgram, x, opts: MinNormOptions, h) -> dict:
    r"""The cheap first pass of a prox-linear step of size `h` at one point (kinks not
    nested): $f(x)$, the natural selection's gradient $g_0$, the number of candidate
    kinks (tied within the band of the step, see `KinkAnalysis`), and the natural
    selection $\theta^0$. With no candidate, `kink_solve(prog, x, opts, h=h)` returns
    exactly $(f, g_0)$ and the selection $\theta^0$: its QP has no free weight."""
    an = KinkAnalysis(prog, x, opts, h)
    theta0 = an.theta(jnp.zeros((an.k, an.r_max), an.dtype))
    return dict(f=an.f, v=an.g0, n_active=an.n_active, theta=theta0)
