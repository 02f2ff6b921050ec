"""`subprof bench`: measure peak memory (and step time) per method × rank, one subprocess per case, next to the
analytic estimate. The work is `subprof.measure.runner` (`build_cases`, `sweep`); this parses and renders."""

# no `from __future__ import annotations`: typer reads the commands' signatures at every start (cli/__init__.py)

from typing import Annotated, Optional

import typer
from rich.table import Table

from subprof.cli.options import (BaseOpt, BatchOpt, BitsOpt, CkptOpt, DtypeOpt, FormatOpt, GapOpt, JsonOpt,
                                 LayerwiseOpt, LossOpt, ModelOpt, ResumeOpt, SeqOpt, ThreadsOpt, CalibrationOpt)
from subprof.cli.ui import (console, count_rows, guarded, interrupted, output_format, parse_int_list, parse_str_list,
                            print_json, print_rows, progress_bar, refuse_unless)
from subprof.errors import SubprofError
from subprof.results import comparable_estimate, comparable_peak


def _gib(b: int | None) -> str:
    return "—" if b is None else f"{b / 2**30:.2f}"


BENCH_COLUMNS = ("model", "method", "implementation", "layerwise", "strategy", "world_size", "rank", "state_bits",
                 "batch", "backend", "status", "measured_gib", "estimated_gib", "error_pct", "step_ms", "opt_step_ms",
                 "opt_over_floor", "tokens_per_s")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1e3 * seconds, 3)


def bench_rows(rows: list[dict]) -> list[dict]:
    """The rows of `render`'s table for `--format csv|markdown`: one per case, GiB (4 decimals) and ms."""
    def g(b: int | None) -> float | None:
        return None if b is None else round(b / 2**30, 4)

    return [{k: r.get(k) for k in ("model", "method", "layerwise", "rank", "state_bits", "batch", "backend", "status",
                                   "tokens_per_s")}
            | {"implementation": r.get("implementation") or "subprof",
               "strategy": r.get("strategy") if (r.get("world_size") or 1) > 1 else None,
               "world_size": r.get("world_size") or 1, "measured_gib": g(comparable_peak(r)),
               "estimated_gib": g(comparable_estimate(r)), "error_pct": r.get("estimate_error_pct"),
               "step_ms": _ms(r.get("median_step_s")), "opt_step_ms": _ms(r.get("optimizer_step_s")),
               "opt_over_floor": r.get("step_over_floor")} for r in rows]


def render(rows: list[dict]) -> None:
    table = Table(title="bench: measured vs estimated peak allocated (GiB = 2^30 B)")
    for col in ("model", "method", "rank", "bits", "batch", "backend", "status", "measured", "estimated", "error %",
                "step ms", "opt step ms", "opt / floor", "tokens/s"):
        table.add_column(col, justify="left" if col in ("model", "method", "backend", "status") else "right")
    for r in rows:
        err = r.get("estimate_error_pct")
        impl = r.get("implementation") or "subprof"
        table.add_row(str(r.get("model")), str(r.get("method")) + ("" if impl == "subprof" else f" ({impl})")
                      + (" (per-layer)" if r.get("layerwise") else "")
                      + (f" ({r.get('strategy')} × {r['world_size']})" if (r.get("world_size") or 1) > 1 else ""),
                      str(r.get("rank") or "—"), str(r.get("state_bits") or "—"), str(r.get("batch")),
                      str(r.get("backend")), str(r.get("status")), _gib(comparable_peak(r)),
                      _gib(comparable_estimate(r)), "—" if err is None else f"{err:+.1f}",
                      "—" if r.get("median_step_s") is None else f"{1e3 * r['median_step_s']:.1f}",
                      "—" if r.get("optimizer_step_s") is None else f"{1e3 * r['optimizer_step_s']:.1f}",
                      "—" if r.get("step_over_floor") is None else f"{r['step_over_floor']:.2f}",
                      "—" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:,.0f}")
    console.print(table)
    if any(r.get("backend") in ("trace", "cpu") for r in rows):
        console.print("trace and cpu rows see tensors only: they are compared with the model-side estimate (without "
                      "the CUDA runtime allocations calibrated on real GPUs); a trace is not a GPU measurement and has "
                      "no times.")
    if any(r.get("step_over_floor") is not None for r in rows):
        console.print("opt / floor: the optimizer step's median time over the floor of its arithmetic (its GEMMs and "
                      "one Adam pass over the projected moments), timed in the same run (subprof/measure/floor.py).")


