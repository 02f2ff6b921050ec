"""The plotly figures of `subprof report`, one function per figure, each drawing one of the report's tables.

Every label a figure writes must fit where it is drawn — `tests/test_report_browser.py` checks the bounding boxes
in Chromium: data labels stay short (the full configuration is in the hover text and in the table under the
figure), bar charts leave room for their outside labels, log axes label only whole numbers. plotly is imported
inside the functions, so importing this file stays cheap.
"""

from __future__ import annotations

import math

import pandas as pd

from subprof.report.tables import GIB
from subprof.report.words import duration, usd
from subprof.units import fmt_count

COMPONENT_COLORS = {
    "weights": "#1f4e79", "gradients": "#2e86c1", "optimizer_states": "#e67e22", "projection_matrices": "#8e44ad",
    "projection_workspace": "#c39bd3", "activations": "#27ae60", "logits_loss": "#82e0aa",
    "optimizer_temporaries": "#f5b041", "autocast_cache": "#d4ac0d", "cuda_runtime": "#7f8c8d",
    "allocator_reserve": "#bdc3c7", "cuda_context": "#566573",
}
BAR, BEST = "#2e86c1", "#1e8449"
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
FONT = "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"
CHAR_PX = 7.2  # width of one character at the figures' 12 px font, rounded up: room left for outside bar labels
MIN_PLOT_PX = 640  # the narrowest plot area the room is reserved for (a printed A4 landscape page is wider)
LEGEND_ROW_PX = 24  # one entry of a vertical legend: a figure is made tall enough for all of them, never scrolled


def layout(fig, title: str, height: int) -> None:
    """The page's common figure style: title at the top left, white template, legend under the plot."""
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}}, height=height,
                      template="plotly_white", margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      font={"family": FONT, "size": 12}, legend={"orientation": "h", "y": -0.15})


def log_axis(values) -> dict:
    """A log axis whose tick labels read as numbers: the values themselves when there are few (ranks 8, 16, 32,
    64), else 1-2-5 in each decade, or only powers of ten over more than three decades. plotly's own minor labels
    are a bare leading digit ("5, 2, 100, 5, 2, 10")."""
    v = sorted({float(x) for x in values if x is not None and math.isfinite(float(x)) and float(x) > 0})
    if not v:
        return {"type": "log"}
    if len(v) <= 8:
        ticks = v
    else:
        lo, hi = math.floor(math.log10(v[0])), math.ceil(math.log10(v[-1]))
        steps = (1,) if hi - lo > 3 else (1, 2, 5)
        ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in steps]
    pad = 0.1 * max(1.0, math.log10(v[-1] / v[0]))  # a tenth of the span each side (of a decade when narrower)
    return {"type": "log", "tickvals": ticks, "ticktext": [f"{t:,.6g}" for t in ticks],
            "range": [math.log10(v[0]) - pad, math.log10(v[-1]) + pad]}


def legend_height(entries: int, least: int) -> int:
    """Figure height that shows every entry of a vertical legend without its scroll bar."""
    return max(least, 90 + LEGEND_ROW_PX * entries)


def component_order(components) -> list[str]:
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
    for comp in component_order(d["component"]):
        part = d[d["component"] == comp]
        fig.add_bar(y=[labels[m] for m in part["method"]], x=part["gib"], orientation="h",
                    name=comp.replace("_", " "), marker_color=COMPONENT_COLORS.get(comp),
                    hovertemplate="%{y}<br>" + comp.replace("_", " ") + ": %{x:.2f} GiB<extra></extra>")
    usable, gpu = d["usable_bytes"].iloc[0] / GIB, d["gpu_name"].iloc[0]
    fig.add_vline(x=usable, line_dash="dash", line_color="#c0392b", line_width=2)
    fig.add_scatter(x=[None], y=[None], mode="lines", line={"dash": "dash", "color": "#c0392b"},
                    name=f"usable {usable:.1f} GiB")
    layout(fig, f"{model} on {gpu}: device memory at the peak phase (✗ = does not fit)", 170 + 34 * len(heads))
    fig.update_layout(barmode="stack", xaxis_title="GiB (2^30 B)", legend={"y": -0.3, "traceorder": "normal"},
                      margin={"l": 20, "r": 30, "b": 110})
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig


