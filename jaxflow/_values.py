r"""Critical values and values at infinity, clustered from many trajectories.

**Critical values.** The limit of $f$ along a bounded (sub)gradient trajectory is a
critical value: its $\omega$-limit set is nonempty, made of critical points, and $f$ is
constant on it (the argument in the proof of Theorem 1.2). So the final $f$ of
`CONVERGED` trajectories and of `BOUNDED` ones are clustered together. Each cluster gets
its value (median), count, fraction of all starts with a 95 % Wilson interval, a
representative point (the member with the smallest stationarity) and a **type**:

- smooth $f$: eigenvalues of the Hessian (`field.jacobian`, batched over up to
  `n_probe` members): `saddle` (both signs), `minimum` (all $> \tau$), `maximum`
  (all $< -\tau$); a semidefinite Hessian with zero eigenvalues (e.g. the curve of
  minima $C_1$ of Example 1.1) is settled by the perturbation test;
- nonsmooth $f$ or degenerate Hessian: a **perturbation test**. $f(x + r u) - f(x)$ is
  evaluated for random unit directions $u$ at radii
  $r = \max(1, \|x\|)\,10^{-k/2}$, $k = 1, \dots, 6$. At the smallest radius where some
  change exceeds the value tolerance: a decrease means not a minimum, an increase not a
  maximum; both make a saddle. No change at any radius gives `degenerate` (e.g. a flat
  region).

**Clustering.** Sorted values are linked when neighbours differ by at most the larger of
their tolerances (single linkage in one dimension). The tolerance of a converged value
is $10\max(\text{gtol}, 64\epsilon)\max(1, |f|)$: near a critical point the error in $f$
is at most of order $\text{gtol}$ times the distance to it (Łojasiewicz), and rounding
adds a few $\epsilon|f|$. Bounded members add the decrease still to come,
$\int_t^\infty \|v\|^2 = \|v(t)\|^2 t / (2p - 1)$ when $\|v\| \sim t^{-p}$.

**Values at infinity.** The limit values of `ESCAPING` and `ESCAPED` trajectories
(`Classification.limit_value`), clustered the same way with tolerance the larger of the
above and the size of the extrapolation $|f_{\text{final}} - \lim f|$. Each cluster
reports the median growth exponent, the share of logarithmic growth and the median
Malgrange indicator $\|x\|\,\|v(x)\|$, which tends to 0 when the value is an
asymptotic critical value (Kurdyka–Orro–Simon). Limits $-\infty$ form their own row.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._executables import call_cached
from ._field import GradientField
from ._field_choice import field_for
from ._json import jsonable
from ._options import default_gtol
from ._schema import column, final_points, value_dtype
from ._stats import wilson_interval
from ._status import Status

__all__ = [
    "CriticalPointType",
    "CriticalValue",
    "ValueAtInfinity",
    "critical_values",
    "values_at_infinity",
    "cluster_values",
    "value_tolerance",
    "critical_point_type",
]


class CriticalPointType(enum.StrEnum):
    """The type of a critical point; the value is the name used in reports and JSON."""

    MINIMUM = "minimum"
    SADDLE = "saddle"
    MAXIMUM = "maximum"
    DEGENERATE = "degenerate"  # no change of f above the tolerance at any radius
    UNKNOWN = "unknown"  # not typed (no problem given, or typing switched off)


@dataclasses.dataclass(frozen=True)
class CriticalValue:
    """One cluster of limit values of converged or bounded trajectories."""

    value: float
    count: int
    fraction: float
    interval: tuple[float, float]
    spread: tuple[float, float]
    converged: int
    bounded: int
    tolerance: float
    type: CriticalPointType
    method: str  # hessian | perturbation | hessian+perturbation | none
    eigenvalues: tuple[float, float] | None  # (smallest, largest) at the representative
    point: list[float]
    types_seen: dict[CriticalPointType, int]

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON data; types by their value (`"minimum"`, ...)."""
        d = dataclasses.asdict(self)
        d["type"] = self.type.value
        d["types_seen"] = {t.value: k for t, k in self.types_seen.items()}
        return jsonable(d)