def bench(
    ctx: typer.Context,
    model: ModelOpt,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: adamw, adamw8bit, galore, osd, ori, "
                                                           "…, and galore-ref (galore-torch's GaLoreAdamW).")] = "galore",
    ranks: Annotated[Optional[str], typer.Option("--ranks", help="Comma-separated ranks, e.g. 128,512.")] = None,
    batch: BatchOpt = 8,
    seq: SeqOpt = 256,
    dtype: DtypeOpt = "bf16",
    state_bits: BitsOpt = None,
    base_optimizer: BaseOpt = "adamw",
    layerwise: LayerwiseOpt = False,
    checkpointing: CkptOpt = "none",
    loss: LossOpt = "full",
    update_gap: GapOpt = None,
    steps: Annotated[int, typer.Option("--steps", help="Training steps per case.", min=1)] = 3,
    backend: Annotated[str, typer.Option("--backend", help="auto (cuda if a GPU is visible, else trace), cuda, "
                                                           "trace (fake tensors) or cpu (small models).")] = "auto",
    gpu_mem: Annotated[Optional[str], typer.Option("--gpu-mem", help="Budget (24GB, 24GiB, 4090): a traced "
                                                   "configuration whose device memory (as `plan` computes it from the "
                                                   "peak) exceeds it less --margin is an `oom` row.")] = None,
    margin: Annotated[float, typer.Option("--margin", help="Safety margin kept free, as a fraction of --gpu-mem "
                                                           "(as in plan).")] = 0.05,
    threads: ThreadsOpt = None,
    calibration: CalibrationOpt = None,
    out: Annotated[str, typer.Option("--out", "-o", help="JSONL file rows are appended to.")] = "reports/bench.jsonl",
    resume: ResumeOpt = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per case before it is a `timeout` row.",
                                           min=1)] = 900.0,
    world_size: Annotated[int, typer.Option("--world-size", help="Ranks of a data-parallel job: trace rank 0 on a "
                                                                 "fake process group (trace), or torchrun on the "
                                                                 "local GPUs (cuda). --batch is per rank.")] = 1,
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes of the job (hsdp replicates across them).")] = 1,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help="ddp, fsdp (default with --world-size), "
                                                                       "fsdp-no-reshard or hsdp.")] = None,
    json_out: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Measure peak memory and step time per method × rank (one subprocess per case), next to the estimate."""
    from subprof.catalog import parse_budget
    from subprof.measure.case import Case, resolve_backend
    from subprof.measure.runner import BudgetRule, build_cases, sweep
    from subprof.plan.calibration import calibration_for

    from subprof.results import check_writable

    fmt = output_format(fmt, json_out)
    refuse_unless(ctx, gpu_mem is not None, ("margin",), "is kept free of a --gpu-mem budget: give --gpu-mem too, or "
                                                         "leave --margin out")
    budget = parse_budget(gpu_mem) if gpu_mem else None
    if not 0 <= margin < 1:
        from subprof.units import percent_hint

        raise SubprofError(f"--margin {margin:g} must be in [0, 1){percent_hint(margin)}")
    calib = calibration_for(budget.gpu.key if budget and budget.gpu else None, calibration)
    rule = BudgetRule(budget_bytes=budget.bytes, margin=margin, calibration=calib) if budget else None
    check_writable(out)
    chosen = resolve_backend(backend.strip().lower())
    if loss == "fused" and chosen != "cuda":
        from subprof.modes import FUSED_NOT_TRACED

        raise SubprofError(FUSED_NOT_TRACED)
    base = dict(batch=batch, seq=seq, dtype=dtype, state_bits=state_bits, layerwise=layerwise,
                checkpointing=checkpointing, loss=loss, update_gap=update_gap, method_options={"base": base_optimizer})
    cases = build_cases(model=model, methods=parse_str_list(methods),
                        ranks=parse_int_list(ranks, "--ranks") if ranks else None, base=base, steps=steps,
                        backend=chosen, threads=threads, world_size=world_size, nodes=nodes,
                        strategy=strategy.strip().lower() if strategy else None)
    rows_before = count_rows(out)
    try:
        with progress_bar(len(cases), f"bench [{chosen}]") as bar:
            bar.label(cases[0].label())

            def advance(case: Case, row: dict | None) -> None:
                bar.advance(f"{case.label()}: {row['status'] if row else 'done before (resume)'}")

            rows = sweep(cases, out=out, resume=resume, timeout=timeout, budget=rule, calibration=calib,
                         on_row=advance)
    except KeyboardInterrupt:
        interrupted(out, count_rows(out) - rows_before)
    if fmt == "json":
        print_json(rows)
        return
    if fmt != "table":
        print_rows(bench_rows(rows), BENCH_COLUMNS, fmt)
        return
    render(rows)
    console.print(f"rows appended to {out}; estimates calibrated by {calib.source}")


def register(app: typer.Typer) -> None:
    app.command()(guarded(bench))
