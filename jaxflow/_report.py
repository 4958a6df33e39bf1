r"""`Report`: what the trajectories say about Theorem 1.2 of Josz & Li (2023).

Theorem 1.2: a locally Lipschitz function that is bounded below, admits a chain rule, has
finitely many critical values and has bounded subgradient trajectories has no spurious
local minima if and only if it has no spurious setwise local minima (hence none at
infinity). A `Report` gathers, from the per-trajectory table of one run or of a whole
scan, the empirical evidence on each of these points:

- the statuses with 95 % Wilson intervals;
- the critical values (limits of converged and bounded trajectories) with their type;
- the values at infinity (limits along escaping trajectories);
- the best value seen, spurious local minima (minimum-type critical values above it)
  and suspected spurious minima at infinity (values at infinity above it);
- a verdict per assumption of Theorem 1.2: `supported`, `contradicted`,
  `inconclusive` or `not assessed`.

Everything is evidence from $N$ samples up to the horizon $T$, never a proof: a finite
sample can miss a basin of small measure, and a finite horizon can miss a slow escape
or a late departure from a saddle.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from ._stats import wilson_interval
from ._status import Status
from ._values import (
    CriticalValue,
    ValueAtInfinity,
    _jsonable,
    critical_values,
    value_tolerance,
    values_at_infinity,
)

__all__ = ["Report"]

_ASSUMPTIONS = (
    ("lower_bounded", "(a) bounded below"),
    ("locally_lipschitz", "(b) locally Lipschitz"),
    ("chain_rule", "(c) admits a chain rule"),
    ("finitely_many_critical_values", "(d) finitely many critical values"),
    ("bounded_trajectories", "(e) bounded subgradient trajectories"),
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The evidence on one assumption of Theorem 1.2 (Assumption 3.1)."""

    verdict: str  # supported | contradicted | inconclusive | not assessed
    detail: str


def _fmt(v: float, digits: int = 6) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if math.isinf(v):
        return "−∞" if v < 0 else "∞"
    return f"{v:.{digits}g}"


def _pct(p: float) -> str:
    return f"{100 * p:.2f} %"


def _interval(iv) -> str:
    return f"[{_pct(iv[0])}, {_pct(iv[1])}]"


def _accumulation(values: list[float]) -> float | None:
    r"""A limit point suggested by $\ge 4$ sorted values with geometrically shrinking gaps.

    Remark 3.2's values $-3(1 - 2^{-k})$ have gaps halving towards $-3$. Returns the
    extrapolated accumulation point or `None`. A heuristic, reported as such.
    """
    v = np.sort(np.asarray([x for x in values if np.isfinite(x)], np.float64))
    for seq in (v[::-1], v):  # accumulating from above, then from below
        if seq.size < 4:
            continue
        gaps = np.abs(np.diff(seq))
        for end in range(gaps.size, 2, -1):
            for start in range(0, end - 2):
                g = gaps[start:end]
                if np.any(g <= 0):
                    continue
                r = g[1:] / g[:-1]
                if np.all((r > 0.05) & (r < 0.9)) and r.max() <= 2 * r.min():
                    rr = float(np.exp(np.mean(np.log(r))))
                    return float(
                        seq[end] + math.copysign(1, seq[end] - seq[end - 1]) * g[-1] * rr / (1 - rr)
                    )
    return None


