"""Per-trajectory outcomes: data, never exceptions."""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Status", "status_counts"]


class Status(enum.IntEnum):
    """What happened to one trajectory.

    The engine (`jaxflow.flow`) produces the first five; the detectors
    (`jaxflow.classify`) refine `HORIZON` into `ESCAPING`, `BOUNDED` or `UNDECIDED`
    from the log-spaced checkpoints.

    - `CONVERGED`: stationarity $\\|v(x)\\|$ fell to `gtol` (a critical point was reached).
    - `ESCAPED`: $\\|x\\|$ reached `escape_radius`.
    - `HORIZON`: reached `t1` with neither of the above.
    - `MAX_STEPS`: the step budget ran out (too many steps, or the step size underflowed).
    - `NONFINITE`: the loss or the state became NaN/inf (the last finite state is kept).
    - `ESCAPING`: sustained growth of $\\|x\\|$ with $f$ settling and $\\|v\\| \\to 0$.
    - `BOUNDED`: the norm has plateaued and the path length is converging, not yet stationary.
    - `UNDECIDED`: the evidence up to `t1` does not decide.
    """

    RUNNING = 0  # internal: never in a finished result
    CONVERGED = 1
    ESCAPED = 2
    HORIZON = 3
    MAX_STEPS = 4
    NONFINITE = 5
    ESCAPING = 6
    BOUNDED = 7
    UNDECIDED = 8

    @classmethod
    def names(cls) -> dict[int, str]:
        return {int(s): s.name for s in cls}


def status_counts(status) -> dict[str, int]:
    """Number of trajectories per status name, in `Status` order, zero counts left out."""
    st = np.asarray(status).astype(np.int64, copy=False).ravel()
    counts = np.bincount(st[st >= 0], minlength=len(Status))
    return {s.name: int(counts[int(s)]) for s in Status if counts[int(s)]}
