"""Presentation of a `jaxflow.Report`: Markdown, rich, JSON, and the files of `jaxflow report`.

Each table (statuses, critical values, values at infinity, Theorem 1.2 assumptions) is
one `TableSpec`: its columns say which field of a row they show and how. Markdown and
rich tables are both drawn from the spec, so they have the same columns; the JSON record
of each row carries every column's field (and more). Nothing here computes evidence:
the numbers and the verdicts come from `jaxflow.Report`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._files import write_bytes
from ._json import dumps, jsonable
from ._plots import write_plots
from ._stats import status_rows

__all__ = [
    "Column",
    "TableSpec",
    "STATUS_TABLE",
    "CRITICAL_VALUE_TABLE",
    "VALUE_AT_INFINITY_TABLE",
    "ASSUMPTION_TABLE",
    "OUTCOME_COLUMNS",
    "ASSUMPTION_LABELS",
    "format_value",
    "format_percent",
    "format_interval",
    "format_point",
    "terminal_text",
    "markdown_text",
    "markdown_table",
    "outcome_table",
    "rich_table",
    "report_dict",
    "report_json",
    "report_markdown",
    "report_rich",
    "write_report",
]


# --------------------------------------------------------------------------- numbers
def format_value(v: float | None, digits: int = 6) -> str:
    """A value with `digits` significant digits; "—" for None/NaN, "∞"/"−∞"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if math.isinf(v):
        return "−∞" if v < 0 else "∞"
    return f"{v:.{digits}g}"


def format_percent(p: float) -> str:
    """A fraction as a percentage with two decimals ("8.40 %")."""
    return f"{100 * p:.2f} %"


def format_interval(interval) -> str:
    """An interval of fractions as percentages ("[8.02 %, 8.79 %]")."""
    return f"[{format_percent(interval[0])}, {format_percent(interval[1])}]"


def format_point(p) -> str:
    """The first six coordinates of a point, 3 significant digits each."""
    if not p:
        return "—"
    s = ", ".join(f"{x:.3g}" for x in p[:6])
    return f"({s}{', …' if len(p) > 6 else ''})"


def _format_eigenvalues(eig) -> str:
    if eig is None:
        return "—"
    return f"({format_value(eig[0], 3)}, {format_value(eig[1], 3)})"


# --------------------------------------------------------------------------- untrusted text
# Strings from a store (problem names, descriptions) are data someone else wrote: an
# escape sequence in them could retitle the terminal, hide text or forge output, and
# Markdown/HTML in them could forge report lines. Terminal output strips them; Markdown
# escapes them.
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"                   # CSI: colours, cursor moves
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"        # OSC: titles, hyperlinks
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"             # DCS, SOS, PM, APC strings
    r"|\x1b[@-~]?"                               # any other escape
    r"|\x9b[0-?]*[ -/]*[@-~]"                     # 8-bit CSI
)
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#!|~])")


def _is_control(ch: str, keep_newlines: bool) -> bool:
    if keep_newlines and ch in "\n\t":
        return False
    # Cc: C0/C1 controls and DEL; Cf: invisible format characters (bidi overrides, ...).
    return unicodedata.category(ch) in ("Cc", "Cf")


def terminal_text(text, *, keep_newlines: bool = False) -> str:
    """`text` without terminal escape sequences and control characters (for stdout)."""
    text = _ESCAPE_SEQUENCE.sub("", str(text))
    return "".join(ch for ch in text if not _is_control(ch, keep_newlines))


def markdown_text(text) -> str:
    """`text` for Markdown/HTML: control characters shown as `U+001B`, Markdown
    punctuation backslash-escaped, `<`, `>`, `&` as entities."""
    out = "".join(f"U+{ord(ch):04X}" if _is_control(ch, False) else ch for ch in str(text))
    out = _MARKDOWN_SPECIALS.sub(r"\\\1", out)
    return out.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------- specs
