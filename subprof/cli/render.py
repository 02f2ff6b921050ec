"""Rich tables and JSON shapes for `estimate` and `plan` (rendering only; every number comes from memory/planner)."""

from __future__ import annotations

import math

from rich import box
from rich.table import Table

from subprof.cli import render_job
from subprof.cli.render_job import ckpt_cell
from subprof.cli.ui import console
from subprof.plan.memory import PHASE_MEANING, PHASES, Estimate
from subprof.plan.planner import COMPRESSION, Candidate, Plan, ranks_for
from subprof.units import gib

FASTER_BY = 1.1  # the fastest fitting candidate is named when it is at least 10% faster than the recommendation
PHASE_TITLES = {"model_built": "built", "forward_backward": "fwd/bwd", "optimizer_step": "opt step",
                "projection_refresh": "P refresh"}


def _g(n: int | float) -> str:
    return f"{gib(n):.2f}" if n else "·"


def estimate_table(est: Estimate) -> None:
    c = est.config
    phases = [p for p in PHASES if est.phases.get(p)]
    job = f" · rank 0 of {est.parallel.label()}" if hasattr(est, "parallel") else ""
    step = f" × {c.accumulation} accumulation" if c.accumulation > 1 else ""
    table = Table(title=f"{c.model.name} · {c.label()} · batch {c.batch}{step} × seq {c.seq} · {c.dtype}{job} "
                        f"(GiB = 2^30 B)")
    table.add_column("component")
    table.add_column("size", justify="right")
    for p in phases:
        table.add_column(PHASE_TITLES[p], justify="right")
    for comp in est.components:  # COMPONENTS order; a rank of a job adds FSDP's and DDP's buffers
        if not est.components.get(comp) and not any(est.phases[p].get(comp) for p in phases):
            continue
        table.add_row(comp.replace("_", " "), _g(est.components[comp]),
                      *[_g(est.phases[p].get(comp, 0)) for p in phases])
    table.add_section()
    table.add_row("[bold]total[/]", "", *[f"[bold]{_g(sum(est.phases[p].values()))}[/]" for p in phases])
    console.print(table)
    console.print("Phase columns hold the bytes alive together (· none); the peak is the largest total, not the sum "
                  "of sizes. " + "; ".join(f"{PHASE_TITLES[p]} = {PHASE_MEANING[p]}" for p in phases) + ".")
    console.print(f"peak allocated (torch.cuda.max_memory_allocated): [bold]{gib(est.peak_allocated_bytes):.2f} GiB"
                  f"[/] in {PHASE_TITLES[est.peak_phase]}; reserved ≈ {gib(est.reserved_bytes):.2f} GiB; "
                  f"device used (nvidia-smi, incl. CUDA context) ≈ [bold]{gib(est.device_used_bytes):.2f} GiB[/]")
    if hasattr(est, "host"):
        console.print(host_line(est))
    for note in est.notes:
        console.print(f"[dim]note: {note}[/]")
    console.print(f"[dim]GPU-side terms (CUDA runtime, allocator reserve, context) calibrated by {est.calibration}[/]")


def host_line(est) -> str:
    """An offloaded estimate's host side and PCIe traffic (`plan.offload.OffloadEstimate`)."""
    parts = ", ".join(f"{k.replace('_', ' ')} {gib(v):.2f}" for k, v in est.host.items())
    return (f"host (CPU) memory: [bold]{gib(est.host_bytes):.2f} GiB[/] ({parts}; pinned parameters and gradients, "
            f"plus the process's own footprint); PCIe per micro-batch: {est.h2d_bytes / 1e9:.1f} GB host→GPU "
            f"(every layer twice, the root once), {est.d2h_bytes / 1e9:.1f} GB GPU→host (gradients)")


def estimate_rows(est: Estimate) -> tuple[list[dict], list[str]]:
    """The components × phases of `estimate_table` as rows for `--format csv|markdown` (GiB, 4 decimals; 0 where a
    phase does not hold it), with the total row last; and the columns."""
    phases = [p for p in PHASES if est.phases.get(p)]
    columns = ["component", "size_gib", *[f"{p}_gib" for p in phases]]
    rows = [{"component": comp, "size_gib": round(gib(est.components[comp]), 4),
             **{f"{p}_gib": round(gib(est.phases[p].get(comp, 0)), 4) for p in phases}}
            for comp in est.components
            if est.components.get(comp) or any(est.phases[p].get(comp) for p in phases)]
    rows.append({"component": "total", **{f"{p}_gib": round(gib(sum(est.phases[p].values())), 4) for p in phases}})
    rows += [{"component": f"host_{k}", "size_gib": round(gib(v), 4)} for k, v in getattr(est, "host", {}).items()]
    return rows, columns