def fig_cost(cost: pd.DataFrame, model: str):
    """Horizontal bars of USD for the token budget on one GPU of each type, labelled with the cost and the time;
    the cheapest bar green. The x range leaves room for the longest label beside the longest bar."""
    import plotly.graph_objects as go

    d = cost[cost["model"] == model].copy()
    d["sort"] = d["cost_usd"].astype(float).fillna(float("inf"))
    d = d.sort_values("sort", kind="stable")
    fits = d["cost_usd"].notna()
    text = [f"{usd(c)} · {duration(h)}" if ok else "does not fit" for c, h, ok in zip(d["cost_usd"], d["hours"], fits)]
    hover = [f"<b>{g}</b>: {usd(c)} for {fmt_count(t)} tokens, {h:,.0f} GPU-hours at ${p:.2f}/h<br>{cfg}"
             if ok else f"<b>{g}</b>: nothing fits" for g, c, t, h, p, cfg, ok in
             zip(d["gpu_name"], d["cost_usd"], d["tokens"], d["hours"], d["usd_per_hour"], d["config"], fits)]
    top = float(d.loc[fits, "cost_usd"].max()) if fits.any() else 1.0
    room = (CHAR_PX * max(map(len, text)) + 12) / MIN_PLOT_PX
    colors = [BEST if i == 0 and ok else BAR for i, ok in enumerate(fits)]
    fig = go.Figure(go.Bar(y=d["gpu_name"], x=d["cost_usd"].astype(float).fillna(0), orientation="h", text=text,
                           textposition="outside", marker_color=colors, cliponaxis=False, customdata=hover,
                           hovertemplate="%{customdata}<extra></extra>", textfont={"size": 12}))
    layout(fig, f"{model}: USD for {fmt_count(d['tokens'].iloc[0])} tokens on one GPU (indicative prices; green: "
                "cheapest)", 120 + 34 * len(d))
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_xaxes(range=[0, top / (1 - room)], tickprefix="$", tickformat=",.0f")
    fig.update_layout(margin={"l": 20, "r": 20})
    return fig


def fig_bench(bench: pd.DataFrame):
    """Estimated against measured peak allocated, one marker per row (× for rows over their budget); the error of
    each row is in its hover text and the table, not written beside it — measured rows cluster."""
    import plotly.graph_objects as go

    d = bench.dropna(subset=["estimated_gib", "measured_gib"])
    fig = go.Figure()
    for method, part in d.groupby("method", sort=False):
        hover = [f"<b>{m} {method}</b> r{r if pd.notna(r) else '–'} batch {b if pd.notna(b) else '–'} "
                 f"({be}, {v})<br>measured {x:.2f} GiB, estimated {y:.2f} GiB"
                 + (f", error {e:+.1f}%" if pd.notna(e) else "")
                 for m, r, b, be, v, x, y, e in zip(part["model"], part["rank"], part["batch"], part["backend"],
                                                    part["verdict"], part["measured_gib"], part["estimated_gib"],
                                                    part["error_pct"])]
        fig.add_scatter(x=part["measured_gib"], y=part["estimated_gib"], mode="markers", name=str(method),
                        customdata=hover, hovertemplate="%{customdata}<extra></extra>",
                        marker={"size": 9, "symbol": ["x" if v == "over budget" else "circle"
                                                      for v in part["verdict"]]})
    top = float(max(d["measured_gib"].max(), d["estimated_gib"].max()) * 1.05) if len(d) else 1.0
    fig.add_scatter(x=[0, top], y=[0, top], mode="lines", line={"dash": "dot", "color": "#888"},
                    name="estimate = measured", hoverinfo="skip")
    layout(fig, "Estimated vs measured peak allocated (GiB; × = over its budget; hover a point for its error)", 480)
    fig.update_layout(xaxis_title="measured GiB", yaxis_title="estimated GiB", legend={"y": -0.2})
    return fig


