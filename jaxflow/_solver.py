r"""Fused single-trajectory steppers built from diffrax solvers.

The engine (`_flow.py`) advances thousands of trajectories per loop iteration, so the
cost of one step is what matters. diffrax's own `solver.step` carries per-step
bookkeeping (an inner loop over stages, dense output, root-finder state) that dominates
for the small states of landscape studies. Here we read the **Butcher tableau** of a
diffrax solver and emit its stages as straight-line code:

- explicit RK (`Tsit5`, `Dopri5`, `Dopri8`, `Bosh3`, `Heun`, `Ralston`, `Midpoint`);
- ESDIRK (`Kvaerno3/4/5`): each implicit stage solved by a chord iteration with the
  exact Jacobian $I + h\gamma\nabla^2 f(x_n)$, factorised once per step. For a gradient
  flow the Jacobian of $-\nabla f$ is the symmetric $-\nabla^2 f$, so this is cheap
  for the small dimensions of landscape problems.

Any other diffrax solver runs through `DiffraxStepper`, which calls `solver.step`.
"""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._field import AbstractField

__all__ = [
    "AbstractStepper", "ERKStepper", "ESDIRKStepper", "Rodas4", "DiffraxStepper", "make_stepper",
]

# Unrolled LU below this dimension; LAPACK (batched) above.
_UNROLL_MAX_DIM = 12


# --------------------------------------------------------------------------- linear algebra
def _lu_factor(m):
    """LU factorisation (no pivoting) of a small dense matrix, unrolled at trace time.

    The matrices factorised here are $I + h\\gamma H$; when a pivot is tiny the step's
    error estimate blows up and the controller rejects it, so pivoting is not needed for
    correctness. Returned as a tuple of rows so that solves stay elementwise under vmap.
    """
    d = m.shape[-1]
    if d > _UNROLL_MAX_DIM:
        return ("lapack", jax.scipy.linalg.lu_factor(m))
    a = [[m[i, j] for j in range(d)] for i in range(d)]
    for k in range(d):
        inv = 1.0 / a[k][k]
        for i in range(k + 1, d):
            a[i][k] = a[i][k] * inv
            for j in range(k + 1, d):
                a[i][j] = a[i][j] - a[i][k] * a[k][j]
    return ("unrolled", a)


def _lu_solve(lu, b):
    kind, a = lu
    if kind == "lapack":
        return jax.scipy.linalg.lu_solve(a, b)
    d = b.shape[-1]
    y = [b[i] for i in range(d)]
    for i in range(d):
        for j in range(i):
            y[i] = y[i] - a[i][j] * y[j]
    x = [None] * d
    for i in reversed(range(d)):
        s = y[i]
        for j in range(i + 1, d):
            s = s - a[i][j] * x[j]
        x[i] = s / a[i][i]
    return jnp.stack(x)


def _lincomb(coeffs, vecs):
    """$\\sum_i c_i v_i$ skipping exact zeros (coefficients are trace-time constants)."""
    out = None
    for c, v in zip(coeffs, vecs):
        c = float(c)
        if c == 0.0:
            continue
        term = v if c == 1.0 else c * v
        out = term if out is None else out + term
    return out


# --------------------------------------------------------------------------- steppers
class AbstractStepper(eqx.Module):
    r"""One step of $x' = -v(x)$ for a single trajectory.

    `step(field, x, f, v, h)` takes the state with its cached value $f(x)$ and velocity
    $v(x)$ (first-same-as-last) and returns `(x1, err, f1, v1, ok)`: the candidate, the
    local error estimate (a vector, or `None` for fixed-step methods), $f$ and $v$ at
    the candidate, and `ok=False` when an implicit solve failed.
    """

    def step(self, field: AbstractField, x, f, v, h) -> tuple[Any, Any, Any, Any, Any]:
        raise NotImplementedError

    @property
    def error_order(self) -> int:
        raise NotImplementedError

    @property
    def adaptive(self) -> bool:
        return True

    @property
    def name(self) -> str:
        raise NotImplementedError


