"""The Theorem 1.2 report on the paper's examples, its renderings and its table path."""

import json
import re

import detector_runs as runs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

import jaxflow as jf


def _only_calibrated(text: str):
    """'proof' appears only as 'not a proof'; the evidence phrase is present."""
    assert "evidence from n = " in text.lower()
    assert len(re.findall(r"proof", text, re.I)) == len(re.findall(r"not a proof", text, re.I))
    for word in ("proves", "proven", "certif", "guarantee"):
        assert word not in text.lower()


def test_example_1_1_report():
    p, _, res, _ = runs.example_1_1()
    r = jf.Report.from_flow(p, res)
    n_esc = int(np.sum(np.asarray(res.f) > 0.5))
    assert r.n == 256 and r.horizon == 2e3
    assert r.assumptions["bounded_trajectories"].verdict == "contradicted"
    assert f"{n_esc} of 256" in r.assumptions["bounded_trajectories"].detail
    assert [round(v.value, 2) for v in r.spurious_at_infinity] == [1.0]
    assert r.spurious_minima == []
    assert r.best_value < 1e-6
    zero = r.critical_values[0]
    assert abs(zero.value) < 1e-3 and zero.type == "minimum"
    assert r.assumptions["lower_bounded"].verdict == "supported"
    assert r.assumptions["finitely_many_critical_values"].verdict == "supported"
    assert r.assumptions["locally_lipschitz"].verdict == "not assessed"
    statuses = {s["status"]: s for s in r.statuses}
    assert statuses["ESCAPING"]["count"] == n_esc
    lo, hi = statuses["ESCAPING"]["interval"]
    assert lo < n_esc / 256 < hi
    assert "evidence from N = 256 samples to horizon T = 2000" in r.to_markdown()
    assert "Theorem 1.2 does not apply" in r.conclusion
    _only_calibrated(r.to_markdown())

    d = json.loads(r.to_json())
    assert d["suspected_spurious_minima_at_infinity"] == [pytest.approx(1.0, abs=6e-3)]
    assert d["assumptions"]["bounded_trajectories"]["verdict"] == "contradicted"
    assert d["statuses"][0]["status"] == "CONVERGED"

    console = Console(record=True, width=140)
    console.print(r)  # __rich__
    text = console.export_text()
    assert "Theorem 1.2 assumptions" in text and "Values at infinity" in text
    _only_calibrated(text)


def test_figure_3_flags_the_spurious_value_at_infinity():
    p, _, res = runs.figure_3()
    r = jf.Report.from_flow(p, res)
    assert [round(v.value, 2) for v in r.values_at_infinity] == [0.5, 4.5]
    # 9/2 (w1 -> +inf) is a suspected spurious minimum at infinity; 1/2 is the infimum.
    assert [round(v.value, 2) for v in r.spurious_at_infinity] == [4.5]
    assert r.best_value == pytest.approx(0.5, abs=1e-3)
    assert "4.5" in r.conclusion


def test_example_4_3_no_spurious_value_at_infinity():
    p, _, res = runs.example_4_3()
    r = jf.Report.from_flow(p, res)
    assert r.spurious_at_infinity == [] and r.spurious_minima == []
    assert [c.type for c in r.critical_values] == ["saddle"]
    assert r.assumptions["bounded_trajectories"].verdict == "contradicted"
    assert "no spurious minimum at infinity is suspected" in r.conclusion


def test_remark_3_2_critical_values_accumulate():
    p, _, res = runs.remark_3_2()
    r = jf.Report.from_flow(p, res)
    v = r.assumptions["finitely_many_critical_values"]
    assert v.verdict == "inconclusive" and "accumulate" in v.detail
    assert r.accumulation == pytest.approx(-3.0, abs=0.01)  # -3 (1 - 2^-k) -> -3
    assert r.spurious_minima == []
    assert r.assumptions["bounded_trajectories"].verdict in ("supported", "inconclusive")
    assert "cannot be invoked" in r.conclusion or "undecided" in r.conclusion


def test_section_4_consistent_with_theorem():
    p, _, res = runs.section_4("deep-sigmoid-1d")
    r = jf.Report.from_flow(p, res)
    assert r.assumptions["bounded_trajectories"].verdict == "supported"
    assert r.values_at_infinity == [] and r.spurious_minima == []
    assert all(c.type == "minimum" for c in r.critical_values)
    assert r.conclusion.count("Consistent with Theorem 1.2") == 1
    _only_calibrated(r.conclusion)


