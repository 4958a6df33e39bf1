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
- a `Verdict` per assumption of Theorem 1.2: `supported`, `contradicted`,
  `inconclusive` or `not assessed`;
- a conclusion, in words.

The report holds this evidence as data; `jaxflow._render` turns it into Markdown, rich
tables and JSON, and `Report.write` writes the files of `jaxflow report`.

Everything is evidence from $N$ samples up to the horizon $T$, never a proof: a finite
sample can miss a basin of small measure, and a finite horizon can miss a slow escape
or a late departure from a saddle.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ._detect import classify
from ._json import jsonable
from ._render import (
    format_interval,
    format_percent,
    format_value,
    report_dict,
    report_html,
    report_json,
    report_markdown,
    report_rich,
    write_report,
)
from ._schema import trajectory_table
from ._stats import count_rows, wilson_interval
from ._summaries import TableSummary, table_points
from ._values import (
    CriticalPointType,
    CriticalValue,
    ValueAtInfinity,
    value_tolerance,
)

__all__ = ["Report", "Verdict", "Assessment"]


class Verdict(enum.StrEnum):
    """What the sample says about one assumption of Theorem 1.2 (Assumption 3.1)."""

    SUPPORTED = "supported"
    CONTRADICTED = "contradicted"
    INCONCLUSIVE = "inconclusive"
    NOT_ASSESSED = "not assessed"  # not testable by sampling


