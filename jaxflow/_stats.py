"""Small statistics shared by the report, the CLI and the notebooks: the Wilson interval
and the table of statuses with their intervals."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ._status import Status, status_counts

__all__ = ["wilson_interval", "status_rows", "count_rows"]


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    r"""Wilson score interval for a binomial proportion $k/n$ (95 % by default).

    Unlike the normal approximation it stays inside $[0, 1]$ and is sensible for
    $k = 0$ or $k = n$ (Wilson 1927; Brown, Cai & DasGupta 2001).
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}.")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def count_rows(counts: Mapping[str, int], n: int) -> list[dict]:
    """`status_rows` from the counts per status name (`status_counts`) of `n` rows."""
    return [dict(status=name, count=k, fraction=k / n, interval=wilson_interval(k, n))
            for name, k in counts.items()]


def status_rows(status, medians: Mapping[str, np.ndarray] | None = None) -> list[dict]:
    """One row per status present, in `Status` order: name, count, fraction, 95 % interval.

    **Arguments:**

    - `status`: per-trajectory status codes `(n,)`.
    - `medians`: optional per-trajectory columns `(n,)`; each `name` adds the median of
      the column over the row's trajectories as `median_<name>`.

    **Returns:** a list of dicts with keys `status` (the name), `count`, `fraction`,
    `interval` (the Wilson interval of `count / n`) and the `median_*` keys.
    """
    st = np.asarray(status)
    n = int(st.size)
    rows = []
    for name, k in status_counts(st).items():
        row = dict(status=name, count=k, fraction=k / n, interval=wilson_interval(k, n))
        if medians:
            sel = st == int(Status[name])
            for key, values in medians.items():
                row[f"median_{key}"] = float(np.median(np.asarray(values, np.float64)[sel]))
        rows.append(row)
    return rows