@dataclasses.dataclass(frozen=True)
class ValueAtInfinity:
    """One cluster of limit values along escaping trajectories."""

    value: float
    count: int
    fraction: float
    interval: tuple[float, float]
    spread: tuple[float, float]
    escaping: int
    escaped: int
    tolerance: float
    growth_exponent: float  # median alpha
    log_growth: float  # share of members with logarithmic growth
    malgrange: float  # median ||x|| ||v|| at the last time
    final_value: float  # median final f (before extrapolation)
    norm: float  # median final ||x||

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON data."""
        return jsonable(dataclasses.asdict(self))


# --------------------------------------------------------------------------- clustering
def value_tolerance(dtype, gtol: float | None = None) -> float:
    r"""Relative tolerance for clustering values: $10\max(\text{gtol}, 64\epsilon)$.

    `gtol` defaults to `jaxflow.default_gtol(dtype)`.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    gtol = default_gtol(dtype) if gtol is None else float(gtol)
    return 10.0 * max(gtol, 64 * eps)


def cluster_values(values, tolerances) -> np.ndarray:
    """Single-linkage clustering of real numbers; returns a label per value.

    Neighbours in sorted order are linked when they differ by at most the larger of
    their tolerances. Labels are 0, 1, ... in increasing order of value; NaN values get
    label -1; $\\pm\\infty$ each form their own cluster.
    """
    v = np.asarray(values, np.float64)
    tol = np.broadcast_to(np.asarray(tolerances, np.float64), v.shape)
    labels = np.full(v.shape, -1, np.int64)
    ok = ~np.isnan(v)
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return labels
    order = idx[np.argsort(v[idx], kind="stable")]
    vs, ts = v[order], tol[order]
    with np.errstate(invalid="ignore"):
        gap = np.diff(vs)
    link = (gap <= np.maximum(ts[1:], ts[:-1])) & np.isfinite(vs[1:]) & np.isfinite(vs[:-1])
    link |= vs[1:] == vs[:-1]  # equal infinities
    lab = np.concatenate([[0], np.cumsum(~link)])
    labels[order] = lab
    return labels


# --------------------------------------------------------------------------- typing
def _field_or_none(problem):
    try:
        return field_for(problem)
    except (ImportError, AttributeError, NotImplementedError):
        return None


def _hessians(field, points):
    hs = jax.vmap(field.jacobian)(points)
    return 0.5 * (hs + jnp.swapaxes(hs, -1, -2))


def _values(field, points):
    return jax.vmap(field.value)(points)


_JITTED = {_hessians: eqx.filter_jit(_hessians), _values: eqx.filter_jit(_values)}


def _call(fn, field, points):
    """`fn(field, points)` compiled: from the executable cache inside a scan of a built-in
    problem (`jaxflow._executables`), else traced and compiled as usual."""
    static = {"fn": fn.__name__, "field": type(field).__qualname__}
    out = call_cached(fn, (field, points), static=static, compiler_options={})
    return _JITTED[fn](field, points) if out is None else out


def _field_for_values(problem):
    """The problem's field (cached on the problem, so jit caches hit) or a plain one."""
    field = _field_or_none(problem)
    if field is None:
        field = GradientField(problem.f_flat)
    return field


def _hessian_eigs(problem, points, field=None):
    """Eigenvalues `(m, d)` and eigenvectors `(m, d, d)` of the Hessians at `points`."""
    field = _field_for_values(problem) if field is None else field
    points = np.asarray(points)  # host arrays go to the program without a conversion program
    # The eigendecomposition on the host in float64: a few small matrices, and a compiled
    # `eigh` (a LAPACK custom call on CPU) could not come from the executable cache.
    hs = np.asarray(_call(_hessians, field, points), np.float64)
    finite = np.all(np.isfinite(hs), axis=(1, 2))
    w, v = np.full(hs.shape[:2], np.nan), np.full(hs.shape, np.nan)
    if finite.any():
        w[finite], v[finite] = np.linalg.eigh(hs[finite])
    return w, v.astype(points.dtype)


