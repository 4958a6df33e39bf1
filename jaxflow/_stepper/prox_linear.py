r"""The prox-linear stepper: nonsmooth flows that slide along kinks without chattering.

An explicit step $x - h\,v(x)$ across a kink manifold overshoots it and the next step
comes back: the iterates chatter at the scale of the step (with `jax.grad`, $|xy - 1|
\approx 2\cdot10^{-2}$ at $h = 0.01$ on $|xy - 1| + $ smooth). Implicit Euler (the
proximal point step) is chattering-free (Acary–Brogliato 2010). Here each kink is
linearised instead of the whole function, which keeps the step a small QP:

$$x_+ = \operatorname*{argmin}_y\ \textstyle\sum_k c_k \max_j\big(p_{kj}(x) +
\langle\nabla p_{kj}(x), y - x\rangle\big) + \langle \nabla g(x), y - x\rangle +
\tfrac{1}{2h}\|y - x\|^2,$$

whose dual is the minimal-norm problem of `jaxflow._nonsmooth` plus a linear term
$\tfrac1h\langle\gamma, \lambda\rangle$, $\gamma_{kj} = |c_k|\,|p_{k,\text{nat}} -
p_{kj}|$ (the cost of switching kink $k$ to piece $j$). So $x_+ = x - h\,v_h(x)$ with
$v_h = g_0 + J(\lambda^* - \lambda^0)$. A kink is a candidate when a step of size $h$
can reach it; its pieces then enter with that penalty, which is the "band" of the
method: it scales with $h$, and for a kink already on the manifold ($\gamma = 0$) it
is exactly the minimal-norm element, so the trajectory slides. For $f = \sum_i w_i
|r_i| + g$ this is the linearised prox step of the research notes ("unifying formula").

**Second-order correction.** The QP also returns the piece selection $\lambda^*$; with
it frozen, $G(y) = \nabla_y F(y, \lambda^*)$ is a smooth field (the sliding field on a
kink manifold, the gradient elsewhere) and $G(x) = v_h(x)$. The step taken is the
implicit midpoint rule for $G$, $x_+ = x - h\,G(\tfrac12(x + x_+))$, solved by
simplified Newton with $I + \tfrac h2 \partial G(x)$ (exact in one iteration when $G$
is linear, as for $\|XY^T - M\|_1$). It is second order where the selection is fixed,
A-stable, and conserves every quadratic invariant of $G$ exactly, such as
$X^TX - Y^TY$ of Proposition 4.5. Landing on a kink is unchanged to first order: the
prox-linear step is exact for piecewise-linear models, so only curvature contributes
to the local error, and the error estimate is the difference between the midpoint
and the prox-linear (Euler) points, $O(h^2)$, which `diffrax.PIDController` uses to
choose $h$. On a kink manifold the drift off it is second order and stays within the
controller's tolerance.

**Only lanes with candidate kinks pay for the QP.** In the engine, `batched_step` first
runs the cheap pass (`MinNormField.prox_screen`: $f$, the natural gradient and the
number of kinks a step of size $h$ can reach) on every lane; lanes without a candidate
take the natural gradient, which is exactly what their QP returns (it has no free
weight), and the QP runs only on the others, gathered into fixed-size blocks
(`jaxflow._compact`). A lane's answer does not depend on which other lanes needed the
QP: the block size is fixed per lane count, and the decisions that rounding could tip
(which piece of a tied kink is natural) are taken once per row from stored scores
(`jaxflow._nonsmooth.slots`), not recomputed in kernels that XLA:CPU may vectorise or
contract differently by a row's position; `tests/test_prox_compaction.py` checks
bit-identical steps across batches of 1, 16 and 32 rows.

In black-box mode (`fallback="bundle"`) there is no selection: the step is the
prox-linear one with the implicit-Euler estimate $\tfrac h2 (v_h(x_+) - v_h(x))$.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg  # noqa: F401
import numpy as np

from .._compact import MIN_BLOCK, on_rows
from .._nonsmooth.qp import box_method
from .base import AbstractStepper
from .krylov import gmres

__all__ = ["ProxLinear"]


def _tiers(value) -> tuple[int, ...]:
    """`ProxLinear(few_kinks=...)` as increasing slot counts (0 or () for none)."""
    items = (value,) if isinstance(value, (int, np.integer)) else value
    try:
        items = tuple(items)
    except TypeError:
        items = (value,)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
               for v in items):
        raise ValueError(
            "ProxLinear(few_kinks=...) must be an integer >= 0 or a tuple of them "
            f"(kink slots per tier), got {value!r}."
        )
    return tuple(sorted({int(v) for v in items if v > 0}))


def _fixed_budget_qp(options, slots: int) -> bool:
    """Whether the QP over `slots` kink slots runs a fixed number of iterations (FISTA),
    so that one pass over all lanes costs less than blocks when most lanes need it; the
    active-set method's loop runs until the slowest row of its batch is done, so it
    runs in blocks, where fewer rows wait for the slowest."""
    return box_method(options.qp_method, slots) == "fista"


class ProxLinear(AbstractStepper):
    r"""Prox-linear step with an implicit-midpoint correction for nonsmooth fields.

    `newton_iters` simplified Newton iterations solve the midpoint equation, with the
    exact Jacobian $\partial G$ for $d \le$ `dense_max`; above, matrix-free: $I +
    \tfrac h2\partial G(x)$ applied by Jacobian-vector products and solved by
    `krylov_dim` steps of GMRES (`krylov_dim=0`: `newton_iters + 2` fixed-point
    iterations, which converge only while $\tfrac h2\|\partial G\| < 1$ and so bound the
    step by the curvature: on a ReLU network with $d = 865$, 16 starts to $t = 10$ took
    295.5 steps in the median and 1848 rejections with them, 135 and 180 with GMRES(4)).
    `estimate="euler"` (default) controls the Euler-midpoint difference, which also
    bounds the drift off kink manifolds (stays within ~`rtol`); `estimate="midpoint"`
    controls the midpoint point's own leading error term, $-\tfrac{h^3}{12}G'G'G +
    \tfrac{h^3}{24}G''(G, G)$, computed from $\partial G$ (a Jacobian-vector product above
    `dense_max`, where the fixed-point iteration's last correction is added to it), the
    Euler-midpoint difference and $G(z)$: several times fewer steps on smooth stretches
    (14x on $\|XY^T - M\|_1$ with the earlier estimate, which bounded this term by
    $h\|\partial G\|_\infty/6$ times the Euler-midpoint difference, and only below
    `dense_max`; 1.35x fewer again with it, 7x fewer than that on a ReLU network with
    $d = 97$), but trajectories then sit on kinks only to ~1e-7 instead of ~1e-9.
    `compact_qp=True` (default) runs the QP only on the lanes with a candidate kink (see
    the module notes); `False` runs it on every lane (the same results, more work).
    With it, a lane's QP has as many kink slots as the smallest of the tiers
    `few_kinks` (default: one, 16) that holds its candidate kinks, and
    `MinNormOptions.max_active` (256) above them: the QP and its Jacobian are sized by
    the candidate kinks, not by the loss's kinks (a ReLU network has thousands, a
    handful tied at a time); `few_kinks=0` (or `()`) turns this off. Each tier is one
    more pass over the lanes that need it, in blocks of a quarter of the lanes: with
    many lanes more tiers pay (a ReLU network with $d = 865$ whose steps reach 40-145
    kinks: `few_kinks=(16, 64)` 12% faster with 64 lanes), with few they cost (60%
    slower with 16 lanes, whose one block then runs every tier).
    With a smooth field (`GradientField`) it is the implicit midpoint rule. Use with
    `diffrax.PIDController` (the default in `jaxflow.flow`) or
    `diffrax.ConstantStepSize()` and `dt0`.
    """

    newton_iters: int = 2
    dense_max: int = 64
    estimate: str = "euler"
    compact_qp: bool = True
    few_kinks: tuple[int, ...] = eqx.field(default=(16,), converter=_tiers)
    krylov_dim: int = 4

    def __check_init__(self):
        if self.estimate not in ("euler", "midpoint"):
            raise ValueError(
                f"ProxLinear(estimate=...) must be 'euler' or 'midpoint', got {self.estimate!r}."
            )
        if not (isinstance(self.krylov_dim, int) and self.krylov_dim >= 0):
            raise ValueError(
                f"ProxLinear(krylov_dim=...) must be an integer >= 0, got {self.krylov_dim!r}."
            )

    @property
    def error_order(self) -> int:
        # The Euler-midpoint difference scales like h^2; the "midpoint" estimate h^3.
        return 3 if self.estimate == "midpoint" else 2

    @property
    def name(self) -> str:
        return "ProxLinear"

    def matrices_per_lane(self, dim: int) -> int:
        return 3 if dim <= self.dense_max else 0  # the selection's Jacobian, its LU

    def step(self, field, x, f, v, h, state):
        lin = getattr(field, "prox_linearisation", None)
        if lin is not None:
            _, v_step, g = lin(x, h)
        else:
            v_step, g = field.velocity(x), field.velocity
        return self._correct(field, x, h, v_step, g, state)

    def batched_step(self, field, x, f, v, h, state, active):
        n = x.shape[0]
        screens = getattr(field, "screens", None)
        compactable = self.compact_qp and screens is not None and screens(x.dtype)
        if not compactable or n < MIN_BLOCK:
            return super().batched_step(field, x, f, v, h, state, active)
        f0, g0, count, theta0 = jax.vmap(field.prox_screen)(x, h)
        need = (count > 0) & active
        screened = (f0, g0, theta0)
        prog = field.program(x.dtype)
        slots = min(prog.n_groups, field.options.max_active)
        for tier in (t for t in self.few_kinks if t < slots):
            # Lanes with at most `tier` candidate kinks (and more than the tier below):
            # a QP over `tier` slots (the same answer: the other slots hold untied
            # kinks, which the QP cannot move).
            few = need & (count <= tier)
            small = field.with_options(max_active=tier)
            screened = on_rows(
                small.prox_selection, (x, h), few, screened,
                whole_pass=_fixed_budget_qp(small.options, tier), cost=count,
            )
            need = need & ~few
        _, v_step, theta = on_rows(
            field.prox_selection, (x, h), need, screened,
            whole_pass=_fixed_budget_qp(field.options, slots), cost=count,
        )

        def correct(x, h, v_step, theta, s):
            g = field.selection_gradient(theta, x.dtype)
            return self._correct(field, x, h, v_step, g, s)

        return jax.vmap(correct)(x, h, v_step, theta, state)

    def _correct(self, field, x, h, v_step, g, state):
        """The step from the prox-linear velocity `v_step` and the selection's field `g`."""
        x_e = x - h * v_step
        if g is None:  # black box: prox-linear step, implicit-Euler estimate
            f1, v1 = field.prox_velocity(x_e, h)
            err = 0.5 * h * (v1 - v_step)
            return x_e, err, f1, v1, jnp.all(jnp.isfinite(v_step)), state
        d = x.shape[0]
        z = x_e
        dg_at_x = None  # the linearisation of G at x, where the step forms it
        if d <= self.dense_max:
            dg = jax.jacfwd(g)(x)
            m = jnp.eye(d, dtype=x.dtype) + (0.5 * h) * dg
            lu = jax.scipy.linalg.lu_factor(m)
            for _ in range(self.newton_iters):
                r = z - x + h * g(0.5 * (x + z))
                z = z - jax.scipy.linalg.lu_solve(lu, r)
        elif self.krylov_dim > 0:
            # Simplified Newton with I + (h/2) dG(x) applied matrix-free (Jacobian-vector
            # products of G) and solved by `krylov_dim` steps of GMRES: the fixed-point
            # iteration below converges only while (h/2)||dG|| < 1, which bounds the
            # step by the curvature instead of the accuracy.
            _, dg_at_x = jax.linearize(g, x)
            z_prev = z
            for _ in range(self.newton_iters):
                r = z - x + h * g(0.5 * (x + z))
                delta, _ = gmres(lambda u: u + (0.5 * h) * dg_at_x(u), r, self.krylov_dim)
                z_prev, z = z, z - delta
        else:
            z_prev = z
            for _ in range(self.newton_iters + 2):
                z_prev, z = z, x - h * g(0.5 * (x + z))
        v1 = g(z)
        f1 = field.value(z)
        err = z - x_e
        if self.estimate == "midpoint" and d > self.dense_max:
            # The same leading term matrix-free (one Jacobian-vector product of G, by
            # linearity of G' in its argument), plus the iteration's last correction,
            # which bounds its own error where it contracts.
            tangent = -(h / 6.0) * err - (h / 12.0) * (z - x)
            lead = (jax.jvp(g, (x,), (tangent,))[1] if dg_at_x is None
                    else dg_at_x(tangent))
            err = lead + (h / 12.0) * (v1 - v_step) + (z - z_prev)
        if self.estimate == "midpoint" and d <= self.dense_max:
            # The midpoint point's own leading error term, -h^3/12 G'G'G + h^3/24 G''(G, G),
            # from quantities at hand: z - x_e = (h^2/2) G'G + O(h^3) (the Euler point's
            # error) gives the first, and G(z) - G(x) - G'(z - x) = (h^2/2) G''(G, G) +
            # O(h^3) the second. Larger steps than the Euler-midpoint difference, but the
            # drift off a kink manifold (second order) is then no longer held to the
            # tolerance.
            err = -(h / 6.0) * (dg @ err) + (h / 12.0) * (v1 - v_step - dg @ (z - x))
        ok = jnp.all(jnp.isfinite(z)) & jnp.all(jnp.isfinite(v_step))
        return z, err, f1, v1, ok, state