class ERKStepper(AbstractStepper):
    """Explicit Runge–Kutta from a diffrax tableau, stages unrolled."""

    solver: Any = eqx.field(static=True)

    @property
    def tableau(self):
        return self.solver.tableau

    @property
    def error_order(self):
        return int(self.solver.order(None))

    @property
    def name(self):
        return type(self.solver).__name__

    def step(self, field, x, f, v, h):
        tab = self.tableau
        ks = [-v]
        n_stages = len(tab.b_sol)
        # With FSAL the last stage sits at x1 and equals -v(x1), which we evaluate anyway.
        last_at_x1 = tab.fsal and float(tab.b_sol[-1]) == 0.0
        n_explicit = n_stages - 1 if last_at_x1 else n_stages
        for i in range(1, n_explicit):
            a_i = tab.a_lower[i - 1]
            z = x + h * _lincomb(a_i, ks)
            ks.append(-field.velocity(z))
        x1 = x + h * _lincomb(tab.b_sol[:n_explicit], ks)
        f1, v1 = field.value_and_velocity(x1)
        if last_at_x1:
            ks.append(-v1)
        err = h * _lincomb(tab.b_error, ks)
        if err is None:
            err = jnp.zeros_like(x)
        return x1, err, f1, v1, jnp.array(True)


class ESDIRKStepper(AbstractStepper):
    r"""ESDIRK (explicit first stage, stiffly accurate) from a diffrax tableau.

    Stage $i$ solves $z_i = x + h\sum_{j<i} a_{ij}k_j + h\gamma k_i$ with
    $k_i = -v(z_i)$ by a chord iteration with matrix $I + h\gamma\,\partial v(x)$,
    factorised once per step, starting from diffrax's predictor tableau. The stage
    derivative is recovered as $k_i = (z_i - \text{base}_i)/(h\gamma)$, which is
    preferable to re-evaluating $v$ for stiff problems (Hairer–Wanner IV.8). A stage
    whose last chord correction exceeds `newton_tol` (in the step's error norm) fails
    the step, and the controller retries with a smaller one.
    """

    solver: Any = eqx.field(static=True)
    # Measured on Example 1.1 (benchmarks/solver_choice.py): 6 chord iterations with a
    # unit tolerance minimise wall time; fewer iterations fail stages at large steps and
    # inflate the number of rejected steps, at no gain in accuracy.
    newton_iters: int = eqx.field(static=True, default=6)
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    newton_tol: float = eqx.field(static=True, default=1.0)

    @property
    def error_order(self):
        return int(self.solver.order(None))

    @property
    def name(self):
        return type(self.solver).__name__

    def step(self, field, x, f, v, h):
        tab = self.solver.tableau
        gammas = np.asarray(tab.a_diagonal)
        gamma = float(gammas[1])
        if not np.allclose(gammas[1:], gamma) or gammas[0] != 0:
            raise NotImplementedError(f"{self.name}: only SDIRK diagonals are fused.")
        jac = field.jacobian(x)
        m = jnp.eye(x.shape[0], dtype=x.dtype) + (h * gamma) * jac
        lu = _lu_factor(m)
        ks = [-v]
        ok = jnp.array(True)
        z = x
        for i in range(1, len(tab.b_sol)):
            a_i = tab.a_lower[i - 1]
            base = x + h * _lincomb(a_i, ks) if np.any(a_i != 0) else x
            pred = tab.a_predictor[i - 1]
            z = x + h * _lincomb(pred, ks) if np.any(pred != 0) else x
            scale = self.atol + self.rtol * jnp.abs(x)
            dz = jnp.zeros_like(x)
            for _ in range(self.newton_iters):
                r = z - base + (h * gamma) * field.velocity(z)
                dz = _lu_solve(lu, r)
                z = z - dz
            conv = jnp.sqrt(jnp.mean((dz / scale) ** 2))
            ok = ok & (conv <= self.newton_tol)
            ks.append((z - base) / (h * gamma))
        x1 = z  # stiffly accurate: the last stage is the solution
        f1, v1 = field.value_and_velocity(x1)
        err = h * _lincomb(tab.b_error, ks)
        return x1, err, f1, v1, ok


