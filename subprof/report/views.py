"""The data tables of `subprof report` as HTML: which columns of each table are shown, under which header,
formatted how. Every figure's data is shown again as one of these tables under it."""

from __future__ import annotations

from typing import Callable

import pandas as pd

from subprof.report.figures import component_order
from subprof.report.probe import PROBE_VIEWS
from subprof.report.tables import GIB

# which columns, under which header, formatted how
_G = "{:.2f}".format
_I = "{:.0f}".format
_N = "{:,.0f}".format


def quality_cost(v: float) -> str:
    """0 for full rank; else two significant figures on the evidence's scale."""
    return "0 (full rank)" if v == 0 else f"{v:.2g}"


TABLE_VIEWS: dict[str, dict[str, tuple[str, Callable | None]]] = {
    "decision": {"model": ("model", None), "option": ("option", None), "gpu_name": ("GPU", None),
                 "gpus": ("GPUs", _I), "nodes": ("nodes", _I), "short_config": ("configuration", None),
                 "config": ("in full", None), "tokens_per_s": ("tokens/s (pred.)", _N),
                 "hours": ("wall-clock hours", "{:,.1f}".format), "gpu_hours": ("GPU-hours", "{:,.1f}".format),
                 "cost_usd": ("cost USD", _N), "device_used_gib": ("device used GiB", _G),
                 "usable_gib": ("usable GiB", _G), "quality_cost": ("quality cost", quality_cost)},
    "fit_matrix": {"model": ("model", None), "gpu_name": ("GPU", None), "gpu_memory_label": ("label", None),
                   "fit": ("fit", None), "short_config": ("best configuration", None), "config": ("in full", None),
                   "batch": ("micro-batch", _I),
                   "estimated_peak_allocated_gib": ("peak alloc. GiB", _G), "device_used_gib": ("device used GiB", _G),
                   "usable_gib": ("usable GiB", _G), "max_lowrank_rank": ("max low-rank rank", _I),
                   "tokens_per_s": ("tokens/s (pred.)", "{:,.0f}".format),
                   "quality_cost": ("quality cost", quality_cost)},
    "cost": {"model": ("model", None), "gpu_name": ("GPU", None), "config": ("configuration", None),
             "tokens_per_s": ("tokens/s (pred.)", "{:,.0f}".format), "hours": ("GPU-hours", "{:,.1f}".format),
             "usd_per_hour": ("USD/h", "{:.2f}".format), "cost_usd": ("cost USD", "{:,.0f}".format),
             "usd_per_billion_tokens": ("USD per 1B tokens", "{:,.2f}".format),
             "fastest_config": ("fastest that fits", None),
             "fastest_tokens_per_s": ("its tokens/s", "{:,.0f}".format),
             "fastest_hours": ("its GPU-hours", "{:,.1f}".format),
             "fastest_cost_usd": ("its cost USD", "{:,.0f}".format)},
    "gpus": {"name": ("GPU", None), "memory_label": ("label", None), "memory_gib": ("GiB (driver)", _G),
             "bf16_tflops": ("dense BF16 TFLOP/s", "{:,.0f}".format), "bandwidth_gbs": ("GB/s", "{:,.0f}".format),
             "usd_per_hour": ("USD/h", "{:.2f}".format), "price_date": ("price date", None),
             "price_source": ("price source", None)},
    "bench": {"model": ("model", None), "method": ("method", None), "rank": ("rank", _I), "batch": ("batch", _I),
              "seq": ("seq", _I), "backend": ("backend", None), "device": ("device", None),
              "verdict": ("verdict", None), "estimated_gib": ("estimated GiB", _G),
              "measured_gib": ("measured GiB", _G),
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
                "comm_share": ("comm share", "{:.1%}".format), "quality_cost": ("quality cost", quality_cost)},
}
TABLE_VIEWS["deadline"] = {**TABLE_VIEWS["scaling"], "meets_deadline": ("meets deadline", None)}


TABLE_VIEWS.update(PROBE_VIEWS)


def breakdown_wide(df: pd.DataFrame) -> pd.DataFrame:
    """The long breakdown as one row per model × configuration, one GiB column per component, plus the total."""
    if not len(df):
        return df
    keys = ["model", "gpu_name", "config", "batch", "fits", "peak_phase"]
    wide = df.pivot_table(index=keys, columns="component", values="gib", aggfunc="sum", sort=False).reset_index()
    comps = component_order(df["component"])
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