def _directions(key, shape, dtype, salt: int):
    """Standard normal directions: from NumPy's generator seeded `(0, salt)` when `key`
    is None (no JAX program to lower: a repeated scan's report starts at once), else
    from the JAX `key` (`salt` 0: its first split; `salt` i > 0: row i - 1 of the null
    space tests, folded into the second)."""
    if key is None:
        return np.random.default_rng([0, salt]).standard_normal(shape).astype(dtype)
    k_rand, k_null = jax.random.split(key)
    k = k_rand if salt == 0 else jax.random.fold_in(k_null, salt - 1)
    return np.asarray(jax.random.normal(k, shape, dtype))


def _perturbation_tests(problem, points, values, tol_f, directions):
    r"""Batched perturbation test at radii $\max(1, \|x\|)\,10^{-k/2}$, $k = 6..1$.

    Returns per point `(descent, ascent, rise, fall, descent_any, ascent_any)`: whether
    some direction decreases / increases $f$ by more than the tolerance at the smallest
    informative radius or the next one, the shares of rising / falling directions at
    that next radius, and whether a decrease / increase occurs at any radius.
    `directions` `(m, n_dirs, d)`: the directions per point (normalised here). The
    points are formed on the host; $f$ is evaluated in one compiled program.
    """
    x = np.asarray(points)
    m, d = x.shape
    scale = np.maximum(1.0, np.linalg.norm(x, axis=1)).astype(x.dtype)
    steps = (10.0 ** (-np.arange(6, 0, -1) / 2)).astype(x.dtype)  # smallest first
    u = np.asarray(directions, x.dtype)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    n_dirs = u.shape[1]
    pts = (
        x[:, None, None, :]
        + (scale[:, None, None, None] * steps[None, :, None, None]) * u[:, None, :, :]
    )
    fv = _call(_values, _field_for_values(problem), pts.reshape(-1, d))
    fv = np.asarray(fv)
    fv = fv.reshape(m, steps.shape[0], n_dirs)
    diff = np.asarray(fv, np.float64) - np.asarray(values, np.float64)[:, None, None]
    tol = np.asarray(tol_f, np.float64)[:, None, None]
    finite = np.isfinite(diff)
    desc = np.any(finite & (diff < -tol), axis=2)  # (m, radii)
    asc = np.any(finite & (diff > tol), axis=2)
    informative = desc | asc
    first = np.argmax(informative, axis=1)
    any_info = np.any(informative, axis=1)
    rows = np.arange(m)
    # The smallest informative radius and the next one: a degenerate saddle such as
    # Remark 3.2's x = 2k, seen from a nearly stationary point on its rising side, shows
    # its falling side only one radius further out.
    nxt = np.minimum(first + 1, desc.shape[1] - 1)
    descent = any_info & (desc[rows, first] | desc[rows, nxt])
    ascent = any_info & (asc[rows, first] | asc[rows, nxt])
    # Share of directions that rise (fall) one radius out: a strict-looking minimum rises
    # in most directions; a flat side (half the directions in 1-D) makes it degenerate.
    finite_n = np.maximum(np.sum(finite[rows, nxt], axis=-1), 1)
    rise = np.sum(finite[rows, nxt] & (diff[rows, nxt] > tol[:, 0]), axis=-1) / finite_n
    fall = np.sum(finite[rows, nxt] & (diff[rows, nxt] < -tol[:, 0]), axis=-1) / finite_n
    return descent, ascent, rise, fall, np.any(desc, axis=1), np.any(asc, axis=1)


def _type_from_perturbation(descent, ascent, rise=1.0, fall=1.0, share=0.75):
    if descent and ascent:
        return CriticalPointType.SADDLE
    if ascent and rise >= share:
        return CriticalPointType.MINIMUM
    if descent and fall >= share:
        return CriticalPointType.MAXIMUM
    return CriticalPointType.DEGENERATE