PLAN_ROW_COLUMNS = ("method", "base", "rank", "update_gap", "state_bits", "layerwise", "batch", "accumulation",
                    "sequences_per_step", "checkpointing", "device_used_gib", "tokens_per_s", "predicted_gap_nats",
                    "predicted_ppl_increase", "quality_evidence")


def plan_columns(result: Plan) -> list[str]:
    """`PLAN_ROW_COLUMNS`, with the strategy after the method for a job of several GPUs."""
    cols = list(PLAN_ROW_COLUMNS) + (["offload", "host_gib"] if any(c.offloaded for c in result.candidates) else [])
    return cols[:1] + ["strategy"] + cols[1:] if result.request.gpus > 1 else cols


def plan_rows(result: Plan, evidence: list | None = None) -> list[dict]:
    """The candidates for `--format csv|markdown`, one row each: the recommendation (the bursts' where they
    overturned it, as `plan_json`) first, then the rest of the top `--top` in rank order; none when nothing fits."""
    rec = evidence[0].candidate if evidence and evidence[0].efficiency is not None else result.recommendation
    if rec is None:
        return []
    cands = [rec] + [c for c in result.candidates[:result.request.top] if c is not rec]
    rows = []
    for c in cands:
        d = c.to_dict()
        row = {k: d[k] for k in PLAN_ROW_COLUMNS if k in d} | {"device_used_gib": round(gib(d["device_used_bytes"]), 3)}
        if "parallel" in d:
            row["strategy"] = d["parallel"].get("strategy")
        if c.offloaded:
            row |= {"offload": "optimizer", "host_gib": round(gib(d["host_bytes"]), 3)}
        rows.append(row)
    return rows


def quality_cell(c: Candidate, band: float) -> str:
    """The predicted perplexity cost against full-rank AdamW, ± the evidence's band, in % of perplexity."""
    if not c.config.spec.project and c.config.base == "adamw":
        return "ref"
    kind = c.quality_evidence
    pct = round(100 * c.ppl_increase, 1) + 0.0  # + 0.0: no "-0.0%" for a gap that rounds to nothing
    return f"{pct:+.1f}%±{100 * math.expm1(band):.1f}" + EVIDENCE_MARK.get(kind, "")


def _cand_row(c: Candidate, band: float) -> list[str]:
    cfg = c.config
    seqs = f"{c.sequences_per_step}" + ("" if c.keeps_requested_batch else " *")
    method = cfg.method if cfg.base == "adamw" else f"{cfg.method}+{BASE_SHORT.get(cfg.base, cfg.base)}"
    return [method + ("+offload" if c.offloaded else "") + (" (hf)" if c.entry else ""), str(cfg.rank or "full"),
            str(cfg.update_gap or "–"), str(cfg.state_bits),
            "yes" if cfg.layerwise else "no", f"{cfg.batch}" + (f"×{cfg.accumulation}" if cfg.accumulation > 1 else ""),
            seqs, ckpt_cell(cfg), f"{gib(c.estimate.peak_allocated_bytes):.1f}",
            f"{gib(c.estimate.device_used_bytes):.1f}", f"{c.throughput.tokens_per_s:,.0f}",
            f"{100 * c.throughput.projection_share:.0f}%", quality_cell(c, band)]


CAND_COLUMNS = ("method", "rank", "T", "bits", "layer", "micro", "seq/step", "ckpt", "peak", "device", "tok/s",
                "proj", "Δppl")
NARROW = 120  # below this many columns the tables drop the peak-allocated column (device used decides the fit);
# a job's table also its checkpointing and projection-share columns
CAND_LEGEND = ("T: update gap (optimizer steps between subspace refreshes); layer: per-layer updates; micro: "
               "micro-batch × accumulation; peak, device: GiB (peak allocated; device used incl. CUDA context); proj: "
               "share of step time in projection updates; Δppl: predicted validation perplexity against full-rank "
               "AdamW ± the band within which candidates cannot be told apart (?: no published table row of that "
               "method; †: only its authors' own tables, no independent re-run; ‡: a Lion/Adafactor base, scored "
               "from one table; +adaf: Adafactor)")
BASE_SHORT = {"adafactor": "adaf"}  # base optimizers as the 100-column tables name them (galore+adaf)
# what a row's quality rests on (`FittedQuality.evidence_kind`) → its mark in the Δppl column
EVIDENCE_MARK = {"none": "?", "own paper": "†", "one table": "‡"}


