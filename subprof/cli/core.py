"""Commands of the foundation: `models`, `gpus`, `estimate`, `plan`. Torch-free."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from subprof.cli import render
from subprof.cli.options import (BatchOpt, BitsOpt, CkptOpt, DtypeOpt, GapOpt, JsonOpt, LayerwiseOpt, ModelOpt, RankOpt,
                                 SeqOpt)
from subprof.cli.ui import console, guarded, print_json
from subprof.errors import SubprofError


def models(json_out: JsonOpt = False) -> None:
    """List the model catalogue: parameters, layers, hidden size and the distinct projected weight shapes."""
    from subprof.catalog import load_model, model_names

    rows = []
    for name in model_names():
        cfg = load_model(name)
        rows.append({
            "name": name, "params": cfg.params, "layers": cfg.layers, "hidden": cfg.hidden,
            "intermediate": cfg.intermediate, "heads": cfg.heads, "kv_heads": cfg.kv_heads, "vocab": cfg.vocab,
            "shapes": [list(s) for s in cfg.distinct_shapes()],
        })
    if json_out:
        print_json(rows)
        return
    from subprof.units import fmt_count

    table = Table(title="LLaMA model catalogue (profiles/models/*.json; --model also takes a config.json path)")
    for col in ("name", "params", "layers", "hidden", "intermediate", "heads (kv)", "vocab", "weight shapes m×n"):
        table.add_column(col, justify="left" if col in ("name", "weight shapes m×n") else "right")
    for r in rows:
        table.add_row(r["name"], fmt_count(r["params"]), str(r["layers"]), str(r["hidden"]), str(r["intermediate"]),
                      f"{r['heads']} ({r['kv_heads']})", str(r["vocab"]),
                      ", ".join(f"{m}×{n}" for m, n in r["shapes"]))
    console.print(table)


def gpus(json_out: JsonOpt = False) -> None:
    """List the GPU catalogue: memory as the driver reports it, bandwidth, dense BF16 TFLOP/s, indicative price."""
    from subprof.catalog import gpu_catalog

    cat = gpu_catalog()
    if json_out:
        print_json([{"key": g.key, "name": g.name, "memory_label": g.memory_label, "memory_bytes": g.memory_bytes,
                     "bandwidth_gbs": g.bandwidth_gbs, "bf16_tflops": g.bf16_tflops,
                     "price_usd_per_hour": g.price_per_hour, "vendor": g.vendor, "aliases": list(g.aliases),
                     "sources": g.sources, "notes": g.notes} for g in cat.values()])
        return
    table = Table(title="GPU catalogue (profiles/gpus.toml; prices are indicative on-demand USD/h, late 2025)")
    for col in ("key", "name", "memory", "GiB usable", "GB/s", "BF16 TFLOP/s", "$/h"):
        table.add_column(col, justify="left" if col in ("key", "name", "memory") else "right")
    for g in cat.values():
        table.add_row(g.key, g.name, g.memory_label, f"{g.memory_bytes / 2**30:.1f}", f"{g.bandwidth_gbs:,.0f}",
                      f"{g.bf16_tflops:,.0f}", f"{g.price_per_hour:.2f}")
    console.print(table)
    console.print("GiB usable = total memory as nvidia-smi / torch report it; sources per figure: --json")


def estimate(
    model: ModelOpt,
    method: Annotated[str, typer.Option("--method", help="adamw, galore, osd, ori, grasswalk, grassjump, subtrack, "
                                                         "sumo (or adamw8bit).")] = "adamw",
    rank: RankOpt = None,
    update_gap: GapOpt = None,
    batch: BatchOpt = 8,
    seq: SeqOpt = 256,
    dtype: DtypeOpt = "bf16",
    state_bits: BitsOpt = None,
    layerwise: LayerwiseOpt = False,
    checkpointing: CkptOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """The analytic memory breakdown of one configuration: components × phases, and the predicted peaks."""
    from subprof.catalog import load_model
    from subprof.config import TrainConfig
    from subprof.plan.memory import estimate as run_estimate

    cfg = TrainConfig(model=load_model(model), method=method, rank=rank, update_gap=update_gap,
                      state_bits=state_bits, layerwise=layerwise, dtype=dtype, batch=batch, seq=seq,
                      checkpointing=checkpointing)
    est = run_estimate(cfg)
    if json_out:
        print_json(est.to_dict())
        return
    render.estimate_table(est)


def plan(
    model: ModelOpt,
    gpu_mem: Annotated[str, typer.Option("--gpu-mem", help="Memory budget: a size (24GB = 24·10^9 B, 24GiB, "
                                                           "24000MiB) or a catalogue GPU (4090, h100-sxm).")],
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated methods, or all.")] = "all",
    seq: SeqOpt = 256,
    batch: Annotated[Optional[int], typer.Option("--batch", "-b", help="Fix the micro-batch (default: the "
                                                                       "largest that fits).")] = None,
    tokens_per_step: Annotated[Optional[int], typer.Option("--tokens-per-step", help="Tokens per optimizer step; "
                                                           "micro-batches accumulate to it.")] = None,
    dtype: DtypeOpt = "bf16",
    margin: Annotated[float, typer.Option("--margin", help="Safety margin kept free, as a fraction of the "
                                                           "budget.")] = 0.05,
    top: Annotated[int, typer.Option("--top", help="How many candidates to show.")] = 5,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="Catalogue GPU whose TFLOP/s and bandwidth predict "
                                                             "tokens/s (default: --gpu-mem's card, else the "
                                                             "closest in memory).")] = None,
    utilization: Annotated[float, typer.Option("--utilization", help="Assumed fraction of dense BF16 TFLOP/s "
                                                                     "reached by the model's matmuls.")] = 0.4,
    proj: Annotated[Optional[str], typer.Option("--proj", help="`subprof proj` rows (JSONL) measured on the target "
                                                       "GPU: their projection-update times replace the scaled H100 "
                                                       "rates where they cover the model's shapes.")] = None,
    probe: Annotated[Optional[str], typer.Option("--probe", help="`subprof probe` rows (JSONL): rank candidates by "
                                                 "the captured gradient energy they predict instead of the "
                                                 "published-results prior.")] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Confirm the top candidates with short real training "
                                                        "runs on this machine (a GPU if present, else the CPU).")]
    = False,
    burst_steps: Annotated[int, typer.Option("--burst-steps", min=1, help="Training steps per burst.")] = 100,
    burst_model: Annotated[Optional[str], typer.Option("--burst-model", help="Train this catalogue model as the "
                                                       "proxy (default: the target if it fits here, else the "
                                                       "largest smaller one that does).")] = None,
    burst_top: Annotated[int, typer.Option("--burst-top", min=1, help="How many (method, rank, gap) groups to "
                                                                      "train.")] = 4,
    data: Annotated[Optional[str], typer.Option("--data", help="Burst corpus: text files/folders or .bin tokens "
                                                               "(default: the Python standard library).")] = None,
    burst_out: Annotated[str, typer.Option("--burst-out", help="JSONL the burst rows are appended to "
                                                               "(resumable).")] = "reports/plan_burst.jsonl",
    json_out: JsonOpt = False,
) -> None:
    """Recommend method, rank, update gap, 8-bit/per-layer, micro-batch and checkpointing that fit a budget."""
    from subprof.catalog import gpu_by_name, load_model, parse_budget
    from subprof.methods import parse_methods
    from subprof.plan.evidence import probe_quality
    from subprof.plan.planner import PlanRequest
    from subprof.plan.planner import plan as run_plan

    proj_rows = []
    if proj is not None:
        from subprof.results import read_result_files

        proj_rows = [r for r in read_result_files([proj], "--proj") if r.get("kind") == "proj"]
        if not proj_rows:
            raise SubprofError(f"--proj {proj!r} holds no `subprof proj` rows")
    req = PlanRequest(model=load_model(model), budget=parse_budget(gpu_mem), methods=parse_methods(methods),
                      seq=seq, batch=batch, tokens_per_step=tokens_per_step, dtype=dtype, margin=margin, top=top,
                      gpu=gpu_by_name(gpu) if gpu else None, utilization=utilization, proj_rows=proj_rows,
                      evidence=probe_quality(probe) if probe else None)
    result = run_plan(req)
    evidence = None
    if burst and result.recommendation is not None:
        from subprof.cli.ui import progress_bar
        from subprof.train.confirm import confirm_with_bursts

        evidence = confirm_with_bursts(result, top=burst_top, steps=burst_steps, burst_model=burst_model,
                                       data=data, out=burst_out, seq=min(seq, 256),
                                       progress_factory=None if json_out else progress_bar)
    if json_out:
        print_json(render.plan_json(result, evidence))
        return
    render.plan_tables(result, evidence)


def register(app: typer.Typer) -> None:
    app.command()(guarded(models))
    app.command()(guarded(gpus))
    app.command()(guarded(estimate))
    app.command()(guarded(plan))