def critical_point_type(problem, points, values, tol_f, *, key=None, eig_tol=None):
    r"""The `CriticalPointType` (minimum, saddle, maximum, degenerate) of each row of `points`.

    Returns `(types, methods, eig_ranges)`.

    - Smooth problems: Hessian eigenvalues $\lambda$ with tolerance
      $\tau = 10\max(\sqrt\epsilon, \text{tol})\max(1, \max|\lambda|)$ (or
      `eig_tol` times the same scale). Both signs: `saddle`. Otherwise the null space
      ($|\lambda| \le \tau$) decides, by evaluating $f$ along random directions in it at
      every radius: a decrease there makes a positive semidefinite Hessian a `saddle`
      (e.g. $x^3 + y^2$), otherwise a `minimum` (e.g. a curve of minima); symmetrically
      for negative semidefinite ones. A vanishing Hessian takes the side $f$ moves to
      along the null space, and is `degenerate` when $f$ does not move at any radius. A
      definite Hessian is cross-checked by the random perturbation test (a decrease near a
      positive definite point means the representative is not at the critical point:
      `degenerate`).
    - Nonsmooth problems: the random perturbation test only (see the module docstring).

    `key`: a JAX PRNG key for the random directions; `None` (default): NumPy's
    generator with a fixed seed (the same directions in every process, and no JAX
    program besides the evaluation of $f$).
    """
    points = np.asarray(points)
    m = points.shape[0]
    values = np.broadcast_to(np.asarray(values, np.float64), (m,))
    tol_f = np.broadcast_to(np.asarray(tol_f, np.float64), (m,))
    field = _field_or_none(problem)
    smooth = not getattr(problem, "nonsmooth", False)
    if field is not None:
        smooth = smooth and bool(getattr(field, "smooth", True))
    eps = float(np.finfo(points.dtype).eps)
    eigs = vecs = None
    if smooth and points.shape[1] <= 512:
        try:
            eigs, vecs = _hessian_eigs(problem, points, field)
        except NotImplementedError:
            eigs = vecs = None
    # The random perturbation test, for every point (cheap, one batched evaluation).
    u = _directions(key, (m, 128, points.shape[1]), points.dtype, 0)
    descent, ascent, rise, fall, _, _ = _perturbation_tests(problem, points, values, tol_f, u)
    types = [
        _type_from_perturbation(bool(descent[i]), bool(ascent[i]), float(rise[i]), float(fall[i]))
        for i in range(m)
    ]
    methods = ["perturbation"] * m
    eig_ranges: list = [None] * m
    if eigs is None:
        return types, methods, eig_ranges
    null_rows, null_dirs = [], []
    for i in range(m):
        ev = eigs[i]
        if not np.all(np.isfinite(ev)):
            continue
        big = max(1.0, float(np.max(np.abs(ev))))
        tau = (eig_tol if eig_tol is not None else 10 * max(math.sqrt(eps), float(tol_f[i]))) * big
        neg, pos = bool(np.any(ev < -tau)), bool(np.any(ev > tau))
        null = np.abs(ev) <= tau
        eig_ranges[i] = (float(ev.min()), float(ev.max()))
        methods[i] = "hessian"
        if neg and pos:
            types[i] = CriticalPointType.SADDLE
        elif not null.any():
            # Definite: the random test may only confirm it.
            want = CriticalPointType.MINIMUM if pos else CriticalPointType.MAXIMUM
            types[i] = want if types[i] == want else CriticalPointType.DEGENERATE
            methods[i] = "hessian+perturbation"
        else:
            basis = vecs[i][:, null]  # (d, k)
            g = _directions(key, (64, basis.shape[1]), points.dtype, 1 + i)
            null_rows.append((i, pos, neg))
            null_dirs.append(g @ basis.T)
            methods[i] = "hessian+perturbation"
    if null_rows:
        idx = [r[0] for r in null_rows]
        _, _, _, _, dn_any, up_any = _perturbation_tests(
            problem, points[idx], values[idx], tol_f[idx], np.stack(null_dirs)
        )
        for j, (i, pos, neg) in enumerate(null_rows):
            down, up = bool(dn_any[j]), bool(up_any[j])
            if (down and up) or (pos and down) or (neg and up):
                types[i] = CriticalPointType.SADDLE
            elif pos or (up and not neg):
                # Curvature up off the null space (or f rises along it), no decrease
                # anywhere along it: e.g. a curve or surface of minima.
                types[i] = CriticalPointType.MINIMUM
            elif neg or down:
                types[i] = CriticalPointType.MAXIMUM
            else:
                types[i] = CriticalPointType.DEGENERATE  # flat to every tested radius
    return types, methods, eig_ranges


