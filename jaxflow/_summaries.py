r"""`TableSummary`: what the report needs from a per-trajectory table, mergeable chunk by chunk.

A scan of $N = 10^9$ trajectories cannot be read into memory to build its report, so the
report is built from a summary that is computed per chunk and merged in chunk order:

- the number of rows and the count of each status (exact);
- the lowest finite final value $f$ (exact);
- the clusters of limit values of `CONVERGED`/`BOUNDED` trajectories (critical values)
  and of `ESCAPING`/`ESCAPED` ones (values at infinity), as in `jaxflow._values`.

**Clusters.** A cluster keeps its members exactly (value, tolerance and the fields whose
medians the report shows) while it has at most `EXACT_MEMBERS` $= 65\,536$ of them.
Merging two summaries re-runs the single-linkage clustering (`cluster_values`) on the
exact members of clusters that overlap or are within linking distance, so while every
cluster is exact **the merged clusters, counts, medians, spreads, tolerances and
representatives equal those of `jaxflow.critical_values` / `jaxflow.values_at_infinity`
on the whole table**, whatever the chunking. A bigger cluster keeps instead its count,
status counts, min/max with their tolerances, largest tolerance, its `n_probe`
representatives (smallest stationarity, then lowest row; exact) and a `QuantileSketch`
(capacity 4096) per median: its medians then have rank error at most
$(\log_2(n/4096) + 1)/4096$ of its size $n$ (e.g. $\le 0.5\,\%$ for $n = 10^9$), and it
absorbs every cluster within linking distance of its min/max (single linkage decided on
the end points only). Memory: per cluster at most 65 536 members or the sketches
($\approx$ 0.6 MB each at $n = 10^9$), independent of $N$ for a fixed number of clusters.

**Representative points.** The summary holds the row ids of each cluster's
representatives; their final points are looked up at the end (`points_of(rows)`), from
the table or from the chunk files, so points are never held per member.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from ._schema import column, dim_of, final_points, value_dtype
from ._sketch import QuantileSketch
from ._stats import wilson_interval
from ._status import Status
from ._values import (
    CriticalPointType,
    CriticalValue,
    ValueAtInfinity,
    cluster_values,
    critical_point_type,
    value_tolerance,
)

__all__ = ["TableSummary", "EXACT_MEMBERS", "SUMMARY_COLUMNS"]

EXACT_MEMBERS = 65_536

# The columns a summary reads (besides the final points, looked up for representatives).
SUMMARY_COLUMNS = (
    "status", "f", "stationarity", "t", "velocity_exponent", "limit_value",
    "growth_exponent", "log_growth", "malgrange", "norm",
)
_CRITICAL = "critical"
_INFINITY = "infinity"
# Fields whose medians a value-at-infinity row shows (NaN/inf filtered except `value`).
_INF_MEDIANS = ("value", "f", "alpha", "malg", "norm")
_REP_FIELDS = ("stat", "row", "value", "tol")
_N_STATUS = len(Status)


# --------------------------------------------------------------------------- clusters
def _finite(a):
    return a[np.isfinite(a)]


def _top_reps(reps: Mapping[str, np.ndarray], n_probe: int) -> dict[str, np.ndarray]:
    # Smallest stationarity first, ties (and NaN, sorted last) by row: the order of
    # `critical_values`' stable argsort over members in row order.
    order = np.lexsort((reps["row"], reps["stat"]))[: max(1, n_probe)]
    return {k: np.asarray(reps[k])[order] for k in _REP_FIELDS}


@dataclasses.dataclass
class _Cluster:
    """One cluster of limit values: exact members, or counts + sketches."""

    count: int
    lo: float
    lo_tol: float
    hi: float
    hi_tol: float
    tol_max: float
    status: np.ndarray  # counts per status code
    members: dict[str, np.ndarray] | None = None  # exact
    sketches: dict[str, QuantileSketch] | None = None
    reps: dict[str, np.ndarray] | None = None  # critical, sketched
    log_growth: int = 0  # infinity, sketched

    @property
    def exact(self) -> bool:
        return self.members is not None

    @classmethod
    def from_members(cls, m: dict[str, np.ndarray], kind: str, n_probe: int) -> _Cluster:
        v, tol = m["value"], m["tol"]
        lo, hi = float(v.min()), float(v.max())
        c = cls(
            count=int(v.size), lo=lo, lo_tol=float(tol[v == lo].max()), hi=hi,
            hi_tol=float(tol[v == hi].max()), tol_max=float(tol.max()),
            status=np.bincount(m["status"].astype(np.int64), minlength=_N_STATUS),
            members=m,
        )
        if c.count > EXACT_MEMBERS:
            c._to_sketch(kind, n_probe)
        return c

    def _to_sketch(self, kind: str, n_probe: int) -> None:
        m = self.members
        if kind == _CRITICAL:
            self.sketches = {"value": QuantileSketch().add(m["value"])}
            self.reps = _top_reps(m, n_probe)
        else:
            self.sketches = {
                k: QuantileSketch().add(m[k] if k == "value" else _finite(m[k]))
                for k in _INF_MEDIANS
            }
            self.log_growth = int(np.sum(m["logg"]))
        self.members = None

    def absorb(self, other: _Cluster, kind: str, n_probe: int) -> None:
        """Merges `other` into this sketched cluster."""
        if other.exact:
            other = dataclasses.replace(other)
            other._to_sketch(kind, n_probe)
        self.count += other.count
        if other.lo < self.lo or (other.lo == self.lo and other.lo_tol > self.lo_tol):
            self.lo, self.lo_tol = other.lo, other.lo_tol
        if other.hi > self.hi or (other.hi == self.hi and other.hi_tol > self.hi_tol):
            self.hi, self.hi_tol = other.hi, other.hi_tol
        self.tol_max = max(self.tol_max, other.tol_max)
        self.status = self.status + other.status
        for k, s in other.sketches.items():
            self.sketches[k].merge(s)
        if kind == _CRITICAL:
            both = {k: np.concatenate([self.reps[k], other.reps[k]]) for k in _REP_FIELDS}
            self.reps = _top_reps(both, n_probe)
        else:
            self.log_growth += other.log_growth

    # -- what the report shows ---------------------------------------------------------
    def median(self, field: str) -> float:
        if self.exact:
            a = self.members[field]
            a = a if field == "value" else _finite(a)
            return float(np.median(a)) if a.size else float("nan")
        return self.sketches[field].median()

    def representatives(self, n_probe: int) -> dict[str, np.ndarray]:
        return _top_reps(self.members, n_probe) if self.exact else self.reps

    def log_growth_share(self) -> float:
        if self.exact:
            return float(np.mean(self.members["logg"]))
        return self.log_growth / self.count


def _clusters_of(members: dict[str, np.ndarray], kind: str, n_probe: int) -> list[_Cluster]:
    """Single-linkage clusters of exact members (`cluster_values`), by increasing value."""
    labels = cluster_values(members["value"], members["tol"])
    out = []
    order = np.argsort(labels, kind="stable")
    lab_sorted = labels[order]
    for lab in range(int(labels.max()) + 1 if labels.size else 0):
        sel = order[np.searchsorted(lab_sorted, lab):np.searchsorted(lab_sorted, lab, "right")]
        out.append(_Cluster.from_members({k: a[sel] for k, a in members.items()}, kind, n_probe))
    return out


def _merge_clusters(a: list[_Cluster], b: list[_Cluster], kind: str, n_probe: int):
    """Clusters of the union: components of clusters within linking distance are
    re-clustered exactly when all their clusters are exact, merged otherwise."""
    if not a or not b:
        return list(a or b)
    allc = sorted(a + b, key=lambda c: c.lo)
    comps: list[list[_Cluster]] = []
    hi = hi_tol = None
    for c in allc:
        linked = comps and (
            c.lo <= hi
            or (np.isfinite(c.lo) and np.isfinite(hi) and c.lo - hi <= max(hi_tol, c.lo_tol))
        )
        if linked:
            comps[-1].append(c)
            if c.hi > hi or (c.hi == hi and c.hi_tol > hi_tol):
                hi, hi_tol = c.hi, c.hi_tol
        else:
            comps.append([c])
            hi, hi_tol = c.hi, c.hi_tol
    out = []
    for comp in comps:
        if len(comp) == 1:
            out.append(comp[0])
        elif all(c.exact for c in comp):
            members = {k: np.concatenate([c.members[k] for c in comp]) for k in comp[0].members}
            out.extend(_clusters_of(members, kind, n_probe))
        else:
            base = next(c for c in comp if not c.exact)
            merged = dataclasses.replace(
                base, status=base.status.copy(),
                sketches={k: QuantileSketch().merge(s) for k, s in base.sketches.items()},
                reps=None if base.reps is None else dict(base.reps),
            )
            for c in comp:
                if c is not base:
                    merged.absorb(c, kind, n_probe)
            out.append(merged)
    return sorted(out, key=lambda c: c.lo)


# --------------------------------------------------------------------------- the summary
@dataclasses.dataclass
class TableSummary:
    """Mergeable summary of per-trajectory columns (see the module docstring).

    Build it with `TableSummary.from_table(table, gtol=..., row_offset=...)` per chunk and
    combine with `merge` in chunk order.
    """

    n: int
    status: np.ndarray
    best_f: float
    dtype: str
    gtol: float | None
    n_probe: int
    dim: int
    critical: list[_Cluster]
    infinity: list[_Cluster]

    @classmethod
    def from_table(cls, table: Mapping, *, gtol: float | None = None, n_probe: int = 4,
                   row_offset: int = 0) -> TableSummary:
        """The summary of a dict of columns; row `i` of `table` is row `row_offset + i`."""
        status = column(table, "status").astype(np.int64)
        n = int(status.shape[0])
        f = column(table, "f").astype(np.float64)
        dtype = value_dtype(table)
        rtol = value_tolerance(dtype, gtol)
        ff = f[np.isfinite(f)]
        best = float(np.min(ff)) if ff.size else float("inf")
        crit = cls._critical_members(table, status, f, rtol, row_offset)
        inf = cls._infinity_members(table, status, f, rtol)
        return cls(
            n=n, status=np.bincount(status[status >= 0], minlength=_N_STATUS),
            best_f=best, dtype=str(np.dtype(dtype)), gtol=None if gtol is None else float(gtol),
            n_probe=int(n_probe), dim=dim_of(table),
            critical=_clusters_of(crit, _CRITICAL, n_probe) if crit else [],
            infinity=_clusters_of(inf, _INFINITY, n_probe) if inf else [],
        )

    @staticmethod
    def _critical_members(table, status, f, rtol, row_offset):
        # As `jaxflow.critical_values`: finite limits of converged and bounded rows.
        conv = status == Status.CONVERGED
        bnd = status == Status.BOUNDED
        rows = np.nonzero((conv | bnd) & np.isfinite(f))[0]
        if rows.size == 0:
            return None
        vals = f[rows]
        tol = rtol * np.maximum(1.0, np.abs(vals))
        stat = column(table, "stationarity").astype(np.float64)[rows]
        t = column(table, "t").astype(np.float64)[rows]
        p = column(table, "velocity_exponent", np.full(status.shape, np.nan))
        p = p.astype(np.float64)[rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            rest = np.where(p > 0.5, stat**2 * t / (2 * p - 1), np.inf)
        tol = np.where(bnd[rows], np.maximum(tol, np.where(np.isfinite(rest), rest, 0.0)), tol)
        return {"value": vals, "tol": tol, "stat": stat,
                "row": rows.astype(np.int64) + int(row_offset), "status": status[rows]}

    @staticmethod
    def _infinity_members(table, status, f_all, rtol):
        # As `jaxflow.values_at_infinity`: limits of escaping rows (NaN limits left out).
        esc = (status == Status.ESCAPING) | (status == Status.ESCAPED)
        rows = np.nonzero(esc)[0]
        if rows.size == 0:
            return None
        f = f_all[rows]
        lim = column(table, "limit_value", np.asarray(table["f"])).astype(np.float64)[rows]
        lim = np.where(np.isnan(lim), f, lim)
        with np.errstate(invalid="ignore"):
            corr = np.where(np.isfinite(lim), np.abs(f - lim), 0.0)
        tol = np.maximum(rtol * np.maximum(1.0, np.abs(np.where(np.isfinite(lim), lim, 0.0))),
                         corr)
        nan = np.full(status.shape, np.nan)
        keep = ~np.isnan(lim)
        m = {
            "value": lim, "tol": tol, "f": f,
            "alpha": column(table, "growth_exponent", nan).astype(np.float64)[rows],
            "logg": column(table, "log_growth", np.zeros(status.shape, bool)).astype(bool)[rows],
            "malg": column(table, "malgrange", nan).astype(np.float64)[rows],
            "norm": column(table, "norm", nan).astype(np.float64)[rows],
            "status": status[rows],
        }
        m = {k: a[keep] for k, a in m.items()}
        return m if m["value"].size else None

    def merge(self, other: TableSummary) -> TableSummary:
        """The summary of both tables (self's rows first); returns a new summary."""
        if other.dtype != self.dtype or other.gtol != self.gtol:
            raise ValueError("TableSummary.merge: summaries of different dtypes or gtol.")
        return dataclasses.replace(
            self, n=self.n + other.n, status=self.status + other.status,
            best_f=min(self.best_f, other.best_f), dim=max(self.dim, other.dim),
            critical=_merge_clusters(self.critical, other.critical, _CRITICAL, self.n_probe),
            infinity=_merge_clusters(self.infinity, other.infinity, _INFINITY, self.n_probe),
        )

    # -- the report's pieces ----------------------------------------------------------------
    def status_counts(self) -> dict[str, int]:
        """Number of trajectories per status name, in `Status` order, zeros left out."""
        return {s.name: int(self.status[int(s)]) for s in Status if self.status[int(s)]}

    def critical_values(self, *, problem=None, typing=None,
                        points_of: Callable[[np.ndarray], np.ndarray | None] | None = None,
                        key=None) -> tuple[list[CriticalValue], list[dict] | None]:
        """The `CriticalValue`s (as `jaxflow.critical_values`) and the typing record.

        Types come from `typing` (a record returned by an earlier call, matched by the
        representatives' rows), else from `problem` (Hessian / perturbation tests at the
        representatives, `points_of(rows)` giving their final points), else `unknown`.
        """
        import jax

        cl = self.critical
        if not cl:
            return [], []
        reps = [c.representatives(self.n_probe) for c in cl]
        allrows = np.concatenate([r["row"] for r in reps])
        have_points = points_of is not None and self.dim > 0
        pts = points_of(allrows) if have_points else None
        first = np.cumsum([0] + [r["row"].size for r in reps])[:-1]
        record = None
        if typing is not None and _typing_matches(typing, reps):
            record = typing
        elif problem is not None and pts is not None:
            owner = np.concatenate([np.full(r["row"].size, lab) for lab, r in enumerate(reps)])
            ctol = np.asarray([c.tol_max for c in cl])
            tol = np.maximum(np.concatenate([r["tol"] for r in reps]), ctol[owner])
            types, methods, eigs = critical_point_type(
                problem, pts, np.concatenate([r["value"] for r in reps]), tol,
                key=key,
            )
            record = []
            for lab, r in enumerate(reps):
                sel = range(first[lab], first[lab] + r["row"].size)
                record.append({
                    "rows": [int(x) for x in r["row"]],
                    "types": [types[i].value for i in sel],
                    "methods": [methods[i] for i in sel],
                    "eigenvalues": None if eigs[sel[0]] is None else list(eigs[sel[0]]),
                })
        out = []
        for lab, c in enumerate(cl):
            point = pts[first[lab]].astype(np.float64).tolist() if pts is not None else []
            ctype, method, eig = CriticalPointType.UNKNOWN, "none", None
            types_seen: dict[CriticalPointType, int] = {}
            if record is not None:
                types = [CriticalPointType(t) for t in record[lab]["types"]]
                for ty in types:
                    types_seen[ty] = types_seen.get(ty, 0) + 1
                # The most frequent type; ties favour the less committal answer.
                order = [CriticalPointType.SADDLE, CriticalPointType.DEGENERATE,
                         CriticalPointType.MAXIMUM, CriticalPointType.MINIMUM]
                ctype = max(types_seen, key=lambda s: (types_seen[s], -order.index(s)))
                method = record[lab]["methods"][types.index(ctype)]
                e = record[lab]["eigenvalues"]
                eig = None if e is None else (float(e[0]), float(e[1]))
            out.append(CriticalValue(
                value=c.median("value"), count=c.count, fraction=c.count / self.n,
                interval=wilson_interval(c.count, self.n), spread=(c.lo, c.hi),
                converged=int(c.status[Status.CONVERGED]), bounded=int(c.status[Status.BOUNDED]),
                tolerance=c.tol_max, type=ctype, method=method, eigenvalues=eig, point=point,
                types_seen=types_seen,
            ))
        return out, record

    def values_at_infinity(self) -> list[ValueAtInfinity]:
        """The `ValueAtInfinity`s, as `jaxflow.values_at_infinity` on the whole table."""
        return [
            ValueAtInfinity(
                value=c.median("value"), count=c.count, fraction=c.count / self.n,
                interval=wilson_interval(c.count, self.n), spread=(c.lo, c.hi),
                escaping=int(c.status[Status.ESCAPING]), escaped=int(c.status[Status.ESCAPED]),
                tolerance=c.tol_max, growth_exponent=c.median("alpha"),
                log_growth=c.log_growth_share(), malgrange=c.median("malg"),
                final_value=c.median("f"), norm=c.median("norm"),
            )
            for c in self.infinity
        ]

    def nbytes(self) -> int:
        """Approximate memory held by the clusters."""
        total = 0
        for c in self.critical + self.infinity:
            if c.exact:
                total += sum(a.nbytes for a in c.members.values())
            else:
                total += sum(s.nbytes() for s in c.sketches.values())
        return total


def _typing_matches(typing, reps) -> bool:
    return (isinstance(typing, list) and len(typing) == len(reps) and all(
        isinstance(t, Mapping) and [int(x) for x in r["row"]] == list(t.get("rows", ()))
        for t, r in zip(typing, reps)
    ))


def table_points(table: Mapping, row_offset: int = 0):
    """`points_of` for an in-memory table (rows counted from `row_offset`)."""
    def points_of(rows):
        return final_points(table, np.asarray(rows, np.int64) - row_offset)
    return points_of
