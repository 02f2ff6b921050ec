"""`subprof report`: the tables, the decision and the summary in words, the offline HTML page, --json/--csv and bad
input. The page in a real browser (overlaps, clipping, links, print) is `test_report_browser.py`.

The bench/proj/burst rows below are small synthetic fixtures in the formats those commands write; they test the
report's arithmetic and layout, not any measurement."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from subprof.catalog import gpu_by_name, load_model
from subprof.cli import app
from subprof.errors import SubprofError
from subprof.methods import REGISTRY, parse_methods
from subprof.report.build import build_report
from subprof.report.decision import absent_sections, decision_lines
from subprof.report.figures import fig_cost, log_axis
from subprof.report.measured import bench_table, burst_table, proj_table
from subprof.report.tables import FIT_CLASSES, ReportRequest
from subprof.report.html import render_html
from subprof.report.words import duration, plural

SECTIONS = ("decision", "summary", "fit", "breakdown", "cost", "measured", "projection", "burst", "assumptions")

BENCH = [
    {"model": "60m", "method": "adamw", "rank": None, "batch": 32, "seq": 256, "backend": "cuda", "status": "ok",
     "estimated_peak_allocated_bytes": 5 * 2**30, "peak_allocated_bytes": 4 * 2**30},
    {"model": "60m", "method": "galore", "rank": 128, "batch": 32, "seq": 256, "backend": "trace", "status": "ok",
     "peak_allocated_bytes": 4 * 2**30},
    {"model": "1b", "method": "adamw", "batch": 64, "seq": 256, "backend": "cuda", "status": "oom",
     "estimated_peak_allocated_bytes": 90 * 2**30},
    {"model": "60m", "method": "adamw", "batch": 8, "seq": 256, "backend": "trace", "status": "ok",
     "estimated_peak_allocated_bytes": 3 * 2**30, "estimated_cuda_runtime_bytes": 2**29,
     "peak_allocated_bytes": 2 * 2**30 + 2**29},
    # measured to the end on the trace backend, then judged over its --budget (measure.runner.Budget.apply)
    {"model": "350m", "method": "adamw", "batch": 64, "seq": 256, "backend": "trace", "status": "oom",
     "oom_phase": "forward_backward", "estimated_peak_allocated_bytes": 11 * 2**30,
     "peak_allocated_bytes": 10 * 2**30, "budget_device_used_bytes": 12 * 2**30},
]
PROJ = [
    {"model": "1b", "method": "svd", "shape": [2048, 5461], "rank": 128, "median_ms": 800.0, "spread_ms": 9.0,
     "device": "cpu", "dtype": "fp32"},
    {"model": "1b", "method": "ori", "shape": [2048, 5461], "rank": 128, "median_ms": 4.0, "spread_ms": 0.1,
     "device": "cpu", "dtype": "fp32"},
    {"model": "1b", "method": "osd", "shape": [2048, 5461], "rank": 256, "median_ms": 8.0, "spread_ms": 0.1,
     "device": "cpu", "dtype": "fp32"},
]
BURST = [  # the layout subprof.burst writes: per-step train_loss, val_curve [[step, loss], ...]
    {"model": "tiny", "method": "galore", "rank": 16, "update_gap": 50, "status": "ok", "eval_every": 2,
     "train_loss": [10.0, 9.0, 8.5, 8.0], "val_curve": [[2, 9.2], [4, 8.3]], "val_loss": 8.3},
    {"model": "tiny", "method": "ori", "rank": 16, "update_gap": 1, "status": "ok",
     "train_loss": [10.0, 8.8, 8.1, 7.7], "val_curve": [[2, 9.0], [4, 7.9]], "val_loss": 7.9},
    {"model": "tiny", "method": "osd", "rank": 16, "status": "diverged", "train_loss": [10.0, float("nan")],
     "val_curve": []},
]


def request(**kw) -> ReportRequest:
    base = dict(models=[load_model("1b"), load_model("7b")], gpus=[gpu_by_name("4090"), gpu_by_name("h100-sxm")],
                methods=parse_methods("all"), tokens=10**10, bench_rows=BENCH, proj_rows=PROJ, burst_rows=BURST)
    return ReportRequest(**(base | kw))


@pytest.fixture(scope="module")
def report():
    return build_report(request())


@pytest.fixture(scope="module")
def page(report) -> str:
    return render_html(report)


# ------------------------------------------------------------------------------------------------------ tables


def test_fit_matrix_has_one_row_per_model_and_gpu_with_fits_within_usable(report):
    fit = report.tables["fit_matrix"]
    assert len(fit) == 4
    fitting = fit.dropna(subset=["device_used_bytes"])
    assert (fitting["device_used_bytes"] <= fitting["usable_bytes"]).all()
    row = fit[(fit["model"] == "7b") & (fit["gpu"] == "rtx-4090")].iloc[0]
    assert row["fit"] == FIT_CLASSES[1] and row["method"] != "adamw"


def test_breakdown_parts_add_up_to_device_used(report):
    bd = report.tables["memory_breakdown"]
    totals = bd.groupby(["model", "method"])["bytes"].sum()
    used = bd.groupby(["model", "method"])["device_used_bytes"].first()
    assert (totals == used).all()
    assert set(bd["method"]) == set(parse_methods("all")[i][0].name for i in range(len(parse_methods("all"))))


def test_cost_is_tokens_over_throughput_times_price(report):
    cost = report.tables["cost"]
    for r in cost.dropna(subset=["cost_usd"]).itertuples():
        assert math.isclose(r.hours, 1e10 / r.tokens_per_s / 3600, rel_tol=1e-3)
        assert math.isclose(r.cost_usd, r.hours * r.usd_per_hour, rel_tol=1e-9)


def test_price_override_changes_cost_and_is_named_as_source():
    rep = build_report(request(models=[load_model("1b")], prices={"rtx-4090": 0.01}, bench_rows=[], proj_rows=[],
                               burst_rows=[]))
    row = rep.tables["cost"].set_index("gpu").loc["rtx-4090"]
    assert row["usd_per_hour"] == 0.01 and row["price_source"] == "--price"
    assert any("cheapest per token: RTX 4090" in line for line in rep.summary)
    assert any("--price: rtx-4090 $0.01/h" in line for line in rep.assumptions)


def test_summary_states_low_rank_only_and_its_rank_bound_from_the_table(report):
    fit = report.tables["fit_matrix"].set_index(["model", "gpu"])
    bound = int(fit.loc[("7b", "rtx-4090"), "max_lowrank_rank"])
    assert any(line.startswith("7b fits a 24 GB card (RTX 4090) only with a low-rank method at rank ≤ "
                               f"{bound};") for line in report.summary)
    assert any("cheapest per token" in line and line.startswith("1b") for line in report.summary)


def test_bench_error_is_relative_to_measured_and_recomputes_missing_estimates():
    df = bench_table(BENCH)
    assert df.loc[0, "error_pct"] == pytest.approx(25.0)
    assert df.loc[1, "estimate_source"] == "recomputed" and df.loc[1, "estimated_peak_allocated_bytes"] > 0
    assert df.loc[2, "status"] == "oom" and (df.loc[2, "error_pct"] is None or math.isnan(df.loc[2, "error_pct"]))


def test_bench_trace_rows_are_compared_with_the_model_side_estimate_as_bench_does():
    df = bench_table(BENCH)
    assert df.loc[3, "peak_allocated_bytes"] == 2 * 2**30 + 2**29  # the traced peak as measured
    assert df.loc[3, "estimated_peak_allocated_bytes"] == 2 * 2**30 + 2**29  # 3 GiB less the 0.5 GiB CUDA runtime
    assert df.loc[3, "error_pct"] == pytest.approx(0.0)
    assert df.loc[0, "error_pct"] == pytest.approx(25.0)  # a GPU row against the full estimate


def test_bench_rows_over_their_budget_are_measurements_not_failures(report):
    df = bench_table(BENCH)
    assert list(df["verdict"]) == ["ok", "ok", "oom", "ok", "over budget"]
    assert df.loc[4, "error_pct"] == pytest.approx(10.0)  # 11 GiB estimated (less no runtime: none stated) / 10
    assert "Over their memory budget: 1 bench row, measured to the end (counted in the error above)." in report.summary
    assert "Did not finish: 1 bench row (oom 1)." in report.summary


# ------------------------------------------------------------------------------------------------ decision


def test_decision_picks_the_cheapest_and_the_fastest_option_per_model(report):
    cost, decision = report.tables["cost"], report.tables["decision"]
    for model in ("1b", "7b"):
        own = cost[(cost["model"] == model) & cost["cost_usd"].notna()]
        rows = decision[decision["model"] == model].set_index("option")
        cheapest = rows.loc[rows.index.str.startswith("cheapest")].iloc[0]
        fastest = rows.loc[rows.index.str.endswith("fastest")].iloc[0]
        assert cheapest["cost_usd"] == own["cost_usd"].min() and fastest["hours"] == own["hours"].min()


def test_decision_carries_the_recommended_configuration_and_its_quality_cost(report):
    fit = report.tables["fit_matrix"].set_index(["model", "gpu"])
    for r in report.tables["decision"].to_dict(orient="records"):
        cell = fit.loc[(r["model"], r["gpu"])]
        assert r["config"] == cell["config"] and r["short_config"] == cell["short_config"]
        assert r["quality_cost"] == cell["quality_cost"]
    for r in fit.to_dict(orient="records"):  # 0 exactly for full rank; the evidence's gap for a low-rank method
        assert (r["quality_cost"] == 0) == (r["method"] == "adamw")


def test_decision_counts_several_gpus_when_the_report_has_gpu_counts(scaled):
    options = scaled.tables["scaling"].dropna(subset=["hours"])
    fastest = scaled.tables["decision"].iloc[-1]
    assert fastest["hours"] == options["hours"].min() and fastest["gpus"] > 1
    assert fastest["gpu_hours"] == pytest.approx(fastest["hours"] * fastest["gpus"])


def test_decision_lines_name_each_option_with_its_cost_and_time(report):
    lines = decision_lines(report.tables["decision"])
    assert len(lines) == 2 and lines[1].startswith("7b: cheapest")
    assert re.search(r"\$[\d,]+ in [\d.,]+ (h|days)", lines[1])


def test_short_labels_and_words():
    assert plural(1, "step") == "1 step" and plural(0.6, "hour") == "1 hour" and plural(2, "row") == "2 rows"
    assert duration(0.5) == "30 min" and duration(40.2) == "40 h" and duration(770) == "32.1 days"


def test_fit_matrix_short_label_names_method_rank_and_8bit(report):
    fit = report.tables["fit_matrix"].set_index(["model", "gpu"])
    row = fit.loc[("7b", "rtx-4090")]
    rank = f" r{int(row['rank'])}" if row["rank"] else ""
    assert row["short_config"] == f"{row['method']}{rank}" + (" · 8-bit" if row["state_bits"] == 8 else "")
    assert len(row["short_config"]) <= 25 < len(row["config"])


def test_proj_ratio_is_svd_time_over_method_time_on_the_same_shape():
    df = proj_table(PROJ).set_index("method")
    assert df.loc["ori", "ratio_to_svd"] == pytest.approx(200.0)
    assert df.loc["osd", "ratio_to_svd"] == pytest.approx(100.0)  # SVD timed at another rank: same shape used
    assert df.loc["svd", "shape"] == "2048×5461"


def test_burst_reads_subprof_burst_rows_and_drops_non_finite_losses():
    df = burst_table(BURST)
    galore = df[df["config"] == "tiny galore r16 T50"]
    assert list(galore[galore["kind"] == "train"]["step"]) == [1, 2, 3, 4]
    assert list(galore[galore["kind"] == "validation"]["loss"]) == [9.2, 8.3]
    osd = df[df["config"] == "tiny osd r16"]
    assert list(osd["loss"]) == [10.0]


def test_burst_accepts_other_curve_layouts():
    rows = [{"method": "galore", "rank": 8, "history": [{"step": 10, "train_loss": 5.0, "val_loss": 5.5}]},
            {"method": "adamw", "step": 20, "loss": 4.0}]
    df = burst_table(rows)
    assert set(zip(df["config"], df["kind"], df["step"], df["loss"])) == {
        ("galore r8", "train", 10.0, 5.0), ("galore r8", "validation", 10.0, 5.5), ("adamw", "train", 20.0, 4.0)}


def test_bad_price_is_a_subprof_error():
    with pytest.raises(SubprofError):
        request(prices={"rtx-4090": -1.0})


# -------------------------------------------------------------------------------------------------------- page


def test_page_holds_every_section_summary_and_assumptions(page, report):
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in page
    for line in report.summary:
        assert line.replace("&", "&amp;") in page or line in page.replace("&#x27;", "'")
    assert "GiB = 2^30 bytes" in page and "indicative" in page and "40%" in page and "late 2025" in page
    # a recommended method seen only in its authors' tables is said to be so under the decision (issue 22)
    evidence = report.cells[0].plan.request.evidence
    picked = {str(c).split()[0].split("+")[0] for c in report.tables["decision"]["config"]}
    own = [m for m in picked if m in REGISTRY and evidence.evidence_kind(m) == "own paper"]
    assert ("own-paper" in page) == bool(own) and all(m in page for m in own)


def test_page_holds_figure_data_and_tables(page, report):
    n = int(re.search(r'data-figures="(\d+)"', page).group(1))
    assert n == 2 + 2 + 1 + 1 + 1  # breakdown ×2, cost ×2, bench, proj, burst (the fit matrix is an HTML table)
    assert page.count("Plotly.newPlot(") == n
    # fit, breakdown, cost, gpus, bench, proj, burst summary, burst curves
    assert page.count('<table class="dataframe data">') == 8
    assert "800" in page and "tiny ori r16" in page


def test_fit_matrix_cells_hold_a_short_label_and_the_full_configuration_on_hover(page, report):
    r = report.tables["fit_matrix"].set_index(["model", "gpu"]).loc[("7b", "rtx-4090")]
    label = (f"<b>{r['short_config']}</b> · {r['device_used_gib']:.1f}/{r['usable_gib']:.1f} GiB · "
             f"{r['tokens_per_s']:,.0f} tok/s")
    assert label in page
    cell = page[page.index(label) - 700:page.index(label)]
    assert f'title="7b on RTX 4090 (low-rank only)\n{r["config"]}'.replace("—", "—") in cell.replace("&#x27;", "'")
    assert f"optimizer batch {r['sequences_per_step']:.0f}, not 512" in page


def test_decision_comes_first_with_each_model(page):
    body = page[page.index("<main>"):]
    assert body.index('id="decision"') < body.index('id="fit"') < body.index('id="cost"')
    decision = body[body.index('id="decision"'):body.index('id="fit"')]
    assert "<h3>1b " in decision and "<h3>7b " in decision and "Cheapest" in decision and "Quality cost:" in decision


def test_plotly_is_inlined_once_and_no_script_loads_from_a_url(page):
    assert page.count("window.PlotlyConfig") == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", page, re.I)
    assert not re.search(r"@import", page)


def test_print_stylesheet_is_present(page):
    assert "@media print" in page and "@page{size:A4 landscape" in page and "beforeprint" in page
    assert "Plotly.Plots.resize" in page  # figures redrawn to the paper's width


def test_sections_without_data_are_left_out_and_one_line_names_their_inputs():
    rep = build_report(request(models=[load_model("60m")], gpus=[gpu_by_name("4090")], bench_rows=[], proj_rows=[],
                               burst_rows=[]))
    page = render_html(rep)
    for anchor in ("measured", "projection", "burst", "probe", "scaling"):
        assert f'id="{anchor}"' not in page and f'href="#{anchor}"' not in page
    assert page.count("Not in this report:") == 1 and "Not given" not in page
    assert [flag for _, flag, _ in absent_sections(rep.tables)] == ["--gpus-per-node 1,8 --nodes 1,2", "--bench FILE",
                                                                    "--proj FILE", "--burst FILE", "--probe FILE"]
    for flag in ("--bench FILE", "--proj FILE", "--burst FILE", "--probe FILE"):
        assert flag in page
    assert page.count("window.PlotlyConfig") == 1


def test_every_link_of_the_navigation_has_its_section(page):
    for anchor in re.findall(r'href="#([^"]+)"', page):
        assert f'id="{anchor}"' in page


def test_cost_labels_are_short_and_the_axis_leaves_room_for_them(report):
    fig = fig_cost(report.tables["cost"], "7b")
    bar = fig.data[0]
    assert all(len(t) <= 24 for t in bar.text)
    assert fig.layout.xaxis.range[1] > 1.15 * max(x for x in bar.x)


def test_log_axes_label_numbers_not_bare_digits():
    ranks = log_axis([8, 16, 32, 64])
    assert ranks["tickvals"] == [8, 16, 32, 64] and ranks["ticktext"] == ["8", "16", "32", "64"]
    ms = log_axis([3.9, 5.6, 13, 37, 140, 148, 536, 36, 19, 22])  # under three decades: 1-2-5
    assert ms["ticktext"][:4] == ["1", "2", "5", "10"] and "1,000" in ms["ticktext"]
    assert [float(t.replace(",", "")) for t in ms["ticktext"]] == ms["tickvals"]
    wide = log_axis([0.01, 0.1, 1, 10, 100, 1000, 3, 30, 300])  # over three decades: powers of ten
    assert wide["ticktext"] == ["0.01", "0.1", "1", "10", "100", "1,000"]


# --------------------------------------------------------------------------------------------------------- CLI

runner = CliRunner()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_json_and_csv_hold_the_same_tables(tmp_path):
    out, folder = tmp_path / "r.html", tmp_path / "csv"
    bench = write_jsonl(tmp_path / "bench.jsonl", BENCH)
    res = runner.invoke(app, ["report", "--models", "60m,7b", "--gpus", "4090,a100-80gb", "--tokens", "1B",
                              "--bench", str(bench), "--price", "a100-80gb=1.5", "--out", str(out), "--csv",
                              str(folder), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"summary", "assumptions", "tables"}
    assert len(data["tables"]["fit_matrix"]) == 4
    assert data["tables"]["cost"][0]["tokens"] == 10**9
    assert {r["usd_per_hour"] for r in data["tables"]["cost"] if r["gpu"] == "a100-80gb"} == {1.5}
    for name, records in data["tables"].items():
        with open(folder / f"{name}.csv") as f:
            assert len(list(csv.DictReader(f))) == len(records), name
    assert out.stat().st_size > 1_000_000


@pytest.mark.parametrize("args, message", [
    (["--models", "7x"], "unknown model"),
    (["--models", "1b", "--gpus", "4091"], "unknown GPU"),
    (["--models", "1b", "--price", "4090"], "NAME=USD"),
    (["--models", "1b", "--price", "4090=cheap"], "not a number"),
    (["--models", "1b", "--price", "4090=-2"], "positive"),
    (["--models", "1b", "--price", "nosuchgpu=2"], "unknown GPU"),
    (["--models", "1b", "--bench", "/nonexistent/bench.jsonl"], "no such file"),
    (["--models", "1b", "--tokens", "lots"], "cannot read count"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, message):
    res = runner.invoke(app, ["report", *args, "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def test_cli_unwritable_out_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "r.html", tmp_path):
        res = runner.invoke(app, ["report", "--models", "60m", "--gpus", "4090", "--out", str(out)])
        assert res.exit_code == 2 and "--out" in res.output


# ------------------------------------------------------------------------------------- GPU type × GPU count


@pytest.fixture(scope="module")
def scaled():
    return build_report(request(models=[load_model("7b")], gpus=[gpu_by_name("4090"), gpu_by_name("h100-sxm")],
                                methods=parse_methods("adamw,galore"), gpus_per_node=[1, 8], nodes=[1, 2],
                                days=20.0, bench_rows=[], proj_rows=[], burst_rows=[]))


def test_scaling_has_a_row_per_gpu_type_and_count(scaled):
    got = scaled.tables["scaling"]
    assert sorted(set(zip(got["gpus"], got["nodes"]))) == [(1, 1), (2, 2), (8, 1), (16, 2)]
    assert len(got) == 2 * 4


def test_scaling_cost_counts_every_gpu_for_the_wall_clock_hours(scaled):
    for r in scaled.tables["scaling"].dropna(subset=["hours"]).to_dict(orient="records"):
        assert r["hours"] == pytest.approx(10**10 / r["tokens_per_s"] / 3600, rel=1e-3)  # tokens/s rounded to 0.1
        assert r["cost_usd"] == pytest.approx(r["hours"] * r["gpus"] * r["usd_per_gpu_hour"])


def test_deadline_picks_the_cheapest_configuration_within_the_days(scaled):
    table, pick = scaled.tables["scaling"], scaled.tables["deadline"].iloc[0]
    within = table[table["days"].astype(float) <= 20.0]
    assert pick["meets_deadline"] and pick["cost_usd"] == within["cost_usd"].min()
    assert any("cheapest within 20 days" in line for line in scaled.summary)


def test_scaling_section_and_its_assumption_are_on_the_page(scaled):
    page = render_html(scaled)
    assert 'id="scaling"' in page and "GPU count data" in page and "Cheapest within 20 days" in page
    assert any("Communication:" in line for line in scaled.assumptions)
    assert 'href="#scaling"' in page


def test_bad_gpu_counts_are_a_subprof_error():
    with pytest.raises(SubprofError, match="--gpus-per-node"):
        request(gpus_per_node=[0])
