r"""`FlowOptions`: everything that configures a flow, validated and parsed once.

`jaxflow.flow`, `jaxflow.descend` and `jaxflow.scan` all take a `FlowOptions` (their keyword
arguments are shorthands that build one). It validates at construction, parses the diffrax
step-size controller into the engine's fused controller once, resolves the defaults that
depend on the problem or the dtype (`solver="auto"`, `gtol=None`) in one place, and
round-trips to and from the `"flow"` section of a scan spec.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypedDict

import diffrax
import jax.numpy as jnp
import numpy as np

from ._controller import AbstractController, ConstantStep, PIDControl
from ._json import canonical_json, float_from_json, json_float
from ._stepper import STEPPERS, AbstractStepper, default_solver, make_stepper

__all__ = ["FlowOptions", "checkpoint_times", "default_gtol", "solver_to_spec",
           "solver_from_spec"]

_PID_FIELDS = ("rtol", "atol", "pcoeff", "icoeff", "dcoeff", "dtmax", "safety", "factormin",
               "factormax")


def checkpoint_times(t1: float, *, per_decade: int = 8, t_first: float | None = None) -> np.ndarray:
    """`[0, t_first, ..., t1]`, log-spaced with `per_decade` points per decade.

    `t_first` defaults to `min(0.1, t1 / 10)`.
    """
    t1 = float(t1)
    if not (math.isfinite(t1) and t1 > 0):
        raise ValueError(f"t1 must be a positive finite time, got {t1!r}.")
    if t_first is None:
        t_first = min(0.1, t1 / 10)
    if not (0 < t_first < t1):
        raise ValueError(f"t_first must lie in (0, t1), got {t_first!r} with t1={t1}.")
    if per_decade < 1:
        raise ValueError(f"checkpoints per_decade must be >= 1, got {per_decade}.")
    n = max(2, int(math.ceil(per_decade * math.log10(t1 / t_first))) + 1)
    return np.concatenate([[0.0], np.geomspace(t_first, t1, n)])


def default_gtol(dtype) -> float:
    r"""Default stationarity tolerance: $10^{-8}$ in float64, $10^{-4}$ in float32.

    In float32 the gradient of a loss of order one cannot be resolved much below
    $\sqrt{\epsilon} \approx 3\cdot 10^{-4}$ times its curvature scale, so a tighter
    tolerance would turn converged trajectories into `HORIZON`.
    """
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def parse_controller(ctrl, dt0) -> AbstractController:
    """A diffrax controller (`PIDController`, `ConstantStepSize`) -> the engine's controller."""
    if ctrl is None:
        ctrl = diffrax.PIDController(rtol=1e-6, atol=1e-8)
    if isinstance(ctrl, diffrax.ConstantStepSize):
        if dt0 is None or not dt0 > 0:
            raise ValueError(
                "stepsize_controller=ConstantStepSize() needs a positive `dt0` (the step)."
            )
        return ConstantStep(dt0=float(dt0))
    if isinstance(ctrl, diffrax.PIDController):
        def num(v, name):
            try:
                return float(v)
            except TypeError as e:
                raise TypeError(
                    f"PIDController.{name} must be a scalar for jaxflow, got {v!r}."
                ) from e

        if ctrl.dtmin is not None:
            raise ValueError(
                "PIDController(dtmin=...) is not supported: jaxflow gives a trajectory "
                "whose step underflows the status MAX_STEPS instead of forcing steps."
            )
        values = {name: getattr(ctrl, name) for name in _PID_FIELDS}
        parsed = {k: None if v is None and k == "dtmax" else num(v, k) for k, v in values.items()}
        _check_pid(parsed)
        if dt0 is not None and not (math.isfinite(float(dt0)) and float(dt0) > 0):
            raise ValueError(f"dt0 must be a positive finite first step (or None), got {dt0!r}.")
        return PIDControl(**parsed, dt0=None if dt0 is None else float(dt0))
    raise TypeError(
        "stepsize_controller must be diffrax.PIDController(...) or "
        f"diffrax.ConstantStepSize(), got {type(ctrl).__name__}."
    )


