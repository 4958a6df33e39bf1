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

__all__ = ["make_stepper", "default_solver", "STEPPERS"]

# jaxflow's own steppers, by the name a scan spec records them under ("jaxflow.<name>").
STEPPERS: dict[str, type[AbstractStepper]] = {"ProxLinear": ProxLinear, "Rodas4": Rodas4}


def default_solver(problem):
    """The measured best per kind of problem (`benchmarks/solver_choice.py`):
    `jaxflow.Rodas4` for small smooth problems (stiff escapes; the same statuses and
    accuracy as `Kvaerno5` in about half the time), `Tsit5` otherwise;
    `jaxflow.ProxLinear` for nonsmooth problems (slides along kinks, no chattering).

    `ProxLinear(estimate="midpoint")` takes ~10x fewer steps on nonsmooth problems with
    the same statuses, but its trajectories are ~80x less accurate at the same tolerance
    (soft thresholding at rtol 1e-6: 2.8e-5 against 3.4e-7 from the closed form) and sit
    on kinks to ~1e-7 instead of ~1e-9, so it stays an explicit choice."""
    if problem.nonsmooth:
        return ProxLinear()
    if problem.dim <= 32:
        return Rodas4()
    return diffrax.Tsit5()


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