# Rodas4 (Hairer & Wanner, Solving ODEs II, Sec. IV.7; the "transformed" coefficients
# of their RODAS code): 6 stages, order 4 with an embedded order-3 estimate,
# L-stable and stiffly accurate.
_RODAS4 = dict(
    gamma=0.25,
    a=(
        (1.544,),
        (0.9466785280815826, 0.2557011698983284),
        (3.314825187068521, 2.896124015972201, 0.9986419139977817),
        (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950),
    ),
    c=(
        (-5.6688,),
        (-2.430093356833875, -0.2063599157091915),
        (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
        (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160),
        (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136,
         -6.058818238834054),
    ),
)


class Rodas4(AbstractStepper):
    r"""Rodas4: a 6-stage L-stable Rosenbrock method of order 4 (Hairer & Wanner).

    Linearly implicit: one factorisation of $I + h\gamma\nabla^2 f(x_n)$ per step and six
    solves, no Newton iteration. Its stage derivatives are exact Jacobian-weighted, so it
    damps the stiff directions of escaping valleys like an implicit method at the cost
    of an explicit one plus the Hessian. diffrax has no Rosenbrock solver; this one plugs
    into the same engine and controller.
    """

    @property
    def error_order(self):
        return 4

    @property
    def name(self):
        return "Rodas4"

    def step(self, field, x, f, v, h):
        tab = _RODAS4
        hg = h * tab["gamma"]
        jac = field.jacobian(x)
        lu = _lu_factor(jnp.eye(x.shape[0], dtype=x.dtype) + hg * jac)

        def solve(r):  # (I/(h gamma) + H)^{-1} r
            return hg * _lu_solve(lu, r)

        ks = [solve(-v)]
        u = x
        for i in range(1, 6):
            if i < 5:
                u = x + _lincomb(tab["a"][i - 1], ks)
            else:
                u = u + ks[-1]  # stage 6 sits at u5 + k5
            coupling = _lincomb(tab["c"][i - 1], ks) / h
            ks.append(solve(-field.velocity(u) + coupling))
        x1 = u + ks[-1]
        f1, v1 = field.value_and_velocity(x1)
        return x1, ks[-1], f1, v1, jnp.array(True)


class DiffraxStepper(AbstractStepper):
    """Any diffrax solver with a plain `ODETerm`, through `solver.step` (slower)."""

    solver: Any = eqx.field(static=True)

    @property
    def error_order(self):
        return int(self.solver.order(None) or 1)

    @property
    def adaptive(self):
        return isinstance(self.solver, diffrax.AbstractAdaptiveSolver)

    @property
    def name(self):
        return type(self.solver).__name__

    def step(self, field, x, f, v, h):
        term = diffrax.ODETerm(lambda t, y, args: -field.velocity(y))
        t0 = jnp.zeros((), x.dtype)
        state = self.solver.init(term, t0, t0 + h, x, None)
        x1, err, _, _, result = self.solver.step(
            term, t0, t0 + h, x, None, state, made_jump=False
        )
        f1, v1 = field.value_and_velocity(x1)
        if err is None:
            err = jnp.zeros_like(x)
        return x1, err, f1, v1, result == diffrax.RESULTS.successful


def make_stepper(solver, *, rtol: float, atol: float) -> AbstractStepper:
    """Chooses the fused stepper for a diffrax solver (or passes an `AbstractStepper`)."""
    if isinstance(solver, AbstractStepper):
        return solver
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(
            f"solver must be a diffrax solver (e.g. diffrax.Kvaerno5()) or a jaxflow "
            f"stepper, got {solver!r}."
        )
    term_structure = getattr(solver, "term_structure", diffrax.AbstractTerm)
    if term_structure not in (diffrax.AbstractTerm, diffrax.ODETerm):
        raise TypeError(
            f"{type(solver).__name__} needs terms of structure {term_structure}; a gradient "
            "flow is a single ODE term. Use an ODE solver such as Tsit5, Dopri5 or Kvaerno5."
        )
    tab = getattr(solver, "tableau", None)
    if isinstance(solver, diffrax.AbstractERK) and tab is not None and not tab.implicit:
        return ERKStepper(solver)
    if (
        isinstance(solver, diffrax.AbstractESDIRK)
        and tab is not None
        and tab.a_diagonal is not None
        and tab.a_diagonal[0] == 0
        and np.allclose(tab.a_diagonal[1:], tab.a_diagonal[1])
        and tab.fsal  # stiffly accurate with an explicit first stage
    ):
        return ESDIRKStepper(solver, rtol=float(rtol), atol=float(atol))
    return DiffraxStepper(_with_root_finder_tols(solver, rtol, atol))


def _with_root_finder_tols(solver, rtol, atol):
    """Implicit diffrax solvers take their root-finder tolerances from the step-size
    controller inside `diffeqsolve`; outside it we must set them ourselves."""
    rf = getattr(solver, "root_finder", None)
    if rf is None or not hasattr(rf, "rtol"):
        return solver
    import optimistix as optx  # noqa: PLC0415 - only for implicit solvers

    def fix(v, default):
        return v if isinstance(v, (int, float)) else default

    return eqx.tree_at(
        lambda s: (s.root_finder.rtol, s.root_finder.atol, s.root_finder.norm),
        solver,
        (fix(rf.rtol, float(rtol)), fix(rf.atol, float(atol)), optx.rms_norm),
        is_leaf=lambda x: x is None,
    )

