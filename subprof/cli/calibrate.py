"""`subprof calibrate`: measure this GPU once (or fit rows measured elsewhere) and write a calibration record that
estimate, plan, bench and report use for this GPU. The work is `subprof.measure.calibrate`."""

# no `from __future__ import annotations`: typer reads the commands' signatures at every start (cli/__init__.py)

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from subprof.cli.options import JsonOpt, ResumeOpt
from subprof.cli.ui import console, count_rows, guarded, interrupted, print_json, progress_bar
from subprof.errors import SubprofError


def calibrate(
    quick: Annotated[bool, typer.Option("--quick", help="60m and 350m only; about 8 minutes on an H100-class GPU.")]
    = False,
    out: Annotated[Path, typer.Option("--out", help="Folder for the rows (calibrate_<gpu>.jsonl) and the record "
                                                    "(calibration_<gpu>_<date>.json).")] = Path("profiles/measured"),
    budget_minutes: Annotated[Optional[float], typer.Option("--budget-minutes", min=1, help="Stop starting new "
                                                            "cases after this long (default: 8 with --quick, 15)."
                                                            )] = None,
    from_rows: Annotated[Optional[Path], typer.Option("--from", help="Fit a record on `subprof bench --backend cuda` "
                                                      "rows measured elsewhere (no GPU needed).")] = None,
    resume: ResumeOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Measure this GPU (CUDA context, runtime workspace, allocator reserve, training peaks, projection timings,
    matmul rate) and write a calibration record every estimate and plan for this GPU then uses."""
    from subprof.measure import calibrate as lib
    from subprof.plan.calibration import DEFAULT
    from subprof.results import check_writable, read_result_files

    if out.exists() and not out.is_dir():
        raise SubprofError(f"--out {str(out)!r} is a file; give a folder (the rows and the record go inside it)")
    check_writable(out / "calibration.probe", example="calibration")
    if from_rows is not None:
        result = lib.fit_rows(read_result_files([from_rows], "--from"), out)
    else:
        import torch

        if not torch.cuda.is_available():
            raise SubprofError(f"calibrate measures a CUDA GPU and none is visible here; meanwhile estimates use the "
                               f"{DEFAULT.source}; `subprof calibrate --from rows.jsonl` fits a record from "
                               f"`bench --backend cuda` rows measured elsewhere")
        sweep = lib.Sweep(out=out, quick=quick, budget_s=60 * (budget_minutes or (8 if quick else 15)))
        rows_before = sum(count_rows(p) for p in out.glob("calibrate_*.jsonl"))
        try:
            with progress_bar(len(lib.cases(sweep)), "calibrate", quiet=json_out) as bar:
                result = lib.run(sweep, resume=resume, progress=bar)
        except KeyboardInterrupt:
            interrupted(out, sum(count_rows(p) for p in out.glob("calibrate_*.jsonl")) - rows_before)
    if json_out:
        print_json(result)
        return
    render(result)


def render(result: dict) -> None:
    table = Table(title="estimated vs measured peak allocated under the new calibration (GiB = 2^30 B)")
    for col in ("configuration", "model", "batch", "measured", "estimated", "error %"):
        table.add_column(col, justify="left" if col in ("configuration", "model") else "right")
    for e in result["errors"]:
        err = f"{e['error_pct']:+.1f}" + (" ⚠" if e["flagged"] else "")
        table.add_row(e["config"], e["model"], str(e["batch"]), f"{e['peak_allocated_bytes'] / 2**30:.2f}",
                      f"{e['estimated_peak_allocated_bytes'] / 2**30:.2f}", err)
    console.print(table)
    record = result["record"]
    if record:
        console.print(f"record: {result['record_path']} — CUDA runtime {record['cuda_runtime_allocated_bytes'] / 2**20:.0f}"
                      f" MiB, context {record['cuda_context_bytes'] / 2**30:.2f} GiB, reserve "
                      f"{record['reserve_per_logits_byte']:.2f} × logits; leave-one-out worst error "
                      f"{record['leave_one_out_error_pct']}%; used automatically for {record['gpu'] or 'no catalogue GPU'}")
    flagged = [e for e in result["errors"] if e["flagged"]]
    if flagged:
        console.print(f"[yellow]{len(flagged)} rows miss by more than 3% (⚠)[/]")


def register(app: typer.Typer) -> None:
    app.command()(guarded(calibrate))
