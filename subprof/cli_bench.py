"""`subprof bench`: measure peak memory (and step time) per method × rank, one subprocess per case, next to the
analytic estimate. Rows are appended to a JSONL file the moment each case ends; `--resume` skips finished cases.

`build_cases` and `sweep` are the library functions; `bench` only parses flags and renders.
"""

from __future__ import annotations

from typing import Annotated, Callable, Iterable, Optional

import typer
from rich.table import Table

from subprof.errors import SubprofError
from subprof.measure import KEY_FIELDS, Case, comparable_peak, resolve_backend, run_case
from subprof.ui import (BatchOpt, DtypeOpt, JsonOpt, ModelOpt, SeqOpt, console, err_console, guarded,
                        parse_int_list, parse_str_list, print_json, progress_bar)

REFERENCE = "galore-ref"  # galore-torch's own GaLoreAdamW, run side by side with ours
DONE = ("ok", "oom", "diverged", "timeout")  # statuses --resume does not retry (errors are retried)


def build_cases(*, model: str, methods: str, ranks: str | None, batch: int, seq: int, dtype: str,
                state_bits: int | None, layerwise: bool, checkpointing: bool, update_gap: int | None, steps: int,
                backend: str, budget_bytes: int | None = None) -> list[Case]:
    """method × rank cases, validated by the memory model's `TrainConfig` (so a bad rank or dtype is one line).
    Methods without a projection get one case; projected methods one per rank (their default rank if none)."""
    from subprof.catalog import load_model
    from subprof.memory import TrainConfig
    from subprof.methods import parse_methods

    cfg = load_model(model)
    rank_list: list[int | None] = parse_int_list(ranks, "--ranks") if ranks else [None]
    cases = []
    for name in parse_str_list(methods):
        if name.lower() == REFERENCE:
            spec_name, forced = "galore", None
        else:
            spec, forced = parse_methods(name)[0]
            spec_name = spec.name
        if forced is not None and state_bits not in (None, forced):
            raise SubprofError(f"--methods {name} implies --state-bits {forced}")
        for rank in rank_list:
            tc = TrainConfig(model=cfg, method=spec_name, rank=rank, update_gap=update_gap,
                             state_bits=forced or state_bits, layerwise=layerwise, dtype=dtype, batch=batch, seq=seq,
                             checkpointing=checkpointing)
            case = Case(model=model, method=REFERENCE if name.lower() == REFERENCE else spec_name, rank=tc.rank,
                        update_gap=tc.update_gap, batch=batch, seq=seq, dtype=dtype, state_bits=tc.state_bits,
                        layerwise=layerwise, checkpointing=checkpointing, steps=steps, backend=backend,
                        budget_bytes=budget_bytes)
            if case.key() not in {c.key() for c in cases}:
                cases.append(case)
    if not cases:
        raise SubprofError("--methods is empty; give e.g. galore,ori")
    return cases


def estimate_fields(case: Case) -> dict:
    """The analytic estimate of a case (`subprof.memory.estimate`), or Nones if the model is unavailable."""
    try:
        from subprof.catalog import load_model
        from subprof.memory import TrainConfig, estimate
    except ImportError:
        return {"estimated_peak_allocated_bytes": None, "estimated_device_used_bytes": None}
    method = "galore" if case.method == REFERENCE else case.method
    est = estimate(TrainConfig(model=load_model(case.model), method=method, rank=case.rank,
                               update_gap=case.update_gap, state_bits=case.state_bits, layerwise=case.layerwise,
                               dtype=case.dtype, batch=case.batch, seq=case.seq, checkpointing=case.checkpointing))
    return {"estimated_peak_allocated_bytes": int(est.peak_allocated_bytes),
            "estimated_device_used_bytes": int(est.device_used_bytes),
            "estimated_cuda_runtime_bytes": int(est.components.get("cuda_runtime", 0))}


def error_pct(row: dict) -> float | None:
    """(estimate − measured) / measured · 100, measured = `measure.comparable_peak`."""
    measured, est = comparable_peak(row), row.get("estimated_peak_allocated_bytes")
    if not measured or est is None or row.get("status") != "ok":
        return None
    return round(100 * (est - measured) / measured, 2)


def sweep(cases: Iterable[Case], *, out: str, resume: bool, timeout: float,
          on_row: Callable[[Case, dict | None], None] = lambda c, r: None) -> list[dict]:
    """Run every case not already finished in `out` (with `resume`), appending each row at once. Returns the rows
    of all requested cases (earlier ones included). KeyboardInterrupt propagates after the last finished row."""
    from subprof.results import ResultLog, case_key

    log = ResultLog(out, resume=resume)
    done = {case_key(r, KEY_FIELDS): r for r in log.existing if r.get("status") in DONE}
    rows = []
    for case in cases:
        old = done.get(case.key())
        if old is not None:
            rows.append(old)
            on_row(case, None)
            continue
        row = run_case(case, timeout=timeout)
        row.update(estimate_fields(case))
        row["estimate_error_pct"] = error_pct(row)
        log.append(row)
        rows.append(row)
        on_row(case, row)
    return rows