@dataclasses.dataclass(frozen=True)
class Assessment:
    """The evidence on one assumption of Theorem 1.2: a `Verdict` and why."""

    verdict: Verdict
    detail: str


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
    `to_markdown()`, `to_html()`, `to_dict()` or `to_json()` (all in `jaxflow._render`);
    write the files of `jaxflow report` with `write(directory)`.
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
    assumptions: dict[str, Assessment]
    accumulation: float | None
    conclusion: str

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_flow(cls, problem, result, classification=None, **classify_options) -> Report:
        """Classifies `result` (unless `classification` is given) and builds the report."""
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
        if int(np.asarray(table["status"]).shape[0]) == 0:
            raise ValueError("Report.from_table: the table has no rows.")
        if meta.get("extend_undecided") and "decided_at" in table and meta.get("t1") is not None:
            # Trajectories decided only after being continued past t1 (extend_undecided).
            decided_at = np.asarray(table["decided_at"], np.float64)
            meta["decided_past_t1"] = int(np.sum(decided_at > float(meta["t1"]) * (1 + 1e-6)))
        summary = TableSummary.from_table(table, gtol=meta.get("gtol"), n_probe=n_probe)
        report, _ = cls.from_summary(summary, problem=problem, meta=meta,
                                     points_of=table_points(table))
        return report

    @classmethod
    def from_summary(
        cls, summary: TableSummary, *, problem=None, typing=None, points_of=None,
        meta: dict | None = None, description: dict | None = None,
        nonsmooth: bool | None = None,
    ) -> tuple[Report, list[dict] | None]:
        """Builds the report from a `TableSummary` (merged chunk by chunk for a scan).

        **Arguments:**

        - `summary`: the table's summary (`jaxflow._summaries.TableSummary`).
        - `problem`: the `jaxflow.Problem`, to type critical points (or `None`).
        - `typing`: a typing record of an earlier call on the same summary (stored by
          a scan), used instead of `problem`.
        - `points_of`: rows -> their final points `(m, d)`, for the representatives.
        - `meta`: the run's settings, as in `from_table`.
        - `description`, `nonsmooth`: the problem's `describe()` and whether it is
          nonsmooth, when `problem` is not given (a stored scan records both).

        **Returns:** `(report, typing record)`; the record is `None` when untyped.
        """
        meta = dict(meta or {})
        n = int(summary.n)
        if n == 0:
            raise ValueError("Report.from_summary: the summary has no rows.")
        gtol = meta.get("gtol")
        horizon = meta.get("t1")
        rtol = value_tolerance(summary.dtype, gtol)
        cvs, record = summary.critical_values(problem=problem, typing=typing,
                                              points_of=points_of)
        vis = summary.values_at_infinity()

        # Best value seen: lowest final f of any trajectory, or lowest finite limit along
        # an escape (extrapolated), or -inf when f decreases without bound.
        candidates = (
            [(summary.best_f, "final value of a trajectory")]
            if math.isfinite(summary.best_f)
            else []
        )
        for vi in vis:
            candidates.append((vi.value, "value at infinity"))
        best, best_source = (
            min(candidates, key=lambda c: c[0]) if candidates else (math.nan, "none")
        )

        def above(value, tol):
            return math.isfinite(best) and value > best + max(tol, rtol * max(1.0, abs(best)))

        spurious = [
            cv
            for cv in cvs
            if cv.type == CriticalPointType.MINIMUM and above(cv.value, cv.tolerance)
        ]
        possibly = [
            cv
            for cv in cvs
            if cv.type == CriticalPointType.DEGENERATE and above(cv.value, cv.tolerance)
        ]
        spurious_inf = [
            vi for vi in vis if math.isfinite(vi.value) and above(vi.value, vi.tolerance)
        ]
        acc = _accumulation([cv.value for cv in cvs])

        counts = summary.status_counts()
        n_esc = counts.get("ESCAPING", 0) + counts.get("ESCAPED", 0)
        n_ok = counts.get("CONVERGED", 0) + counts.get("BOUNDED", 0)
        n_open = n - n_esc - n_ok
        if nonsmooth is None:
            nonsmooth = bool(getattr(problem, "nonsmooth", False)) if problem is not None else False
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
            nonsmooth=nonsmooth,
        )
        if description is not None:
            prob = description
        else:
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
        report = cls(
            problem=jsonable(prob),
            n=n,
            horizon=horizon,
            meta=_meta_data(meta),
            statuses=count_rows(counts, n),
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
        return report, record

    # ------------------------------------------------------------------ presentation
    @property
    def evidence(self) -> str:
        """What the evidence is: "evidence from N = ... samples to horizon T = ..."."""
        return _evidence_phrase(self.n, self.horizon, self.meta)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (infinities as the strings "inf"/"-inf", NaN as null)."""
        return report_dict(self)

    def to_json(self, **kwargs) -> str:
        """The report as JSON (`json.dumps` keywords; indented by 2 by default)."""
        return report_json(self, **kwargs)

    def to_markdown(self) -> str:
        """The report as GitHub-flavoured Markdown."""
        return report_markdown(self)

    def to_rich(self):
        """A rich renderable (tables and the conclusion); print it with a rich Console."""
        return report_rich(self)

    def __rich__(self):
        return self.to_rich()

    def to_html(self, *, result=None, problem=None) -> str:
        """The report as one self-contained HTML page (what `jaxflow report` writes as
        `index.html`): the status table, critical values, values at infinity, the
        Assumption 3.1 verdicts, the conclusion and the run's settings.

        **Arguments:**

        - `result`: the `jaxflow.ScanResult` the report comes from; its figures are
          then inlined as PNG data URIs (without it the page has no figures).
        - `problem`: the `jaxflow.Problem`, for the level sets of a 2-D phase portrait.

        Styles are inline and every string is HTML-escaped: the page loads nothing.
        """
        from ._plots import plot_images

        images = plot_images(result, problem=problem) if result is not None else None
        return report_html(self, images)

    def _repr_html_(self) -> str:
        # Jupyter shows a report as its HTML page (without figures: those need the scan),
        # as a <div> whose styles are scoped to it, so the notebook's own are untouched.
        return report_html(self, fragment=True)

    def write(self, directory, *, plots: bool = True, result=None, problem=None) -> list[Path]:
        """Writes what `jaxflow report` writes into `directory`; returns the paths.

        **Arguments:**

        - `directory`: created if missing.
        - `plots`: also write the PNG figures (`final_f_by_status.png`,
          `norm_vs_t_escaping.png`, `phase_portrait.png` for 2-D problems); they need
          the scan, `result` (a `jaxflow.ScanResult`), and are skipped without it.
        - `problem`: the `jaxflow.Problem`, for the level sets of the phase portrait.

        **Returns:** the paths of `report.md`, `report.json`, `index.html` and the figures
        written.
        """
        return write_report(self, directory, plots=plots, result=result, problem=problem)


# --------------------------------------------------------------------------- helpers
def _meta_data(meta: dict) -> dict:
    """The run's settings as JSON data; a value that is not data (e.g. a solver object,
    or a list holding one) is kept as its `repr`."""
    out = {}
    for key, value in meta.items():
        if isinstance(value, (list, tuple, dict)):
            try:
                json.dumps(jsonable(value))
            except TypeError:
                value = repr(value)
        elif not isinstance(value, (str, int, float, bool, type(None), np.number, np.bool_)):
            value = repr(value)
        out[key] = value
    return jsonable(out)


def _evidence_phrase(n, horizon, meta) -> str:
    parts = [f"evidence from N = {n} samples"]
    if horizon is not None:
        parts.append(f"to horizon T = {format_value(float(horizon), 4)}")
    extra = [str(meta[k]) for k in ("solver", "dtype") if meta.get(k)]
    if extra:
        parts.append(f"({', '.join(extra)})")
    if meta.get("extend_undecided"):
        # The detectors' undecided trajectories were continued (FlowOptions.extend_undecided).
        reached = meta.get("horizon_reached", meta["extend_undecided"])
        text = f"; trajectories undecided at T continued to {format_value(float(reached), 4)}"
        if meta.get("decided_past_t1") is not None:
            text += f" ({meta['decided_past_t1']} decided there)"
        parts[-1] += text
    return " ".join(parts)


def _assumptions(
    *, n, n_esc, n_open, counts, cvs, vis, best, acc, horizon, nonsmooth
) -> dict[str, Assessment]:
    """The `Assessment` of each assumption of Theorem 1.2, in the paper's order."""
    by = "the horizon" if horizon is None else f"T = {format_value(float(horizon), 4)}"
    out = {}
    # (a) bounded below.
    n_inf = sum(vi.count for vi in vis if vi.value == -math.inf)
    if n_inf:
        out["lower_bounded"] = Assessment(
            Verdict.CONTRADICTED,
            f"{n_inf} of {n} trajectories escape with f decreasing at a non-decelerating rate "
            "(limit −∞).",
        )
    elif math.isfinite(best):
        out["lower_bounded"] = Assessment(
            Verdict.SUPPORTED,
            f"lowest value seen {format_value(best)}; no trajectory with f → −∞ (sampling "
            "cannot show a lower bound).",
        )
    else:
        out["lower_bounded"] = Assessment(Verdict.INCONCLUSIVE, "no finite value seen.")
    out["locally_lipschitz"] = Assessment(
        Verdict.NOT_ASSESSED,
        "not testable by sampling (holds for C¹ losses and compositions of Lipschitz pieces)"
        + ("; the flow uses the minimal-norm Clarke subgradient." if nonsmooth else "."),
    )
    out["chain_rule"] = Assessment(
        Verdict.NOT_ASSESSED,
        "not testable by sampling (holds for C¹ and for definable, e.g. semialgebraic, losses).",
    )
    # (d) finitely many critical values.
    n_lim = sum(cv.count for cv in cvs)
    if not cvs:
        out["finitely_many_critical_values"] = Assessment(
            Verdict.INCONCLUSIVE,
            "no trajectory converged or stayed bounded, so no critical value was seen.",
        )
    elif acc is not None:
        out["finitely_many_critical_values"] = Assessment(
            Verdict.INCONCLUSIVE,
            f"{len(cvs)} distinct critical values among {n_lim} limits, with gaps shrinking "
            "geometrically: they seem to accumulate near "
            f"{format_value(acc, 4)} (as in Remark 3.2).",
        )
    else:
        out["finitely_many_critical_values"] = Assessment(
            Verdict.SUPPORTED,
            f"{len(cvs)} distinct critical value{'s' if len(cvs) != 1 else ''} among {n_lim} "
            "limits of converged or bounded trajectories (sampling cannot show finiteness).",
        )
    # (e) bounded trajectories.
    if n_esc:
        lo, hi = wilson_interval(n_esc, n)
        out["bounded_trajectories"] = Assessment(
            Verdict.CONTRADICTED,
            f"{n_esc} of {n} trajectories ({format_percent(n_esc / n)}, 95 % interval "
            f"{format_interval((lo, hi))}) escape to infinity by {by}",
        )
    elif n_open:
        detail = ", ".join(
            f"{counts[s]} {s}"
            for s in ("UNDECIDED", "MAX_STEPS", "NONFINITE", "HORIZON")
            if counts.get(s)
        )
        out["bounded_trajectories"] = Assessment(
            Verdict.INCONCLUSIVE,
            f"no escape seen, but {detail} of {n} trajectories are open at {by}.",
        )
    else:
        lo, hi = wilson_interval(0, n)
        out["bounded_trajectories"] = Assessment(
            Verdict.SUPPORTED,
            f"all {n} trajectories converged or stayed bounded up to {by}; the escaping share of "
            f"starts is below {format_percent(hi)} (95 % Wilson upper bound).",
        )
    return out