# --------------------------------------------------------------------------- tables
def critical_values(
    problem,
    table: dict,
    *,
    gtol: float | None = None,
    n_total: int | None = None,
    n_probe: int = 4,
    classify_types: bool = True,
    key=None,
) -> list[CriticalValue]:
    """Clusters of the limit values of `CONVERGED` and `BOUNDED` trajectories.

    **Arguments:**

    - `problem`: the `jaxflow.Problem` (for typing; `None` skips it).
    - `table`: `jaxflow.trajectory_table(result, classification)` or the same columns
      read back from a scan.
    - `gtol`: the stationarity tolerance of the run (default from the dtype).
    - `n_total`: number of starts for the fractions (default: rows of `table`).
    - `n_probe`: members per cluster whose type is checked (smallest stationarity first).
    - `classify_types`: compute the type (Hessian / perturbation test).
    - `key`: random directions of the perturbation test (see `critical_point_type`).

    **Returns:** a list of `CriticalValue`, by increasing value.
    """
    status = column(table, "status")
    f = column(table, "f").astype(np.float64)
    n_total = int(status.shape[0]) if n_total is None else int(n_total)
    dtype = value_dtype(table)
    rtol = value_tolerance(dtype, gtol)
    conv = status == Status.CONVERGED
    bnd = status == Status.BOUNDED
    rows = np.nonzero((conv | bnd) & np.isfinite(f))[0]
    if rows.size == 0:
        return []
    vals = f[rows]
    tol = rtol * np.maximum(1.0, np.abs(vals))
    stat = column(table, "stationarity").astype(np.float64)[rows]
    t = column(table, "t").astype(np.float64)[rows]
    p = column(table, "velocity_exponent", np.full(status.shape, np.nan)).astype(np.float64)[rows]
    # Bounded members: add the decrease of f still to come if ||v|| ~ t^-p persists.
    with np.errstate(invalid="ignore", divide="ignore"):
        rest = np.where(p > 0.5, stat**2 * t / (2 * p - 1), np.inf)
    tol = np.where(bnd[rows], np.maximum(tol, np.where(np.isfinite(rest), rest, 0.0)), tol)
    labels = cluster_values(vals, tol)
    pts = final_points(table, rows)
    n_clusters = int(labels.max()) + 1
    reps = []
    for lab in range(n_clusters):
        members = np.nonzero(labels == lab)[0]
        reps.append(members[np.argsort(stat[members], kind="stable")][: max(1, n_probe)])
    ctol = [float(np.max(tol[labels == lab])) for lab in range(n_clusters)]
    typing = None
    if classify_types and problem is not None and pts is not None:
        allrep = np.concatenate(reps)
        owner = np.concatenate([np.full(r.size, lab) for lab, r in enumerate(reps)])
        typing = critical_point_type(
            problem,
            pts[allrep],
            vals[allrep],
            np.maximum(tol[allrep], np.asarray(ctol)[owner]),
            key=key,
        )
    out = []
    for lab in range(n_clusters):
        m = labels == lab
        value = float(np.median(vals[m]))
        k = int(m.sum())
        rep = reps[lab]
        point = pts[rep[0]].astype(np.float64).tolist() if pts is not None else []
        ctype, method, eig = CriticalPointType.UNKNOWN, "none", None
        types_seen: dict[CriticalPointType, int] = {}
        if typing is not None:
            sel = np.nonzero(owner == lab)[0]
            types = [typing[0][i] for i in sel]
            methods = [typing[1][i] for i in sel]
            for ty in types:
                types_seen[ty] = types_seen.get(ty, 0) + 1
            # The most frequent type; ties favour the less committal answer.
            order = [
                CriticalPointType.SADDLE,
                CriticalPointType.DEGENERATE,
                CriticalPointType.MAXIMUM,
                CriticalPointType.MINIMUM,
            ]
            ctype = max(types_seen, key=lambda s: (types_seen[s], -order.index(s)))
            method = methods[types.index(ctype)]
            eig = typing[2][sel[0]]
        out.append(
            CriticalValue(
                value=value,
                count=k,
                fraction=k / n_total,
                interval=wilson_interval(k, n_total),
                spread=(float(vals[m].min()), float(vals[m].max())),
                converged=int(np.sum(conv[rows][m])),
                bounded=int(np.sum(bnd[rows][m])),
                tolerance=ctol[lab],
                type=ctype,
                method=method,
                eigenvalues=eig,
                point=point,
                types_seen=types_seen,
            )
        )
    return out


