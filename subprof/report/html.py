"""The HTML page of `subprof report`: plotly figures of the report's tables, every figure's data again as an HTML
table under it, the summary and the assumptions, in one self-contained offline file.

Nothing here plans or estimates: the tables, the summary and the assumptions come from `report.build_report`;
this file draws and lays them out (`breakdown_wide` only pivots the breakdown into one row per configuration).
plotly is imported inside the figure functions, so importing this file stays cheap.
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path
from typing import Callable

import pandas as pd

from subprof.errors import SubprofError
from subprof.report.build import Report
from subprof.report.probe import PROBE_VIEWS, fig_probe_energy, fig_probe_staleness
from subprof.report.tables import FIT_CLASSES, GIB
from subprof.units import fmt_count

# ------------------------------------------------------------------------------------------------------- figures

COMPONENT_COLORS = {
    "weights": "#1f4e79", "gradients": "#2e86c1", "optimizer_states": "#e67e22", "projection_matrices": "#8e44ad",
    "projection_workspace": "#c39bd3", "activations": "#27ae60", "logits_loss": "#82e0aa",
    "optimizer_temporaries": "#f5b041", "autocast_cache": "#d4ac0d", "cuda_runtime": "#7f8c8d",
    "allocator_reserve": "#bdc3c7", "cuda_context": "#566573",
}
FIT_COLORS = ("#f5b7b1", "#fad7a0", "#abebc6")
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def _layout(fig, title: str, height: int) -> None:
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}}, height=height,
                      template="plotly_white", margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      font={"family": "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif",
                            "size": 12}, legend={"orientation": "h", "y": -0.15})


def fig_fit_matrix(fit: pd.DataFrame):
    """GPU × model heatmap coloured by fit class; the best configuration and its memory written in each cell."""
    import plotly.graph_objects as go

    gpus = fit.drop_duplicates("gpu").sort_values("gpu_memory_bytes")
    models = list(dict.fromkeys(fit["model"]))
    z, text, hover = [], [], []
    for g in gpus.itertuples():
        zr, tr, hr = [], [], []
        for m in models:
            r = fit[(fit["gpu"] == g.gpu) & (fit["model"] == m)].iloc[0]
            zr.append(FIT_CLASSES.index(r["fit"]))
            if r["method"] is None or pd.isna(r["device_used_gib"]):
                tr.append("nothing fits")
                hr.append(f"{m} on {g.gpu_name}: nothing fits {r['usable_gib']:.1f} GiB usable")
                continue
            tr.append(f"{r['config']} · batch {int(r['batch'])}<br>{r['device_used_gib']:.1f} / "
                      f"{r['usable_gib']:.1f} GiB · {r['tokens_per_s']:,.0f} tok/s")
            hr.append(f"<b>{m} on {g.gpu_name}</b> ({r['fit']})<br>method {r['method']}, rank {r['rank'] or 'full'}, "
                      f"update gap {r['update_gap'] or '–'}, {int(r['state_bits'])}-bit states<br>per-layer "
                      f"{r['layerwise']}, checkpointing {r['checkpointing']}, micro-batch {int(r['batch'])}<br>"
                      f"peak allocated {r['estimated_peak_allocated_gib']:.2f} GiB, device used "
                      f"{r['device_used_gib']:.2f} GiB of {r['usable_gib']:.2f} GiB usable<br>"
                      f"predicted {r['tokens_per_s']:,.0f} tokens/s")
        z.append(zr), text.append(tr), hover.append(hr)
    scale = [[0, FIT_COLORS[0]], [1 / 3, FIT_COLORS[0]], [1 / 3, FIT_COLORS[1]], [2 / 3, FIT_COLORS[1]],
             [2 / 3, FIT_COLORS[2]], [1, FIT_COLORS[2]]]
    ylabels = [f"{g.gpu_name} ({g.gpu_memory_label})" for g in gpus.itertuples()]
    fig = go.Figure(go.Heatmap(z=z, x=models, y=ylabels, text=text, texttemplate="%{text}", customdata=hover,
                               hovertemplate="%{customdata}<extra></extra>", colorscale=scale, zmin=-0.5,
                               zmax=2.5, showscale=False, xgap=3, ygap=3, textfont={"size": 11}))
    _layout(fig, "Best configuration per GPU × model: device memory used / usable, predicted tokens/s",
            90 + 46 * len(gpus))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(side="top")
    fig.update_layout(margin={"t": 80, "l": 160})
    return fig


def _component_order(components) -> list[str]:
    """Stack order: model state first (weights, gradients, optimizer, projection), then transient, then runtime."""
    order = list(COMPONENT_COLORS)
    return sorted(dict.fromkeys(components), key=lambda c: order.index(c) if c in order else len(order))


def fig_breakdown(df: pd.DataFrame, model: str):
    """Horizontal stacked bars: the components alive at each method's peak, adding up to device used, against
    the GPU's usable memory (dashed line)."""
    import plotly.graph_objects as go

    d = df[df["model"] == model]
    heads = d.drop_duplicates("method")
    labels = {r.method: f"{r.config} · b{r.batch} · {r.device_used_bytes / GIB:.1f} GiB" + ("" if r.fits else " ✗")
              for r in heads.itertuples()}
    fig = go.Figure()
    for comp in _component_order(d["component"]):
        part = d[d["component"] == comp]
        fig.add_bar(y=[labels[m] for m in part["method"]], x=part["gib"], orientation="h",
                    name=comp.replace("_", " "), marker_color=COMPONENT_COLORS.get(comp),
                    hovertemplate="%{y}<br>" + comp.replace("_", " ") + ": %{x:.2f} GiB<extra></extra>")
    usable, gpu = d["usable_bytes"].iloc[0] / GIB, d["gpu_name"].iloc[0]
    fig.add_vline(x=usable, line_dash="dash", line_color="#c0392b", line_width=2)
    fig.add_scatter(x=[None], y=[None], mode="lines", line={"dash": "dash", "color": "#c0392b"},
                    name=f"usable {usable:.1f} GiB")
    _layout(fig, f"{model} on {gpu}: device memory at the peak phase (✗ = does not fit)", 150 + 34 * len(heads))
    fig.update_layout(barmode="stack", xaxis_title="GiB (2^30 B)", legend={"y": -0.25, "traceorder": "normal"},
                      margin={"l": 340, "r": 30, "b": 90})
    fig.update_yaxes(autorange="reversed")
    return fig


