r"""The nonsmooth family: the minimal-norm Clarke subgradient of a plain JAX loss.

`jax.grad` returns one element of a conservative field at a kink (`abs'(0) = 1`, `max`
ties split 0.5/0.5, `relu'(0) = 0`). Here the kinks of $f$ are found in its jaxpr, the
kinks tied at $x$ (within a rounding band) get selector weights, and the minimal-norm
selection gradient is a small QP, with a certificate (`Exactness`) of why the hull is
$\partial f(x)$, or that it may be larger or approximate. With the duality gap,
$\|v - v^*\| \le \sqrt{2\,\mathrm{gap}}$ where $v^*$ is the exact minimal-norm element.

Modules, in dependency order:

- `kinks`: `KinkProgram`, the jaxpr interpreter (a table of per-primitive rules);
  `KinkSite`, `Probe`, `UnsupportedKinkError`;
- `options`: `MinNormOptions` (validated once), `machine_eps`;
- `qp`: min-norm QPs with fixed budgets (box, product of simplices, hull), duality gaps;
- `slots`: the kinks tied at a point laid out in static slots (`KinkAnalysis`), vertex
  selections;
- `certificates`: `Exactness`, the LIKQ and sign tests (`certify`), the realisability
  test (`realise`);
- `selection`: the QP over the tied slots at one point (`kink_solve`), exact band or
  prox-linear;
- `bundle`: the black-box fallback (gradient sampling), flagged `APPROXIMATE`;
- `field`: `MinNormField`, `MinNormResult`, the per-problem field cache
  (`minnorm_field_of`);
- `subgradient`: `minnorm_subgradient` and its tier driver (traced and eager).
"""

from .certificates import Exactness as Exactness
from .field import MinNormField as MinNormField
from .field import MinNormResult as MinNormResult
from .field import minnorm_field_of as minnorm_field_of
from .kinks import KinkProgram as KinkProgram
from .kinks import UnsupportedKinkError as UnsupportedKinkError
from .options import MinNormOptions as MinNormOptions
from .subgradient import minnorm_subgradient as minnorm_subgradient
