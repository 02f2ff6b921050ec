"""`subprof proj`: time one projection update of each method on the model's real weight shapes, next to the two-GEMM
floor G(GᵀP), with ratio columns and the projection time per optimizer step. The work is `subprof.timing.run_proj`."""

# no `from __future__ import annotations`: typer reads the commands' signatures at every start (cli/__init__.py)

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from subprof.cli.options import DeviceOpt, FormatOpt, JsonOpt, ModelOpt, ResumeOpt, ThreadsOpt
from subprof.cli.ui import (console, count_rows, err_console, guarded, interrupted, output_format, parse_int_list,
                            print_json, print_rows, progress_bar)
from subprof.errors import SubprofError


def proj(
    model: ModelOpt,
    ranks: Annotated[str, typer.Option("--ranks", help="Comma-separated ranks (capped at each shape's smaller "
                                                       "side).")] = "128,512",
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated timed updates: the svd and rsvd "
                                                           "baselines, any method (galore, osd, ori, …) and named "
                                                           "forms such as osd-autograd; or all. The two-GEMM floor "
                                                           "is always timed.")] = "all",
    dtype: Annotated[str, typer.Option("--dtype", help="Gradient dtype: fp32 or bf16 (SVD always runs on "
                                                       "G.float(), as GaLore).")] = "fp32",
    device: DeviceOpt = "auto",
    repeats: Annotated[int, typer.Option("--repeats", help="Timed calls per case (median and spread).",
                                         min=1)] = 5,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.", min=0)] = 1,
    update_gap: Annotated[Optional[int], typer.Option("--update-gap", "-T", help="Refresh interval for the periodic "
                                                      "methods in the per-step sum (default: each method's).",
                                                      min=1)] = None,
    shapes: Annotated[Optional[str], typer.Option("--shapes", help="Only these of the model's weight shapes, "
                                                  "e.g. 2048x5461 (the per-step sum then needs all of them).")] = None,
    out: Annotated[Path, typer.Option("--out", help="JSONL file the rows are appended to.")] = Path(
        "reports/proj.jsonl"),
    resume: ResumeOpt = False,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Time projection updates (SVD, randomized SVD, streaming steps) on the model's weight shapes."""
    from subprof.catalog import load_model
    from subprof.measure.model import torch_threads
    from subprof.measure.timing import FLOOR, parse_methods, parse_shapes, resolve_device, run_proj, torch_dtype
    from subprof.results import ResultLog

    fmt = output_format(fmt, json_out)
    cfg = load_model(model)
    rank_list = parse_int_list(ranks, "--ranks")
    if min(rank_list) <= 0:
        raise SubprofError(f"--ranks must be positive, got {ranks}")
    method_list = parse_methods(methods)
    torch_dtype(dtype)
    dev = resolve_device(device)
    shape_list = parse_shapes(shapes, cfg)
    log = ResultLog(out, resume=resume)
    rows_before = count_rows(out)
    total = sum(len({min(r, m, n) for r in rank_list}) for m, n in shape_list) * (len(method_list) + 1)
    with torch_threads(threads) as used_threads:
        if fmt == "table":
            err_console.print(f"timing {len(method_list)} updates + the {FLOOR} on {len(shape_list)} shapes of "
                              f"{cfg.name} × ranks {', '.join(map(str, rank_list))} on {dev} ({dtype}, "
                              f"{used_threads} threads), {warmup} warm-up + {repeats} timed calls each")
        try:
            with progress_bar(total, "proj", quiet=fmt != "table") as bar:
                result = run_proj(cfg, rank_list, method_list, dtype=dtype, device=dev, repeats=repeats,
                                  warmup=warmup, update_gap=update_gap, shapes=shape_list, log=log, progress=bar)
        except KeyboardInterrupt:
            interrupted(out, count_rows(out) - rows_before, noun="timing")
    if fmt == "json":
        print_json({"model": cfg.name, "device": dev, "dtype": dtype, "out": str(out), **result})
        return
    if fmt != "table":
        print_rows(timing_rows(result["rows"]), TIMING_COLUMNS, fmt)
        return
    console.print(timing_table(result["rows"], title=f"projection update time, {cfg.name}, {dev} "
                                                     f"({result['rows'][0]['device_name']}), {dtype}"))
    console.print(per_step_table(result["per_step"], title=f"projection time per optimizer step, all projected "
                                                          f"layers of {cfg.name}"))
    noisy = [r for r in result["rows"] if r.get("noisy")]
    if noisy:
        console.print(f"[yellow]warning:[/] {len(noisy)} of {len(result['rows'])} timings vary by more than half "
                      f"their median between calls (a busy machine?); rerun with --repeats {max(20, 4 * repeats)} "
                      f"and fewer --threads, and compare ratios only within one run")
    if any(r.get("degenerate") for r in result["rows"]):
        console.print("ranks marked 'spans' equal the shape's smaller side: P spans that side, so tracking methods "
                      "have nothing to update and no ratio is given")
    console.print(f"rows appended to {out}")


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


TIMING_COLUMNS = ("shape", "rank", "spans", "method", "status", "median_ms", "spread_ms", "noisy", "svd_over_method",
                  "method_over_floor", "error")


def timing_rows(rows: list[dict]) -> list[dict]:
    """The rows of `timing_table` for `--format csv|markdown`: one per shape × rank × method, the JSON rows' values,
    ms to 4 decimals and ratios to 3 (spans: the rank equals the shape's smaller side)."""
    def rounded(v: float | None, digits: int) -> float | None:
        return None if v is None else round(v, digits)

    return [{k: r.get(k) for k in TIMING_COLUMNS}
            | {"shape": f"{r['shape'][0]}x{r['shape'][1]}", "spans": bool(r.get("degenerate")),
               "median_ms": rounded(r.get("median_ms"), 4), "spread_ms": rounded(r.get("spread_ms"), 4),
               "svd_over_method": rounded(r.get("svd_over_method"), 3),
               "method_over_floor": rounded(r.get("method_over_floor"), 3)} for r in rows]


def timing_table(rows: list[dict], *, title: str) -> Table:
    table = Table(title=title)
    for col in ("shape m×n", "rank", "method", "median ms", "spread ms", "SVD / method", "method / floor"):
        table.add_column(col, justify="left" if col in ("shape m×n", "method") else "right")
    for r in rows:
        shape = f"{r['shape'][0]}×{r['shape'][1]}"
        if r["status"] != "ok":
            table.add_row(shape, str(r["rank"]), r["method"], f"[red]{r['error']}[/]", "", "", "")
            continue
        rank = f"{r['rank']} spans" if r.get("degenerate") else str(r["rank"])
        spread = _fmt(r["spread_ms"], ".3f") + (" !" if r.get("noisy") else "")
        table.add_row(shape, rank, r["method"], _fmt(r["median_ms"], ".3f"), spread,
                      _fmt(r["svd_over_method"], ".1f"), _fmt(r["method_over_floor"], ".2f"))
    table.caption = "spread = max − min over the timed calls (! : more than half the median); ratios from this run"
    return table


def per_step_table(rows: list[dict], *, title: str) -> Table:
    table = Table(title=title)
    for col in ("method", "rank", "update gap", "ms per step"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        ms = None if r["seconds_per_step"] is None else r["seconds_per_step"] * 1e3
        table.add_row(r["method"], str(r["rank"]), str(r["update_gap"]), _fmt(ms, ".2f"))
    table.caption = "Σ over projected weights of update time / update gap (SVD-type refreshes amortised)"
    return table


def register(app: typer.Typer) -> None:
    app.command()(guarded(proj))
