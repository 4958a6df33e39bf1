"""Which stepper runs a given solver: fused tableaux where diffrax's solver allows it."""

from __future__ import annotations

import diffrax
import numpy as np

from .base import AbstractStepper
from .diffrax_wrapped import DiffraxStepper, with_root_finder_tols
from .erk import ERKStepper
from .esdirk import ESDIRKStepper
from .prox_linear import ProxLinear
from .rodas import Rodas4
from .rosenbrock_krylov import RodasKrylov

__all__ = ["make_stepper", "default_solver", "STEPPERS", "MATRIX_FREE_MIN_DIM"]

# jaxflow's own steppers, by the name a scan spec records them under ("jaxflow.<name>").
STEPPERS: dict[str, type[AbstractStepper]] = {
    "ProxLinear": ProxLinear, "Rodas4": Rodas4, "RodasKrylov": RodasKrylov,
}


# Smallest dimension at which `solver="auto"` integrates smooth problems matrix-free.
# Measured on rank-2 completion (benchmarks/high_dim.py, float32, 16 starts, t1 = 2e3,
# one core, compilation included) between Kvaerno5 keeping its Hessians over steps and
# RodasKrylov sharing one Krylov space over its stages: at d = 240, 15.9 s against 48 s
# (one escaping start takes 169 steps with Kvaerno5, 2764 with RodasKrylov); at d = 480
# (no escapes), 32.9 s against 21.2 s (7.9 s compiled). d = 120: Kvaerno5 15.3 s for 64
# starts, RodasKrylov 93 s. So the crossover is between 240 and 480.
MATRIX_FREE_MIN_DIM = 400
# Largest dimension at which `solver="auto"` uses Rodas4 rather than Kvaerno5 (see
# `default_solver`).
DENSE_ROSENBROCK_MAX_DIM = 32


def default_solver(problem):
    """The measured best per kind of problem, for smooth problems by dimension:

    - $d \\le$ `DENSE_ROSENBROCK_MAX_DIM` (32): `jaxflow.Rodas4` (dense Hessian, L-stable:
      stiff escapes). The same statuses and accuracy as `Kvaerno5` in about half the time:
      one factorisation and six solves per step where Kvaerno5 iterates its stages
      (`benchmarks/solver_choice.py`, `benchmarks/vs_scipy.py`: Example 1.1, deep linear
      d = 24).
    - below `MATRIX_FREE_MIN_DIM` (400): `Kvaerno5`, which keeps each trajectory's
      Hessian over steps (`jaxflow.ESDIRKStepper`). Rodas4 needs the exact Hessian at
      every step and takes more steps: rank-2 completion at d = 120, median 212 steps
      against Kvaerno5's 89, 28.2 s against 15.3 s (`benchmarks/high_dim.py`).
    - above: `jaxflow.RodasKrylov` (Rodas4 on Hessian-vector products).
    - nonsmooth problems: `jaxflow.ProxLinear` (slides along kinks, no chattering).

    Explicit solvers (`Tsit5`) only when asked for: escaping valleys are stiff, and an
    explicit solver spends its whole step budget in them.

    `ProxLinear(estimate="midpoint")` takes ~10x fewer steps on nonsmooth problems with
    the same statuses, but its trajectories are ~80x less accurate at the same tolerance
    (soft thresholding at rtol 1e-6: 2.8e-5 against 3.4e-7 from the closed form) and sit
    on kinks to ~1e-7 instead of ~1e-9, so it stays an explicit choice."""
    if problem.nonsmooth:
        return ProxLinear()
    if problem.dim <= DENSE_ROSENBROCK_MAX_DIM:
        return Rodas4()
    if problem.dim < MATRIX_FREE_MIN_DIM:
        return diffrax.Kvaerno5()
    return RodasKrylov()


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
    return DiffraxStepper(with_root_finder_tols(solver, rtol, atol))