def _cand_table(title: str, cands: list[Candidate], band: float, job: bool = False) -> Table:
    """Candidates as rows; under `NARROW` columns the peak-allocated column is left out."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = render_job.JOB_COLUMNS + ("Δppl",) if job else CAND_COLUMNS
    rows = [(render_job.job_row(c) + [quality_cell(c, band)]) if job else _cand_row(c, band) for c in cands]
    if not job and any(c.offloaded for c in cands):  # host RAM of offloaded rows (plan offers them when nothing fits)
        columns += ("host",)
        rows = [row + [f"{gib(c.estimate.host_bytes):.1f}" if c.offloaded else "–"] for row, c in zip(rows, cands)]
    drop = {"peak", "ckpt", "proj"} if job and console.width < NARROW else (
        {"peak"} if console.width < NARROW else set())
    keep = [i for i, col in enumerate(columns) if col not in drop]
    for i in keep:
        col = columns[i]
        table.add_column(col, justify="left" if col in ("method", "strategy") else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table


def recommendation_line(result: Plan) -> str:
    """The answer in one line: what to run, whether and how it fits, its speed and predicted quality cost."""
    req = result.request
    rec = result.recommendation
    fits = (f"fits: {gib(rec.estimate.device_used_bytes):.1f} of {gib(req.usable_bytes):.1f} GiB usable "
            f"({req.budget.text}, {req.margin:.0%} margin)")
    speed = (render_job.job_recommendation(rec) if req.gpus > 1 else
             f"≈ {rec.throughput.tokens_per_s:,.0f} tokens/s on {req.throughput_gpu.name}")
    if req.throughput_gpu_reason.startswith("assumed"):
        speed += f" ({req.throughput_gpu_reason})"
    quality = ("full rank" if not rec.config.spec.project else
               f"predicted {100 * rec.ppl_increase:+.2f}% perplexity vs full-rank AdamW (±"
               f"{100 * math.expm1(req.band):.2f}%)")
    return f"[bold green]recommended:[/] {rec.describe()} — {fits}; {speed}; {quality}" + (
        f"; {offload_text(rec)}" if rec.offloaded else "")


def offload_text(c: Candidate) -> str:
    """An offloaded candidate's cost: the host memory it needs and how much slower it runs than on the GPU alone."""
    t = c.throughput
    return (f"needs {gib(c.estimate.host_bytes):.1f} GiB of host RAM, ≈ {t.slowdown:.2f}× slower than on the GPU "
            f"alone (PCIe copies {t.transfer_s:.1f} s over {t.link_gbs:.0f} GB/s, overlapped with {t.compute_s:.1f} s "
            f"of compute; CPU step {t.optimizer_s:.1f} s per optimizer step)")


def ranked_position(result: Plan, cand: Candidate) -> int:
    """Where a candidate of the plan sits in its ranking, found by identity: `list.index` compared whole candidates
    (configuration, estimate, throughput) field by field on the way to it, up to thousands of them."""
    return next(i for i, c in enumerate(result.candidates) if c is cand)


def choice_lines(result: Plan) -> list[str]:
    """Why this one: how many candidates the evidence cannot tell apart from the best, and the authors' recipe."""
    req = result.request
    rec = result.recommendation
    out = []
    tied = result.indistinguishable
    if len(tied) > 1:
        out.append(f"{len(tied)} fitting configurations are within the evidence's band (±"
                   f"{100 * math.expm1(req.band):.2f}% perplexity) of the best predicted quality: it cannot tell them "
                   f"apart, so the fastest of them is recommended")
    kind = rec.quality_evidence
    if kind in ("own paper", "none"):
        out.append(f"{rec.config.method}'s predicted quality rests on "
                   + ("its authors' own tables only (no independent re-run): a claim they tuned, not a confirmed "
                      "result" if kind == "own paper" else "its kind's terms alone (no published table row)")
                   + "; --burst confirms it on this model")
    for check in result.recipes:
        r, c = check.recipe, check.candidate
        if c is None:
            out.append(f"published recipe {r.label()} ({r.source}): does not fit this budget")
            continue
        rank = ranked_position(result, c) + 1
        diff = c.gap_nats - rec.gap_nats
        verdict = ("within the band of the pick" if abs(diff) < req.band else
                   ("predicted worse than the pick" if diff > 0 else "predicted better than the pick"))
        out.append(f"published recipe {r.label()} fits: predicted {100 * c.ppl_increase:+.2f}% perplexity "
                   f"({verdict}), ≈ {c.throughput.tokens_per_s:,.0f} tokens/s, ranked #{rank} ({r.source})")
    return out


