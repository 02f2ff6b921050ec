"""The report in words: summary sentences computed from the tables, and every assumption behind them."""

from __future__ import annotations

import pandas as pd

from subprof.catalog import ModelConfig
from subprof.plan.planner import ranks_for
from subprof.plan.calibration import DEFAULT
from subprof.plan.memory import estimate
from subprof.report.probe import probe_summary_line
from subprof.report.tables import FIT_CLASSES, ReportRequest, leanest, price_date
from subprof.report.words import plural
from subprof.units import fmt_count


def _names(df: pd.DataFrame) -> str:
    return ", ".join(df["gpu_name"])


def _model_lines(req: ReportRequest, model: ModelConfig, fit: pd.DataFrame, cost: pd.DataFrame) -> list[str]:
    f = fit[fit["model"] == model.name].sort_values("gpu_memory_bytes")
    head = f"{model.name} ({fmt_count(model.params)} parameters, seq {req.seq}, {req.dtype})"
    lines = []
    full = f[f["fit"] == FIT_CLASSES[2]]
    adamw = [(spec, bits) for spec, bits in req.methods if not spec.project]
    need = ""
    if adamw:
        lean = leanest(model, *adamw[0], req)
        used = estimate(lean).device_used_bytes / (1 - req.margin)
        need = (f"; its leanest configuration ({lean.label()}, micro-batch 1) needs a card with ≈ {used / 2**30:.1f} "
                f"GiB ({req.margin:.0%} margin kept)")
    if len(full):
        first = full.iloc[0]
        where = ("the selected GPU," if len(f) == 1 else "every selected GPU, the smallest being"
                 if len(full) == len(f) else f"{len(full)} of the {len(f)} selected GPUs, the smallest being")
        lines.append(f"{head}: full-rank AdamW fits {where} {first['gpu_name']} "
                     f"({first['gpu_memory_label']}, as {first['adamw_config']} at micro-batch "
                     f"{int(first['adamw_batch'])}){need}.")
    else:
        lines.append(f"{head}: full-rank AdamW fits " + ("not the selected GPU" if len(f) == 1 else
                                                         f"none of the {len(f)} selected GPUs") + f"{need}.")
    low = f[f["fit"] == FIT_CLASSES[1]]
    for (label, rank), group in low.groupby(["gpu_memory_label", "max_lowrank_rank"], sort=False):
        rec = group.iloc[0]
        lines.append(f"{model.name} fits a {label} card ({_names(group)}) only with a low-rank method at rank ≤ "
                     f"{int(rank)}; recommended: {rec['config']}, "
                     f"{rec['device_used_gib']:.1f} of {rec['usable_gib']:.1f} GiB usable.")
    none = f[f["fit"] == FIT_CLASSES[0]]
    if len(none):
        lines.append(f"{model.name} does not fit {_names(none)} with any searched configuration (every method, "
                     f"rank ≥ {ranks_for(model)[0]}, 8-bit states, per-layer updates, checkpointing, batch 1).")
    c = cost[(cost["model"] == model.name) & cost["cost_usd"].notna()]
    if len(c):
        cheap = c.loc[c["cost_usd"].astype(float).idxmin()]
        fast = c.loc[c["hours"].astype(float).idxmin()]
        text = (f"{model.name}, {fmt_count(req.tokens)} tokens: cheapest per token: {cheap['gpu_name']} at "
                f"${cheap['cost_usd']:,.0f} ({plural(cheap['hours'], 'GPU-hour')} at ${cheap['usd_per_hour']:.2f}/h, "
                f"{cheap['config']})")
        if fast["gpu"] != cheap["gpu"]:
            text += (f"; fastest: {fast['gpu_name']} at {plural(fast['hours'], 'hour')} for "
                     f"${fast['cost_usd']:,.0f}")
        lines.append(text + ".")
    return lines


def summary_lines(req: ReportRequest, tables: dict[str, pd.DataFrame]) -> list[str]:
    """The summary sentences, each computed from the tables."""
    lines = []
    for model in req.models:
        lines += _model_lines(req, model, tables["fit_matrix"], tables["cost"])
    bench = tables.get("bench")
    if bench is not None and len(bench):
        err = bench["error_pct"].dropna().astype(float)
        if len(err):
            lines.append(f"Estimate vs measured peak allocated: median |error| {err.abs().median():.1f}%, worst "
                         f"{err.abs().max():.1f}% over {len(err)} measured rows (backend: "
                         f"{', '.join(sorted(set(bench['backend'].astype(str))))}).")
        over = bench[bench["verdict"] == "over budget"]
        if len(over):
            lines.append(f"Over their memory budget: {plural(len(over), 'bench row')}, measured to the end (counted "
                         "in the error above).")
        failed = bench[~bench["verdict"].isin(["ok", "over budget"])]
        if len(failed):
            lines.append(f"Did not finish: {plural(len(failed), 'bench row')} ("
                         + ", ".join(f"{k} {v}" for k, v in failed["verdict"].value_counts().items()) + ").")
    proj = tables.get("projection")
    if proj is not None and proj["ratio_to_svd"].notna().any():
        is_method = ~proj["method"].str.contains("svd|floor|gemm", case=False)
        fast = proj[is_method].dropna(subset=["ratio_to_svd"])
        if len(fast):
            top = fast.loc[fast["ratio_to_svd"].astype(float).idxmax()]
            lines.append(f"Projection updates: {top['method']} at {top['shape']} rank {top['rank']} took "
                         f"{top['median_ms']:.3g} ms, {top['ratio_to_svd']:,.0f}× faster than a full SVD "
                         f"({top['device']}, {top['dtype']}).")
    burst = tables.get("burst")
    if burst is not None and len(burst):
        val = burst[burst["kind"] == "validation"]
        use = val if len(val) else burst[burst["kind"] == "train"]
        last = use.sort_values("step").groupby("config").tail(1)
        best = last.loc[last["loss"].idxmin()]
        lines.append(f"Bursts: lowest final {'validation' if len(val) else 'training'} loss {best['loss']:.3f} "
                     f"for {best['config']} at step {best['step']:.0f} (of {last['config'].nunique()} "
                     f"configurations).")
    probe = probe_summary_line(tables)
    if probe:
        lines.append(probe)
    return lines