def values_at_infinity(
    table: dict, *, gtol: float | None = None, n_total: int | None = None
) -> list[ValueAtInfinity]:
    """Clusters of the limit values of `ESCAPING` and `ESCAPED` trajectories.

    **Returns:** a list of `ValueAtInfinity` by increasing value (a limit $-\\infty$,
    i.e. $f$ decreasing without bound, comes first).
    """
    status = column(table, "status")
    n_total = int(status.shape[0]) if n_total is None else int(n_total)
    esc = (status == Status.ESCAPING) | (status == Status.ESCAPED)
    rows = np.nonzero(esc)[0]
    if rows.size == 0:
        return []
    f = column(table, "f").astype(np.float64)[rows]
    lim = column(table, "limit_value", np.asarray(table["f"])).astype(np.float64)[rows]
    lim = np.where(np.isnan(lim), f, lim)
    rtol = value_tolerance(value_dtype(table), gtol)
    with np.errstate(invalid="ignore"):
        corr = np.where(np.isfinite(lim), np.abs(f - lim), 0.0)
    tol = np.maximum(rtol * np.maximum(1.0, np.abs(np.where(np.isfinite(lim), lim, 0.0))), corr)
    labels = cluster_values(lim, tol)
    nan = np.full(status.shape, np.nan)
    alpha = column(table, "growth_exponent", nan).astype(np.float64)[rows]
    logg = column(table, "log_growth", np.zeros(status.shape, bool)).astype(bool)[rows]
    malg = column(table, "malgrange", nan).astype(np.float64)[rows]
    norm = column(table, "norm", nan).astype(np.float64)[rows]
    st = status[rows]

    def med(a):
        a = a[np.isfinite(a)]
        return float(np.median(a)) if a.size else float("nan")

    out = []
    for lab in range(labels.max() + 1):
        m = labels == lab
        k = int(m.sum())
        out.append(
            ValueAtInfinity(
                value=float(np.median(lim[m])),
                count=k,
                fraction=k / n_total,
                interval=wilson_interval(k, n_total),
                spread=(float(lim[m].min()), float(lim[m].max())),
                escaping=int(np.sum(st[m] == Status.ESCAPING)),
                escaped=int(np.sum(st[m] == Status.ESCAPED)),
                tolerance=float(np.max(tol[m])),
                growth_exponent=med(alpha[m]),
                log_growth=float(np.mean(logg[m])),
                malgrange=med(malg[m]),
                final_value=med(f[m]),
                norm=med(norm[m]),
            )
        )
    return out