def plan_tables(result: Plan, evidence: list | None = None, explain: bool = False) -> None:
    req = result.request
    gpu = req.throughput_gpu
    job = req.gpus > 1
    rec = result.recommendation
    if rec is None:
        console.print(f"[bold red]nothing fits[/] {req.model.name} in {gib(req.usable_bytes):.2f} GiB usable "
                      f"({req.budget.described}, {req.margin:.0%} margin). Rejected:")
        for line in result.rejected.values():
            console.print(f"  {line}")
        console.print("What would fit:")
        for line in result.suggestions:
            console.print(f"  • {line}")
        return
    console.print(recommendation_line(result))
    for line in choice_lines(result):
        console.print(f"  {line}")
    if "probe" in req.evidence.source and req.evidence.notes:  # what a --probe could show, always in view
        console.print(f"  {req.evidence.notes[0]}")
    if not rec.keeps_requested_batch:
        console.print(f"[yellow]no configuration that keeps the requested {req.sequences_per_step} sequences per "
                      f"optimizer step fits[/]: the ones below step every micro-batch (per-layer updates free each "
                      f"gradient at once; accumulating would keep them all). Give --tokens-per-step to ask for a "
                      f"smaller optimizer batch.")
    fast = result.fastest
    if fast is not None and fast.throughput.tokens_per_s >= FASTER_BY * rec.throughput.tokens_per_s:
        console.print(f"  fastest that fits: {fast.describe()} — ≈ {fast.throughput.tokens_per_s:,.0f} tokens/s, "
                      f"predicted {100 * fast.ppl_increase:+.2f}% perplexity")
    band = req.band
    best = sorted(result.best_per_method.values(), key=lambda c: ranked_position(result, c))
    per_rank = " (micro-batch, peak and device memory per rank; tokens/s of the whole job)" if job else ""
    console.print(_cand_table(f"best configuration per method{per_rank}", best, band, job))
    console.print(_cand_table(f"top {req.top} overall", result.candidates[:req.top], band, job))
    console.print(f"[dim]{CAND_LEGEND}[/]")
    if any(not c.keeps_requested_batch for c in best + result.candidates[:req.top]):
        console.print(f"* optimizer batch differs from the requested {req.sequences_per_step} sequences: per-layer "
                      f"updates that step every micro-batch (accumulating would keep every gradient alive); they rank "
                      f"after every candidate that keeps the requested batch")
    if any(c.offloaded for c in best):
        alone = "; ".join(f"{k}: {v}" for k, v in result.gpu_alone.items())
        console.print(f"[yellow]nothing fits on the GPU alone[/] ({alone}): +offload rows keep parameters, gradients "
                      f"and AdamW states in host memory and step on the CPU (FSDP2 CPUOffloadPolicy) — slower; "
                      f"host: GiB of host RAM they need")
    if result.rejected:
        console.print("[bold]rejected[/]:")
        for line in result.rejected.values():
            console.print(f"  {line}")
    if evidence:
        burst_tables(evidence)
    if job:  # the numbers of a job rest on these: shown without --explain
        console.print(f"[dim]{render_job.job_header(req)}. {render_job.job_assumptions(req, gpu)}[/]")
    if not explain:
        console.print("[dim]--explain: the settings, the evidence behind the quality column and how candidates "
                      "are ranked[/]")
        return
    console.print(f"[bold]{req.model.name}[/] ({req.model.params / 1e6:,.1f}M params), seq {req.seq}, {req.dtype}, "
                  f"optimizer step = {req.sequences_per_step:,} sequences = {req.global_tokens:,} tokens; "
                  f"budget {req.budget.described}; usable after {req.margin:.0%} margin: "
                  f"{gib(req.usable_bytes):.2f} GiB (compared with estimated device used = peak reserved + CUDA "
                  f"context); tokens/s on {gpu.name} ({req.throughput_gpu_reason}); GPU-side memory calibrated by "
                  f"{req.calibration.source}")
    evidence_lines(req.evidence)
    console.print(f"[dim]Ranking: candidates that keep the requested optimizer batch first, then predicted quality "
                  f"in bands of {band:.4f} nats (the evidence's cross-validated band for {req.model.name}) below the "
                  f"best, within a band by speed. Ranks searched: 16 to {ranks_for(req.model)[-1]} (the widest "
                  f"weight's smaller side / {COMPRESSION}); low-rank configurations that need as much memory as AdamW "
                  f"are not offered. Confirm with `subprof plan ... --burst` (short real training runs). tokens/s: "
                  f"model FLOPs at {req.utilization:.0%} of {gpu.name}'s {gpu.bf16_tflops:,.0f} dense BF16 TFLOP/s + "
                  f"optimizer step at 70% of {gpu.bandwidth_gbs:,.0f} GB/s + projection updates scaled from H100 "
                  f"measurements by memory bandwidth.[/]")


