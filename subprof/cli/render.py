"""Rich tables and JSON shapes for `estimate` and `plan` (rendering only; every number comes from memory/planner)."""

from __future__ import annotations

from rich.table import Table

from subprof.cli.ui import console
from subprof.plan.memory import COMPONENTS, PHASES, Estimate
from subprof.plan.planner import Candidate, Plan
from subprof.units import gib

PHASE_TITLES = {"model_built": "built", "forward_backward": "fwd/bwd", "optimizer_step": "opt step",
                "projection_refresh": "P refresh"}


def _g(n: int | float) -> str:
    return f"{gib(n):.2f}" if n else "·"


def estimate_table(est: Estimate) -> None:
    c = est.config
    phases = [p for p in PHASES if est.phases.get(p)]
    table = Table(title=f"{c.model.name} · {c.label()} · batch {c.batch} × seq {c.seq} · {c.dtype} "
                        f"(GiB = 2^30 B)")
    table.add_column("component")
    table.add_column("size", justify="right")
    for p in phases:
        table.add_column(PHASE_TITLES[p], justify="right")
    for comp in COMPONENTS:
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


def _cand_row(c: Candidate) -> list[str]:
    cfg = c.config
    return [cfg.method, str(cfg.rank or "full"), str(cfg.update_gap or "–"), str(cfg.state_bits),
            "yes" if cfg.layerwise else "no", f"{cfg.batch}" + (f"×{cfg.accumulation}" if cfg.accumulation > 1 else ""),
            "yes" if cfg.checkpointing else "no", f"{gib(c.estimate.peak_allocated_bytes):.2f}",
            f"{gib(c.estimate.device_used_bytes):.2f}", f"{c.throughput.tokens_per_s:,.0f}",
            f"{100 * c.throughput.projection_share:.1f}%"]


CAND_COLUMNS = ("method", "rank", "gap", "bits", "per-layer", "batch", "ckpt", "peak alloc GiB", "device GiB",
                "tokens/s", "proj share")


def _cand_table(title: str, cands: list[Candidate]) -> Table:
    table = Table(title=title)
    for col in CAND_COLUMNS:
        table.add_column(col, justify="left" if col == "method" else "right")
    for c in cands:
        table.add_row(*_cand_row(c))
    return table


def plan_tables(result: Plan, evidence: list | None = None) -> None:
    req = result.request
    gpu = req.throughput_gpu
    console.print(f"[bold]{req.model.name}[/] ({req.model.params / 1e6:,.1f}M params), seq {req.seq}, {req.dtype}, "
                  f"{req.global_tokens:,} tokens per optimizer step"
                  + (" (per-layer candidates step every micro-batch); " if req.tokens_per_step is None
                     and req.batch is None else "; ")
                  + f"budget {req.budget.described}; usable after {req.margin:.0%} margin: "
                  f"{gib(req.usable_bytes):.2f} GiB (compared with estimated device used = peak reserved + CUDA "
                  f"context)")
    rec = result.recommendation
    if rec is None:
        console.print("[bold red]nothing fits.[/] Rejected:")
        for line in result.rejected.values():
            console.print(f"  {line}")
        console.print("What would fit:")
        for line in result.suggestions:
            console.print(f"  • {line}")
        return
    cfg = rec.config
    console.print(f"[bold green]recommended:[/] {cfg.label()}, micro-batch {cfg.batch}"
                  + (f" × {cfg.accumulation} accumulation" if cfg.accumulation > 1 else
                     " (optimizer step every micro-batch)")
                  + f" — peak allocated {gib(rec.estimate.peak_allocated_bytes):.2f} GiB, device "
                  f"{gib(rec.estimate.device_used_bytes):.2f} GiB of {gib(req.usable_bytes):.2f} GiB usable "
                  f"(headroom {gib(req.usable_bytes - rec.estimate.device_used_bytes):.2f} GiB), "
                  f"≈ {rec.throughput.tokens_per_s:,.0f} tokens/s on {gpu.name}")
    best = sorted(result.best_per_method.values(), key=lambda c: (c.quality, c.throughput.tokens_per_s),
                  reverse=True)
    console.print(_cand_table("best configuration per method", best))
    console.print(_cand_table(f"top {req.top} overall", result.candidates[:req.top]))
    if result.rejected:
        console.print("[bold]rejected[/] (even the leanest configuration does not fit):")
        for line in result.rejected.values():
            console.print(f"  {line}")
    if evidence:
        burst_tables(evidence)
        return
    evidence_lines(req.evidence)
    console.print(f"[dim]Confirm with `subprof plan ... --burst` (short real training runs). tokens/s: model "
                  f"FLOPs at {req.utilization:.0%} of {gpu.name}'s {gpu.bf16_tflops:,.0f} dense BF16 TFLOP/s + "
                  f"optimizer step at 70% of {gpu.bandwidth_gbs:,.0f} GB/s + projection updates scaled from H100 "
                  f"measurements.[/]")


def evidence_lines(quality) -> None:
    """Which evidence ranked the candidates (`subprof.plan.evidence`), in what unit, and its notes."""
    console.print(f"[bold]quality[/] = {quality.unit}; evidence: {quality.source}")
    for note in quality.notes:
        console.print(f"[dim]  • {note}[/]")


def burst_tables(evidence: list) -> None:
    """The burst evidence behind `plan --burst`, and the recommendation it gives."""
    table = Table(title="burst evidence (same initialisation and data order; ranked by validation-loss drop per "
                        "hour of predicted target-GPU time)")
    for col in ("method", "rank", "gap", "trained as", "status", "first loss", "val loss", "burst tokens/s",
                "proj share", "target tokens/s", "loss drop / h"):
        table.add_column(col, justify="left" if col in ("method", "trained as", "status") else "right")
    for e in evidence:
        d = e.to_dict()
        table.add_row(d["method"], str(d["rank"] or "full"), str(d["update_gap"] or "–"),
                      f"{d['burst_model']}" + (f" r{d['burst_rank']}" if d["burst_rank"] else ""), d["status"],
                      _num(d["first_loss"], 3), _num(d["val_loss"], 3), _num(d["burst_tokens_per_s"], 0),
                      _pct(d["burst_projection_share"]), f"{d['tokens_per_s']:,.0f}",
                      _num(d["loss_drop_per_target_hour"], 2))
    console.print(table)
    for e in evidence:
        if e.proxy_note:
            console.print(f"[dim]{e.candidate.config.label()}: {e.proxy_note}[/]")
    best = evidence[0]
    if best.efficiency is None:
        console.print("[bold red]no burst finished[/]: the prior's recommendation stands (see the status column)")
        return
    cfg = best.candidate.config
    console.print(f"[bold green]recommended after bursts:[/] {cfg.label()}, micro-batch {cfg.batch}"
                  + (f" × {cfg.accumulation} accumulation" if cfg.accumulation > 1 else "")
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
        "throughput_gpu": req.throughput_gpu.key,
        "utilization": req.utilization,
        "recommendation": rec.to_dict() if rec else None,
        "best_per_method": {k: v.to_dict() for k, v in result.best_per_method.items()},
        "candidates": [c.to_dict() for c in result.candidates[: max(req.top, 1) * 20]],
        "rejected": result.rejected,
        "suggestions": result.suggestions,
        "ranking": ("burst: validation-loss drop per hour of predicted target-GPU time" if evidence else
                    f"quality ({req.evidence.unit}), then tokens/s"),
        "evidence": req.evidence.describe(),
        "burst": [e.to_dict() for e in evidence] if evidence else None,
    }
