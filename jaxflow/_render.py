"""Presentation of a `jaxflow.Report`: Markdown, rich, JSON, and the files of `jaxflow report`.

Each table (statuses, critical values, values at infinity, Theorem 1.2 assumptions) is
one `TableSpec`: its columns say which field of a row they show and how. Markdown and
rich tables are both drawn from the spec, so they have the same columns; the JSON record
of each row carries every column's field (and more). Terminal tables are laid out for the
width they are drawn at (`rich_table`): wrapped at spaces, less important columns stacked
or left out when narrow, numbers never cut. Nothing here computes evidence:
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
from ._html import definition_list as html_definition_list
from ._html import document as html_document
from ._html import element as html_element
from ._html import figure as html_figure
from ._html import fragment as html_fragment
from ._html import table as html_table
from ._html import text as html_text
from ._json import dumps, jsonable
from ._plots import plot_images, write_plots
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
    "report_html",
    "FIGURE_CAPTIONS",
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
    - `drop_rank`: in a terminal too narrow for the whole table, the columns with a
      drop rank are taken out of the grid, lowest rank first, until the rest fits
      without cutting a number: stacked into the last column, or named under the table
      (the Markdown and JSON reports keep every column).
    """

    key: str
    header: str
    format: Callable[[Any], str] = str
    align: str = "right"
    short: str | None = None
    cell: Callable[[Any], str] | None = None
    style: Callable[[Any], str] | None = None
    drop_rank: int | None = None

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
        Column("interval", "95 % interval", format_interval, short="95% interval",
               drop_rank=3),
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
            drop_rank=2,
        ),
        Column("point", "point", format_point, align="left", drop_rank=1),
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
        Column("log_growth", "log growth", format_percent, drop_rank=1),
        Column("malgrange", "‖x‖·‖v‖", lambda v: format_value(v, 3), drop_rank=2),
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
    Column("median_t", "median t", lambda v: f"{v:.4g}", drop_rank=1),
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


def _terminal_cell(text: str) -> str:
    # "8.40 %" as "8.40%": a percentage is one word, so a line break never splits it.
    return text.replace(" %", "%")


def _longest_word(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(w) for w in text.split()), default=0)


def _longest_line(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(line) for line in text.splitlines()), default=0)


def _share_out(minimum: list[int], natural: list[int], room: int) -> list[int]:
    """Column widths from `minimum` up to `natural`, the space `room` shared out."""
    widths = list(minimum)
    for _ in range(max(0, room - sum(minimum))):
        # The next cell of space to the column furthest (relatively) from its natural width.
        growing = [k for k in range(len(widths)) if widths[k] < natural[k]]
        if not growing:
            break
        widths[min(growing, key=lambda k: widths[k] / natural[k])] += 1
    return widths


class _TerminalTable:
    """A table laid out for the width it is drawn at.

    A column is never narrower than its longest word (a number is one word), so rich
    wraps cells at spaces and never cuts or ellipsises a number. While the table does
    not fit, the columns with a drop rank are taken out, lowest first: stacked as
    `header: value` lines into the last column when that is a text column, else named
    under the table. The others share the space left over their minimum widths.
    """

    def __init__(self, columns: Sequence[Column], rows: Sequence, title=None):
        self.columns = tuple(columns)
        self.title = title
        self.headers = [_terminal_cell(c.short or c.header) for c in self.columns]
        self.cells = [[_terminal_cell(c.text(row)) for c in self.columns] for row in rows]
        self.styles = [[c.style(row) if c.style else None for c in self.columns]
                       for row in rows]

    def _arrange(self, shown: list[int]) -> tuple[list[str], list[list[str]], bool]:
        taken_out = [i for i in range(len(self.columns)) if i not in shown]
        stacked = bool(taken_out) and self.columns[shown[-1]].align == "left"
        cells = []
        for row in self.cells:
            cells.append([row[i] for i in shown])
            if stacked:
                cells[-1][-1] = "\n".join(
                    [cells[-1][-1], *(f"{self.headers[i]}: {row[i]}" for i in taken_out)]
                )
        return [self.headers[i] for i in shown], cells, stacked

    def _layout(self, width: int):
        shown = list(range(len(self.columns)))
        droppable = sorted((c.drop_rank, i) for i, c in enumerate(self.columns)
                           if c.drop_rank is not None)
        while True:
            headers, cells, stacked = self._arrange(shown)
            texts = [[h, *(row[k] for row in cells)] for k, h in enumerate(headers)]
            natural = [max(map(_longest_line, col)) for col in texts]
            minimum = [max(map(_longest_word, col)) for col in texts]
            room = width - (3 * len(shown) + 1)  # a border and two spaces of padding a column
            if sum(natural) <= room:
                return shown, headers, cells, stacked, natural
            if sum(minimum) <= room or not droppable:
                return shown, headers, cells, stacked, _share_out(minimum, natural, room)
            shown.remove(droppable.pop(0)[1])

    def table(self, width: int):
        """The `rich.table.Table` for a width of `width` cells."""
        from rich.table import Table
        from rich.text import Text

        shown, headers, cells, stacked, widths = self._layout(width)
        left_out = [self.headers[i] for i in range(len(self.columns)) if i not in shown]
        caption = None
        if left_out and not stacked:
            caption = Text(f"not shown at {width} columns: {', '.join(left_out)} (in "
                           "report.md and report.json; wider: --width)", style="dim")
        table = Table(title=self.title, caption=caption)
        for i, header, w in zip(shown, headers, widths, strict=True):
            table.add_column(header, justify=self.columns[i].align, width=w, overflow="fold")
        for row, styles in zip(cells, self.styles, strict=True):
            table.add_row(*(Text(text, style=styles[i] or "")
                            for i, text in zip(shown, row, strict=True)))
        return table

    def __rich_console__(self, console, options):
        yield self.table(options.max_width)

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        return Measurement.get(console, options, self.table(options.max_width))