def evidence_lines(quality) -> None:
    """Which evidence ranked the candidates (`subprof.plan.evidence`), in what unit, and its notes."""
    console.print(f"[bold]quality[/] = {quality.unit}; evidence: {quality.source}")
    for note in quality.notes:
        console.print(f"[dim]  • {note}[/]")


def burst_tables(evidence: list) -> None:
    """The burst evidence behind `plan --burst`, and the recommendation it gives."""
    table = Table(title="burst evidence (same initialisation and data order; ranked by validation-loss drop per "
                        "hour of predicted target-GPU time)")
    for col in ("method", "rank", "gap", "trained as", "lr", "status", "first loss", "val loss", "burst tokens/s",
                "proj share", "target tokens/s", "loss drop / h"):
        table.add_column(col, justify="left" if col in ("method", "trained as", "status") else "right")
    for e in evidence:
        d = e.to_dict()
        table.add_row(d["method"], str(d["rank"] or "full"), str(d["update_gap"] or "–"),
                      f"{d['burst_model']}" + (f" r{d['burst_rank']}" if d["burst_rank"] else ""),
                      f"{d['burst_lr']:.3g}" if d.get("burst_lr") else "–", d["status"],
                      _num(d["first_loss"], 3), _num(d["val_loss"], 3), _num(d["burst_tokens_per_s"], 0),
                      _pct(d["burst_projection_share"]), f"{d['tokens_per_s']:,.0f}",
                      _num(d["loss_drop_per_target_hour"], 2))
    console.print(table)
    for e in evidence:
        if e.proxy_note:
            console.print(f"[dim]{e.candidate.config.label()}: {e.proxy_note}[/]")
    best = evidence[0]
    if best.efficiency is None:
        console.print("[bold red]no burst finished[/]: the evidence-ranked recommendation above stands (see the "
                      "status column)")
        return
    console.print(f"[bold green]recommended after bursts:[/] {best.candidate.describe()}"
                  + f" — validation loss {best.row['val_loss']:.3f} after {best.row.get('steps')} steps, "
                  f"{best.efficiency:.2f} loss drop per predicted hour on the target GPU; {best.verdict}")


def _num(v: float | None, digits: int) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def plan_json(result: Plan, evidence: list | None = None) -> dict:
    req = result.request
    rec = result.recommendation
    if evidence and evidence[0].efficiency is not None:
        rec = evidence[0].candidate
    return {
        "model": req.model.name,
        "budget_bytes": req.budget.bytes,
        "budget": req.budget.described,
        "usable_bytes": req.usable_bytes,
        "margin": req.margin,
        "seq": req.seq,
        "dtype": req.dtype,
        "tokens_per_step": req.global_tokens,
        "sequences_per_step": req.sequences_per_step,
        "throughput_gpu": req.throughput_gpu.key,
        "throughput_gpu_reason": req.throughput_gpu_reason,
        "calibration": req.calibration.to_dict(),
        "utilization": req.utilization,
        "recommendation": rec.to_dict() if rec else None,
        "fastest": result.fastest.to_dict() if result.fastest else None,
        "best_per_method": {k: v.to_dict() for k, v in result.best_per_method.items()},
        "candidates": [c.to_dict() for c in result.candidates[: max(req.top, 1) * 20]],
        "rejected": result.rejected,
        "gpu_alone": result.gpu_alone,
        "suggestions": result.suggestions,
        "ranking": ("burst: validation-loss drop per hour of predicted target-GPU time" if evidence else
                    f"candidates keeping the requested optimizer batch first, then quality ({req.evidence.unit}) in "
                    f"bands of the evidence's cross-validated band {req.band:.6g} nats below the best, within a band "
                    f"by predicted tokens/s"),
        "band_nats": req.band,
        "indistinguishable": len(result.indistinguishable),
        "recipes": [r.to_dict() for r in result.recipes],
        "evidence": req.evidence.describe(),
        "ranks_searched": ranks_for(req.model),
        "burst": [e.to_dict() for e in evidence] if evidence else None,
        **({"job": render_job.job_json(req, req.throughput_gpu)} if req.gpus > 1 else {}),
    }