def _ranking(req: ReportRequest) -> str:
    """How every cell's plan ranked its candidates (`plan.planner.rank_candidates`), naming the evidence."""
    from subprof.plan.evidence import default_quality
    from subprof.plan.planner import SPEED_TOLERANCE

    quality = req.evidence or default_quality()
    bands = ", ".join(f"{m.name} {quality.band(m):.4f}" for m in req.models)
    return (f"candidates that keep the requested optimizer batch first, then {quality.unit} ({quality.source}) in "
            f"bands of the evidence's cross-validated band below the best (nats: {bands}); within a band, speeds "
            f"within {SPEED_TOLERANCE:.0%} count as equal and the better predicted quality goes first")


def assumptions(req: ReportRequest) -> list[str]:
    """Every assumption behind the numbers, stated on the page."""
    from subprof.plan.throughput import BANDWIDTH_EFFICIENCY

    catalogue = [price_date(g.sources.get("price", "")) for g in req.gpus if g.key not in req.prices]
    dates = ", ".join(f"{d} ({catalogue.count(d)} GPU{'s' if catalogue.count(d) > 1 else ''})"
                      for d in dict.fromkeys(catalogue))
    over = ", ".join(f"{k} ${v:.2f}/h" for k, v in req.prices.items())
    return [
        "Units: GiB = 2^30 bytes, GB = 10^9 bytes. GPU memory is the total the driver reports (nvidia-smi), in "
        "GiB; the datasheet label (e.g. \"24 GB\") is decimal. Byte counts in the CSV/JSON tables are integers.",
        f"Fit: estimated device memory (peak reserved by PyTorch's allocator + CUDA context) ≤ GPU memory × "
        f"(1 − {req.margin:.0%} safety margin), on one GPU — no multi-GPU sharding, offloading or tensor "
        f"parallelism.",
        f"Training: LLaMA pretraining, sequence length {req.seq}, dtype {req.dtype}; micro-batch = the largest "
        f"power of two that fits; methods searched: {', '.join(s.name for s, _ in req.methods)} over rank × "
        f"update gap × state bits × per-layer updates × activation checkpointing.",
        f"Best configuration per cell: ranked by {_ranking(req)}. Quality is a prediction "
        "from subspace evidence, not a measured loss; `subprof burst` measures losses.",
        f"Throughput is predicted, not measured: model FLOPs at {req.utilization:.0%} of each GPU's dense BF16 "
        f"TFLOP/s, the optimizer step at {BANDWIDTH_EFFICIENCY:.0%} of datasheet memory bandwidth, projection "
        "refreshes scaled from H100 timings in proportion to memory bandwidth. No data loading, evaluation, checkpoint "
        "saving or restarts are counted.",
        f"Time and cost: hours = {fmt_count(req.tokens)} tokens / predicted tokens/s / 3600 on one GPU; cost = "
        "hours × price. Prices are indicative on-demand cloud USD per GPU-hour from the catalogue "
        f"(profiles/gpus.toml); price dates as their sources state them: {dates or 'none used'}. They vary by "
        "provider, region and month and were not checked live" + (f"; overridden with --price: {over}" if over
        else "") + ".",
        calibration_sentence(req),
        "GPU figures (memory, bandwidth, TFLOP/s) come from vendor datasheets as cited in the catalogue; none of "
        "them was measured by subprof. Memory estimates come from subprof's analytic model (calibrated on H100 "
        "measurements); the measured sections show real rows only when result files are given.",
    ]


def calibration_sentence(req: ReportRequest) -> str:
    """Which calibration each GPU's memory figures used: its own record (`subprof calibrate`), else the default."""
    own = {g.name: req.calibration(g) for g in req.gpus}
    measured = {name: c for name, c in own.items() if c.gpu is not None}
    rest = [name for name in own if name not in measured]
    parts = [f"{name}: {c.source}" for name, c in measured.items()]
    if rest:
        parts.append(f"{', '.join(rest)}: {DEFAULT.source} (no record of their own; `subprof calibrate` measures one)")
    return "GPU-side memory (CUDA runtime allocations, allocator reserve, CUDA context) is calibrated — " + \
        "; ".join(parts) + "."