def fig_cost(cost: pd.DataFrame, model: str):
    """Horizontal bars of USD for the token budget per GPU, labelled with hours and price."""
    import plotly.graph_objects as go

    d = cost[cost["model"] == model].copy()
    d["sort"] = d["cost_usd"].astype(float).fillna(float("inf"))
    d = d.sort_values("sort")
    text = [f"${c:,.0f} · {h:,.0f} h · ${p:.2f}/h · {cfg}" if pd.notna(c) else "does not fit"
            for c, h, p, cfg in zip(d["cost_usd"], d["hours"], d["usd_per_hour"], d["config"])]
    fig = go.Figure(go.Bar(y=d["gpu_name"], x=d["cost_usd"].astype(float).fillna(0), orientation="h", text=text,
                           textposition="outside", marker_color="#2e86c1", cliponaxis=False,
                           customdata=d["config"], hovertemplate="%{y}: %{text}<br>%{customdata}<extra></extra>"))
    _layout(fig, f"{model}: USD for {fmt_count(d['tokens'].iloc[0])} tokens on one GPU (indicative prices)",
            110 + 30 * len(d))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(xaxis_title="USD", margin={"r": 420, "l": 110})
    return fig


def fig_bench(bench: pd.DataFrame):
    import plotly.graph_objects as go

    d = bench.dropna(subset=["estimated_gib", "measured_gib"])
    fig = go.Figure()
    for method, part in d.groupby("method", sort=False):
        fig.add_scatter(x=part["measured_gib"], y=part["estimated_gib"], mode="markers+text", name=str(method),
                        text=[f"{e:+.1f}%" if pd.notna(e) else s for e, s in zip(part["error_pct"], part["status"])],
                        textposition="top center", marker={"size": 9})
    top = float(max(d["measured_gib"].max(), d["estimated_gib"].max()) * 1.05) if len(d) else 1.0
    fig.add_scatter(x=[0, top], y=[0, top], mode="lines", line={"dash": "dot", "color": "#888"},
                    name="estimate = measured")
    _layout(fig, "Estimated vs measured peak allocated (GiB); labels: estimate error in %", 480)
    fig.update_layout(xaxis_title="measured GiB", yaxis_title="estimated GiB")
    return fig


