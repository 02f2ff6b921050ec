"""Commands of the foundation: `models`, `gpus`, `estimate`, `plan`. Torch-free."""

# no `from __future__ import annotations`: typer reads the commands' signatures at every start (cli/__init__.py)

from typing import Annotated, Optional

import typer
from rich.table import Table

from subprof.cli import render
from subprof.cli.options import (BaseOpt, BatchOpt, BitsOpt, CalibrationOpt, CkptOpt, DtypeOpt, FormatOpt, GapOpt,
                                 JsonOpt, LayerwiseOpt, LossOpt, ModelOpt, OffloadOpt, RankOpt, SeqOpt, ThreadsOpt,
                                 VerboseOpt)
from subprof.cli.ui import console, guarded, output_format, print_json, print_rows, refuse_unless
from subprof.errors import SubprofError


MODEL_COLUMNS = ("name", "params", "layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "shapes")
GPU_COLUMNS = ("key", "name", "vendor", "memory_label", "memory_gib", "bandwidth_gbs", "bf16_tflops",
               "price_usd_per_hour")


def models(json_out: JsonOpt = False, fmt: FormatOpt = None) -> None:
    """List the model catalogue: parameters, layers, hidden size and the distinct projected weight shapes."""
    from subprof.catalog import load_model, model_names

    fmt = output_format(fmt, json_out)

    rows = []
    for name in model_names():
        cfg = load_model(name)
        rows.append({
            "name": name, "params": cfg.params, "layers": cfg.layers, "hidden": cfg.hidden,
            "intermediate": cfg.intermediate, "heads": cfg.heads, "kv_heads": cfg.kv_heads, "vocab": cfg.vocab,
            "shapes": [list(s) for s in cfg.distinct_shapes()],
        })
    if fmt == "json":
        print_json(rows)
        return
    if fmt != "table":
        print_rows([r | {"shapes": " ".join(f"{m}x{n}" for m, n in r["shapes"])} for r in rows], MODEL_COLUMNS, fmt)
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


def gpus(json_out: JsonOpt = False, fmt: FormatOpt = None) -> None:
    """List the GPU catalogue: memory as the driver reports it, bandwidth, dense BF16 TFLOP/s, indicative price."""
    from subprof.catalog import gpu_catalog

    fmt = output_format(fmt, json_out)
    cat = gpu_catalog()
    if fmt == "json":
        print_json([{"key": g.key, "name": g.name, "memory_label": g.memory_label, "memory_bytes": g.memory_bytes,
                     "bandwidth_gbs": g.bandwidth_gbs, "bf16_tflops": g.bf16_tflops,
                     "price_usd_per_hour": g.price_per_hour, "vendor": g.vendor, "aliases": list(g.aliases),
                     "sources": g.sources, "notes": g.notes} for g in cat.values()])
        return
    if fmt != "table":
        print_rows([{"key": g.key, "name": g.name, "vendor": g.vendor, "memory_label": g.memory_label,
                     "memory_gib": round(g.memory_bytes / 2**30, 2), "bandwidth_gbs": g.bandwidth_gbs,
                     "bf16_tflops": g.bf16_tflops, "price_usd_per_hour": g.price_per_hour} for g in cat.values()],
                   GPU_COLUMNS, fmt)
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
    ctx: typer.Context,
    model: ModelOpt,
    method: Annotated[str, typer.Option("--method", help="adamw, galore, osd, ori, grasswalk, grassjump, subtrack, "
                                                         "sumo (or adamw8bit); hf:NAME for a Trainer optimizer "
                                                         "(hf:galore_adamw_8bit, …).")] = "adamw",
    rank: RankOpt = None,
    update_gap: GapOpt = None,
    batch: BatchOpt = 8,
    seq: SeqOpt = 256,
    accumulation: Annotated[Optional[int], typer.Option("--accumulation", min=1, help="Micro-batches accumulated "
                                                        "per optimizer step (a `plan` row's 16×32 is --batch 16 "
                                                        "--accumulation 32); their gradients stay alive through the "
                                                        "later micro-batches.")] = None,
    tokens_per_step: Annotated[Optional[int], typer.Option("--tokens-per-step", min=1, help="Tokens per optimizer "
                                                           "step, whole job, as `plan` takes it: sets --accumulation "
                                                           "to it ÷ (batch × seq × GPUs).")] = None,
    dtype: DtypeOpt = "bf16",
    state_bits: BitsOpt = None,
    base: BaseOpt = "adamw",
    layerwise: LayerwiseOpt = False,
    checkpointing: CkptOpt = "none",
    loss: LossOpt = "full",
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="Catalogue GPU whose calibration record applies "
                                                             "(default: the H100 reference rows); use the card "
                                                             "`plan` predicted tokens/s on to reproduce its rows.")]
    = None,
    calibration: CalibrationOpt = None,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs of a data-parallel job: the breakdown of rank 0 (batch "
                                                    "per rank).")] = 1,
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes the GPUs are spread over.")] = 1,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help="With --gpus: ddp, fsdp (default), "
                                                                       "fsdp-no-reshard or hsdp.")] = None,
    offload: OffloadOpt = "none",
    json_out: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """The analytic memory breakdown of one configuration: components × phases, and the predicted peaks."""
    from subprof.catalog import gpu_by_name, load_model
    from subprof.config import TrainConfig, accumulation_for
    from subprof.methods import get_method
    from subprof.plan.calibration import calibration_for
    from subprof.plan.hf_trainer import hf_refusal, is_hf, resolve_hf
    from subprof.plan.distributed import estimate_rank
    from subprof.plan.parallel import Parallel, check_shardable

    fmt = output_format(fmt, json_out)
    options: dict = {}
    hf = None
    if is_hf(method):
        hf = resolve_hf(method)
        refuse_unless(ctx, False, ("state_bits", "layerwise"), f"is set by {hf.key} ({hf.package}"
                      f"{', per-layer' if hf.layerwise else ''}"
                      f"{', 8-bit states' if hf.state_bits else ''}): leave it out (per-layer updates and 8-bit "
                      f"states are other names: hf:galore_adamw_8bit_layerwise, …)")
        method, state_bits, layerwise, options = hf.method, hf.state_bits, hf.layerwise, dict(hf.options)
        rank, update_gap = rank or hf.rank, update_gap or hf.update_gap
    spec = get_method(method)
    refuse_unless(ctx, spec.project, ("rank", "update_gap"),
                  f"applies to low-rank methods; {spec.name} updates every weight at full rank: leave it out, or pick "
                  f"a low-rank method (galore, osd, ori, …)")
    refuse_unless(ctx, gpus > 1 or nodes > 1, ("strategy",),
                  f"{strategy} spreads a job over several GPUs, and this estimate is for one: add --gpus N (N ≥ 2), "
                  f"or leave --strategy out")
    if accumulation is not None and tokens_per_step is not None:
        raise SubprofError("give --accumulation or --tokens-per-step, not both: tokens per step = batch × seq × "
                           "accumulation × GPUs")
    if tokens_per_step is not None:
        accumulation = accumulation_for(tokens_per_step, batch=batch, seq=seq, ranks=gpus)
    if hf is not None and (reason := hf_refusal(hf, accumulation=accumulation or 1, gpus=gpus * nodes,
                                                strategy=(strategy or "fsdp").strip().lower())):
        raise SubprofError(reason)
    cfg = TrainConfig(model=load_model(model), method=method, rank=rank, update_gap=update_gap,
                      state_bits=state_bits, layerwise=layerwise, dtype=dtype, batch=batch, seq=seq,
                      checkpointing=checkpointing, loss=loss, accumulation=accumulation or 1,
                      method_options={"base": base, **options})
    par = (Parallel(gpus=gpus, nodes=nodes, strategy=(strategy or "fsdp").strip().lower())
           if gpus > 1 or nodes > 1 else None)
    if par is not None:
        check_shardable(cfg.model, par)
    calib = calibration_for(gpu_by_name(gpu, "--gpu").key if gpu else None, calibration)
    if offload.strip().lower() != "none":
        from subprof.plan.offload import check_offload, offload_estimate, parse_offload

        parse_offload(offload)
        check_offload(cfg, gpus * nodes)
        est = offload_estimate(cfg, calib)
    else:
        est = estimate_rank(cfg, par, calib)
    if fmt == "json":
        print_json({**est.to_dict(), **({"hf": hf.to_dict()} if hf else {})})
    elif fmt == "table":
        render.estimate_table(est)
        if hf is not None:
            console.print(f"{hf.key}: {hf.package} as transformers' Trainer builds it" +
                          (f"; note: {hf.note}" if hf.note else ""))
    else:
        print_rows(*render.estimate_rows(est), fmt)


