"""`plan --burst`: confirm the planner's prior with short real training runs of its top candidates.

The candidates that fit the budget are grouped by what changes training (method, rank, update gap — state bits,
per-layer updates, micro-batch and checkpointing change memory and speed, not the update rule), the best few
groups are trained for `steps` steps on the local device (on the target model where it fits, else on a smaller
catalogue proxy with the same method, update gap and rank-to-width ratio), and the recommendation becomes the
candidate with the largest validation-loss drop per hour of predicted training time on the target GPU:

    efficiency = (L₀ − L_val) / (steps · t_step),   t_step = tokens per optimizer step / predicted tokens/s,

L₀ being the first training loss, identical for every burst (same initialisation and data order).

What a burst can show decides what it may change:
- update gaps: a burst compares refresh intervals only when each run holds `MIN_REFRESHES` refreshes; where the
  plan's gaps are longer than that allows, the periodic methods' gaps are scaled down by one factor (their ratios
  kept, at least 1) and each row says so (`update_gap_target`, `gap_scale`);
- the pick: a burst overturns the plan's recommendation only when the plan's pick trains worse by more than
  `BURST_NOISE` (0.02 nats, the seed-to-seed spread of our CPU bursts) than another candidate; within that the
  bursts cannot separate them and the evidence-ranked pick stands (said in the output). Each row records the
  measured difference to the plan's pick next to the predicted one (`measured_delta_nats`,
  `predicted_delta_nats`), what the user's model says against the published evidence;
- the quality model: the bursts move the offsets they can separate (a method's, or a base optimizer's) towards what
  they measured, weighted by what they can show (steps / 2000, halved for a proxy: `plan.evidence.with_bursts`),
  and the plan's candidates are re-ranked by the moved model (each row records `method_term_move_g` and
  `burst_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from subprof.config import MIN_REFRESHES
from subprof.plan.planner import Candidate, Plan

BURST_NOISE = 0.02  # nats: the seed-to-seed spread of validation loss in our 200-step CPU bursts (docs/quality.md)


@dataclass(kw_only=True, slots=True)
class BurstEvidence:
    candidate: Candidate
    row: dict
    proxy_note: str | None
    efficiency: float | None
    verdict: str = ""  # set on the first (chosen) evidence: why it is the pick
    deltas: dict = field(default_factory=dict)  # measured and predicted differences to the plan's pick

    def to_dict(self) -> dict:
        row = self.row
        return {
            **self.candidate.to_dict(), **self.deltas, "verdict": self.verdict or None,
            "update_gap_target": row.get("update_gap_target"), "gap_scale": row.get("gap_scale"),
            "burst_model": row.get("model"), "burst_rank": row.get("rank"), "burst_lr": row.get("lr"),
            "proxy": self.proxy_note,
            "status": row.get("status"), "val_loss": row.get("val_loss"), "first_loss": _first_loss(row),
            "burst_tokens_per_s": row.get("tokens_per_s"), "burst_projection_share": row.get("projection_share"),
            "method_term_move_g": row.get("method_term_move_g"), "burst_weight": row.get("burst_weight"),
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
    scale = gap_scale(groups, steps)
    cases, notes = [], []
    for cand in groups:
        c = cand.config
        gap = burst_gap(cand, scale)
        config = TrainConfig(model=target, method=c.method, rank=c.rank, update_gap=gap, dtype=dtype,
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
        if scale < 1 and cand.config.spec.periodic:
            row["update_gap_target"], row["gap_scale"] = cand.config.update_gap, scale
            note = ((note + "; ") if note else "") + (f"gap {cand.config.update_gap} trained as {burst_gap(cand, scale)} "
                                                      f"(every gap × {scale:.3g}: {steps} steps hold "
                                                      f"{MIN_REFRESHES} refreshes at the longest)")
        evidence.append(BurstEvidence(candidate=cand, row=row, proxy_note=note, efficiency=eff))
    learn(evidence, result, steps)
    return choose(evidence, result)


def learn(evidence: list[BurstEvidence], result: Plan, steps: int) -> None:
    """Move the plan's per-method quality terms by what the bursts measured (`plan.evidence.with_bursts`, weighted
    by what they can show), re-rank the plan's candidates by the moved model, and record each row's move
    (`method_term_move_g`, `burst_weight`)."""
    from subprof.catalog import load_model
    from subprof.config import TrainConfig
    from subprof.plan.evidence import BurstRun, burst_weight, with_bursts
    from subprof.plan.quality import METHOD_PREFIX
    from subprof.plan.planner import best_per_method, rank_candidates

    req = result.request
    runs = []
    for e in evidence:
        row = e.row
        if row.get("status") != "ok" or row.get("val_loss") is None:
            continue
        config = TrainConfig(model=load_model(row["model"]), method=row["method"], rank=row.get("rank"),
                             update_gap=row.get("update_gap"), method_options=row.get("method_options") or {})
        runs.append(BurstRun(config=config, tokens_per_step=int(row["batch"]) * int(row["seq"]),
                             val_loss=float(row["val_loss"]), steps=int(row.get("steps_done") or steps),
                             proxy=row["model"] != req.model.name))
    if not hasattr(req.evidence, "values"):
        return
    updated, raw = with_bursts(req.evidence, runs)
    req.evidence = updated  # with its note even when no offset could move
    if not raw:
        return
    w = burst_weight(runs)
    for e in evidence:
        c = e.candidate.config
        moved = raw.get(METHOD_PREFIX + c.method, 0.0) + raw.get(f"base:{c.base}", raw.get(f"full:{c.base}", 0.0))
        e.row["method_term_move_g"], e.row["burst_weight"] = w * moved, w
    for c in result.candidates:  # in place: the bursts' and the recipes' references stay valid
        c.quality = updated.quality(c.config, c.tokens_per_step)
    result.candidates = rank_candidates(result.candidates, req.band)
    result.best_per_method = best_per_method(result.candidates)


def gap_scale(groups: list[Candidate], steps: int) -> float:
    """One factor for every periodic method's gap so that the longest holds `MIN_REFRESHES` refreshes in `steps`
    steps (1 when it already does): the gaps keep their ratios."""
    longest = max((c.config.update_gap for c in groups if c.config.spec.periodic), default=0)
    return min(1.0, (steps - 1) / (MIN_REFRESHES * longest)) if longest else 1.0


def burst_gap(cand: Candidate, scale: float) -> int | None:
    c = cand.config
    if not c.spec.periodic:
        return c.update_gap
    return max(1, round(c.update_gap * scale))


def choose(evidence: list[BurstEvidence], result: Plan) -> list[BurstEvidence]:
    """The evidence, the pick first: the plan's recommendation unless another candidate trained better by more than
    `BURST_NOISE` — then the most efficient of those that did. Each row gets its measured and predicted difference
    to the plan's pick."""
    plan_pick = evidence[0] if evidence else None  # groups come in plan order
    ok = [e for e in evidence if e.efficiency is not None]
    if plan_pick is None or plan_pick.efficiency is None or not ok:
        ok.sort(key=lambda e: e.efficiency, reverse=True)
        rest = [e for e in evidence if e not in ok]
        if ok:
            ok[0].verdict = "the plan's pick did not finish: the most efficient burst"
        return ok + rest
    base = plan_pick.row["val_loss"]
    for e in evidence:
        if e.row.get("val_loss") is not None:
            e.deltas = {"measured_delta_nats": e.row["val_loss"] - base,
                        "predicted_delta_nats": e.candidate.gap_nats - plan_pick.candidate.gap_nats}
    better = [e for e in ok if e.row["val_loss"] < base - BURST_NOISE]
    if better:
        pick = max(better, key=lambda e: e.efficiency)
        pick.verdict = (f"trained better than the plan's pick by {base - pick.row['val_loss']:.3f} nats, beyond the "
                        f"{BURST_NOISE} nats seed spread")
    else:
        pick = plan_pick
        pick.verdict = (f"no burst beat the plan's pick by more than {BURST_NOISE} nats (the seed spread): the bursts "
                        "cannot separate them, and the evidence-ranked pick stands")
    others = sorted((e for e in evidence if e is not pick), key=lambda e: (e.efficiency is not None,
                                                                           e.efficiency or 0.0), reverse=True)
    return [pick, *others]
