"""The HTML report: `jaxflow report OUT` writes one self-contained `report/index.html`.

Parsed with the standard library's `html.parser`: every section, every table cell (the
same column specs as Markdown), every figure inlined and equal to the PNG written
beside it, nothing loaded from anywhere, and strings from a store escaped.
"""

import base64
import dataclasses
import html.parser
import re

import numpy as np
import pytest

import jaxflow as jf
from jaxflow._render import (
    ASSUMPTION_LABELS,
    ASSUMPTION_TABLE,
    CRITICAL_VALUE_TABLE,
    STATUS_TABLE,
    VALUE_AT_INFINITY_TABLE,
)
from jaxflow.cli import main

SECTIONS = ["statuses", "critical-values", "values-at-infinity", "findings", "assumptions",
            "conclusion", "run"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(html.parser.HTMLParser):
    """Sections, tables (as lists of rows of cell texts), images and every tag seen."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.sections, self.images, self.tables = [], [], [], []
        self.urls = []
        self._cell = None
        self._text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for key in ("href", "src"):
            if key in a:
                self.urls.append(a[key])
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def text(self):
        return "".join(self._text)


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def _synthetic_report(name="matrix-completion"):
    """6 trajectories converged at f = 0, 4 escaping towards 1 (a hand-made table)."""
    st = np.asarray([jf.Status.CONVERGED] * 6 + [jf.Status.ESCAPING] * 4, np.int8)
    f = np.asarray([0.0] * 6 + [1.01] * 4)
    table = dict(
        status=st, f=f, stationarity=np.full(10, 1e-9), t=np.full(10, 100.0),
        limit_value=np.where(st == jf.Status.ESCAPING, 1.0, f),
        growth_exponent=np.full(10, 0.25), log_growth=np.zeros(10, bool),
        malgrange=np.full(10, 0.01), norm=np.full(10, 28.0), x_0=np.ones(10),
    )
    r = jf.Report.from_table(None, table, meta={"t1": 100.0, "gtol": 1e-8})
    return dataclasses.replace(r, problem={"name": name})


def _check_tables(page: _Page, report):
    """The page's tables are the Markdown report's: same headers, same cells."""
    expected = [
        (STATUS_TABLE, report.statuses),
        (CRITICAL_VALUE_TABLE, report.critical_values),
        (VALUE_AT_INFINITY_TABLE, report.values_at_infinity),
    ]
    expected = [(spec, rows) for spec, rows in expected if rows]
    assumption_rows = [
        dict(assumption=a, verdict=report.assumptions[k].verdict.value,
             detail=report.assumptions[k].detail)
        for k, a in ASSUMPTION_LABELS.items()
    ]
    expected.append((ASSUMPTION_TABLE, assumption_rows))
    assert len(page.tables) == len(expected)
    for table, (spec, rows) in zip(page.tables, expected, strict=True):
        assert table[0] == [c.header for c in spec.columns], spec.title
        assert table[1:] == [[c.text(r) for c in spec.columns] for r in rows], spec.title


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    # A 2-D problem, so that all three figures are drawn (the phase portrait included).
    out = tmp_path_factory.mktemp("html") / "scan"
    res = jf.scan("sigmoid-two-points", 128, out=out, t1=300.0, chunk_size=64, seed=0,
                  dtype="float64", save_trajectories=32)
    return out, res


def test_report_command_writes_a_self_contained_index_html(scanned):
    out, res = scanned
    assert main(["report", str(out)]) == 0
    index = out / "report" / "index.html"
    page = _parse(index.read_text(encoding="utf-8"))

    assert page.sections == [*SECTIONS[:6], "figures", "run"]
    # Self-contained: no script, stylesheet link or frame; every URL a PNG data URI.
    assert {"script", "link", "iframe", "object"}.isdisjoint(page.tags)
    assert all(u.startswith("data:image/png;base64,") for u in page.urls), page.urls
    figures = {"final_f_by_status.png", "norm_vs_t_escaping.png", "phase_portrait.png"}
    assert {img["alt"] for img in page.images} == figures
    for img in page.images:
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert png.startswith(PNG_MAGIC)
        assert png == (out / "report" / img["alt"]).read_bytes()  # the file written beside it

    report = jf.load(out).report
    _check_tables(page, report)
    assert report.conclusion in page.text
    assert report.evidence in page.text
    # The statuses shown are the scan's counts.
    counts = {row[0]: int(row[1]) for row in page.tables[0][1:]}
    assert counts == res.counts()


def test_to_html_sections_tables_and_notebook_repr():
    r = _synthetic_report()
    page = _parse(r.to_html())
    assert page.sections == SECTIONS  # no scan result: no figures section
    assert page.images == []
    _check_tables(page, r)
    assert "contradicted" in page.text and "matrix-completion" in page.text

    # A notebook shows a <div> with the same sections, its styles scoped to the div so the
    # notebook's own page is not restyled.
    cell = r._repr_html_()
    assert cell.startswith('<div class="jaxflow-report">') and cell.endswith("</div>")
    cell_page = _parse(cell)
    assert cell_page.sections == SECTIONS and cell_page.tables == page.tables
    assert {"html", "head", "body"}.isdisjoint(cell_page.tags)
    css = re.search(r"<style>(.*?)</style>", cell, re.S).group(1)
    selectors = [sel.strip() for rule in re.findall(r"([^{}]+)\{", css) for sel in rule.split(",")]
    assert selectors and all(sel.startswith(".jaxflow-report") for sel in selectors), selectors


@pytest.mark.parametrize(
    "name",
    ['<script>alert("x")</script>', "a<img src=x onerror=alert(1)>&amp;", "\x1b]0;title\x07ok"],
)
def test_names_and_strings_are_escaped(name):
    r = _synthetic_report(name)
    r = dataclasses.replace(r, meta={**r.meta, "solver": "</style><script>s()</script>"})
    text = r.to_html()
    page = _parse(text)
    assert "script" not in page.tags and page.images == [] and page.urls == []
    assert page.tags.count("style") == 1
    assert "\x1b" not in text and "\x07" not in text
    visible = name.replace("\x1b", "U+001B").replace("\x07", "U+0007")
    assert f"jaxflow report: {visible}" in page.text  # shown literally, as text
    assert "</style><script>s()</script>" in page.text


def test_index_html_is_never_written_through_a_link(scanned, tmp_path):
    out, _ = scanned
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "report").mkdir(exist_ok=True)
    link = out / "report" / "index.html"
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(victim)
    try:
        assert main(["report", str(out)]) == 5  # UnsafePathError, before anything is written
        assert victim.read_text() == "keep me"
    finally:
        link.unlink()
