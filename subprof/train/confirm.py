"""`plan --burst`: confirm the planner's prior with short real training runs of its top candidates.

The candidates that fit the budget are grouped by what changes training (method, rank, update gap — state bits,
per-layer updates, micro-batch and checkpointing change memory and speed, not the update rule), the best few
groups are trained for `steps` steps on the local device (on the target model where it fits, else on a smaller
catalogue proxy with the same method, update gap and rank-to-width ratio), and the recommendation becomes the
candidate with the largest validation-loss drop per hour of predicted training time on the target GPU:

    efficiency = (L₀ − L_val) / (steps · t_step),   t_step = tokens per optimizer step / predicted tokens/s,

L₀ being the first training loss, identical for every burst (same initialisation and data order).
"""

from __future__ import annotations

from dataclasses import dataclass

from subprof.plan.planner import Candidate, Plan


@dataclass(kw_only=True, slots=True)
class BurstEvidence:
    candidate: Candidate
    row: dict
    proxy_note: str | None
    efficiency: float | None

    def to_dict(self) -> dict:
        row = self.row
        return {
            **self.candidate.to_dict(),
            "burst_model": row.get("model"), "burst_rank": row.get("rank"), "burst_lr": row.get("lr"),
            "proxy": self.proxy_note,
            "status": row.get("status"), "val_loss": row.get("val_loss"), "first_loss": _first_loss(row),
            "burst_tokens_per_s": row.get("tokens_per_s"), "burst_projection_share": row.get("projection_share"),
            "loss_drop_per_target_hour": self.efficiency,
        }


def _first_loss(row: dict) -> float | None:
    """The first training loss of a burst (`train_loss` is the per-step list)."""
    losses = row.get("train_loss") or []
    return float(losses[0]) if losses else None


def training_groups(result: Plan, top: int) -> list[Candidate]:
    """The best fitting candidate of each (method, rank, update gap), in plan order, at most `top` of them."""
    seen: dict[tuple, Candidate] = {}
    for cand in result.candidates:
        key = (cand.config.method, cand.config.rank, cand.config.update_gap)
        seen.setdefault(key, cand)
        if len(seen) >= top:
            break
    return list(seen.values())


def confirm_with_bursts(result: Plan, *, top: int = 4, steps: int = 100, burst_model: str | None = None,
                        data: str | None = None, device: str = "auto", out: str | None = None,
                        batch: int = 8, seq: int = 256, dtype: str = "fp32", progress_factory=None, corpus=None,
                        **settings) -> list[BurstEvidence]:
    """Run a burst per training group and score it; returns the evidence, best first. `settings` go to
    `BurstSettings` (e.g. eval_every, val_windows, threads); `corpus` reuses a loaded corpus."""
    from subprof.catalog import load_model
    from subprof.config import TrainConfig
    from subprof.results import check_writable
    from subprof.train.burst import (BurstCase, BurstSettings, check_before_corpus, proxy_case, proxy_config,
                                     run_bursts)
    from subprof.train.corpus import load_corpus

    groups = training_groups(result, top)
    target = result.request.model
    burst_settings = BurstSettings(steps=steps, device=device, **settings)
    cases, notes = [], []
    for cand in groups:
        c = cand.config
        config = TrainConfig(model=target, method=c.method, rank=c.rank, update_gap=c.update_gap, dtype=dtype,
                             batch=batch, seq=seq, method_options=c.method_options)
        if burst_model is not None:
            proxy = proxy_config(config, load_model(burst_model))
            case = BurstCase(config=proxy)
            note = (f"proxy {proxy.model.name} (--burst-model)" + (f", rank {c.rank} → {proxy.rank}" if c.rank
                                                                    else "")
                    if proxy.model.name != target.name else None)
        else:
            case, note = proxy_case(BurstCase(config=config), burst_settings)
        cases.append(case)
        notes.append(note)
    if out is not None:
        check_writable(out, "--burst-out")
    check_before_corpus(cases, burst_settings)  # before the corpus is read and tokenised
    corpus = corpus or load_corpus(data)
    if progress_factory is not None:
        with progress_factory(len(cases) * steps, "bursts") as bar:
            rows = run_bursts(cases, burst_settings, corpus, out=out, resume=out is not None, progress=bar)
    else:
        rows = run_bursts(cases, burst_settings, corpus, out=out, resume=out is not None)
    evidence = []
    for cand, row, note in zip(groups, rows, notes):
        first, val = _first_loss(row), row.get("val_loss")
        eff = None
        if row.get("status") == "ok" and first is not None and val is not None:
            eff = (first - val) / (steps * cand.throughput.step_s / 3600.0)
        evidence.append(BurstEvidence(candidate=cand, row=row, proxy_note=note, efficiency=eff))
    evidence.sort(key=lambda e: (e.efficiency is not None, e.efficiency or 0.0), reverse=True)
    return evidence
