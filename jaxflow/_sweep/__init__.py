"""Sweeps: landscape scans across a grid of problem parameters, in one store.

One concern per module:

- `grid`: the grid (axes, ranges, points) and its checks;
- `store`: the sweep's manifest over a directory of scan stores;
- `api`: `sweep`, `load_sweep`, `SweepResult` (each point is a `jaxflow.scan`);
- `summary`: `SweepSummary`, one row of evidence per point, and its renderers;
- `plots`: the heatmap and line plot with 95 % intervals.
(`jaxflow sweep` and `jaxflow report` on a sweep store live in `jaxflow.cli`.)
"""

from .api import SweepProgress as SweepProgress
from .api import SweepResult as SweepResult
from .api import load_sweep as load_sweep
from .api import sweep as sweep
from .grid import Grid as Grid
from .summary import SweepSummary as SweepSummary
