"""Building a report: plan every model × GPU cell, derive every table, the summary and the assumptions; write the
tables as CSV. The HTML page that draws them is `subprof.report.html`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from subprof.errors import SubprofError
from subprof.report.decision import decision_table
from subprof.report.measured import bench_table, burst_summary, burst_table, proj_table
from subprof.report.probe import probe_tables
from subprof.report.scaling import deadline_table, scaling_assumption, scaling_summary, scaling_table
from subprof.report.summary import assumptions, summary_lines
from subprof.report.tables import (Cell, ReportRequest, cost_table, fit_matrix, gpu_table, memory_breakdown,
                                   plan_cells)


@dataclass(kw_only=True, slots=True)
class Report:
    request: ReportRequest
    cells: list[Cell]
    tables: dict[str, pd.DataFrame]
    summary: list[str]
    assumptions: list[str]

    def to_json(self) -> dict:
        """Every table as a list of records (NaN → null), with the summary and the assumptions."""
        return {"summary": self.summary, "assumptions": self.assumptions,
                "tables": {name: _records(df) for name, df in self.tables.items()}}


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in df.astype(object).to_dict(orient="records")]


def build_report(req: ReportRequest, on_cell: Callable[[str], None] | None = None) -> Report:
    """Plan every model × GPU cell, then derive every table, the summary and the assumptions; last the decision
    (cheapest and fastest option per model), which reads the single-GPU and the GPU-count tables."""
    cells = plan_cells(req, on_cell)
    tables = {
        "fit_matrix": fit_matrix(cells),
        "memory_breakdown": memory_breakdown(req, cells),
        "cost": cost_table(req, cells),
        "gpus": gpu_table(req),
        "bench": bench_table(req.bench_rows),
        "projection": proj_table(req.proj_rows),
        "burst": burst_table(req.burst_rows),
        "burst_summary": burst_summary(req.burst_rows),
        **probe_tables(req.probe_rows),
    }
    summary, assumed = summary_lines(req, tables), assumptions(req)
    if req.multi_gpu:
        tables["scaling"] = scaling_table(req, on_cell)
        tables["deadline"] = deadline_table(tables["scaling"], req.days)
        summary += scaling_summary(req, tables["deadline"])
        assumed.append(scaling_assumption(req))
    tables["decision"] = decision_table(req, tables)
    return Report(request=req, cells=cells, tables=tables, summary=summary, assumptions=assumed)


def write_csv(report: Report, folder: str | Path) -> list[Path]:
    """One CSV per table: `<folder>/<table>.csv`."""
    folder = Path(folder)
    out = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, df in report.tables.items():
            out.append(folder / f"{name}.csv")
            df.to_csv(out[-1], index=False)
    except OSError as exc:
        raise SubprofError(f"cannot write CSV files to {str(folder)!r}: {exc.strerror or exc}") from None
    return out