def _conclusion(
    *, evidence, n, n_esc, assumptions, spurious, possibly, spurious_inf, vis, best
) -> str:
    head = evidence[0].upper() + evidence[1:] + " (not a proof). "
    bt = assumptions["bounded_trajectories"].verdict

    def vals(xs):
        return ", ".join(format_value(x.value) for x in xs)

    parts = []
    if spurious:
        parts.append(
            f"Spurious local minima seen at value(s) {vals(spurious)} (above the best value "
            f"{format_value(best)}): f has spurious local minima."
        )
    if bt == Verdict.CONTRADICTED:
        parts.append(
            "Theorem 1.2 does not apply: its bounded-trajectory assumption fails "
            f"({assumptions['bounded_trajectories'].detail})."
        )
        if spurious_inf:
            parts.append(
                f"Suspected spurious minima at infinity at value(s) {vals(spurious_inf)}, above "
                f"the best value {format_value(best)}: trajectories get stuck at infinity there."
            )
        elif vis:
            parts.append(
                f"Every value at infinity ({vals(vis)}) equals the best value seen: no spurious "
                "minimum at infinity is suspected, but the infimum may only be approached at "
                "infinity."
            )
    elif bt == Verdict.SUPPORTED and not spurious:
        other = [
            k
            for k in ("lower_bounded", "finitely_many_critical_values")
            if assumptions[k].verdict in (Verdict.CONTRADICTED, Verdict.INCONCLUSIVE)
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
    elif bt == Verdict.INCONCLUSIVE:
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
