"""The decision a procurement report leads with: per model, the cheapest and the fastest GPU option for the token
budget, each with the configuration `plan` recommends there and its predicted quality cost against full-rank
AdamW. Every number is read from the report's tables (`tables.fit_matrix`, `tables.cost_table`,
`scaling.scaling_table`); nothing is planned here.

cheapest = least USD for the token budget (ties: the faster); fastest = least wall-clock hours (ties: the cheaper).
"""

from __future__ import annotations

import pandas as pd

from subprof.report.tables import ReportRequest
from subprof.report.words import duration, usd

COLUMNS = ["model", "option", "gpu", "gpu_name", "gpus", "nodes", "short_config", "config", "tokens_per_s", "hours",
           "gpu_hours", "cost_usd", "device_used_gib", "usable_gib", "quality_cost"]


def options(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every GPU option that fits, one row each: one GPU of each type (the cost table, with the fit matrix's memory
    and quality cost), and — with `--gpus-per-node`/`--nodes` — every larger count (the scaling table)."""
    fit = tables["fit_matrix"].set_index(["model", "gpu"])
    rows = []
    for r in tables["cost"].dropna(subset=["cost_usd"]).to_dict(orient="records"):
        f = fit.loc[(r["model"], r["gpu"])]
        rows.append({"model": r["model"], "gpu": r["gpu"], "gpu_name": r["gpu_name"], "gpus": 1, "nodes": 1,
                     "short_config": r["short_config"], "config": r["config"], "tokens_per_s": r["tokens_per_s"],
                     "hours": r["hours"], "gpu_hours": r["hours"], "cost_usd": r["cost_usd"],
                     "device_used_gib": f["device_used_gib"], "usable_gib": f["usable_gib"],
                     "quality_cost": f["quality_cost"]})
    scaling = tables.get("scaling")
    if scaling is not None and len(scaling):
        for r in scaling[scaling["gpus"] > 1].dropna(subset=["cost_usd"]).to_dict(orient="records"):
            rows.append({"model": r["model"], "gpu": r["gpu"], "gpu_name": r["gpu_name"], "gpus": r["gpus"],
                         "nodes": r["nodes"], "short_config": r["short_config"], "config": r["description"],
                         "tokens_per_s": r["tokens_per_s"], "hours": r["hours"], "gpu_hours": r["hours"] * r["gpus"],
                         "cost_usd": r["cost_usd"], "device_used_gib": r["device_used_gib"],
                         "usable_gib": r["usable_gib"], "quality_cost": r["quality_cost"]})
    return pd.DataFrame(rows, columns=COLUMNS[:1] + COLUMNS[2:])


def decision_table(req: ReportRequest, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model: the cheapest option, then the fastest (one row, option "cheapest and fastest", when they are the
    same); a model that fits no option gets one row, option "nothing fits"."""
    every = options(tables)
    rows = []
    for model in req.models:
        own = every[every["model"] == model.name]
        if not len(own):
            rows.append({"model": model.name, "option": "nothing fits"})
            continue
        cheap = own.sort_values(["cost_usd", "hours"], kind="stable").iloc[0]
        fast = own.sort_values(["hours", "cost_usd"], kind="stable").iloc[0]
        same = cheap.name == fast.name
        rows.append({**cheap.to_dict(), "option": "cheapest and fastest" if same else "cheapest"})
        if not same:
            rows.append({**fast.to_dict(), "option": "fastest"})
    return pd.DataFrame(rows, columns=COLUMNS)


def decision_lines(decision: pd.DataFrame) -> list[str]:
    """One line per model for the terminal: "7b: cheapest L40S, $663 in 32.1 days (adamw · 8-bit); fastest …"."""
    lines = []
    for model, rows in decision.groupby("model", sort=False):
        parts = []
        for r in rows.to_dict(orient="records"):
            if r["option"] == "nothing fits":
                parts.append("nothing fits on any selected GPU")
                continue
            where = r["gpu_name"] if r["gpus"] == 1 else f"{r['gpus']:.0f}× {r['gpu_name']}"
            parts.append(f"{r['option']} {where}, {usd(r['cost_usd'])} in {duration(r['hours'])} "
                         f"({r['short_config']})")
        lines.append(f"{model}: " + "; ".join(parts))
    return lines


# what each optional section shows, the option that adds it, and the command that writes its rows
OPTIONAL_SECTIONS = {
    "scaling": ("several GPUs per job", "--gpus-per-node 1,8 --nodes 1,2", None),
    "bench": ("estimated vs measured memory", "--bench FILE", "subprof bench"),
    "projection": ("projection-update timings", "--proj FILE", "subprof proj"),
    "burst": ("short training runs", "--burst FILE", "subprof burst"),
    "probe_energy": ("the gradient subspace", "--probe FILE", "subprof probe"),
}


def absent_sections(tables: dict[str, pd.DataFrame]) -> list[tuple[str, str, str | None]]:
    """(what the section would show, the option that adds it, the command writing its rows) for every optional
    section without data."""
    return [spec for name, spec in OPTIONAL_SECTIONS.items() if tables.get(name) is None or not len(tables[name])]