def fig_proj(proj: pd.DataFrame):
    import plotly.graph_objects as go

    d = proj.copy()
    d["case"] = d["shape"] + " r" + d["rank"].astype(str) + " · " + d["device"].astype(str)
    fig = go.Figure()
    for method, part in d.groupby("method", sort=False):
        fig.add_bar(x=part["case"], y=part["median_ms"], name=str(method),
                    text=[f"{r:,.0f}×" if pd.notna(r) else "" for r in part["ratio_to_svd"]], textposition="outside")
    _layout(fig, "Projection-update time per method (median ms, log scale); labels: SVD time / method time", 480)
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="ms (log)")
    return fig


def fig_burst(burst: pd.DataFrame):
    import plotly.express as px
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = px.colors.qualitative.D3 + px.colors.qualitative.Set2
    for i, config in enumerate(dict.fromkeys(burst["config"])):
        for kind, dash in (("train", "solid"), ("validation", "dash")):
            part = burst[(burst["config"] == config) & (burst["kind"] == kind)]
            if len(part):
                fig.add_scatter(x=part["step"], y=part["loss"], mode="lines+markers" if kind == "validation"
                                else "lines", name=f"{config} ({kind})", line={"dash": dash,
                                "color": palette[i % len(palette)]}, legendgroup=config)
    _layout(fig, "Burst loss curves: training (solid) and validation (dashed)", 520)
    fig.update_layout(xaxis_title="step", yaxis_title="loss", legend={"orientation": "v", "y": 1, "x": 1.02})
    return fig


# -------------------------------------------------------------------------------------------------------- tables

# which columns, under which header, formatted how
_G = "{:.2f}".format
_I = "{:.0f}".format
TABLE_VIEWS: dict[str, dict[str, tuple[str, Callable | None]]] = {
    "fit_matrix": {"model": ("model", None), "gpu_name": ("GPU", None), "gpu_memory_label": ("label", None),
                   "fit": ("fit", None), "config": ("best configuration", None), "batch": ("micro-batch", _I),
                   "estimated_peak_allocated_gib": ("peak alloc. GiB", _G), "device_used_gib": ("device used GiB", _G),
                   "usable_gib": ("usable GiB", _G), "max_lowrank_rank": ("max low-rank rank", _I),
                   "tokens_per_s": ("tokens/s (pred.)", "{:,.0f}".format)},
    "cost": {"model": ("model", None), "gpu_name": ("GPU", None), "config": ("configuration", None),
             "tokens_per_s": ("tokens/s (pred.)", "{:,.0f}".format), "hours": ("GPU-hours", "{:,.1f}".format),
             "usd_per_hour": ("USD/h", "{:.2f}".format), "cost_usd": ("cost USD", "{:,.0f}".format),
             "usd_per_billion_tokens": ("USD per 1B tokens", "{:,.2f}".format),
             "fastest_config": ("fastest that fits", None),
             "fastest_tokens_per_s": ("its tokens/s", "{:,.0f}".format),
             "fastest_hours": ("its GPU-hours", "{:,.1f}".format), "fastest_cost_usd": ("its cost USD", "{:,.0f}".format)},
    "gpus": {"name": ("GPU", None), "memory_label": ("label", None), "memory_gib": ("GiB (driver)", _G),
             "bf16_tflops": ("dense BF16 TFLOP/s", "{:,.0f}".format), "bandwidth_gbs": ("GB/s", "{:,.0f}".format),
             "usd_per_hour": ("USD/h", "{:.2f}".format), "price_date": ("price date", None),
             "price_source": ("price source", None)},
    "bench": {"model": ("model", None), "method": ("method", None), "rank": ("rank", _I), "batch": ("batch", _I),
              "seq": ("seq", _I), "backend": ("backend", None), "device": ("device", None),
              "status": ("status", None), "estimated_gib": ("estimated GiB", _G), "measured_gib": ("measured GiB", _G),
              "error_pct": ("error %", "{:+.1f}".format), "estimate_source": ("estimate", None)},
    "projection": {"model": ("model", None), "method": ("method", None), "shape": ("shape m×n", None),
                   "rank": ("rank", _I), "median_ms": ("median ms", "{:.4g}".format),
                   "spread_ms": ("spread ms", "{:.3g}".format), "ratio_to_svd": ("SVD ÷ method", "{:,.1f}".format),
                   "device": ("device", None), "dtype": ("dtype", None)},
    "burst_summary": {"config": ("configuration", None), "lr": ("lr", "{:.3g}".format), "status": ("status", None),
                      "steps": ("steps", None),
                      "final_train_loss": ("final train loss", "{:.4f}".format),
                      "val_loss": ("validation loss", "{:.4f}".format), "tokens_per_s": ("tokens/s", "{:,.0f}".format),
                      "projection_share": ("projection share", "{:.1%}".format),
                      "peak_bytes": ("peak MiB", lambda v: f"{v / 2**20:,.0f}"), "device": ("device", None),
                      "corpus": ("corpus", None)},
    "burst": {"config": ("configuration", None), "kind": ("loss", None), "step": ("step", "{:.0f}".format),
              "loss": ("value", "{:.4f}".format), "status": ("status", None)},
    "scaling": {"model": ("model", None), "gpu_name": ("GPU", None), "gpus": ("GPUs", _I), "nodes": ("nodes", _I),
                "strategy": ("strategy", None), "config": ("configuration", None), "batch": ("micro-batch/rank", _I),
                "device_used_gib": ("device/rank GiB", _G), "tokens_per_s": ("job tokens/s", "{:,.0f}".format),
                "days": ("days", "{:,.2f}".format), "cost_usd": ("cost USD", "{:,.0f}".format),
                "comm_share": ("comm share", "{:.1%}".format)},
}
TABLE_VIEWS["deadline"] = {**TABLE_VIEWS["scaling"], "meets_deadline": ("meets deadline", None)}


