"""Rich tables and JSON shapes for `estimate` and `plan` (rendering only; every number comes from memory/planner)."""

from __future__ import annotations

from rich.table import Table

from subprof.cli import render_job
from subprof.cli.ui import console
from subprof.plan.memory import PHASES, Estimate
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
    table = Table(title=f"{c.model.name} · {c.label()} · batch {c.batch} × seq {c.seq} · {c.dtype}{job} "
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
    console.print(f"peak allocated (torch.cuda.max_memory_allocated): [bold]{gib(est.peak_allocated_bytes):.2f} GiB"
                  f"[/] in {PHASE_TITLES[est.peak_phase]}; reserved ≈ {gib(est.reserved_bytes):.2f} GiB; "
                  f"device used (nvidia-smi, incl. CUDA context) ≈ [bold]{gib(est.device_used_bytes):.2f} GiB[/]")
    for note in est.notes:
        console.print(f"[dim]note: {note}[/]")
    console.print(f"[dim]GPU-side terms (CUDA runtime, allocator reserve, context) calibrated by {est.calibration}[/]")


def _cand_row(c: Candidate) -> list[str]:
    cfg = c.config
    seqs = f"{c.sequences_per_step}" + ("" if c.keeps_requested_batch else " *")
    return [cfg.method, str(cfg.rank or "full"), str(cfg.update_gap or "–"), str(cfg.state_bits),
            "yes" if cfg.layerwise else "no", f"{cfg.batch}" + (f"×{cfg.accumulation}" if cfg.accumulation > 1 else ""),
            seqs, "yes" if cfg.checkpointing else "no", f"{gib(c.estimate.peak_allocated_bytes):.2f}",
            f"{gib(c.estimate.device_used_bytes):.2f}", f"{c.throughput.tokens_per_s:,.0f}",
            f"{100 * c.throughput.projection_share:.1f}%"]


CAND_COLUMNS = ("method", "rank", "gap", "bits", "per-layer", "micro-batch", "seqs/step", "ckpt", "peak alloc GiB",
                "device GiB", "tokens/s", "proj share")


def _cand_table(title: str, cands: list[Candidate], job: bool = False) -> Table:
    table = Table(title=title)
    for col in render_job.JOB_COLUMNS if job else CAND_COLUMNS:
        table.add_column(col, justify="left" if col in ("method", "strategy") else "right")
    for c in cands:
        table.add_row(*(render_job.job_row(c) if job else _cand_row(c)))
    return table


def plan_tables(result: Plan, evidence: list | None = None) -> None:
    req = result.request
    gpu = req.throughput_gpu
    console.print(f"[bold]{req.model.name}[/] ({req.model.params / 1e6:,.1f}M params), seq {req.seq}, {req.dtype}, "
                  f"optimizer step = {req.sequences_per_step:,} sequences = {req.global_tokens:,} tokens; "
                  f"budget {req.budget.described}; usable after {req.margin:.0%} margin: "
                  f"{gib(req.usable_bytes):.2f} GiB (compared with estimated device used = peak reserved + CUDA "
                  f"context); tokens/s on {gpu.name} ({req.throughput_gpu_reason}); GPU-side memory calibrated by "
                  f"{req.calibration.source}")
    job = req.gpus > 1
    if job:
        console.print(render_job.job_header(req))
    rec = result.recommendation
    if rec is None:
        console.print("[bold red]nothing fits.[/] Rejected:")
        for line in result.rejected.values():
            console.print(f"  {line}")
        console.print("What would fit:")
        for line in result.suggestions:
            console.print(f"  • {line}")
        return
    console.print(f"[bold green]recommended:[/] {rec.describe()} — peak allocated "
                  f"{gib(rec.estimate.peak_allocated_bytes):.2f} GiB, device {gib(rec.estimate.device_used_bytes):.2f} "
                  f"GiB of {gib(req.usable_bytes):.2f} GiB usable (headroom "
                  f"{gib(req.usable_bytes - rec.estimate.device_used_bytes):.2f} GiB), "
                  + (render_job.job_recommendation(rec) if job else
                     f"≈ {rec.throughput.tokens_per_s:,.0f} tokens/s on {gpu.name}"))
    if not rec.keeps_requested_batch:
        console.print(f"[yellow]no configuration that keeps the requested {req.sequences_per_step} sequences per "
                      f"optimizer step fits[/]: the ones below step every micro-batch (per-layer updates free each "
                      f"gradient at once; accumulating would keep them all). Give --tokens-per-step to ask for a "
                      f"smaller optimizer batch.")
    fast = result.fastest
    if fast is not None and fast.throughput.tokens_per_s >= FASTER_BY * rec.throughput.tokens_per_s:
        console.print(f"fastest that fits: {fast.describe()} — ≈ {fast.throughput.tokens_per_s:,.0f} tokens/s")
    best = sorted(result.best_per_method.values(), key=lambda c: result.candidates.index(c))
    console.print(_cand_table("best configuration per method", best, job))
    console.print(_cand_table(f"top {req.top} overall", result.candidates[:req.top], job))
    if any(not c.keeps_requested_batch for c in best + result.candidates[:req.top]):
        console.print(f"* optimizer batch differs from the requested {req.sequences_per_step} sequences: per-layer "
                      f"updates that step every micro-batch (accumulating would keep every gradient alive); they rank "
                      f"after every candidate that keeps the requested batch")
    if result.rejected:
        console.print("[bold]rejected[/]:")
        for line in result.rejected.values():
            console.print(f"  {line}")
    if evidence:
        burst_tables(evidence)
        return
    evidence_lines(req.evidence)
    console.print(f"[dim]Ranking: candidates that keep the requested optimizer batch first, then quality in bands "
                  f"of the evidence's tolerance ({req.evidence.tolerance:g}) below the best, within a band by speed. "
                  f"Ranks searched: 16 to {ranks_for(req.model)[-1]} (the widest weight's "
                  f"smaller side / {COMPRESSION}); low-rank configurations that need as much memory as AdamW are not "
                  f"offered. Confirm with `subprof plan ... --burst` (short real training runs). tokens/s: model "
                  f"FLOPs at {req.utilization:.0%} of {gpu.name}'s {gpu.bf16_tflops:,.0f} dense BF16 TFLOP/s + "
                  f"optimizer step at 70% of {gpu.bandwidth_gbs:,.0f} GB/s + projection updates scaled from H100 "
                  f"measurements by memory bandwidth.[/]")
    if job:
        console.print(f"[dim]{render_job.job_assumptions(req, gpu)}[/]")


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
                  f"{best.efficiency:.2f} loss drop per predicted hour on the target GPU")


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
        "suggestions": result.suggestions,
        "ranking": ("burst: validation-loss drop per hour of predicted target-GPU time" if evidence else
                    f"candidates keeping the requested optimizer batch first, then quality ({req.evidence.unit}) in "
                    f"bands of the evidence's tolerance {req.evidence.tolerance:g} below the best, within a band by "
                    f"predicted tokens/s"),
        "evidence": req.evidence.describe(),
        "ranks_searched": ranks_for(req.model),
        "burst": [e.to_dict() for e in evidence] if evidence else None,
        **({"job": render_job.job_json(req, req.throughput_gpu)} if req.gpus > 1 else {}),
    }
