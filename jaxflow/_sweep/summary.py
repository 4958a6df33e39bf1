r"""The summary of a sweep: one row of evidence per grid point.

Each row is read off the point's scan report (`jaxflow.Report`, itself streamed from the
stored chunks): the status counts, the escaping fraction (statuses `ESCAPING` and
`ESCAPED`) and the undecided fraction (`UNDECIDED`, `HORIZON`, `MAX_STEPS`, `NONFINITE`)
with 95 % Wilson intervals, the values at infinity with the median growth exponent of
their trajectories, the critical values with their types, the best value seen and the
problem's known infimum, the suspected spurious minima at infinity, and the verdict on
Theorem 1.2's bounded-trajectory assumption. `jaxflow._sweep.plots` draws it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

from .._render import format_value
from .._stats import wilson_interval
from .._status import Status

__all__ = ["SweepSummary"]

_ESCAPE = ("ESCAPING", "ESCAPED")
_UNDECIDED = ("UNDECIDED", "HORIZON", "MAX_STEPS", "NONFINITE")
_SETTLED = ("CONVERGED", "BOUNDED")


def _fraction(k: int, n: int) -> tuple[float, float, float]:
    if n == 0:
        return math.nan, 0.0, 1.0
    lo, hi = wilson_interval(k, n)
    return k / n, lo, hi


def _row(axes: Sequence[str], params: dict, result, spec: dict) -> dict:
    row = {a: params[a] for a in axes}
    counts = result.counts() if result is not None else {}
    n = int(sum(counts.values()))
    row.update(n=n, n_planned=int(spec["n"]), complete=bool(result is not None and result.complete))
    for name in Status.names().values():
        if name != "RUNNING":
            row[f"count_{name.lower()}"] = int(counts.get(name, 0))
    for label, group in (("escaping", _ESCAPE), ("undecided", _UNDECIDED),
                         ("settled", _SETTLED)):
        k = sum(counts.get(s, 0) for s in group)
        frac, lo, hi = _fraction(k, n)
        row.update({f"{label}": k, f"{label}_fraction": frac, f"{label}_low": lo,
                    f"{label}_high": hi})
    rep = result.report if result is not None else None
    if rep is None:
        row.update(values_at_infinity=[], value_at_infinity_fractions=[],
                   growth_exponents=[], critical_values=[], critical_types=[],
                   best_value=math.nan, global_infimum=None, spurious_at_infinity=[],
                   bounded_verdict="not assessed", conclusion="no stored trajectories")
        return row
    vai = sorted(rep.values_at_infinity, key=lambda v: -v.count)
    row.update(
        values_at_infinity=[float(v.value) for v in vai],
        value_at_infinity_fractions=[float(v.fraction) for v in vai],
        growth_exponents=[float(v.growth_exponent) for v in vai],
        critical_values=[float(c.value) for c in rep.critical_values],
        critical_types=[str(c.type.value) for c in rep.critical_values],
        best_value=float(rep.best_value),
        global_infimum=rep.problem.get("global_infimum"),
        spurious_at_infinity=[float(v.value) for v in rep.spurious_at_infinity],
        bounded_verdict=str(rep.assumptions["bounded_trajectories"].verdict.value),
        conclusion=rep.conclusion,
    )
    return row


def _values(xs, digits=4) -> str:
    return ", ".join(format_value(x, digits) for x in xs) if xs else "—"


def _pct(row, label) -> str:
    f = row[f"{label}_fraction"]
    if not row["n"]:
        return "—"
    return (f"{100 * f:.2f} % [{100 * row[f'{label}_low']:.2f}, "
            f"{100 * row[f'{label}_high']:.2f}]")


@dataclasses.dataclass
class SweepSummary:
    """Per grid point: statuses with 95 % intervals, values at infinity, critical values,
    the Theorem 1.2 verdict (see the module docstring).

    `rows` is a list of dicts (the grid parameters first); render with `to_markdown()`,
    `to_rich()`, `to_json()`, `to_arrow()` / `to_parquet(path)`; draw with `heatmap` and
    `line` (`jaxflow._sweep.plots`).
    """

    axes: list[str]
    rows: list[dict]
    meta: dict

    @classmethod
    def from_results(cls, axes, points, results, *, spec) -> SweepSummary:
        fs = spec["flow"]
        meta = {"problem": spec["problem"], "fixed": spec["fixed"], "n": spec["n"],
                "seed": spec["seed"], "dtype": spec["dtype"], "t1": fs["t1"],
                "escape_radius": fs["escape_radius"], "gtol": fs["gtol"]}
        rows = [_row(axes, p, r, spec) for p, r in zip(points, results, strict=True)]
        return cls(list(axes), rows, meta)

    # ------------------------------------------------------------------ queries
    def row(self, **params) -> dict:
        for r in self.rows:
            if all(r[k] == v for k, v in params.items()):
                return r
        raise KeyError(f"no grid point {params}.")

    def title(self) -> str:
        m = self.meta
        name = m["problem"].get("name") or m["problem"].get("target")
        fixed = ", ".join(f"{k}={v}" for k, v in m["fixed"].items())
        return (f"{name}{' (' + fixed + ')' if fixed else ''}: N = {m['n']:,} per point, "
                f"T = {float(m['t1']):g}, {m['dtype']}")

    # ------------------------------------------------------------------ renderers
    def to_dict(self) -> dict:
        return {"axes": self.axes, "meta": self.meta, "rows": self.rows}

    def to_json(self, **kwargs) -> str:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return json.dumps(clean(self.to_dict()), **({"indent": 1} | kwargs))

    def to_arrow(self):
        """The rows as a `pyarrow.Table` (list columns for the values)."""
        import pyarrow as pa

        return pa.Table.from_pylist(
            [{k: (json.dumps(v) if k == "global_infimum" else v) for k, v in r.items()}
             for r in self.rows])

    def to_parquet(self, path) -> Path:
        import pyarrow.parquet as pq

        path = Path(path)
        pq.write_table(self.to_arrow(), path)
        return path

    def _cells(self, r) -> list[str]:
        return [*(str(r[a]) for a in self.axes), f"{r['n']:,}", _pct(r, "escaping"),
                _pct(r, "undecided"), _values(r["values_at_infinity"]),
                _values(r["growth_exponents"], 2), _values(r["critical_values"]),
                format_value(r["best_value"], 4),
                format_value(r["global_infimum"], 4) if r["global_infimum"] is not None else "?",
                r["bounded_verdict"]]

    _HEADER = ["N", "escaping [95 %]", "undecided [95 %]", "values at ∞", "growth α",
               "critical values", "best f", "inf f", "bounded?"]

    def to_markdown(self) -> str:
        head = [*self.axes, *self._HEADER]
        lines = [f"**{self.title()}**", "", "| " + " | ".join(head) + " |",
                 "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(self._cells(r)) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def to_rich(self):
        from rich.table import Table

        table = Table(title=self.title(), title_justify="left")
        for name in [*self.axes, *self._HEADER]:
            table.add_column(name, overflow="fold")
        for r in self.rows:
            table.add_row(*self._cells(r))
        return table

    def __rich__(self):
        return self.to_rich()

    # ------------------------------------------------------------------ figures
    def heatmap(self, x: str, y: str, **kwargs):
        """`jaxflow._sweep.plots.heatmap` of this summary."""
        from .plots import heatmap

        return heatmap(self, x, y, **kwargs)

    def line(self, x: str, **kwargs):
        """`jaxflow._sweep.plots.line` of this summary."""
        from .plots import line

        return line(self, x, **kwargs)

    def write(self, directory, *, plots: bool = True) -> list[Path]:
        """Writes `summary.md`, `summary.json`, `summary.parquet` and, with `plots`, the
        figures (a heatmap for two axes, a line plot per axis) into `directory`."""
        from .._files import make_dirs, write_bytes

        directory = Path(directory)
        make_dirs(directory.parent, directory.name)
        written = [write_bytes(directory, "summary.md", self.to_markdown().encode()),
                   write_bytes(directory, "summary.json", (self.to_json() + "\n").encode())]
        import io

        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(self.to_arrow(), buf)
        written.append(write_bytes(directory, "summary.parquet", buf.getvalue()))
        if plots:
            from .plots import save_figures

            written += save_figures(self, directory)
        return written
