"""jaxflow: certify the absence of spurious local minima at infinity, empirically.

Integrates (sub)gradient flows from many random starts at once and classifies where
they go (Josz & Li, SIAM J. Optim. 2023, Theorem 1.2).
"""

from ._detect import Classification as Classification
from ._detect import DetectorOptions as DetectorOptions
from ._detect import classify as classify
from ._detect import classify_arrays as classify_arrays
from ._field import AbstractField as AbstractField
from ._field import GradientField as GradientField
from ._errors import JaxflowError as JaxflowError
from ._flow import FlowResult as FlowResult
from ._flow import descend as descend
from ._flow import flow as flow
from ._flow import iteration_checkpoints as iteration_checkpoints
from ._options import FlowOptions as FlowOptions
from ._options import checkpoint_times as checkpoint_times
from ._options import default_gtol as default_gtol
from ._problem import AbstractSampler as AbstractSampler
from ._nonsmooth import Exactness as Exactness
from ._nonsmooth import MinNormField as MinNormField
from ._nonsmooth import MinNormOptions as MinNormOptions
from ._nonsmooth import MinNormResult as MinNormResult
from ._nonsmooth import UnsupportedKinkError as UnsupportedKinkError
from ._nonsmooth import minnorm_subgradient as minnorm_subgradient
from ._problem import Normal as Normal
from ._problem import Problem as Problem
from ._problem import Uniform as Uniform
from ._report import Report as Report
from ._report import Verdict as Verdict
from ._scan import ChunkCorruptedError as ChunkCorruptedError
from ._scan import ScanError as ScanError
from ._scan import ScanLockedError as ScanLockedError
from ._scan import ScanProgress as ScanProgress
from ._scan import ScanResult as ScanResult
from ._scan import SpecMismatchError as SpecMismatchError
from ._scan import StoreError as StoreError
from ._scan import StoreIntegrityError as StoreIntegrityError
from ._scan import UnsafePathError as UnsafePathError
from ._scan import ChunkWriteError as ChunkWriteError
from ._scan import load as load
from ._scan import scan as scan
from ._schema import trajectory_table as trajectory_table
from ._sweep import Grid as Grid
from ._sweep import SweepProgress as SweepProgress
from ._sweep import SweepResult as SweepResult
from ._sweep import SweepSummary as SweepSummary
from ._sweep import load_sweep as load_sweep
from ._sweep import sweep as sweep
from ._stepper import AbstractStepper as AbstractStepper
from ._stepper import ESDIRKStepper as ESDIRKStepper
from ._stepper import ProxLinear as ProxLinear
from ._stepper import Rodas4 as Rodas4
from ._stepper import RodasKrylov as RodasKrylov
from ._status import Status as Status
from ._values import CriticalPointType as CriticalPointType
from ._values import CriticalValue as CriticalValue
from ._values import ValueAtInfinity as ValueAtInfinity
from ._values import critical_values as critical_values
from ._values import values_at_infinity as values_at_infinity
from . import problems as problems

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("jaxflow")
except _PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
