"""The HTML page of `subprof report`, in the order a buyer reads it: the decision (per model the cheapest and the
fastest GPU option with its configuration), the fit matrix, time and cost, then the evidence — memory breakdowns
and whatever measured files were given — and the assumptions. One self-contained offline file; it prints to PDF
(A4 landscape, figures redrawn to the page width, folded tables unfolded).

Nothing here plans or estimates: the tables, the summary and the assumptions come from `report.build_report`;
the figures from `report.figures`, the data tables from `report.views`. Sections without data are left out, and
one line names the inputs that would add them.
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path

import pandas as pd

from subprof.errors import SubprofError
from subprof.methods import REGISTRY
from subprof.report.build import Report
from subprof.report.decision import absent_sections
from subprof.report.figures import (PLOT_CONFIG, fig_bench, fig_breakdown, fig_burst, fig_cost, fig_proj,
                                    layout)
from subprof.report.probe import fig_probe_energy, fig_probe_staleness
from subprof.report.tables import FIT_CLASSES
from subprof.report.views import breakdown_wide, html_table, quality_cost
from subprof.report.words import duration, plural, usd
from subprof.units import fmt_count

_e = html.escape


def _section(anchor: str, title: str, intro: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2><p class="intro">{_e(intro)}</p>{body}</section>'


def _details(title: str, table: str) -> str:
    """A data table under its figure; long ones start folded on screen and are unfolded for printing."""
    rows = table.count("<tr") - 1
    state = " open" if rows <= 16 else ""
    return (f'<details{state}><summary>{_e(title)} ({plural(rows, "row")})</summary><div class="scroll">{table}'
            "</div></details>")


# ---------------------------------------------------------------------------------------------------- decision


def _gpus(r: dict) -> str:
    if r["gpus"] == 1:
        return _e(r["gpu_name"])
    return f"{r['gpus']:.0f}× {_e(r['gpu_name'])}" + (f" ({r['nodes']:.0f} nodes)" if r["nodes"] > 1 else "")


def _time(r: dict) -> str:
    text = duration(r["hours"])
    if r["gpus"] > 1:
        return f"{text} wall clock ({r['gpu_hours']:,.0f} GPU-h)"
    return text + (f" ({r['gpu_hours']:,.0f} GPU-h)" if r["hours"] >= 48 else "")


def decision_html(report: Report) -> str:
    """Per model a small table: the cheapest and the fastest option, the recommended configuration on each, its
    time, cost, memory and quality cost; then the summary sentences and the line naming absent sections."""
    req, d = report.request, report.tables["decision"]
    evidence = report.cells[0].plan.request.evidence
    cards = []
    for model in req.models:
        rows = d[d["model"] == model.name].to_dict(orient="records")
        head = f'<h3>{_e(model.name)} <span class="muted">{fmt_count(model.params)} parameters</span></h3>'
        if rows[0]["option"] == "nothing fits":
            cards.append(f'<div class="pick">{head}<p class="nofit">Nothing fits on any selected GPU (see the fit '
                         "matrix and the memory breakdown).</p></div>")
            continue
        trs = "".join(
            f'<tr><th scope="row">{_e(r["option"].capitalize())}</th><td class="gpu">{_gpus(r)}</td>'
            f'<td><b>{_e(r["short_config"])}</b><small>{_e(r["config"])}</small></td><td>{_time(r)}</td>'
            f'<td class="num">{usd(r["cost_usd"])}</td>'
            f'<td class="num">{r["device_used_gib"]:.1f} / {r["usable_gib"]:.1f} GiB</td>'
            f'<td class="num">{_e(quality_cost(r["quality_cost"]))}</td></tr>' for r in rows)
        cards.append(f'<div class="pick">{head}<table class="pick"><thead><tr><th></th><th>GPUs</th><th>recommended '
                     "configuration</th><th>time</th><th>cost</th><th>memory used / usable</th><th>quality cost"
                     f"</th></tr></thead><tbody>{trs}</tbody></table></div>")
    counts = "at every GPU count of the GPU-count section" if "scaling" in report.tables else "one GPU per job"
    intro = (f"For {fmt_count(req.tokens)} tokens at sequence length {req.seq}, {req.dtype}: the cheapest option "
             f"(least USD at indicative prices) and the fastest (least wall-clock time) among the selected GPU types, "
             f"{counts}, each with the configuration subprof recommends there. Predicted, not measured.")
    note = (f'<p class="note">Quality cost: predicted quality of full-rank AdamW minus the configuration\'s, on the '
            f"planner's scale — {_e(evidence.unit)}; evidence: {_e(evidence.source)}. 0 = full rank.</p>")
    picked = {str(r["config"]).split()[0].split("+")[0] for r in d.to_dict(orient="records") if r.get("config")}
    own = sorted(m for m in picked if m in REGISTRY and evidence.evidence_kind(m) == "own paper")
    if own:
        note += (f'<p class="note own-paper">{_e(", ".join(own))}: the predicted quality rests on the authors\' own '
                 "tables only (no independent re-run) — a claim they tuned, not a confirmed result; confirm it with "
                 "short real runs (<code>subprof plan --burst</code>) before buying on it.</p>")
    summary = "".join(f"<li>{_e(line)}</li>" for line in report.summary)
    absent = absent_sections(report.tables)
    missing = ('<p class="absent">Not in this report: ' + "; ".join(
        f"{_e(what)} (add <code>{_e(flag)}</code>" + (f", rows from <code>{_e(cmd)}</code>)" if cmd else ")")
        for what, flag, cmd in absent) + ".</p>" if absent else "")
    return (f'<section id="decision"><h2>Decision</h2><p class="intro">{_e(intro)}</p>{"".join(cards)}{note}'
            f'<div id="summary"><h3>In words</h3><ul>{summary}</ul></div>{missing}</section>')


# -------------------------------------------------------------------------------------------------- fit matrix


def _cell(r: dict, tags: list[str]) -> str:
    """One fit-matrix cell: a short label ("ori r64 · 8-bit · 21.0/21.4 GiB · 539 tok/s") that wraps inside the
    cell, the full configuration as its hover text; tagged when it is the cheapest or fastest option, or when it
    changes the optimizer batch."""
    where = f"{r['model']} on {r['gpu_name']} ({r['fit']})"
    badges = "".join(f'<span class="tag">{t}</span>' for t in tags)
    if r["method"] is None or pd.isna(r["device_used_gib"]):
        title = f"{where}: nothing fits {r['usable_gib']:.1f} GiB usable"
        label = f"<b>nothing fits</b> · {r['usable_gib']:.1f} GiB usable"
    else:
        title = (f"{where}\n{r['config']}\npeak allocated {r['estimated_peak_allocated_gib']:.2f} GiB; device used "
                 f"{r['device_used_gib']:.2f} of {r['usable_gib']:.2f} GiB usable\npredicted "
                 f"{r['tokens_per_s']:,.0f} tokens/s; quality cost {quality_cost(r['quality_cost'])}")
        label = (f"<b>{_e(r['short_config'])}</b> · {r['device_used_gib']:.1f}/{r['usable_gib']:.1f} GiB · "
                 f"{r['tokens_per_s']:,.0f} tok/s")
        if not bool(r["keeps_requested_batch"]):
            badges += (f'<span class="tag warn">optimizer batch {r["sequences_per_step"]:.0f}, not '
                       f'{r["requested_sequences"]:.0f}</span>')
    return (f'<td class="fit-{FIT_CLASSES.index(r["fit"])}" title="{_e(title)}"><span class="label">{label}</span>'
            f"{badges}</td>")


def fit_grid(fit: pd.DataFrame, decision: pd.DataFrame) -> str:
    """GPU × model grid coloured by fit class, GPUs by memory; the single-GPU cheapest and fastest cells tagged."""
    gpus = fit.drop_duplicates("gpu").sort_values("gpu_memory_bytes", kind="stable")
    models = list(dict.fromkeys(fit["model"]))
    tags: dict[tuple[str, str], list[str]] = {}
    for r in decision.dropna(subset=["gpu"]).to_dict(orient="records"):
        if r["gpus"] == 1:
            tags[(r["model"], r["gpu"])] = [w for w in ("cheapest", "fastest") if w in r["option"]]
    rows = []
    for g in gpus.itertuples():
        cells = "".join(_cell(fit[(fit["gpu"] == g.gpu) & (fit["model"] == m)].iloc[0].to_dict(),
                              tags.get((m, g.gpu), [])) for m in models)
        rows.append(f'<tr><th scope="row">{_e(g.gpu_name)}<small>{_e(g.gpu_memory_label)}</small></th>{cells}</tr>')
    head = "".join(f'<th scope="col">{_e(m)}</th>' for m in models)
    legend = "".join(f'<span class="key fit-{i}">{_e(name)}</span>' for i, name in reversed(list(enumerate(
        FIT_CLASSES))))
    return (f'<p class="legend">{legend}<span class="muted">Hover a cell for the full configuration.</span></p>'
            f'<table class="fitgrid"><thead><tr><th scope="col">GPU</th>{head}</tr></thead><tbody>{"".join(rows)}'
            "</tbody></table>")


# -------------------------------------------------------------------------------------------------------- page


def render_html(report: Report, *, title: str = "GPU procurement report: low-rank optimizer pretraining") -> str:
    """The self-contained page: plotly.js inlined once (first figure), every figure's data also as a table."""
    req, t = report.request, report.tables
    figures: list[str] = []

    def fig_html(fig) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=not figures, config=PLOT_CONFIG,
                          div_id=f"fig-{len(figures)}")
        figures.append(out)
        return f'<div class="figure">{out}</div>'

    sections = [("decision", "Decision", decision_html(report))]
    sections.append(("fit", "Fit", _section(
        "fit", "Which GPU fits which model", "Each cell: the best configuration that fits (method, rank, 8-bit "
        "states), estimated device memory used / usable, and predicted tokens/s.",
        fit_grid(t["fit_matrix"], t["decision"]) + _details("Fit matrix data", html_table(t["fit_matrix"],
                                                                                           "fit_matrix")))))
    body = "".join(fig_html(fig_cost(t["cost"], m.name)) for m in req.models)
    sections.append(("cost", "Cost", _section(
        "cost", f"Time and cost for {fmt_count(req.tokens)} tokens", "One GPU running the recommended "
        "configuration of each cell; predicted throughput; indicative prices. Hover a bar for the configuration.",
        body + _details("Cost data", html_table(t["cost"], "cost"))
        + _details("GPU catalogue figures used", html_table(t["gpus"], "gpus")))))
    if "scaling" in t:
        from subprof.report.scaling import fig_scaling

        body = "".join(fig_html(fig_scaling(t["scaling"], m.name)) for m in req.models)
        if len(t["deadline"]):
            body += _details(f"Cheapest within {req.days:g} days", html_table(t["deadline"], "deadline"))
        sections.append(("scaling", "GPU count", _section(
            "scaling", "GPU type × GPU count", "Each cell: wall-clock time and cost of the token budget on that many "
            "GPUs of that type (data parallel, the fastest strategy that fits), the strategy and the share of a step "
            "spent waiting on communication. Hover a cell for the configuration.",
            body + _details("GPU count data", html_table(t["scaling"], "scaling")))))
    body = "".join(fig_html(fig_breakdown(t["memory_breakdown"], m.name)) for m in req.models)
    sections.append(("breakdown", "Memory", _section(
        "breakdown", "Where the memory goes", "Per model, on the smallest selected GPU where anything fits: each "
        "method at its recommended configuration (label: configuration · micro-batch · estimated device used). "
        "Methods that do not fit there (✗) are shown at their leanest configuration. The parts of a bar add up to "
        "device used; the dashed line is the usable memory.",
        body + _details("Memory breakdown data (GiB)", html_table(breakdown_wide(t["memory_breakdown"]), "wide")))))
    if len(t["bench"]):
        body = fig_html(fig_bench(t["bench"])) + _details("Bench rows", html_table(t["bench"], "bench"))
        sections.append(("measured", "Measured", _section(
            "measured", "Estimated vs measured memory", "Peak allocated memory of real (cuda), traced or CPU runs "
            "next to the analytic estimate; error = (estimated − measured) / measured.", body)))
    if len(t["projection"]):
        body = fig_html(fig_proj(t["projection"])) + _details("Projection timings",
                                                              html_table(t["projection"], "projection"))
        sections.append(("projection", "Projection", _section(
            "projection", "Projection-update timings", "Time of one projection update per method on the model's "
            "weight shapes, measured by subprof proj; ratio to a full SVD in the table.", body)))
    if len(t["burst"]):
        body = (fig_html(fig_burst(t["burst"], t["burst_summary"]))
                + _details("Configurations ranked by validation loss", html_table(t["burst_summary"], "burst_summary"))
                + _details("Loss curve data", html_table(t["burst"], "burst")))
        sections.append(("burst", "Bursts", _section(
            "burst", "Short training runs (bursts)", "Training and validation loss by step for each configuration, "
            "measured by subprof burst.", body)))
    energy = t.get("probe_energy")
    if energy is not None and len(energy):
        stale = t["probe_staleness"]
        body = (fig_html(fig_probe_energy(energy, layout))
                + _details("Rank reaching each share of the energy, per layer type",
                           html_table(t["probe_summary"], "probe_summary"))
                + (fig_html(fig_probe_staleness(stale, layout)) if len(stale) else "")
                + _details("Gap where a stale basis falls below 90% / 80% of a fresh one",
                           html_table(t["probe_stale_summary"], "probe_stale_summary"))
                + _details("Energy curve data", html_table(energy, "probe_energy"))
                + _details("Staleness curve data", html_table(stale, "probe_staleness")))
        sections.append(("probe", "Probe", _section(
            "probe", "Gradient subspace (probe)", "Measured during a short real training run by subprof probe: the "
            "share of each weight's gradient energy held by its top-r singular subspace, and how much of a fresh "
            "basis's share a basis from k steps earlier still captures — what sets a rank and a refresh interval.",
            body)))
    assume = "".join(f"<li>{_e(line)}</li>" for line in report.assumptions)
    sections.append(("assumptions", "Assumptions", f'<section id="assumptions"><h2>Assumptions</h2><ul>{assume}'
                                                   "</ul></section>"))
    if not figures:
        raise SubprofError("internal: the report has no figure to carry plotly.js")
    nav = "".join(f'<a href="#{anchor}">{name}</a>' for anchor, name, _ in sections)
    models = ", ".join(f"{m.name} ({fmt_count(m.params)})" for m in req.models)
    meta = (f"Models {models} · {plural(len(req.gpus), 'GPU type')} · seq {req.seq} · {req.dtype} · generated "
            f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by subprof {_version()}")
    return _PAGE.format(title=_e(title), meta=_e(meta), nav=nav, sections="".join(s for _, _, s in sections),
                        css=_CSS, n_figures=len(figures))


def write_html(report: Report, path: str | Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise SubprofError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("subprof")
    except Exception:  # noqa: BLE001 — a version string must never break the report
        return "(version unknown)"


_CSS = """
:root{--ink:#1c2833;--muted:#5d6d7e;--line:#d5d8dc;--accent:#1f4e79;--bg:#f8f9fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--ink);
 background:var(--bg)}
header{background:var(--accent);color:#fff;padding:22px 40px 14px}
header h1{margin:0 0 4px;font-size:24px;font-weight:600}
header .meta{opacity:.85;font-size:13px}
nav{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid var(--line);padding:8px 40px}
nav a{color:var(--accent);text-decoration:none;margin-right:18px;font-weight:500}
main{max-width:1240px;margin:0 auto;padding:10px 40px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:18px 24px;margin:18px 0;
 scroll-margin-top:48px}
h2{margin:0 0 6px;font-size:19px;color:var(--accent)}
h3{margin:14px 0 4px;font-size:16px} .muted{color:var(--muted);font-weight:400;font-size:13px}
p.intro{color:var(--muted);margin:0 0 10px}
#summary ul{margin:6px 0 0;padding-left:20px} #summary li{margin:4px 0}
#assumptions li{margin:4px 0;color:#34495e}
p.note,p.absent{color:var(--muted);font-size:13px;margin:8px 0 0} p.absent{font-style:italic}
table.pick{border-collapse:collapse;width:100%;font-size:14px}
table.pick th,table.pick td{text-align:left;padding:6px 10px;border-bottom:1px solid #eee;vertical-align:top}
table.pick thead th{font-size:12px;color:var(--muted);font-weight:500;border-bottom:2px solid var(--line)}
table.pick tbody th{white-space:nowrap;color:var(--accent)} table.pick td.gpu{font-weight:600;white-space:nowrap}
table.pick td small{display:block;color:var(--muted);font-size:12px}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
p.legend{margin:4px 0 8px;font-size:13px}
.key{display:inline-block;padding:1px 8px;margin-right:8px;border-radius:3px}
.fit-0{background:#f5b7b1} .fit-1{background:#fad7a0} .fit-2{background:#abebc6}
table.fitgrid{border-collapse:separate;border-spacing:3px;width:100%;table-layout:fixed;font-size:13px}
table.fitgrid thead th{text-align:center;font-weight:600;padding:4px}
table.fitgrid thead th:first-child,table.fitgrid tbody th{width:150px;text-align:left}
table.fitgrid tbody th{font-weight:600;padding:6px 8px;vertical-align:middle}
table.fitgrid tbody th small{display:block;color:var(--muted);font-weight:400}
table.fitgrid td{padding:8px 10px;border-radius:3px;text-align:center;vertical-align:middle;overflow-wrap:anywhere;
 cursor:help}
.tag{display:inline-block;margin:3px 3px 0;padding:0 6px;border-radius:8px;background:#1e8449;color:#fff;
 font-size:11px} .tag.warn{background:#fff;color:#7e5109;border:1px solid #b9770e}
details{margin:10px 0} summary{cursor:pointer;color:var(--accent);font-weight:500}
.scroll{overflow-x:auto}
table.data{border-collapse:collapse;font-size:12px;margin-top:6px;width:100%}
table.data th{background:#eaf2f8;text-align:left;padding:4px 8px;border-bottom:2px solid var(--line)}
table.data td{padding:3px 8px;border-bottom:1px solid #eee;font-variant-numeric:tabular-nums}
table.data tr:nth-child(even) td{background:#fbfcfc}
code{background:#eef2f5;padding:1px 4px;border-radius:3px}
#js-error{display:none;background:#fdedec;color:#922b21;padding:10px 40px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px}
@page{size:A4 landscape;margin:12mm}
@media print{
 body{background:#fff;font-size:11px} header{background:#fff;color:#000;padding:0 0 8px;border-bottom:2px solid #000}
 nav,.modebar-container,#js-error{display:none!important} main{max-width:none;padding:0}
 summary{list-style:none;color:#000} summary::-webkit-details-marker{display:none}
 section{border:none;padding:0;margin:14px 0} #decision,#fit,.figure,.pick{break-inside:avoid}
 h2,h3{break-after:avoid} table.data{font-size:9px} tr{break-inside:avoid} a{color:#000}
 *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<script>
window.addEventListener("error", function (e) {{
  var n = Number(document.documentElement.getAttribute("data-js-errors") || 0) + 1;
  document.documentElement.setAttribute("data-js-errors", String(n));
  var box = document.getElementById("js-error");
  if (box) {{ box.style.display = "block"; box.textContent = "A figure failed to draw (" + e.message +
    "); the tables below each figure hold the same data."; }}
}});
function subprofResize() {{
  if (!window.Plotly) return;
  document.querySelectorAll(".js-plotly-plot").forEach(function (gd) {{ Plotly.Plots.resize(gd); }});
}}
window.addEventListener("beforeprint", function () {{
  document.querySelectorAll("details").forEach(function (d) {{ d.open = true; }});
  subprofResize();
}});
window.addEventListener("afterprint", subprofResize);
window.addEventListener("load", function () {{
  var drawn = Array.prototype.filter.call(document.querySelectorAll(".plotly-graph-div"),
    function (d) {{ return d.querySelector(".main-svg"); }}).length;
  document.documentElement.setAttribute("data-figures-drawn", String(drawn));
}});
</script>
</head><body data-figures="{n_figures}">
<header><h1>{title}</h1><div class="meta">{meta}</div></header>
<div id="js-error"></div>
<nav>{nav}</nav>
<main>
{sections}
</main>
<footer>Generated offline by subprof; predictions are estimates, measured sections show only rows from the files
given. Every figure's data is also in the table below it.</footer>
</body></html>
"""