def _gib(b: int | None) -> str:
    return "—" if b is None else f"{b / 2**30:.2f}"


def render(rows: list[dict]) -> None:
    table = Table(title="bench: measured vs estimated peak allocated (GiB = 2^30 B)")
    for col in ("model", "method", "rank", "bits", "batch", "backend", "status", "measured", "estimated", "error %",
                "step ms", "tokens/s"):
        table.add_column(col, justify="left" if col in ("model", "method", "backend", "status") else "right")
    for r in rows:
        err = r.get("estimate_error_pct")
        table.add_row(str(r.get("model")), str(r.get("method")) + (" (per-layer)" if r.get("layerwise") else ""),
                      str(r.get("rank") or "—"), str(r.get("state_bits") or "—"), str(r.get("batch")),
                      str(r.get("backend")), str(r.get("status")), _gib(comparable_peak(r)),
                      _gib(r.get("estimated_peak_allocated_bytes")), "—" if err is None else f"{err:+.1f}",
                      "—" if r.get("median_step_s") is None else f"{1e3 * r['median_step_s']:.1f}",
                      "—" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:,.0f}")
    console.print(table)
    if any(r.get("backend") == "trace" for r in rows):
        console.print("trace rows: tensor-exact peak on fake tensors plus the calibrated CUDA-runtime allocations "
                      "(not a GPU measurement; no times).")


def bench(
    model: ModelOpt,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: adamw, adamw8bit, galore, osd, ori, "
                                                           "…, and galore-ref (galore-torch's GaLoreAdamW).")] = "galore",
    ranks: Annotated[Optional[str], typer.Option("--ranks", help="Comma-separated ranks, e.g. 128,512.")] = None,
    batch: BatchOpt = 8,
    seq: SeqOpt = 256,
    dtype: DtypeOpt = "bf16",
    state_bits: Annotated[Optional[int], typer.Option("--state-bits", help="16 or 8 (32 with --dtype mixed).")] = None,
    layerwise: Annotated[bool, typer.Option("--layerwise", help="Per-layer updates in backward hooks.")] = False,
    checkpointing: Annotated[bool, typer.Option("--checkpointing", help="Activation checkpointing.")] = False,
    update_gap: Annotated[Optional[int], typer.Option("--update-gap", "-T", help="Steps between refreshes.")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Training steps per case.", min=1)] = 3,
    backend: Annotated[str, typer.Option("--backend", help="auto (cuda if a GPU is visible, else trace), cuda, "
                                                           "trace (fake tensors) or cpu (small models).")] = "auto",
    gpu_mem: Annotated[Optional[str], typer.Option("--gpu-mem", help="Budget: a traced peak above it is an "
                                                                     "`oom` row (24GB, 24GiB, 4090).")] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="JSONL file rows are appended to.")] = "reports/bench.jsonl",
    resume: Annotated[bool, typer.Option("--resume", help="Skip cases already finished in --out.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per case before it is a `timeout` row.",
                                           min=1)] = 900.0,
    json_out: JsonOpt = False,
) -> None:
    """Measure peak memory and step time per method × rank (one subprocess per case), next to the estimate."""
    from subprof.catalog import parse_budget

    budget = parse_budget(gpu_mem).bytes if gpu_mem else None
    chosen = resolve_backend(backend.strip().lower())
    cases = build_cases(model=model, methods=methods, ranks=ranks, batch=batch, seq=seq, dtype=dtype,
                        state_bits=state_bits, layerwise=layerwise, checkpointing=checkpointing,
                        update_gap=update_gap, steps=steps, backend=chosen, budget_bytes=budget)
    finished = 0
    try:
        with progress_bar(len(cases), f"bench [{chosen}]") as bar:
            bar.label(cases[0].label())

            def advance(case: Case, row: dict | None) -> None:
                nonlocal finished
                finished += row is not None
                bar.advance(f"{case.label()}: {row['status'] if row else 'done before (resume)'}")

            rows = sweep(cases, out=out, resume=resume, timeout=timeout, on_row=advance)
    except KeyboardInterrupt:
        err_console.print(f"interrupted: {finished} finished case(s) kept in {out}; rerun with --resume")
        raise typer.Exit(130) from None
    if json_out:
        print_json(rows)
        return
    render(rows)
    console.print(f"rows appended to {out}")


def register(app: typer.Typer) -> None:
    app.command()(guarded(bench))
