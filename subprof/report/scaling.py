"""The multi-GPU part of a procurement report (`report --gpus-per-node 1,2,4,8 [--nodes …] [--days D]`): one `plan`
per model × GPU type × GPU count (the same search as `subprof plan --gpus N`, data parallel under the best fitting
strategy), the wall-clock hours and the cost of the token budget for each, and the cheapest configuration that
finishes within the deadline. Every number comes from `subprof.plan`; nothing here is measured.

hours = tokens / job tokens/s / 3600 (wall clock); cost = hours × GPUs × USD per GPU-hour.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from subprof.catalog import Budget
from subprof.plan.comm import OVERLAP
from subprof.plan.planner import PlanRequest, plan
from subprof.report.figures import FONT
from subprof.report.tables import GIB, ReportRequest, quality_cost
from subprof.report.words import short_config


def gpu_counts(req: ReportRequest) -> list[tuple[int, int]]:
    """(GPUs, nodes) pairs of the matrix: every --gpus-per-node × --nodes."""
    return sorted({(g * n, n) for g in req.gpus_per_node for n in req.nodes})


def scaling_table(req: ReportRequest, on_cell: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per model × GPU type × GPU count: the best configuration, its strategy, per-rank device memory, job
    tokens/s, hours, cost and the share of a step spent on communication."""
    rows = []
    for model in req.models:
        for gpu in req.gpus:
            usd, _ = req.price(gpu)
            for count, nodes in gpu_counts(req):
                budget = Budget(gpu.memory_bytes, f"{gpu.name}: {gpu.memory_bytes / GIB:.2f} GiB", gpu)
                p = plan(PlanRequest(model=model, budget=budget, methods=req.methods, seq=req.seq, dtype=req.dtype,
                                     margin=req.margin, gpu=gpu, utilization=req.utilization, gpus=count,
                                     nodes=nodes, strategy=req.strategy if count > 1 else "auto",
                                     evidence=req.evidence, calibration=req.calibration(gpu)))
                rows.append(_row(req, model.name, gpu, count, nodes, usd, p))
                if on_cell is not None:
                    on_cell(f"{model.name} on {count}× {gpu.name}")
    return pd.DataFrame(rows)


def _row(req: ReportRequest, model: str, gpu, count: int, nodes: int, usd: float, p) -> dict:
    rec = p.recommendation
    row = {"model": model, "gpu": gpu.key, "gpu_name": gpu.name, "gpus": count, "nodes": nodes,
           "usd_per_gpu_hour": usd, "tokens": req.tokens, "strategy": None, "config": "nothing fits",
           "short_config": None, "description": None, "batch": None, "device_used_gib": None,
           "usable_gib": p.request.usable_bytes / GIB, "tokens_per_s": None, "hours": None, "days": None,
           "cost_usd": None, "comm_share": None, "quality_cost": None}
    if rec is None:
        return row
    tps = rec.throughput.tokens_per_s
    hours = req.tokens / tps / 3600
    row.update(strategy=getattr(getattr(rec.estimate, "parallel", None), "strategy", "single GPU"),
               config=rec.config.label(), short_config=short_config(rec.config), description=rec.describe(),
               batch=rec.config.batch, quality_cost=quality_cost(p, rec),
               device_used_gib=rec.estimate.device_used_bytes / GIB, tokens_per_s=round(tps, 1), hours=hours,
               days=hours / 24, cost_usd=hours * count * usd, comm_share=getattr(rec.throughput, "comm_share", 0.0))
    return row


def deadline_table(scaling: pd.DataFrame, days: float | None) -> pd.DataFrame:
    """Per model: the cheapest GPU type × count that finishes within `days` (ties: the faster), or the fastest of
    all when none does (flagged `meets_deadline` False)."""
    rows = []
    if days is None or not len(scaling):
        return pd.DataFrame(rows)
    for model, group in scaling.groupby("model", sort=False):
        done = group[group["hours"].notna()]
        if not len(done):
            continue
        within = done[done["days"].astype(float) <= days]
        if len(within):
            pick = within.sort_values(["cost_usd", "hours"]).iloc[0]
        else:
            pick = done.sort_values("hours").iloc[0]
        rows.append({**pick.to_dict(), "deadline_days": days, "meets_deadline": bool(len(within))})
    return pd.DataFrame(rows)