TABLE_VIEWS.update(PROBE_VIEWS)


def breakdown_wide(df: pd.DataFrame) -> pd.DataFrame:
    """The long breakdown as one row per model × configuration, one GiB column per component, plus the total."""
    if not len(df):
        return df
    keys = ["model", "gpu_name", "config", "batch", "fits", "peak_phase"]
    wide = df.pivot_table(index=keys, columns="component", values="gib", aggfunc="sum", sort=False).reset_index()
    comps = _component_order(df["component"])
    wide = wide[keys + comps]
    wide["device used"] = wide[comps].sum(axis=1)
    wide["usable"] = df.groupby(keys, sort=False)["usable_bytes"].first().to_numpy() / GIB
    names = {c: c.replace("_", " ") for c in comps} | {"gpu_name": "GPU", "config": "configuration",
                                                       "peak_phase": "peak phase", "batch": "micro-batch"}
    return wide.rename(columns=names)


def html_table(df: pd.DataFrame, view: str) -> str:
    """A table as HTML with the view's headers and number formats; a view of None shows every column (floats
    as GiB with two decimals)."""
    spec = TABLE_VIEWS.get(view) or {c: (c, _G if df[c].dtype.kind == "f" else None) for c in df.columns}
    cols = {k: v for k, v in spec.items() if k in df.columns}
    shown = df[list(cols)].astype(object).where(df[list(cols)].notna(), None)
    for key, (_, fmt) in cols.items():
        shown[key] = [("–" if v is None else (fmt(v) if fmt and isinstance(v, (int, float)) else str(v)))
                      for v in shown[key]]
    shown.columns = [h for h, _ in cols.values()]
    return shown.to_html(index=False, escape=True, classes="data", border=0)


# ------------------------------------------------------------------------------------------------------ the page


def _section(anchor: str, title: str, intro: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2>{html.escape(title)}</h2><p class="intro">{html.escape(intro)}</p>'
            f"{body}</section>")


def _missing(flag: str, command: str) -> str:
    return (f'<p class="missing">Not given. Pass <code>{html.escape(flag)}</code> with rows from '
            f"<code>{html.escape(command)}</code> to compare with real runs.</p>")


def _details(title: str, table: str) -> str:
    """A data table under its figure; long ones start folded on screen and are unfolded for printing."""
    rows = table.count("<tr") - 1
    state = " open" if rows <= 16 else ""
    return (f'<details{state}><summary>{html.escape(title)} ({rows} rows)</summary><div class="scroll">{table}'
            "</div></details>")


