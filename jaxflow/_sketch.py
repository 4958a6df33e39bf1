r"""`QuantileSketch`: a fixed-size, mergeable summary of many real numbers for medians.

Exact while it holds at most `capacity` values; beyond, a stack of deterministic
compactors (Karnin, Lang & Liberty 2016, with equal capacities): level $h$ holds values
of weight $2^h$; when a level holds more than `capacity` values they are sorted and every
other one (alternating the offset) moves up one level with twice the weight.

**Accuracy.** A compaction at level $h$ moves the rank of any query by at most $2^h$, and
level $h$ is compacted at most $n / (2^h k)$ times ($k$ = `capacity`), so the estimated
median has rank within $\pm\varepsilon n$ of $n/2$ with
$\varepsilon \le (\log_2(n/k) + 1)/k$ in the worst case ($k = 4096$, $n = 10^9$:
$\varepsilon \le 0.5\,\%$). Memory is at most $k(\log_2(n/k) + 2)$ values. Merging is
exact bookkeeping (counts add) and deterministic for a fixed merge order.
"""

from __future__ import annotations

import numpy as np

__all__ = ["QuantileSketch", "SKETCH_CAPACITY"]

SKETCH_CAPACITY = 4096


class QuantileSketch:
    """Mergeable quantile sketch of real numbers (see the module docstring)."""

    __slots__ = ("capacity", "levels", "_offsets", "count")

    def __init__(self, capacity: int = SKETCH_CAPACITY):
        if capacity < 2:
            raise ValueError(f"QuantileSketch: capacity must be >= 2, got {capacity}.")
        self.capacity = int(capacity)
        self.levels: list[np.ndarray] = [np.empty(0, np.float64)]
        self._offsets: list[int] = [0]
        self.count = 0

    @property
    def exact(self) -> bool:
        """Whether every value added is still held (no compaction yet)."""
        return len(self.levels) == 1

    def add(self, values) -> QuantileSketch:
        """Adds `values` (NaN must be filtered out by the caller); returns self."""
        v = np.asarray(values, np.float64).ravel()
        if v.size:
            self.levels[0] = np.concatenate([self.levels[0], v])
            self.count += int(v.size)
            self._compact()
        return self

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """Adds every value summarised by `other`; returns self."""
        for h, arr in enumerate(other.levels):
            self._level(h)
            self.levels[h] = np.concatenate([self.levels[h], arr])
        self.count += other.count
        self._compact()
        return self

    def _level(self, h: int) -> None:
        while len(self.levels) <= h:
            self.levels.append(np.empty(0, np.float64))
            self._offsets.append(0)

    def _compact(self) -> None:
        h = 0
        while h < len(self.levels):
            lv = self.levels[h]
            if lv.size > self.capacity:
                lv = np.sort(lv)
                keep = lv[-1:] if lv.size % 2 else lv[:0]  # odd: the largest stays here
                even = lv[: lv.size - keep.size]
                up = even[self._offsets[h]::2]
                self._offsets[h] ^= 1
                self.levels[h] = keep
                self._level(h + 1)
                self.levels[h + 1] = np.concatenate([self.levels[h + 1], up])
            h += 1

    def median(self) -> float:
        """The median (exact while `exact`: `numpy.median` of the values); NaN when empty."""
        if self.count == 0:
            return float("nan")
        if self.exact:
            return float(np.median(self.levels[0]))
        vals = np.concatenate(self.levels)
        wts = np.concatenate([np.full(a.size, 2.0**h) for h, a in enumerate(self.levels)])
        order = np.argsort(vals, kind="stable")
        cum = np.cumsum(wts[order])
        i = int(np.searchsorted(cum, 0.5 * cum[-1], side="left"))
        return float(vals[order][min(i, order.size - 1)])

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.levels))