def _check_pid(values: Mapping[str, float | None]) -> None:
    """Refuses PID settings no step-size rule can use, naming the field."""
    rules = {
        "rtol": (lambda v: v >= 0, "a finite number >= 0"),
        "atol": (lambda v: v >= 0, "a finite number >= 0"),
        "pcoeff": (lambda v: True, "finite"),
        "icoeff": (lambda v: True, "finite"),
        "dcoeff": (lambda v: True, "finite"),
        "safety": (lambda v: 0 < v <= 1, "in (0, 1]"),
        "factormin": (lambda v: 0 < v <= 1, "in (0, 1]"),
        "factormax": (lambda v: v >= 1, ">= 1"),
        "dtmax": (lambda v: v > 0, "positive (or None)"),
    }
    for name, (ok, what) in rules.items():
        v = values[name]
        if v is None and name == "dtmax":
            continue
        if not (math.isfinite(v) and ok(v)):
            raise ValueError(f"PIDController.{name} must be {what}, got {v!r}.")
    if values["rtol"] == 0 and values["atol"] == 0:
        raise ValueError("PIDController: rtol and atol cannot both be 0 (no step would pass).")


def _controller_to_spec(control: AbstractController) -> dict:
    if isinstance(control, ConstantStep):
        return {"kind": "constant"}
    return {"kind": "pid", **{name: json_float(getattr(control, name)) for name in _PID_FIELDS}}


def _controller_from_spec(spec: Mapping):
    if spec["kind"] == "constant":
        return diffrax.ConstantStepSize()
    return diffrax.PIDController(**{k: float_from_json(v) for k, v in spec.items() if k != "kind"})


def solver_to_spec(solver, problem):
    """The solver as recorded in a scan spec: a diffrax solver's class name (`"Kvaerno5"`),
    or `"jaxflow.<Stepper>"` for jaxflow's own steppers, with `params` if not default."""
    if isinstance(solver, str):
        if solver == "auto":
            return solver_to_spec(default_solver(problem), problem)
        if solver.startswith("jaxflow."):
            if solver.split(".", 1)[1] in STEPPERS:
                return solver
            raise ValueError(f"solver: jaxflow has no stepper {solver!r}.")
        cls = getattr(diffrax, solver, None)
        if not (isinstance(cls, type) and issubclass(cls, diffrax.AbstractSolver)):
            raise ValueError(f"solver: unknown diffrax solver {solver!r} (try Kvaerno5, Tsit5).")
        return solver
    if isinstance(solver, AbstractStepper):
        name = type(solver).__name__
        if STEPPERS.get(name) is not type(solver):
            raise ValueError(f"solver: {name} is not a stepper exported by jaxflow.")
        params = {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)}
        default = {f.name: getattr(type(solver)(), f.name) for f in dataclasses.fields(solver)}
        changed = {k: v for k, v in params.items() if v != default[k]}
        if not changed:
            return f"jaxflow.{name}"
        try:
            canonical_json(changed)
        except (TypeError, ValueError) as e:
            raise ValueError(f"solver: {name} parameters {changed} cannot be recorded.") from e
        return {"class": f"jaxflow.{name}", "params": changed}
    if isinstance(solver, diffrax.AbstractSolver):
        name = type(solver).__name__
        if getattr(diffrax, name, None) is not type(solver) or solver != type(solver)():
            raise ValueError(
                "solver: a scan records its solver by name, so pass a diffrax solver built "
                f"without arguments (e.g. diffrax.{name}()) or its name, got {solver!r}."
            )
        return name
    raise TypeError(
        f"solver must be 'auto', a diffrax solver (name or instance) or a jaxflow stepper, "
        f"got {solver!r}."
    )


def solver_from_spec(spec):
    """Inverse of `solver_to_spec`: a solver instance."""
    name, params = (spec, {}) if isinstance(spec, str) else (spec["class"], spec["params"])
    if name.startswith("jaxflow."):
        return STEPPERS[name.split(".", 1)[1]](**params)
    return getattr(diffrax, name)(**params)


def solver_name(spec) -> str:
    """The class name recorded for a solver spec."""
    return spec if isinstance(spec, str) else spec["class"]