BURST_OPTIONS = ("burst_steps", "burst_model", "burst_top", "data", "burst_out", "threads", "verbose")


def plan(
    ctx: typer.Context,
    model: ModelOpt,
    gpu_mem: Annotated[Optional[str], typer.Option("--gpu-mem", help="Memory budget per GPU: a size (24GB = 24·10^9 "
                                                   "B, 24GiB, 24000MiB) or a catalogue GPU (4090, h100-sxm); default: "
                                                   "the --gpu card's memory.")] = None,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated methods, or all; hf:NAME plans a "
                                                           "Trainer optimizer as transformers runs it "
                                                           "(hf:galore_adamw_layerwise, hf:apollo_adamw, …).")] = "all",
    bases: Annotated[Optional[str], typer.Option("--bases", help="Base optimizers to search, comma-separated "
                                                 "(adamw, lion, adafactor; default: every one each method runs).")]
    = None,
    seq: SeqOpt = 256,
    batch: Annotated[Optional[int], typer.Option("--batch", "-b", help="Fix the micro-batch (default: the "
                                                 "largest that fits). Alone it is also the optimizer batch; with "
                                                 "--tokens-per-step micro-batches accumulate to that.")] = None,
    tokens_per_step: Annotated[Optional[int], typer.Option("--tokens-per-step", help="Tokens per optimizer step "
                                                           "(default: 512 sequences); micro-batches accumulate to "
                                                           "it.")] = None,
    dtype: DtypeOpt = "bf16",
    margin: Annotated[float, typer.Option("--margin", help="Safety margin kept free, as a fraction of the "
                                                           "budget (0.05 = 5%).")] = 0.05,
    top: Annotated[int, typer.Option("--top", help="How many candidates to show.")] = 5,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="Catalogue GPU whose TFLOP/s and bandwidth predict "
                                                             "tokens/s (default: --gpu-mem's card, else the "
                                                             "closest in memory).")] = None,
    utilization: Annotated[float, typer.Option("--utilization", help="Assumed fraction of dense BF16 TFLOP/s "
                                                                     "reached by the model's matmuls (0.4 = "
                                                                     "40%).")] = 0.4,
    proj: Annotated[Optional[str], typer.Option("--proj", help="`subprof proj` rows (JSONL) measured on the target "
                                                       "GPU: their projection-update times replace the scaled H100 "
                                                       "rates where they cover the model's shapes.")] = None,
    probe: Annotated[Optional[str], typer.Option("--probe", help="`subprof probe` rows (JSONL): rank candidates by "
                                                 "the captured gradient energy they predict instead of the "
                                                 "published-results prior.")] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs the job runs on (data parallel); memory is then per "
                                                    "rank and tokens/s the whole job's.")] = 1,
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes the GPUs are spread over (equal GPUs per node).")] = 1,
    strategy: Annotated[str, typer.Option("--strategy", help="With --gpus: auto, ddp, fsdp (FSDP2, ZeRO-3-like), "
                                                             "fsdp-no-reshard (ZeRO-2-like) or hsdp (shard within "
                                                             "a node, replicate across).")] = "auto",
    burst: Annotated[bool, typer.Option("--burst", help="Confirm the top candidates with short real training "
                                                        "runs on this machine (a GPU if present, else the CPU).")]
    = False,
    burst_steps: Annotated[int, typer.Option("--burst-steps", min=1, help="With --burst: training steps per "
                                                                          "burst.")] = 100,
    burst_model: Annotated[Optional[str], typer.Option("--burst-model", help="With --burst: train this catalogue "
                                                       "model as the proxy (default: the target if it fits here, "
                                                       "else the largest smaller one that does).")] = None,
    burst_top: Annotated[int, typer.Option("--burst-top", min=1, help="With --burst: how many (method, rank, gap) "
                                                                      "groups to train.")] = 4,
    data: Annotated[Optional[str], typer.Option("--data", help="With --burst: the corpus, text files/folders or "
                                                               ".bin tokens (default: the Python standard "
                                                               "library).")] = None,
    burst_out: Annotated[str, typer.Option("--burst-out", help="With --burst: JSONL the burst rows are appended to "
                                                               "(resumable).")] = "reports/plan_burst.jsonl",
    threads: ThreadsOpt = None,
    calibration: CalibrationOpt = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="Search only this loss kind: full, chunked or fused "
                                                               "(default: the full logits, the chunked loss where "
                                                               "they do not fit).")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Also print the settings, the evidence behind the "
                                                            "quality column and how candidates are ranked.")] = False,
    json_out: JsonOpt = False,
    fmt: FormatOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Recommend method, rank, update gap, 8-bit/per-layer, micro-batch and checkpointing that fit a budget.
    Exits with 1 when nothing fits (after printing what would)."""
    from subprof.catalog import gpu_budget, gpu_by_name, load_model, parse_budget
    from subprof.methods import parse_methods
    from subprof.plan.calibration import load as load_calibration
    from subprof.plan.evidence import probe_quality
    from subprof.plan.hf_trainer import split_methods
    from subprof.plan.planner import PlanRequest
    from subprof.plan.planner import plan as run_plan

    fmt = output_format(fmt, json_out)
    refuse_unless(ctx, burst, BURST_OPTIONS, "applies only with --burst (short training runs that confirm the "
                                             "plan): add --burst, or leave it out")
    if gpu_mem is None and gpu is None:
        raise SubprofError("give the memory budget: --gpu-mem 24GB (or a card: --gpu-mem 4090), or --gpu NAME for "
                           "that card's memory")
    if burst:
        from subprof.quiet import show_known_noise
        from subprof.results import check_writable

        show_known_noise(verbose)
        check_writable(burst_out, "--burst-out")
    card = gpu_by_name(gpu, "--gpu") if gpu else None
    budget = parse_budget(gpu_mem, "--gpu-mem") if gpu_mem is not None else gpu_budget(card, gpu)
    proj_rows = []
    if proj is not None:
        from subprof.results import read_result_files

        proj_rows = [r for r in read_result_files([proj], "--proj") if r.get("kind") == "proj"]
        if not proj_rows:
            raise SubprofError(f"--proj {proj!r} holds no `subprof proj` rows")
    from subprof.methods.bases import get_base

    searched = tuple(get_base(b).name for b in bases.split(",") if b.strip()) if bases else ()
    own, hf = split_methods(methods)
    req = PlanRequest(model=load_model(model), budget=budget, methods=parse_methods(own) if own or not hf else [],
                      hf=tuple(hf), bases=searched,
                      seq=seq, batch=batch, tokens_per_step=tokens_per_step, dtype=dtype, margin=margin, top=top,
                      gpu=card, utilization=utilization, proj_rows=proj_rows,
                      calibration=load_calibration(calibration) if calibration else None,
                      gpus=gpus, nodes=nodes, strategy=strategy.strip().lower(),
                      evidence=probe_quality(probe) if probe else None,
                      **({"losses": (loss.strip().lower(),)} if loss else {}))
    result = run_plan(req)
    evidence = None
    if burst and result.recommendation is not None:
        from subprof.cli.ui import progress_bar
        from subprof.train.confirm import confirm_with_bursts

        evidence = confirm_with_bursts(result, top=burst_top, steps=burst_steps, burst_model=burst_model,
                                       data=data, out=burst_out, seq=min(seq, 256), threads=threads,
                                       progress_factory=None if fmt != "table" else progress_bar)
    if fmt == "json":
        print_json(render.plan_json(result, evidence))
    elif fmt == "table":
        render.plan_tables(result, evidence, explain=explain)
    else:
        print_rows(render.plan_rows(result, evidence), render.plan_columns(result), fmt)
    if result.recommendation is None:
        raise typer.Exit(1)  # nothing fits: the output above says what would


def register(app: typer.Typer) -> None:
    app.command()(guarded(models))
    app.command()(guarded(gpus))
    app.command()(guarded(estimate))
    app.command()(guarded(plan))