def render_html(report: Report, *, title: str = "GPU procurement report: low-rank optimizer pretraining") -> str:
    """The self-contained page: plotly.js inlined once (first figure), every figure's data also as a table."""
    req, t = report.request, report.tables
    figures: list[str] = []

    def fig_html(fig) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=not figures, config=PLOT_CONFIG,
                          div_id=f"fig-{len(figures)}")
        figures.append(out)
        return f'<div class="figure">{out}</div>'

    fit = fig_html(fig_fit_matrix(t["fit_matrix"])) + _details("Fit matrix data",
                                                                html_table(t["fit_matrix"], "fit_matrix"))
    sections = [_section("fit", "Which GPU fits which model", "Each cell: the best configuration that fits, its "
                         "micro-batch, estimated device memory over usable memory, and predicted tokens/s. Green: "
                         "full-rank AdamW fits; amber: only low-rank methods fit; red: nothing fits.", fit)]
    body = "".join(fig_html(fig_breakdown(t["memory_breakdown"], m.name)) for m in req.models)
    sections.append(_section("breakdown", "Where the memory goes", "Per model, on the smallest selected GPU where "
                             "anything fits: each method at its recommended configuration (label: configuration · "
                             "micro-batch · estimated device used). Methods that do not fit there (✗) are shown at "
                             "their leanest configuration. The parts of a bar add up to device used; the dashed line "
                             "is the usable memory.",
                             body + _details("Memory breakdown data (GiB)",
                                                   html_table(breakdown_wide(t["memory_breakdown"]), "wide"))))
    body = "".join(fig_html(fig_cost(t["cost"], m.name)) for m in req.models)
    sections.append(_section("cost", f"Time and cost for {fmt_count(req.tokens)} tokens", "One GPU running the "
                             "recommended configuration of each cell; predicted throughput; indicative prices.",
                             body + _details("Cost data", html_table(t["cost"], "cost"))
                             + _details("GPU catalogue figures used", html_table(t["gpus"], "gpus"))))
    bench = t["bench"]
    body = (fig_html(fig_bench(bench)) + _details("Bench rows", html_table(bench, "bench"))) if len(bench) \
        else _missing("--bench FILE", "subprof bench")
    sections.append(_section("measured", "Estimated vs measured memory", "Peak allocated memory of real (cuda), "
                             "traced or CPU runs next to the analytic estimate; error = (estimated − measured) / "
                             "measured.", body))
    proj = t["projection"]
    body = (fig_html(fig_proj(proj)) + _details("Projection timings", html_table(proj, "projection"))) \
        if len(proj) else _missing("--proj FILE", "subprof proj")
    sections.append(_section("projection", "Projection-update timings", "Time of one projection update per method "
                             "on the model's weight shapes, measured by subprof proj; ratio to a full SVD.", body))
    burst = t["burst"]
    body = (fig_html(fig_burst(burst)) + _details("Configurations ranked by validation loss",
                                                  html_table(t["burst_summary"], "burst_summary"))
            + _details("Loss curve data", html_table(burst, "burst"))) if len(burst) \
        else _missing("--burst FILE", "subprof burst")
    sections.append(_section("burst", "Short training runs (bursts)", "Training and validation loss by step for "
                             "each configuration, measured by subprof burst.", body))
    energy = t.get("probe_energy")
    body = (fig_html(fig_probe_energy(energy, _layout))
            + _details("Rank reaching each share of the energy, per layer type",
                       html_table(t["probe_summary"], "probe_summary"))
            + (fig_html(fig_probe_staleness(t["probe_staleness"], _layout)) if len(t["probe_staleness"]) else "")
            + _details("Gap where a stale basis falls below 90% / 80% of a fresh one",
                       html_table(t["probe_stale_summary"], "probe_stale_summary"))
            + _details("Energy curve data", html_table(energy, "probe_energy"))
            + _details("Staleness curve data", html_table(t["probe_staleness"], "probe_staleness"))) \
        if energy is not None and len(energy) else _missing("--probe FILE", "subprof probe")
    sections.append(_section("probe", "Gradient subspace (probe)", "Measured during a short real training run by "
                             "subprof probe: the share of each weight's gradient energy held by its top-r singular "
                             "subspace, and how much of a fresh basis's share a basis from k steps earlier still "
                             "captures — what sets a rank and a refresh interval.", body))
    if "scaling" in t:
        from subprof.report.scaling import fig_scaling

        body = "".join(fig_html(fig_scaling(t["scaling"], m.name)) for m in req.models)
        if len(t["deadline"]):
            body += _details(f"Cheapest within {req.days:g} days", html_table(t["deadline"], "deadline"))
        sections.insert(3, _section("scaling", "GPU type × GPU count", "Each cell: the best configuration on that many "
                                    "GPUs of that type (data parallel, the fastest strategy that fits), wall-clock "
                                    "days and cost of the token budget, and the share of a step spent waiting on "
                                    "communication.", body + _details("GPU count data", html_table(t["scaling"],
                                                                                                   "scaling"))))
    if not figures:
        raise SubprofError("internal: the report has no figure to carry plotly.js")
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in report.summary)
    assume = "".join(f"<li>{html.escape(line)}</li>" for line in report.assumptions)
    nav = "".join(f'<a href="#{a}">{n}</a>' for a, n in (("summary", "Summary"), ("fit", "Fit"),
                  ("breakdown", "Memory"), ("cost", "Cost"), ("scaling", "GPU count"), ("measured", "Measured"),
                  ("projection", "Projection"), ("burst", "Bursts"), ("probe", "Probe"), ("assumptions", "Assumptions")))
    models = ", ".join(f"{m.name} ({fmt_count(m.params)})" for m in req.models)
    meta = (f"Models {models} · {len(req.gpus)} GPUs · seq {req.seq} · {req.dtype} · generated "
            f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by subprof {_version()}")
    return _PAGE.format(title=html.escape(title), meta=html.escape(meta), nav=nav, summary=summary,
                        sections="".join(sections), assumptions=assume, css=_CSS, n_figures=len(figures))


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
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:18px 24px;margin:18px 0}
h2{margin:0 0 6px;font-size:19px;color:var(--accent)}
p.intro{color:var(--muted);margin:0 0 10px}
#summary ul{margin:6px 0 0;padding-left:20px} #summary li{margin:4px 0;font-size:15px}
#assumptions li{margin:4px 0;color:#34495e}
.missing{color:var(--muted);font-style:italic}
details{margin:10px 0} summary{cursor:pointer;color:var(--accent);font-weight:500}
.scroll{overflow-x:auto}
table.data{border-collapse:collapse;font-size:12px;margin-top:6px;width:100%}
table.data th{background:#eaf2f8;text-align:left;padding:4px 8px;border-bottom:2px solid var(--line)}
table.data td{padding:3px 8px;border-bottom:1px solid #eee;font-variant-numeric:tabular-nums}
table.data tr:nth-child(even) td{background:#fbfcfc}
code{background:#eef2f5;padding:1px 4px;border-radius:3px}
#js-error{display:none;background:#fdedec;color:#922b21;padding:10px 40px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px}
@media print{
 body{background:#fff;font-size:11px} header{background:#fff;color:#000;padding:0 0 8px;border-bottom:2px solid #000}
 nav,.modebar-container,#js-error{display:none!important} main{max-width:none;padding:0}
 section{border:none;padding:0;margin:14px 0;break-inside:avoid-page} .figure{break-inside:avoid}
 details>summary{display:none} details:not([open])>*{display:block} table.data{font-size:9px}
 tr{break-inside:avoid} a{color:#000}
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
window.addEventListener("beforeprint", function () {{
  document.querySelectorAll("details").forEach(function (d) {{ d.open = true; }});
}});
window.addEventListener("load", function () {{
  var drawn = document.querySelectorAll(".plotly-graph-div .main-svg").length ? Array.prototype.filter.call(
    document.querySelectorAll(".plotly-graph-div"), function (d) {{ return d.querySelector(".main-svg"); }}).length : 0;
  document.documentElement.setAttribute("data-figures-drawn", String(drawn));
}});
</script>
</head><body data-figures="{n_figures}">
<header><h1>{title}</h1><div class="meta">{meta}</div></header>
<div id="js-error"></div>
<nav>{nav}</nav>
<main>
<section id="summary"><h2>Summary</h2><ul>{summary}</ul></section>
{sections}
<section id="assumptions"><h2>Assumptions</h2><ul>{assumptions}</ul></section>
</main>
<footer>Generated offline by subprof; predictions are estimates, measured sections show only rows from the files
given. Every figure's data is also in the table below it.</footer>
</body></html>
"""