def _field(row, key: str):
    return row[key] if isinstance(row, Mapping) else getattr(row, key)


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a table.

    - `key`: the field of a row it shows (a key of the row's JSON record).
    - `header`: its heading; `short` replaces it where width is scarce (a terminal).
    - `format`: the field as text; `cell` (given the whole row) replaces it when a cell
      shows more than one field.
    - `align`: "left" or "right".
    - `style`: the row's rich style for the cell (bold in Markdown), if emphasised.
    """

    key: str
    header: str
    format: Callable[[Any], str] = str
    align: str = "right"
    short: str | None = None
    cell: Callable[[Any], str] | None = None
    style: Callable[[Any], str] | None = None

    def text(self, row) -> str:
        return self.cell(row) if self.cell is not None else self.format(_field(row, self.key))


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """A table: its title, its columns, and what it is about when it has no rows."""

    title: str
    columns: tuple[Column, ...]
    subject: str = ""
    empty: str = ""


def _status_columns() -> tuple[Column, ...]:
    return (
        Column("status", "status", align="left"),
        Column("count", "count"),
        Column("fraction", "fraction", format_percent),
        Column("interval", "95 % interval", format_interval, short="95% interval"),
    )


STATUS_TABLE = TableSpec("statuses", _status_columns())

CRITICAL_VALUE_TABLE = TableSpec(
    "Critical values (limits of converged and bounded trajectories)",
    (
        Column("value", "value", format_value),
        *_status_columns()[1:],
        Column("type", "type", align="left", cell=lambda cv: f"{cv.type} ({cv.method})"),
        Column(
            "eigenvalues",
            "Hessian eigenvalues (min, max)",
            _format_eigenvalues,
            align="left",
            short="eig (min, max)",
        ),
        Column("point", "point", format_point, align="left"),
    ),
    subject="critical values",
    empty="no trajectory converged or stayed bounded",
)

VALUE_AT_INFINITY_TABLE = TableSpec(
    "Values at infinity (limits along escaping trajectories)",
    (
        Column("value", "value", format_value),
        *_status_columns()[1:],
        Column("growth_exponent", "growth α", lambda v: format_value(v, 3)),
        Column("log_growth", "log growth", format_percent),
        Column("malgrange", "‖x‖·‖v‖", lambda v: format_value(v, 3)),
        Column("norm", "median ‖x‖", lambda v: format_value(v, 4)),
    ),
    subject="values at infinity",
    empty="no trajectory escaped",
)

# The assumptions of Theorem 1.2 (Assumption 3.1), in the paper's order.
ASSUMPTION_LABELS = {
    "lower_bounded": "(a) bounded below",
    "locally_lipschitz": "(b) locally Lipschitz",
    "chain_rule": "(c) admits a chain rule",
    "finitely_many_critical_values": "(d) finitely many critical values",
    "bounded_trajectories": "(e) bounded subgradient trajectories",
}
_VERDICT_STYLES = {"supported": "green", "contradicted": "red", "inconclusive": "yellow"}

ASSUMPTION_TABLE = TableSpec(
    "Theorem 1.2 assumptions",
    (
        Column("assumption", "assumption", align="left"),
        Column(
            "verdict",
            "evidence",
            align="left",
            style=lambda row: _VERDICT_STYLES.get(row["verdict"], "dim"),
        ),
        Column("detail", "detail", align="left"),
    ),
)

# `jaxflow flow`: the status table with medians per status (`status_rows(..., medians=)`).
OUTCOME_COLUMNS = (
    *_status_columns(),
    Column("median_f", "median f", lambda v: f"{v:.4g}"),
    Column("median_norm", "median |x|", lambda v: f"{v:.4g}"),
    Column("median_t", "median t", lambda v: f"{v:.4g}"),
)


# --------------------------------------------------------------------------- tables
def markdown_table(columns: Sequence[Column], rows: Sequence) -> list[str]:
    """The lines of a GitHub-flavoured Markdown table."""
    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "|".join("---:" if c.align == "right" else "---" for c in columns) + "|",
    ]
    for row in rows:
        cells = [f"**{c.text(row)}**" if c.style else c.text(row) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def rich_table(columns: Sequence[Column], rows: Sequence, title: str | None = None):
    """A `rich.table.Table` (short headers; emphasised cells styled)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for c in columns:
        table.add_column(c.short or c.header, justify=c.align)
    for row in rows:
        table.add_row(
            *(Text(c.text(row), style=c.style(row)) if c.style else c.text(row) for c in columns)
        )
    return table


def outcome_table(result, title: str):
    r"""The rich table of `jaxflow flow`: statuses of a `FlowResult` with 95 % Wilson
    intervals and the medians of $f$, $\|x\|$ and $t$ per status."""
    medians = {
        "f": np.asarray(result.f, np.float64),
        "norm": np.linalg.norm(np.asarray(result.x, np.float64), axis=-1),
        "t": np.asarray(result.t, np.float64),
    }
    return rich_table(OUTCOME_COLUMNS, status_rows(result.status, medians), title=title)


def _assumption_rows(report) -> list[dict]:
    return [
        dict(assumption=label, verdict=report.assumptions[key].verdict.value,
             detail=report.assumptions[key].detail)
        for key, label in ASSUMPTION_LABELS.items()
    ]


def _title(report, escape: Callable[[Any], str] = terminal_text) -> str:
    name = (report.problem.get("name") if report.problem else None) or "problem"
    return f"{escape(name)}: {report.evidence}"


def _findings(report) -> list[str]:
    out = [f"- Best value seen: {format_value(report.best_value)} ({report.best_source})."]
    gi = report.problem.get("global_infimum") if report.problem else None
    if gi is not None:
        out[-1] = out[-1][:-1] + f"; known global infimum {format_value(gi)}."

    def values(xs):
        return ", ".join(format_value(x.value) for x in xs)

    out.append(
        "- Spurious local minima (minimum-type critical values above the best value): "
        + (values(report.spurious_minima) or "none seen")
        + "."
    )
    if report.possibly_spurious:
        out.append(
            "- Degenerate critical values above the best value (type undecided; possibly "
            "spurious setwise minima): " + values(report.possibly_spurious) + "."
        )
    out.append(
        "- Suspected spurious minima at infinity (values at infinity above the best value): "
        + (values(report.spurious_at_infinity) or "none seen")
        + "."
    )
    return out


# --------------------------------------------------------------------------- report
def report_markdown(report) -> str:
    """The report as GitHub-flavoured Markdown."""
    lines = [f"## {_title(report, markdown_text)}", ""]
    lines += markdown_table(STATUS_TABLE.columns, report.statuses)
    for spec, rows in (
        (CRITICAL_VALUE_TABLE, report.critical_values),
        (VALUE_AT_INFINITY_TABLE, report.values_at_infinity),
    ):
        lines += ["", f"### {spec.title}", ""]
        lines += markdown_table(spec.columns, rows) if rows else [f"None: {spec.empty}."]
    lines += ["", "### Findings", ""]
    lines += _findings(report)
    lines += ["", f"### {ASSUMPTION_TABLE.title}", ""]
    lines += markdown_table(ASSUMPTION_TABLE.columns, _assumption_rows(report))
    lines += ["", f"**Conclusion.** {report.conclusion}", ""]
    return "\n".join(lines)


def report_rich(report):
    """The report as a rich renderable (tables, findings and the conclusion)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    # The title as `Text`: a name from a store is never parsed as rich markup.
    parts = [rich_table(STATUS_TABLE.columns, report.statuses, title=Text(_title(report)))]
    for spec, rows in (
        (CRITICAL_VALUE_TABLE, report.critical_values),
        (VALUE_AT_INFINITY_TABLE, report.values_at_infinity),
    ):
        parts.append(
            rich_table(spec.columns, rows, title=spec.title)
            if rows
            else Text(f"No {spec.subject}: {spec.empty}.")
        )
    parts.append(Text("\n".join(_findings(report))))
    parts.append(
        rich_table(ASSUMPTION_TABLE.columns, _assumption_rows(report), ASSUMPTION_TABLE.title)
    )
    parts.append(Panel(report.conclusion, title="Conclusion"))
    return Group(*parts)


def report_dict(report) -> dict[str, Any]:
    """The report as JSON data (infinities as the strings "inf"/"-inf", NaN as null)."""
    return jsonable(
        dict(
            problem=report.problem,
            n=report.n,
            horizon=report.horizon,
            meta=report.meta,
            statuses=[dict(s) for s in report.statuses],
            critical_values=[cv.to_dict() for cv in report.critical_values],
            values_at_infinity=[vi.to_dict() for vi in report.values_at_infinity],
            best_value=report.best_value,
            best_source=report.best_source,
            spurious_minima=[cv.value for cv in report.spurious_minima],
            possibly_spurious_minima=[cv.value for cv in report.possibly_spurious],
            suspected_spurious_minima_at_infinity=[
                vi.value for vi in report.spurious_at_infinity
            ],
            assumptions={
                key: dict(verdict=a.verdict.value, detail=a.detail)
                for key, a in report.assumptions.items()
            },
            critical_value_accumulation=report.accumulation,
            conclusion=report.conclusion,
        )
    )


def report_json(report, **kwargs) -> str:
    """`report_dict` as a JSON string (indented by 2 unless `indent` is given)."""
    kwargs.setdefault("indent", 2)
    return dumps(report_dict(report), **kwargs)


def write_report(report, directory, *, plots: bool = True, result=None,
                 problem=None) -> list[Path]:
    """Writes `report.md`, `report.json` and (with `plots` and a scan `result`) the PNG
    figures of `jaxflow._plots.write_plots` into `directory`; returns the paths written.

    Every file is written atomically and never through a symbolic link inside
    `directory` (`jaxflow._files.write_bytes`; a link raises `UnsafePathError`).
    """
    directory = Path(directory)
    written = [
        write_bytes(directory, "report.md", report_markdown(report).encode("utf-8")),
        write_bytes(directory, "report.json", (report_json(report) + "\n").encode("utf-8")),
    ]
    if plots and result is not None:
        written += write_plots(result, directory, problem=problem)
    return written