@dataclasses.dataclass(frozen=True)
class Report:
    """The evidence on Theorem 1.2 from one run or scan (see the module docstring).

    Build it with `Report.from_flow(problem, result)` or, from stored columns,
    `Report.from_table(problem, table, meta=...)`. Render with `to_rich()`,
    `to_markdown()`, `to_dict()` or `to_json()`.
    """

    problem: dict
    n: int
    horizon: float | None
    meta: dict
    statuses: list[dict]
    critical_values: list[CriticalValue]
    values_at_infinity: list[ValueAtInfinity]
    best_value: float
    best_source: str
    spurious_minima: list[CriticalValue]
    possibly_spurious: list[CriticalValue]
    spurious_at_infinity: list[ValueAtInfinity]
    assumptions: dict[str, Verdict]
    accumulation: float | None
    conclusion: str

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_flow(cls, problem, result, classification=None, **classify_options) -> Report:
        """Classifies `result` (unless `classification` is given) and builds the report."""
        from ._detect import classify, trajectory_table

        if classification is None:
            classification = classify(result, **classify_options)
        elif classify_options:
            raise TypeError(
                "Report.from_flow: pass classify options or a classification, not both."
            )
        table = trajectory_table(result, classification)
        return cls.from_table(problem, table, meta=dict(result.meta))

    @classmethod
    def from_table(
        cls, problem, table: dict, *, meta: dict | None = None, n_probe: int = 4
    ) -> Report:
        """Builds the report from per-trajectory columns (`jaxflow.trajectory_table`).

        **Arguments:**

        - `problem`: the `jaxflow.Problem` (used to type critical points; `None` skips
          typing).
        - `table`: dict of equal-length columns; `status` must already be refined by
          `jaxflow.classify` for the escaping/bounded verdicts to mean anything.
        - `meta`: the run's settings (`FlowResult.meta`: `t1`, `gtol`, `dtype`,
          `solver`, `escape_radius`, ...).
        - `n_probe`: members per critical-value cluster whose type is checked.
        """
        if not isinstance(table, dict) or "status" not in table or "f" not in table:
            raise TypeError(
                "Report.from_table: `table` must be a dict of columns with at least "
                "'status' and 'f' (build it with jaxflow.trajectory_table)."
            )
        meta = dict(meta or {})
        status = np.asarray(table["status"]).astype(np.int64)
        n = int(status.shape[0])
        if n == 0:
            raise ValueError("Report.from_table: the table has no rows.")
        f = np.asarray(table["f"], np.float64)
        dtype = np.asarray(table["f"]).dtype
        gtol = meta.get("gtol")
        horizon = meta.get("t1")
        rtol = value_tolerance(dtype if np.issubdtype(dtype, np.floating) else np.float64, gtol)

        # Statuses with Wilson intervals.
        statuses = []
        for s in Status:
            k = int(np.sum(status == int(s)))
            if k:
                statuses.append(
                    dict(status=s.name, count=k, fraction=k / n, interval=wilson_interval(k, n))
                )
        cvs = critical_values(problem, table, gtol=gtol, n_total=n, n_probe=n_probe)
        vis = values_at_infinity(table, gtol=gtol, n_total=n)

        # Best value seen: lowest final f of any trajectory, or lowest finite limit along
        # an escape (extrapolated), or -inf when f decreases without bound.
        candidates = (
            [(float(np.min(f[np.isfinite(f)])), "final value of a trajectory")]
            if np.any(np.isfinite(f))
            else []
        )
        for vi in vis:
            candidates.append((vi.value, "value at infinity"))
        best, best_source = (
            min(candidates, key=lambda c: c[0]) if candidates else (math.nan, "none")
        )

        def above(value, tol):
            return math.isfinite(best) and value > best + max(tol, rtol * max(1.0, abs(best)))

        spurious = [cv for cv in cvs if cv.type == "minimum" and above(cv.value, cv.tolerance)]
        possibly = [cv for cv in cvs if cv.type == "degenerate" and above(cv.value, cv.tolerance)]
        spurious_inf = [
            vi for vi in vis if math.isfinite(vi.value) and above(vi.value, vi.tolerance)
        ]
        acc = _accumulation([cv.value for cv in cvs])

        counts = {s["status"]: s["count"] for s in statuses}
        n_esc = counts.get("ESCAPING", 0) + counts.get("ESCAPED", 0)
        n_ok = counts.get("CONVERGED", 0) + counts.get("BOUNDED", 0)
        n_open = n - n_esc - n_ok
        assumptions = _assumptions(
            n=n,
            n_esc=n_esc,
            n_open=n_open,
            counts=counts,
            cvs=cvs,
            vis=vis,
            best=best,
            acc=acc,
            horizon=horizon,
            problem=problem,
        )
        prob = problem.describe() if problem is not None and hasattr(problem, "describe") else {}
        evidence = _evidence_phrase(n, horizon, meta)
        conclusion = _conclusion(
            evidence=evidence,
            n=n,
            n_esc=n_esc,
            assumptions=assumptions,
            spurious=spurious,
            possibly=possibly,
            spurious_inf=spurious_inf,
            vis=vis,
            best=best,
        )
        return cls(
            problem=_jsonable(prob),
            n=n,
            horizon=horizon,
            meta=_jsonable(_plain(meta)),
            statuses=statuses,
            critical_values=cvs,
            values_at_infinity=vis,
            best_value=best,
            best_source=best_source,
            spurious_minima=spurious,
            possibly_spurious=possibly,
            spurious_at_infinity=spurious_inf,
            assumptions=assumptions,
            accumulation=acc,
            conclusion=conclusion,
        )

    # ------------------------------------------------------------------ rendering
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (infinities as the strings "inf"/"-inf", NaN as null)."""
        return _jsonable(
            dict(
                problem=self.problem,
                n=self.n,
                horizon=self.horizon,
                meta=self.meta,
                statuses=[dict(s) for s in self.statuses],
                critical_values=[cv.to_dict() for cv in self.critical_values],
                values_at_infinity=[vi.to_dict() for vi in self.values_at_infinity],
                best_value=self.best_value,
                best_source=self.best_source,
                spurious_minima=[cv.value for cv in self.spurious_minima],
                possibly_spurious_minima=[cv.value for cv in self.possibly_spurious],
                suspected_spurious_minima_at_infinity=[
                    vi.value for vi in self.spurious_at_infinity
                ],
                assumptions={k: dataclasses.asdict(v) for k, v in self.assumptions.items()},
                critical_value_accumulation=self.accumulation,
                conclusion=self.conclusion,
            )
        )

    def to_json(self, **kwargs) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def _title(self) -> str:
        name = self.problem.get("name") or "problem"
        return f"{name}: {_evidence_phrase(self.n, self.horizon, self.meta)}"

    def to_markdown(self) -> str:
        """The report as GitHub-flavoured Markdown."""
        lines = [f"## {self._title()}", ""]
        lines += ["| status | count | fraction | 95 % interval |", "|---|---:|---:|---:|"]
        for s in self.statuses:
            row = (s["status"], s["count"], _pct(s["fraction"]), _interval(s["interval"]))
            lines.append("| " + " | ".join(map(str, row)) + " |")
        lines += ["", "### Critical values (limits of converged and bounded trajectories)", ""]
        if self.critical_values:
            lines += [
                "| value | count | fraction | 95 % interval | type "
                "| Hessian eigenvalues (min, max) | point |",
                "|---:|---:|---:|---:|---|---|---|",
            ]
            for cv in self.critical_values:
                eig = (
                    "—"
                    if cv.eigenvalues is None
                    else f"({_fmt(cv.eigenvalues[0], 3)}, {_fmt(cv.eigenvalues[1], 3)})"
                )
                row = (
                    _fmt(cv.value),
                    cv.count,
                    _pct(cv.fraction),
                    _interval(cv.interval),
                    f"{cv.type} ({cv.method})",
                    eig,
                    _point(cv.point),
                )
                lines.append("| " + " | ".join(map(str, row)) + " |")
        else:
            lines.append("None: no trajectory converged or stayed bounded.")
        lines += ["", "### Values at infinity (limits along escaping trajectories)", ""]
        if self.values_at_infinity:
            lines += [
                "| value | count | fraction | 95 % interval | growth α | log growth | ‖x‖·‖v‖ "
                "| median ‖x‖ |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for vi in self.values_at_infinity:
                row = (
                    _fmt(vi.value),
                    vi.count,
                    _pct(vi.fraction),
                    _interval(vi.interval),
                    _fmt(vi.growth_exponent, 3),
                    _pct(vi.log_growth),
                    _fmt(vi.malgrange, 3),
                    _fmt(vi.norm, 4),
                )
                lines.append("| " + " | ".join(map(str, row)) + " |")
        else:
            lines.append("None: no trajectory escaped.")
        lines += ["", "### Findings", ""]
        lines += self._findings()
        lines += [
            "",
            "### Theorem 1.2 assumptions",
            "",
            "| assumption | evidence | detail |",
            "|---|---|---|",
        ]
        for key, label in _ASSUMPTIONS:
            v = self.assumptions[key]
            lines.append(f"| {label} | **{v.verdict}** | {v.detail} |")
        lines += ["", f"**Conclusion.** {self.conclusion}", ""]
        return "\n".join(lines)

    def _findings(self) -> list[str]:
        out = [f"- Best value seen: {_fmt(self.best_value)} ({self.best_source})."]
        gi = self.problem.get("global_infimum") if self.problem else None
        if gi is not None:
            out[-1] = out[-1][:-1] + f"; known global infimum {_fmt(gi)}."
        out.append(
            "- Spurious local minima (minimum-type critical values above the best value): "
            + (", ".join(_fmt(cv.value) for cv in self.spurious_minima) or "none seen")
            + "."
        )
        if self.possibly_spurious:
            out.append(
                "- Degenerate critical values above the best value (type undecided; possibly "
                "spurious setwise minima): "
                + ", ".join(_fmt(cv.value) for cv in self.possibly_spurious)
                + "."
            )
        out.append(
            "- Suspected spurious minima at infinity (values at infinity above the best value): "
            + (", ".join(_fmt(vi.value) for vi in self.spurious_at_infinity) or "none seen")
            + "."
        )
        return out

    def to_rich(self):
        """A rich renderable (tables and the conclusion); print it with a rich Console."""
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        st = Table(title=self._title())
        for col in ("status", "count", "fraction", "95% interval"):
            st.add_column(col, justify="left" if col == "status" else "right")
        for s in self.statuses:
            st.add_row(s["status"], str(s["count"]), _pct(s["fraction"]), _interval(s["interval"]))
        cv = Table(title="Critical values (limits of converged and bounded trajectories)")
        for col in (
            "value",
            "count",
            "fraction",
            "95% interval",
            "type",
            "eig (min, max)",
            "point",
        ):
            cv.add_column(col, justify="right" if col in ("value", "count", "fraction") else "left")
        for c in self.critical_values:
            eig = (
                "—"
                if c.eigenvalues is None
                else f"({_fmt(c.eigenvalues[0], 3)}, {_fmt(c.eigenvalues[1], 3)})"
            )
            cv.add_row(
                _fmt(c.value),
                str(c.count),
                _pct(c.fraction),
                _interval(c.interval),
                f"{c.type} ({c.method})",
                eig,
                _point(c.point),
            )
        vi = Table(title="Values at infinity (limits along escaping trajectories)")
        for col in (
            "value",
            "count",
            "fraction",
            "95% interval",
            "growth α",
            "log growth",
            "‖x‖·‖v‖",
        ):
            vi.add_column(col, justify="right")
        for v in self.values_at_infinity:
            vi.add_row(
                _fmt(v.value),
                str(v.count),
                _pct(v.fraction),
                _interval(v.interval),
                _fmt(v.growth_exponent, 3),
                _pct(v.log_growth),
                _fmt(v.malgrange, 3),
            )
        th = Table(title="Theorem 1.2 assumptions (Assumption 3.1)")
        th.add_column("assumption")
        th.add_column("evidence")
        th.add_column("detail")
        colors = {"supported": "green", "contradicted": "red", "inconclusive": "yellow"}
        for key, label in _ASSUMPTIONS:
            v = self.assumptions[key]
            th.add_row(label, Text(v.verdict, style=colors.get(v.verdict, "dim")), v.detail)
        parts = [st]
        parts.append(
            cv
            if self.critical_values
            else Text("No critical values: no trajectory converged or stayed bounded.")
        )
        parts.append(
            vi if self.values_at_infinity else Text("No values at infinity: no trajectory escaped.")
        )
        parts.append(Text("\n".join(self._findings())))
        parts.append(th)
        parts.append(Panel(self.conclusion, title="Conclusion"))
        return Group(*parts)

    def __rich__(self):
        return self.to_rich()


# --------------------------------------------------------------------------- helpers
def _point(p) -> str:
    if not p:
        return "—"
    s = ", ".join(f"{x:.3g}" for x in p[:6])
    return f"({s}{', …' if len(p) > 6 else ''})"


def _plain(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        elif isinstance(v, (np.floating, np.integer, np.bool_)):
            out[k] = v.item()
        elif isinstance(v, (list, tuple, dict)):
            try:
                json.dumps(_jsonable(v))
                out[k] = v
            except TypeError:
                out[k] = repr(v)
        else:
            out[k] = repr(v)
    return out


def _evidence_phrase(n, horizon, meta) -> str:
    parts = [f"evidence from N = {n} samples"]
    if horizon is not None:
        parts.append(f"to horizon T = {_fmt(float(horizon), 4)}")
    extra = [str(meta[k]) for k in ("solver", "dtype") if meta.get(k)]
    if extra:
        parts.append(f"({', '.join(extra)})")
    return " ".join(parts)


def _assumptions(*, n, n_esc, n_open, counts, cvs, vis, best, acc, horizon, problem) -> dict:
    T = "the horizon" if horizon is None else f"T = {_fmt(float(horizon), 4)}"
    out = {}
    # (a) bounded below.
    n_inf = sum(vi.count for vi in vis if vi.value == -math.inf)
    if n_inf:
        out["lower_bounded"] = Verdict(
            "contradicted",
            f"{n_inf} of {n} trajectories escape with f decreasing at a non-decelerating rate "
            "(limit −∞).",
        )
    elif math.isfinite(best):
        out["lower_bounded"] = Verdict(
            "supported",
            f"lowest value seen {_fmt(best)}; no trajectory with f → −∞ (sampling cannot show a "
            "lower bound).",
        )
    else:
        out["lower_bounded"] = Verdict("inconclusive", "no finite value seen.")
    nonsmooth = bool(getattr(problem, "nonsmooth", False)) if problem is not None else False
    out["locally_lipschitz"] = Verdict(
        "not assessed",
        "not testable by sampling (holds for C¹ losses and compositions of Lipschitz pieces)"
        + ("; the flow uses the minimal-norm Clarke subgradient." if nonsmooth else "."),
    )
    out["chain_rule"] = Verdict(
        "not assessed",
        "not testable by sampling (holds for C¹ and for definable, e.g. semialgebraic, losses).",
    )
    # (d) finitely many critical values.
    n_lim = sum(cv.count for cv in cvs)
    if not cvs:
        out["finitely_many_critical_values"] = Verdict(
            "inconclusive",
            "no trajectory converged or stayed bounded, so no critical value was seen.",
        )
    elif acc is not None:
        out["finitely_many_critical_values"] = Verdict(
            "inconclusive",
            f"{len(cvs)} distinct critical values among {n_lim} limits, with gaps shrinking "
            f"geometrically: they seem to accumulate near {_fmt(acc, 4)} (as in Remark 3.2).",
        )
    else:
        out["finitely_many_critical_values"] = Verdict(
            "supported",
            f"{len(cvs)} distinct critical value{'s' if len(cvs) != 1 else ''} among {n_lim} "
            "limits of converged or bounded trajectories (sampling cannot show finiteness).",
        )
    # (e) bounded trajectories.
    if n_esc:
        lo, hi = wilson_interval(n_esc, n)
        out["bounded_trajectories"] = Verdict(
            "contradicted",
            f"{n_esc} of {n} trajectories ({_pct(n_esc / n)}, 95 % interval {_interval((lo, hi))}) "
            f"escape to infinity by {T}",
        )
    elif n_open:
        detail = ", ".join(
            f"{counts[s]} {s}"
            for s in ("UNDECIDED", "MAX_STEPS", "NONFINITE", "HORIZON")
            if counts.get(s)
        )
        out["bounded_trajectories"] = Verdict(
            "inconclusive",
            f"no escape seen, but {detail} of {n} trajectories are open at {T}.",
        )
    else:
        lo, hi = wilson_interval(0, n)
        out["bounded_trajectories"] = Verdict(
            "supported",
            f"all {n} trajectories converged or stayed bounded up to {T}; the escaping share of "
            f"starts is below {_pct(hi)} (95 % Wilson upper bound).",
        )
    return out


def _conclusion(
    *, evidence, n, n_esc, assumptions, spurious, possibly, spurious_inf, vis, best
) -> str:
    head = evidence[0].upper() + evidence[1:] + " (not a proof). "
    bt = assumptions["bounded_trajectories"].verdict
    vals = lambda xs: ", ".join(_fmt(x.value) for x in xs)  # noqa: E731
    parts = []
    if spurious:
        parts.append(
            f"Spurious local minima seen at value(s) {vals(spurious)} (above the best value "
            f"{_fmt(best)}): f has spurious local minima."
        )
    if bt == "contradicted":
        parts.append(
            "Theorem 1.2 does not apply: its bounded-trajectory assumption fails "
            f"({assumptions['bounded_trajectories'].detail})."
        )
        if spurious_inf:
            parts.append(
                f"Suspected spurious minima at infinity at value(s) {vals(spurious_inf)}, above "
                f"the best value {_fmt(best)}: trajectories get stuck at infinity there."
            )
        elif vis:
            parts.append(
                f"Every value at infinity ({vals(vis)}) equals the best value seen: no spurious "
                "minimum at infinity is suspected, but the infimum may only be approached at "
                "infinity."
            )
    elif bt == "supported" and not spurious:
        other = [
            k
            for k in ("lower_bounded", "finitely_many_critical_values")
            if assumptions[k].verdict in ("contradicted", "inconclusive")
        ]
        if other:
            parts.append(
                "Trajectories stayed bounded and no spurious local minimum was seen, but the "
                "evidence on "
                + " and ".join(k.replace("_", " ") for k in other)
                + " is not supportive, so Theorem 1.2 cannot be invoked."
            )
        else:
            parts.append(
                "Consistent with Theorem 1.2: trajectories stayed bounded, few critical values, "
                "and no minimum-type critical value above the best value. If the assumptions hold "
                "(Assumption 3.1), f has no spurious local minima, hence none at infinity."
            )
    elif bt == "inconclusive":
        parts.append(
            "No escape seen, but some trajectories are undecided at the horizon: rerun with a "
            "longer horizon before drawing a conclusion."
        )
    if possibly:
        parts.append(
            f"Degenerate critical values above the best value ({vals(possibly)}) could be spurious "
            "setwise minima (e.g. flat regions)."
        )
    return head + " ".join(parts)