def fig_proj(proj: pd.DataFrame):
    """Median time of one projection update per method and weight shape, log scale; repeated measurements of one
    case drawn as their median (hover: how many, SVD ÷ method)."""
    import plotly.graph_objects as go

    d = proj.copy()
    d["case"] = d["shape"] + " r" + d["rank"].astype(str) + " · " + d["device"].astype(str) + " " + d["dtype"]
    d = (d.groupby(["method", "case"], sort=False)
         .agg(median_ms=("median_ms", "median"), ratio_to_svd=("ratio_to_svd", "median"), runs=("median_ms", "size"))
         .reset_index())
    fig = go.Figure()
    for method, part in d.groupby("method", sort=False):
        extra = [(f"<br>median of {n} runs" if n > 1 else "") + (f"<br>SVD ÷ {method}: {r:,.1f}×" if pd.notna(r)
                                                                 else "")
                 for n, r in zip(part["runs"], part["ratio_to_svd"])]
        fig.add_bar(x=part["case"], y=part["median_ms"], name=str(method), customdata=extra,
                    hovertemplate=f"<b>{method}</b> %{{x}}<br>%{{y:.4g}} ms%{{customdata}}<extra></extra>")
    layout(fig, "Projection-update time per method (median ms, log scale; hover a bar for SVD ÷ method)", 480)
    fig.update_layout(barmode="group", yaxis_title="ms (log)", legend={"y": -0.3}, margin={"b": 120})
    fig.update_yaxes(**log_axis(d["median_ms"]))
    fig.update_xaxes(automargin=True)
    return fig


def fig_burst(burst: pd.DataFrame, ranked: pd.DataFrame):
    """Loss against step per configuration: training solid and faint, validation dashed with markers; one legend
    entry per configuration (clicking it shows or hides both curves). With several configurations of a method
    (a learning-rate grid), only the method's best — first in `ranked`, `measured.burst_summary` — is drawn at
    first; the others are one click away in the legend."""
    import plotly.express as px
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = px.colors.qualitative.D3 + px.colors.qualitative.Set2
    configs = list(dict.fromkeys(burst["config"]))
    best = set(ranked.drop_duplicates("method")["config"]) if len(ranked) else set(configs)
    for i, config in enumerate(configs):
        for kind, dash in (("train", "solid"), ("validation", "dash")):
            part = burst[(burst["config"] == config) & (burst["kind"] == kind)]
            if len(part):
                fig.add_scatter(x=part["step"], y=part["loss"], mode="lines+markers" if kind == "validation"
                                else "lines", name=config, line={"dash": dash, "color": palette[i % len(palette)],
                                                                 "width": 2 if kind == "validation" else 1},
                                opacity=1 if kind == "validation" else 0.45, legendgroup=config,
                                visible=True if config in best else "legendonly",
                                showlegend=not any(t.legendgroup == config for t in fig.data),
                                hovertemplate=f"{config} ({kind})<br>step %{{x:.0f}}: loss %{{y:.4f}}<extra></extra>")
    hidden = len(configs) - len(best & set(configs))
    title = "Burst loss curves: training (solid, faint) and validation (dashed)" + (
        f"; each method's best configuration shown, {hidden} more in the legend" if hidden else "")
    layout(fig, title, legend_height(len(configs), 520))
    fig.update_layout(xaxis_title="step", yaxis_title="loss",
                      legend={"orientation": "v", "y": 1, "x": 1.02, "tracegroupgap": 0})
    return fig
