"""`report --probe`: the probe's curves per layer type as figures and tables, read from committed probe rows."""

import re

import pytest

from subprof.catalog import gpu_by_name, load_model, profiles_dir
from subprof.methods import parse_methods
from subprof.report.build import build_report
from subprof.report.html import render_html
from subprof.report.probe import probe_summary_line
from subprof.report.tables import ReportRequest
from subprof.results import read_rows

TINY = profiles_dir() / "measured" / "probe_cpu_tiny_2026-12-01.jsonl"


def request(**kw) -> ReportRequest:
    return ReportRequest(**(dict(models=[load_model("60m")], gpus=[gpu_by_name("4090")],
                                 methods=parse_methods("galore,ori")) | kw))


@pytest.fixture(scope="module")
def report():
    return build_report(request(probe_rows=read_rows(TINY)))


def test_probe_tables_hold_every_layer_type_and_all_weights(report):
    energy = report.tables["probe_energy"]
    assert set(energy["type"]) == {"q", "k", "v", "o", "gate", "up", "down", "all"}
    assert sorted(energy["rank"].unique()) == [8, 16, 32, 64]
    assert energy.groupby("type")["energy"].apply(lambda s: s.is_monotonic_increasing).all()
    stale = report.tables["probe_staleness"]
    assert sorted(stale["gap"].unique()) == [1, 10, 50, 100]
    assert ((stale["staleness"] > 0) & (stale["staleness"] <= 1.0 + 1e-9)).all()


def test_the_page_draws_the_probe_curves_and_names_the_probe(report):
    page = render_html(report)
    section = page[page.index('id="probe"'):page.index('id="assumptions"')]
    assert section.count("Plotly.newPlot(") == 2  # energy vs rank, staleness vs gap
    assert section.count('<table class="dataframe data">') == 4
    assert "tiny (adamw, 200 steps, cpu, 2026-12-01)" in section
    assert any(line.startswith("Probe tiny") for line in report.summary)


def test_without_a_probe_the_section_is_left_out_and_named_as_absent():
    page = render_html(build_report(request()))
    assert 'id="probe"' not in page and 'href="#probe"' not in page
    absent = page[page.index("Not in this report:"):]
    assert "the gradient subspace (add <code>--probe FILE</code>" in absent[:absent.index("</p>")]


def test_probe_axes_are_labelled_at_the_probed_ranks_and_gaps(report):
    page = render_html(report)
    assert re.search(r'"tickvals":\[8(\.0)?,16(\.0)?,32(\.0)?,64(\.0)?\]', page)
    assert re.search(r'"tickvals":\[1(\.0)?,10(\.0)?,50(\.0)?,100(\.0)?\]', page)


def test_probe_summary_says_one_step_not_one_steps(report):
    tables = dict(report.tables)
    stale = tables["probe_stale_summary"].copy()
    stale["gap_below_80"] = 1.0
    line = probe_summary_line(tables | {"probe_stale_summary": stale})
    assert line.endswith("for 1 step.") and "1 steps" not in line