def scaling_summary(req: ReportRequest, deadline: pd.DataFrame) -> list[str]:
    lines = []
    for r in deadline.to_dict(orient="records"):
        where = f"{r['gpus']}× {r['gpu_name']}" + (f" on {r['nodes']} nodes" if r["nodes"] > 1 else "")
        verdict = "cheapest within" if r["meets_deadline"] else "nothing finishes within"
        lines.append(f"{r['model']}, {req.tokens / 1e9:g}B tokens, {verdict} {r['deadline_days']:g} days: {where} "
                     f"({r['strategy']}, {r['config']}) — {r['days']:.1f} days, ${r['cost_usd']:,.0f}, "
                     f"communication {100 * r['comm_share']:.0f}% of a step"
                     + ("" if r["meets_deadline"] else " (the fastest configuration)") + ".")
    return lines


def scaling_assumption(req: ReportRequest) -> str:
    counts = ", ".join(f"{g}" + (f" on {n} nodes" if n > 1 else "") for g, n in gpu_counts(req))
    return (f"GPU counts: {counts}; data parallel (strategy {req.strategy}: ddp, FSDP2 with or without resharding, or "
            f"HSDP across nodes), memory per rank, global batch split over the ranks; hours are wall clock and cost "
            f"counts every GPU. Communication: {OVERLAP}; links from profiles/gpus.toml (NVLink/PCIe in a node, "
            f"the NIC share per GPU between nodes — the least certain figures).")


def fig_scaling(df: pd.DataFrame, model: str):
    """GPU type × GPU count heatmap of wall-clock days for the token budget; each cell: days and cost, and — with
    up to four GPU counts, where a cell is wide enough — the strategy and the communication share (always in the
    hover text, with the configuration)."""
    import plotly.graph_objects as go

    d = df[df["model"] == model]
    gpus = list(dict.fromkeys(d["gpu_name"]))
    counts = sorted(set(zip(d["gpus"], d["nodes"])))
    wide = len(counts) <= 4
    labels = [f"{g} GPU" + ("s" if g > 1 else "") + (f"<br>{n} nodes" if n > 1 else "") for g, n in counts]
    z, text, hover = [], [], []
    for name in gpus:
        zr, tr, hr = [], [], []
        for (g, n), label in zip(counts, labels):
            r = d[(d["gpu_name"] == name) & (d["gpus"] == g) & (d["nodes"] == n)].iloc[0]
            where = f"<b>{name}, {label.replace('<br>', ' on ')}</b>"
            if pd.isna(r["days"]):
                zr.append(None), tr.append("nothing<br>fits"), hr.append(f"{where}: nothing fits")
                continue
            zr.append(float(r["days"]))
            how = "one GPU" if g == 1 else f"{r['strategy']} · comm {100 * r['comm_share']:.0f}%"
            tr.append(f"{r['days']:,.1f} d · ${r['cost_usd']:,.0f}<br>{how}" if wide else
                      f"{r['days']:,.1f} d<br>${r['cost_usd']:,.0f}")
            hr.append(f"{where}: {r['days']:,.1f} days, ${r['cost_usd']:,.0f}<br>{r['strategy']}, communication "
                      f"{100 * r['comm_share']:.0f}% of a step<br>{r['description']}")
        z.append(zr), text.append(tr), hover.append(hr)
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=gpus, text=text, texttemplate="%{text}", customdata=hover,
                               hovertemplate="%{customdata}<extra></extra>", colorscale="Blues_r",
                               colorbar={"title": {"text": "days"}}, xgap=3, ygap=3, textfont={"size": 11}))
    fig.update_layout(title={"text": f"{model}: wall-clock days and cost of {d['tokens'].iloc[0] / 1e9:g}B tokens by "
                                     "GPU type × count (best configuration per cell)", "x": 0,
                             "font": {"size": 15}},
                      height=140 + 46 * len(gpus), template="plotly_white", margin={"l": 20, "t": 70, "b": 20},
                      font={"family": FONT, "size": 12})
    fig.update_xaxes(automargin=True, tickangle=0)
    fig.update_yaxes(automargin=True, autorange="reversed")
    return fig