def test_from_table_matches_from_flow_through_parquet(tmp_path):
    p, _, res = runs.remark_3_3()
    c = jf.classify(res)
    table = jf.trajectory_table(res, c)
    flat = {k: v for k, v in table.items() if v.ndim == 1}
    pq.write_table(pa.table(flat), tmp_path / "chunk.parquet")
    back = pq.read_table(tmp_path / "chunk.parquet")
    cols = {name: back.column(name).to_numpy() for name in back.column_names}
    r1 = jf.Report.from_flow(p, res, classification=c)
    r2 = jf.Report.from_table(p, cols, meta=dict(res.meta))
    assert r1.to_dict() == r2.to_dict()
    # Remark 3.3: x0 = +-2 escape towards the value 1 > 0 = the global minimum.
    assert [round(v.value, 3) for v in r2.spurious_at_infinity] == [1.0]


def test_report_bad_input():
    with pytest.raises(TypeError, match="trajectory_table"):
        jf.Report.from_table(None, {"f": np.zeros(2)})
    with pytest.raises(ValueError, match="no rows"):
        jf.Report.from_table(None, {"status": np.zeros(0, np.int8), "f": np.zeros(0)})
    # Without a problem the critical values are untyped but the report still builds.
    _, _, res = runs.remark_3_3()
    r = jf.Report.from_table(None, jf.trajectory_table(res, jf.classify(res)), meta=dict(res.meta))
    assert all(cv.type == "unknown" for cv in r.critical_values)
    assert r.to_markdown().startswith("## problem: evidence from N = 7 samples")


# --------------------------------------------------------------------------- rendering
def _synthetic_report():
    """A report from a hand-made table: 6 converged at f = 0, 4 escaping towards 1."""
    st = np.asarray([jf.Status.CONVERGED] * 6 + [jf.Status.ESCAPING] * 4, np.int8)
    f = np.asarray([0.0] * 6 + [1.01] * 4)
    table = dict(
        status=st,
        f=f,
        stationarity=np.full(10, 1e-9),
        t=np.full(10, 100.0),
        limit_value=np.where(st == jf.Status.ESCAPING, 1.0, f),
        growth_exponent=np.full(10, 0.25),
        log_growth=np.zeros(10, bool),
        malgrange=np.full(10, 0.01),
        norm=np.full(10, 28.0),
        x_0=np.ones(10),
    )
    return jf.Report.from_table(None, table, meta={"t1": 100.0, "gtol": 1e-8})


def test_markdown_rich_and_json_share_the_column_specs():
    from jaxflow._render import (
        ASSUMPTION_TABLE,
        CRITICAL_VALUE_TABLE,
        STATUS_TABLE,
        VALUE_AT_INFINITY_TABLE,
    )

    r = _synthetic_report()
    md = r.to_markdown()
    console = Console(record=True, width=400)
    console.print(r)
    text = console.export_text()
    d = r.to_dict()
    for spec, records in (
        (STATUS_TABLE, d["statuses"]),
        (CRITICAL_VALUE_TABLE, d["critical_values"]),
        (VALUE_AT_INFINITY_TABLE, d["values_at_infinity"]),
        (ASSUMPTION_TABLE, None),
    ):
        assert "| " + " | ".join(c.header for c in spec.columns) + " |" in md
        rich_header = [line for line in text.splitlines() if (spec.columns[0].short
                       or spec.columns[0].header) in line and "┃" in line]
        assert any(
            all((c.short or c.header) in line for c in spec.columns) for line in rich_header
        ), spec.title
        for rec in records or ():
            assert all(c.key in rec for c in spec.columns), (spec.title, rec)
    # The column the rich values-at-infinity table used to lack.
    assert "median ‖x‖" in text and "28" in text


def test_verdicts_and_types_are_enumerations_with_todays_strings():
    r = _synthetic_report()
    assert {v.value for v in jf.Verdict} == {
        "supported", "contradicted", "inconclusive", "not assessed"
    }
    assert all(isinstance(a.verdict, jf.Verdict) for a in r.assumptions.values())
    assert r.assumptions["bounded_trajectories"].verdict is jf.Verdict.CONTRADICTED
    assert r.critical_values[0].type is jf.CriticalPointType.UNKNOWN
    d = json.loads(r.to_json())
    assert d["assumptions"]["bounded_trajectories"]["verdict"] == "contradicted"
    assert d["assumptions"]["chain_rule"]["verdict"] == "not assessed"
    assert d["critical_values"][0]["type"] == "unknown"
    assert "**contradicted**" in r.to_markdown()


def test_write_produces_the_report_files(tmp_path):
    r = _synthetic_report()
    written = r.write(tmp_path / "out")  # no scan result: no figures
    assert [p.name for p in written] == ["report.md", "report.json", "index.html"]
    assert written[0].read_text(encoding="utf-8") == r.to_markdown()
    assert written[1].read_text(encoding="utf-8") == r.to_json() + "\n"
    assert json.loads(written[1].read_text(encoding="utf-8")) == r.to_dict()