def rich_table(columns: Sequence[Column], rows: Sequence, title: str | None = None):
    """A rich renderable table (short headers; emphasised cells styled) that fits the
    width it is printed at: cells wrap at spaces, numbers are never cut, and at narrow
    widths the columns with a `drop_rank` are left out (and named under the table)."""
    return _TerminalTable(columns, rows, title)


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
    parts.append(Text(_terminal_cell("\n".join(_findings(report)))))
    parts.append(
        rich_table(ASSUMPTION_TABLE.columns, _assumption_rows(report), ASSUMPTION_TABLE.title)
    )
    parts.append(Panel(_terminal_cell(report.conclusion), title="Conclusion"))
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


# The figures of a scan (`jaxflow._plots.plot_images`), in the order the page shows them.
FIGURE_CAPTIONS = {
    "final_f_by_status.png": "Final value f(x(t₁)) by status (log count axis).",
    "norm_vs_t_escaping.png": "‖x(t)‖ against t (log–log) for the escaping trajectories of "
    "the saved subsample, with the fitted t^α.",
    "phase_portrait.png": "Level sets of f, the direction field −v(x) and the saved "
    "trajectories, coloured by status.",
}


def _run_items(report) -> list[tuple[str, object]]:
    items = []
    for key, value in (report.problem or {}).items():
        if key not in ("name",) and value not in (None, "", {}, []):
            items.append((f"problem.{key}", value))
    items += [(key, value) for key, value in (report.meta or {}).items()
              if value not in (None, "", {}, [])]
    return items


def report_html(report, images: Mapping[str, bytes] | None = None, *,
                fragment: bool = False) -> str:
    """The report as one self-contained HTML page (`Report.to_html`), or with
    `fragment=True` as one `<div>` whose styles apply only inside it (for notebooks).

    The same tables as `report_markdown` (drawn from the same column specs) with the
    findings, the Assumption 3.1 verdicts, the conclusion, the run's settings and the
    figures in `images` (file name → PNG bytes, `jaxflow._plots.plot_images`) inlined
    as data URIs. Styles are inline too: the page loads nothing. Every string is escaped.
    """
    name = (report.problem.get("name") if report.problem else None) or "problem"
    sections: dict[str, tuple[str, str]] = {}
    sections["statuses"] = (
        "Statuses", html_table(STATUS_TABLE.columns, report.statuses)
    )
    for sid, heading, spec, rows in (
        ("critical-values", "Critical values", CRITICAL_VALUE_TABLE, report.critical_values),
        ("values-at-infinity", "Values at infinity", VALUE_AT_INFINITY_TABLE,
         report.values_at_infinity),
    ):
        sections[sid] = (
            heading,
            html_table(spec.columns, rows, caption=spec.title) if rows
            else html_element("p", html_text(f"None: {spec.empty}."), class_="empty"),
        )
    findings = "".join(html_element("li", html_text(line.removeprefix("- ")))
                       for line in _findings(report))
    sections["findings"] = ("Findings", html_element("ul", findings, class_="findings"))
    sections["assumptions"] = (
        "Theorem 1.2: Assumption 3.1",
        html_table(ASSUMPTION_TABLE.columns, _assumption_rows(report)),
    )
    sections["conclusion"] = (
        "Conclusion", html_element("p", html_text(report.conclusion), class_="conclusion")
    )
    if images:
        ordered = [k for k in FIGURE_CAPTIONS if k in images]
        ordered += [k for k in images if k not in FIGURE_CAPTIONS]
        sections["figures"] = (
            "Figures",
            html_element("div", "".join(html_figure(k, images[k], FIGURE_CAPTIONS.get(k, k))
                                         for k in ordered), class_="figures"),
        )
    sections["run"] = ("Run", html_definition_list(_run_items(report)))
    build = html_fragment if fragment else html_document
    return build(
        f"jaxflow report: {name}", report.evidence,
        sections, footer="Evidence from sampling, not a proof (Josz & Li 2023, Theorem 1.2).",
    )


def write_report(report, directory, *, plots: bool = True, result=None,
                 problem=None) -> list[Path]:
    """Writes `report.md`, `report.json`, `index.html` and (with `plots` and a scan
    `result`) the PNG figures of `jaxflow._plots.plot_images` into `directory`; returns
    the paths written. `index.html` is one self-contained page with the figures inlined.

    Every file is written atomically and never through a symbolic link inside
    `directory` (`jaxflow._files.write_bytes`; a link raises `UnsafePathError`).
    """
    directory = Path(directory)
    images = plot_images(result, problem=problem) if plots and result is not None else {}
    written = [
        write_bytes(directory, "report.md", report_markdown(report).encode("utf-8")),
        write_bytes(directory, "report.json", (report_json(report) + "\n").encode("utf-8")),
        write_bytes(directory, "index.html", report_html(report, images).encode("utf-8")),
    ]
    if images:
        written += write_plots(result, directory, images=images)
    return written
