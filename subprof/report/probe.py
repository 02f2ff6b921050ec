"""The probe in the report (`report --probe FILE`): energy-vs-rank and staleness-vs-gap curves per layer type, as
tables (pandas) and plotly figures. The numbers come from `subprof.plan.probe_curves` (the same code `probe` and
`plan --probe` read)."""

from __future__ import annotations

from typing import Callable

import pandas as pd

from subprof.plan.probe_curves import ProbeRun, probe_summary
from subprof.report.figures import legend_height, log_axis
from subprof.report.words import plural

ALL = "all"


def probe_tables(rows: list[dict]) -> dict[str, pd.DataFrame]:
    """`probe_energy` (type, rank, d, energy), `probe_staleness` (type, rank, gap, staleness, drift),
    `probe_summary` (per type: d, knee, rank reaching 50/80/90%) and `probe_stale_summary` (per type and rank: the
    gap where a stale basis falls below 90/80% of a fresh one, the rotation rate). Empty without probe rows."""
    names = ("probe_energy", "probe_staleness", "probe_summary", "probe_stale_summary")
    if not any(str(r.get("kind", "")).startswith("probe_") for r in rows):
        return {n: pd.DataFrame() for n in names}
    run = ProbeRun.from_rows(rows, "--probe")
    summary = probe_summary(run)
    energy, stale, per_type, per_rank = [], [], [], []
    for kind, e in summary.items():
        for rank, value in e["energy"].items():
            energy.append({"type": kind, "rank": rank, "side": e["side"], "energy": value})
        per_type.append({"type": kind, "side": e["side"], "knee": e["knee"], "rank_at_50": e["rank_at_50"],
                         "rank_at_80": e["rank_at_80"], "rank_at_90": e["rank_at_90"]})
        for rank, s in e["staleness"].items():
            for gap, value in s["curve"].items():
                stale.append({"type": kind, "rank": rank, "gap": gap, "staleness": value,
                              "drift": s["drift"].get(gap)})
            per_rank.append({"type": kind, "rank": rank, "gap_below_90": s["gap_below_90"],
                             "gap_below_80": s["gap_below_80"], "rotation_rate": s["rotation_rate"]})
    h = run.header
    steps = plural(h["steps"], "step") if isinstance(h.get("steps"), int) else f"{h.get('steps')} steps"
    label = (f"{h.get('model')} ({h.get('method')}, {steps}, {h.get('device')}, "
             f"{str(h.get('date', ''))[:10]})")
    out = {"probe_energy": pd.DataFrame(energy), "probe_staleness": pd.DataFrame(stale),
           "probe_summary": pd.DataFrame(per_type), "probe_stale_summary": pd.DataFrame(per_rank)}
    for df in out.values():
        df["probe"] = label
    return out


PROBE_VIEWS = {
    "probe_summary": {"type": ("layer type", None), "side": ("d = min(m, n)", "{:.0f}".format),
                      "knee": ("knee (directions above the mean)", "{:.0f}".format),
                      "rank_at_50": ("rank for 50%", "{:.1f}".format), "rank_at_80": ("rank for 80%", "{:.1f}".format),
                      "rank_at_90": ("rank for 90%", "{:.1f}".format), "probe": ("probe", None)},
    "probe_stale_summary": {"type": ("layer type", None), "rank": ("rank", "{:.0f}".format),
                            "gap_below_90": ("gap below 90% of fresh", "{:.1f}".format),
                            "gap_below_80": ("gap below 80% of fresh", "{:.1f}".format),
                            "rotation_rate": ("rotation rate rad/step", "{:.4f}".format)},
    "probe_energy": {"type": ("layer type", None), "rank": ("rank", "{:.0f}".format), "side": ("d", "{:.0f}".format),
                     "energy": ("energy share E(r)", "{:.4f}".format)},
    "probe_staleness": {"type": ("layer type", None), "rank": ("rank", "{:.0f}".format),
                        "gap": ("gap k", "{:.0f}".format), "staleness": ("stale / fresh share s(k)", "{:.4f}".format),
                        "drift": ("overlap ‖PᵀP'‖²/r", "{:.4f}".format)},
}


def _style(kind: str) -> dict:
    return {"dash": "dash", "color": "#000", "width": 3} if kind == ALL else {}


def fig_probe_energy(energy: pd.DataFrame, layout: Callable):
    """E(r) against rank (log axis), one line per layer type; all weights thick and dashed. `layout(fig, title,
    height)` is the page's common figure style."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for kind, part in energy.groupby("type", sort=False):
        fig.add_scatter(x=part["rank"], y=part["energy"], mode="lines+markers", name=str(kind), line=_style(kind))
    layout(fig, f"Gradient energy captured by the top-r singular subspace — {energy['probe'].iloc[0]}", 460)
    fig.update_layout(xaxis_title="rank r (log)", yaxis_title="E(r) = Σ σᵢ² (i < r) / ‖G‖²", yaxis_range=[0, 1.02])
    fig.update_xaxes(**log_axis(energy["rank"]))
    return fig


def fig_probe_staleness(stale: pd.DataFrame, layout: Callable):
    """s(k) against gap (log axis), one line per layer type and rank; the middle rank shown, the others one click
    away in the legend."""
    import plotly.graph_objects as go

    ranks = sorted(stale["rank"].unique())
    shown = ranks[len(ranks) // 2]
    fig = go.Figure()
    for (rank, kind), part in stale.groupby(["rank", "type"], sort=False):
        fig.add_scatter(x=part["gap"], y=part["staleness"], mode="lines+markers", name=f"r{rank} {kind}",
                        legendgroup=f"r{rank}", line=_style(kind), visible=True if rank == shown else "legendonly")
    layout(fig, f"Staleness: share a basis from step t keeps at t + k, over a fresh one's (rank {shown} shown; "
                 "other ranks in the legend)", legend_height(len(fig.data), 480))
    fig.update_layout(xaxis_title="gap k (steps, log)", yaxis_title="s(k)", yaxis_range=[0, 1.02],
                      legend={"orientation": "v", "y": 1, "x": 1.02, "tracegroupgap": 0})
    fig.update_xaxes(**log_axis(stale["gap"]))
    return fig


def probe_summary_line(tables: dict[str, pd.DataFrame]) -> str | None:
    """One sentence for the report's summary, from the all-weights rows."""
    per_type, per_rank = tables.get("probe_summary"), tables.get("probe_stale_summary")
    if per_type is None or not len(per_type):
        return None
    row = per_type[per_type["type"] == ALL].iloc[0]
    text = f"Probe {row['probe']}: the top-r subspace holds 80% of the gradient energy at rank " + (
        f"{row['rank_at_80']:.0f}" if pd.notna(row["rank_at_80"]) else "above the largest probed rank") + \
        f" of d = {row['side']:.0f}"
    if per_rank is not None and len(per_rank):
        stale = per_rank[per_rank["type"] == ALL]
        if len(stale):
            r = stale.iloc[len(stale) // 2]
            text += (f"; at rank {r['rank']:.0f} a stale basis keeps 80% of a fresh one's share for "
                     + (plural(r["gap_below_80"], "step") if pd.notna(r["gap_below_80"]) else
                        "every measured gap"))
    return text + "."
