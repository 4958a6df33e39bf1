"""The stepper family: one step of the flow for one trajectory (vmapped by the engine).

| module | stepper |
|---|---|
| `base` | `AbstractStepper` (state in, state out) |
| `erk` | `ERKStepper`: explicit diffrax tableaux, fused |
| `esdirk` | `ESDIRKStepper`: `Kvaerno3/4/5` with a chord iteration on the Hessian (kept over steps above 32 variables) |
| `rodas` | `Rodas4`: linearly implicit, L-stable |
| `krylov` | fixed-dimension GMRES on matrix-vector products |
| `rosenbrock_krylov` | `RodasKrylov`: Rodas4 with matrix-free (Hessian-vector) stage solves |
| `prox_linear` | `ProxLinear`: nonsmooth flows without chattering |
| `diffrax_wrapped` | `DiffraxStepper`: any other diffrax solver through `solver.step` |
| `optax_driver` | `OptaxStepper`: an optax optimiser, one iteration per step |
| `choice` | `make_stepper`, `default_solver`, the table of jaxflow's named steppers |
"""

from .base import AbstractStepper as AbstractStepper
from .choice import STEPPERS as STEPPERS
from .choice import default_solver as default_solver
from .choice import make_stepper as make_stepper
from .diffrax_wrapped import DiffraxStepper as DiffraxStepper
from .erk import ERKStepper as ERKStepper
from .esdirk import ESDIRKStepper as ESDIRKStepper
from .optax_driver import OptaxStepper as OptaxStepper
from .prox_linear import ProxLinear as ProxLinear
from .rodas import Rodas4 as Rodas4
from .rosenbrock_krylov import RodasKrylov as RodasKrylov