@dataclasses.dataclass(frozen=True)
class FlowOptions:
    r"""How to integrate $x' = -v(x)$: solver, step control, horizon, budgets, lanes.

    **Arguments** (all keyword; every one has a default except `t1` for `flow`/`scan`):

    - `t1`: horizon.
    - `solver`: any diffrax ODE solver, a jaxflow stepper (`jaxflow.Rodas4()`,
      `jaxflow.ProxLinear()`), or `"auto"`, the measured best for the problem: escaping
      valleys are stiff, so L-stable methods with the exact Hessian: `jaxflow.Rodas4`
      for smooth problems with $d \le 32$, `Kvaerno5` for $32 < d < 400$,
      `jaxflow.RodasKrylov` above (Rodas4 matrix-free: dense Hessians cost $O(d^2)$
      memory and $O(d^3)$ time per step); `ProxLinear` for nonsmooth problems (see
      `jaxflow._stepper.choice.default_solver`).
    - `stepsize_controller`: `diffrax.PIDController(rtol, atol)` (default rtol
      $10^{-6}$, atol $10^{-8}$) or `diffrax.ConstantStepSize()` with `dt0`. Errors are
      measured against `atol + max(rtol, 10 eps) |x_i| + 10 eps rms(x)` (eps the dtype's
      machine epsilon: below that an error estimate is rounding noise), which in float32
      (eps $1.2\cdot10^{-7}$) raises the tolerance of components near 0.
    - `dt0`: first step (default: Hairer–Nørsett–Wanner's guess), or the constant step.
    - `gtol`: stationarity tolerance for `CONVERGED` (default `default_gtol(dtype)`).
    - `escape_radius`: $\|x\|$ at which a trajectory is `ESCAPED`.
    - `max_steps`: per-trajectory step budget (accepted + rejected).
    - `checkpoints_per_decade`, `t_first`: the log-spaced checkpoint grid.
    - `lanes`: trajectories advanced per loop iteration (default from `n` and the backend).
    - `stop_at_convergence`: stop a trajectory once `CONVERGED` (default). When `False`,
      trajectories run to `t1` and the status is decided at the end.
    - `save_states`: also record the full state at every checkpoint for the first this
      many trajectories (`FlowResult.cp_x`, memory `save_states * K * d`).
    - `extend_undecided`: a larger horizon $T > t_1$: the trajectories the detectors
      (`jaxflow.classify`, default thresholds) leave `UNDECIDED` at `t1` are continued
      from their final state, a decade at a time (the last step up to $T$), until they
      are decided or $T$ is reached; `FlowResult.decided_at` records the horizon of each
      verdict (default `None`: no extension).
    """

    t1: float | None = None
    solver: Any = "auto"
    stepsize_controller: Any = None
    dt0: float | None = None
    gtol: float | None = None
    escape_radius: float = 1e6
    max_steps: int = 65536
    checkpoints_per_decade: int = 8
    t_first: float | None = None
    lanes: int | None = None
    stop_at_convergence: bool = True
    save_states: int = 0
    extend_undecided: float | None = None
    # The engine's controller, parsed from `stepsize_controller` and `dt0` (derived).
    control: AbstractController = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.t1 is not None:
            checkpoint_times(self.t1, per_decade=self.checkpoints_per_decade,
                             t_first=self.t_first)
        if not _is_int(self.checkpoints_per_decade) or self.checkpoints_per_decade < 1:
            raise ValueError(
                "checkpoints_per_decade must be an integer >= 1, got "
                f"{self.checkpoints_per_decade!r}."
            )
        if not (isinstance(self.escape_radius, (int, float, np.number))
                and float(self.escape_radius) > 0):
            raise ValueError(f"escape_radius must be positive, got {self.escape_radius!r}.")
        if not (_is_int(self.max_steps) and self.max_steps > 0):
            raise ValueError(f"max_steps must be a positive integer, got {self.max_steps!r}.")
        if self.gtol is not None and not float(self.gtol) >= 0:
            raise ValueError(f"gtol must be >= 0, got {self.gtol!r}.")
        if self.lanes is not None and not (_is_int(self.lanes) and self.lanes >= 1):
            raise ValueError(f"lanes must be a positive integer, got {self.lanes!r}.")
        if not (_is_int(self.save_states) and self.save_states >= 0):
            raise ValueError(f"save_states must be an integer >= 0, got {self.save_states!r}.")
        if self.extend_undecided is not None:
            ext = self.extend_undecided
            if not (isinstance(ext, (int, float, np.number)) and math.isfinite(float(ext))
                    and (self.t1 is None or float(ext) > float(self.t1))):
                raise ValueError(
                    f"extend_undecided must be a finite horizon above t1={self.t1!r}, got "
                    f"{ext!r} (e.g. extend_undecided=10 * t1)."
                )
        if isinstance(self.solver, str) and self.solver != "auto":
            solver_to_spec(self.solver, None)  # names an existing solver, or raises
        object.__setattr__(self, "control", parse_controller(self.stepsize_controller, self.dt0))

    def replace(self, **changes) -> FlowOptions:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def checkpoint_times(self) -> np.ndarray:
        """The checkpoint grid `[0, t_first, ..., t1]`."""
        if self.t1 is None:
            raise ValueError("FlowOptions: `t1` (the horizon) is required.")
        return checkpoint_times(self.t1, per_decade=self.checkpoints_per_decade,
                                t_first=self.t_first)

    def gtol_for(self, dtype) -> float:
        """`gtol`, or the default of `dtype`."""
        return default_gtol(dtype) if self.gtol is None else float(self.gtol)

    def stepper(self, problem) -> AbstractStepper:
        """The stepper that integrates `problem` (resolves `solver="auto"`)."""
        solver = self.solver
        if isinstance(solver, str):
            solver = default_solver(problem) if solver == "auto" else solver_from_spec(solver)
        rtol = getattr(self.control, "rtol", 1e-6)
        atol = getattr(self.control, "atol", 1e-8)
        stepper = make_stepper(solver, rtol=rtol, atol=atol)
        if isinstance(self.control, PIDControl) and not stepper.adaptive:
            raise ValueError(
                f"{stepper.name} has no error estimate; use "
                "stepsize_controller=diffrax.ConstantStepSize() with dt0=..."
            )
        return stepper

    def to_spec(self, problem, dtype) -> dict:
        """The `"flow"` section of a scan spec (JSON-able, `gtol` and `"auto"` resolved)."""
        return {
            "t1": json_float(self.t1), "solver": solver_to_spec(self.solver, problem),
            "stepsize_controller": _controller_to_spec(self.control),
            "dt0": json_float(self.dt0), "gtol": json_float(self.gtol_for(dtype)),
            "escape_radius": json_float(self.escape_radius), "max_steps": int(self.max_steps),
            "checkpoints_per_decade": int(self.checkpoints_per_decade),
            "t_first": json_float(self.t_first), "lanes": self.lanes,
            "stop_at_convergence": bool(self.stop_at_convergence),
            "extend_undecided": json_float(self.extend_undecided),
        }

    @classmethod
    def from_spec(cls, spec: Mapping, *, save_states: int = 0) -> FlowOptions:
        """Inverse of `to_spec`."""
        return cls(
            t1=float(spec["t1"]), solver=solver_from_spec(spec["solver"]),
            stepsize_controller=_controller_from_spec(spec["stepsize_controller"]),
            dt0=float_from_json(spec["dt0"]), gtol=float(spec["gtol"]),
            escape_radius=float(spec["escape_radius"]), max_steps=int(spec["max_steps"]),
            checkpoints_per_decade=int(spec["checkpoints_per_decade"]),
            t_first=float_from_json(spec["t_first"]), lanes=spec["lanes"],
            stop_at_convergence=bool(spec["stop_at_convergence"]), save_states=int(save_states),
            extend_undecided=float_from_json(spec.get("extend_undecided")),
        )

    @classmethod
    def build(cls, options: FlowOptions | None, shorthands: Mapping[str, Any], *,
              caller: str, allowed: frozenset[str] | None = None) -> FlowOptions:
        """`options` with the keyword shorthands of `caller` (`flow`, `scan`, ...) on top.

        `allowed`: the shorthands that apply to `caller` (default: every field).
        """
        names = _SHORTHANDS if allowed is None else allowed
        unknown = sorted(set(shorthands) - names)
        if unknown:
            raise TypeError(
                f"{caller}: unknown option(s) {unknown}; it takes {sorted(names)} (the fields "
                "of jaxflow.FlowOptions that apply)."
            )
        if options is None:
            return cls(**shorthands)
        if not isinstance(options, FlowOptions):
            raise TypeError(
                f"{caller}: options must be a jaxflow.FlowOptions, got {type(options).__name__}."
            )
        return options.replace(**shorthands) if shorthands else options


class FlowShorthands(TypedDict, total=False):
    """The keyword arguments of `flow`/`scan` that stand for `FlowOptions` fields."""

    t1: float
    solver: Any
    stepsize_controller: Any
    dt0: float | None
    gtol: float | None
    escape_radius: float
    max_steps: int
    checkpoints_per_decade: int
    t_first: float | None
    lanes: int | None
    stop_at_convergence: bool
    save_states: int
    extend_undecided: float | None


_SHORTHANDS = frozenset(FlowShorthands.__annotations__)
