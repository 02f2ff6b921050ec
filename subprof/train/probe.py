"""`subprof probe`: a short real training run that measures the gradient subspace of every projected weight —
captured energy against rank, staleness and drift against gap (`subprof.train.subspace`) — on the target model
where it fits this device, else on a stated smaller catalogue proxy (the same choice as `burst`, with its own CPU
limit below).

The run is a burst (`subprof.train.burst`: same model builder, corpus windows, seeded initialisation and data order,
warm-up + cosine schedule): AdamW at 1e-3 by default, or a given method at 1e-2 with scale 0.25. At each decomposed
step the gradients are read after backward and before the optimizer step. With a projected method, the basis the
optimizer projected with is compared with the fresh top-r basis too (`probe_tracking` rows: the method's own share
over the fresh share at its rank).

Rows (JSONL, appended as produced): one `probe_run` header with every setting and the versions, `probe_energy` and
`probe_stale` rows per weight and sampled step, `probe_tracking` rows, and a `probe_end` row with the timings —
median training step, decomposition seconds per sampled step, and the most bytes of stored bases. `--resume`: a
finished run is not repeated; an interrupted one is rerun from step 0 (same seed and data order; deterministic on
one device) and only rows not yet in the file are appended — keeping the model and optimizer state on disk would
cost more than the probe's own training.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from subprof.catalog import ModelConfig, load_model
from subprof.config import TrainConfig, default_threads
from subprof.errors import SubprofError
from subprof.measure.model import torch_threads
from subprof.methods import get_method
from subprof.results import ResultLog, now_iso
from subprof.train.burst import (BurstCase, BurstSettings, build_case_optimizer, build_model, build_scheduler,
                                 fits_locally, loss_and_backward, proxy_case, train_offsets, windows)
from subprof.train.corpus import Corpus
from subprof.train.subspace import EXACT_MAX_SIDE, ProbeSchedule, SubspaceProbe, WeightInfo, captured_share, row_key

DEFAULT_GAPS = (1, 10, 50, 200, 500)
PROBE_CPU_PARAM_LIMIT = 60_000_000  # the 60m preset (58.1M at vocab 32000) probes 200 steps in ~8 min on one core
BASIS_BUDGET_BYTES = 2 * 2**30  # stored bases at most; more: fewer ranks or gaps, or a larger --every
TYPE_OF = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
           "down_proj": "down"}
KEY_FIELDS = ("model", "target_model", "method", "rank", "update_gap", "ranks", "gaps", "every", "steps", "batch",
              "seq", "lr", "seed", "dtype", "corpus_key", "exact_max_side")


@dataclass(kw_only=True, slots=True)
class ProbeSettings:
    """What a probe measures and how it trains. `ranks`/`gaps` None: the defaults (powers of two from 8 to half
    the widest weight's smaller side; `DEFAULT_GAPS` below `steps`)."""

    steps: int = 200
    every: int = 10
    ranks: tuple[int, ...] | None = None
    gaps: tuple[int, ...] | None = None
    method: str = "adamw"
    rank: int | None = None
    update_gap: int | None = None
    lr: float | None = None
    batch: int = 8
    seq: int = 128
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    exact_max_side: int = EXACT_MAX_SIDE
    basis_budget_bytes: int = BASIS_BUDGET_BYTES
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("steps", "every", "batch", "seq"):
            if getattr(self, name) <= 0:
                raise SubprofError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.every > self.steps:
            raise SubprofError(f"--every {self.every} is more than --steps {self.steps}: nothing would be sampled")
        if self.gaps is not None:
            bad = [g for g in self.gaps if g <= 0 or g >= self.steps]
            if bad:
                raise SubprofError(f"--gaps {bad[0]}: a gap must be at least 1 and less than --steps {self.steps} "
                                   "(a basis from step t is compared at step t + gap)")
        else:
            self.gaps = tuple(g for g in DEFAULT_GAPS if g < self.steps)
            skipped = [g for g in DEFAULT_GAPS if g >= self.steps]
            if skipped:
                self.notes.append(f"gaps {', '.join(map(str, skipped))} need more than --steps {self.steps}: "
                                  "measured up to " + str(max(self.gaps, default=0)) + ", longer gaps extrapolated")
        if self.ranks is not None and any(r <= 0 for r in self.ranks):
            raise SubprofError("--ranks must be positive integers")
        self.gaps = tuple(sorted(set(self.gaps)))


def widest_side(model: ModelConfig) -> int:
    """The largest smaller side of any projected weight: the largest rank any weight can use."""
    return max(min(s.m, s.n) for s in model.linear_shapes())


def default_ranks(model: ModelConfig) -> tuple[int, ...]:
    top = widest_side(model) // 2
    return tuple(2**k for k in range(3, 16) if 2**k <= top) or (max(1, top),)


def check_ranks(model: ModelConfig, ranks: tuple[int, ...]) -> None:
    limit = widest_side(model)
    bad = [r for r in ranks if r > limit]
    if bad:
        raise SubprofError(f"--ranks {bad[0]} exceeds the widest weight's smaller side of {model.name} ({limit}); "
                           f"use ranks ≤ {limit}")


def plan_probe(model: ModelConfig, settings: ProbeSettings) -> tuple[BurstCase, BurstSettings, tuple[int, ...],
                                                                       str | None]:
    """The case to train (target or proxy), the burst settings, the ranks measured on it, and the proxy note."""
    ranks = tuple(sorted(set(settings.ranks))) if settings.ranks else default_ranks(model)
    check_ranks(model, ranks)
    spec = get_method(settings.method)
    cfg = TrainConfig(model=model, method=spec.name, rank=settings.rank if spec.project else None,
                      update_gap=settings.update_gap if spec.project else None, dtype="fp32", batch=settings.batch,
                      seq=settings.seq)
    burst = BurstSettings(steps=settings.steps, seed=settings.seed, data_seed=settings.seed, device=settings.device,
                          threads=settings.threads)
    case, note = proxy_case(BurstCase(config=cfg, lr=settings.lr), burst, fits=probe_fits)
    if case.config.model.name != model.name:
        ratio = case.config.model.hidden / model.hidden
        given = settings.ranks is not None
        ranks = tuple(sorted({max(1, round(r * ratio)) for r in ranks})) if given else \
            default_ranks(case.config.model)
    return case, burst, ranks, note


def probe_fits(case: BurstCase, settings: BurstSettings) -> bool:
    """On a CPU: at most PROBE_CPU_PARAM_LIMIT parameters (time, not memory); on a GPU: as `burst`."""
    if settings.device == "cpu":
        return case.config.model.params <= PROBE_CPU_PARAM_LIMIT
    return fits_locally(case, settings)


def weight_infos(model: torch.nn.Module) -> list[tuple[WeightInfo, torch.nn.Parameter]]:
    """The projected weights (GaLore's selection, `subprof.optim.build.split_parameters`) with layer and type."""
    from subprof.optim.build import split_parameters

    projected, _ = split_parameters(model)
    out = []
    for name, p in projected.items():
        parts = name.split(".")
        layer = next((int(x) for x in parts if x.isdigit()), -1)
        kind = next((TYPE_OF[x] for x in parts if x in TYPE_OF), parts[-2])
        out.append((WeightInfo(name=name, layer=layer, type=kind, shape=tuple(p.shape)), p))
    return out


def header_row(case: BurstCase, target: ModelConfig, settings: ProbeSettings, ranks: tuple[int, ...],
               burst: BurstSettings, corpus: Corpus, note: str | None) -> dict:
    import transformers

    c = case.config
    row = {"kind": "probe_run", "model": c.model.name, "target_model": target.name, "proxy_note": note,
           "method": c.method, "rank": c.rank, "update_gap": c.update_gap, "ranks": list(ranks),
           "gaps": list(settings.gaps), "every": settings.every, "steps": settings.steps, "batch": c.batch,
           "seq": c.seq, "lr": case.effective_lr(), "scale": burst.scale, "seed": settings.seed, "dtype": c.dtype,
           "exact_max_side": settings.exact_max_side, **corpus.summary(), "device": burst.device,
           "device_name": _device_name(burst.device), "torch": torch.__version__,
           "transformers": transformers.__version__, "machine": platform.machine(),
           "threads": settings.threads or default_threads(), "params": c.model.params, "hidden": c.model.hidden,
           "target_hidden": target.hidden, "date": now_iso()}
    row["run_id"] = hashlib.sha1(json.dumps([row.get(k) for k in KEY_FIELDS], default=str).encode()).hexdigest()[:16]
    return row


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU"


def run_probe(target: ModelConfig, settings: ProbeSettings, corpus: Corpus, *, out: str | None = None,
              resume: bool = False, progress: Any = None,
              announce: Callable[[dict], None] | None = None) -> list[dict]:
    """Train and measure; returns every row of the run (including rows found in `out` when resuming). `announce`
    gets the header row before training starts."""
    case, burst, ranks, note = plan_probe(target, settings)
    corpus.require(case.config.seq)
    header = header_row(case, target, settings, ranks, burst, corpus, note)
    log = ResultLog(out, resume=resume) if out else None
    old = [r for r in (log.existing if log else []) if r.get("run_id") == header["run_id"]]
    if announce:
        announce(header)
    if any(r.get("kind") == "probe_end" for r in old):
        if progress:
            for _ in range(settings.steps):
                progress.advance("done earlier")
        return [dict(r, resumed=True) if r.get("kind") == "probe_end" else r for r in old]
    if log and not any(r.get("kind") == "probe_run" for r in old):
        log.append(header)
    rows = old or [header]
    with torch_threads(settings.threads):
        rows += _train(case, burst, settings, ranks, corpus, header["run_id"], {row_key(r) for r in old}, log,
                       progress)
    return rows


def _train(case: BurstCase, burst: BurstSettings, settings: ProbeSettings, ranks: tuple[int, ...], corpus: Corpus,
           run_id: str, skip: set, log: ResultLog | None, progress: Any) -> list[dict]:
    c = case.config
    schedule = ProbeSchedule(steps=settings.steps, every=settings.every, gaps=settings.gaps)
    model = build_model(c, corpus.vocab_size, burst)
    weights = weight_infos(model)
    probe = SubspaceProbe(schedule=schedule, ranks=ranks, exact_max_side=settings.exact_max_side)
    need = schedule.max_live_bases() * probe.bytes_per_basis(info for info, _ in weights)
    if need > settings.basis_budget_bytes:
        raise SubprofError(f"keeping bases for gaps up to {max(schedule.gaps)} needs {need / 2**30:.1f} GiB (budget "
                           f"{settings.basis_budget_bytes / 2**30:.1f} GiB): use fewer or smaller --ranks or gaps")
    opt = build_case_optimizer(model, case, burst)
    sched = build_scheduler(opt, burst)
    offsets = train_offsets(corpus.train.size, c, burst)
    cuda = burst.device.startswith("cuda")
    new: list[dict] = []

    def emit(row: dict) -> None:
        row["run_id"] = run_id
        if log:
            log.append(row)
        new.append(row)

    step_times, probe_times, losses, most_stored = [], [], [], 0
    status, detail = "ok", None
    wall0 = time.perf_counter()
    for step in range(settings.steps):
        x, y = windows(corpus.train, offsets[step], c.seq, burst.device)
        t0 = time.perf_counter()
        value, detail = loss_and_backward(model, x, y, step)
        if detail:
            status = "diverged"
            break
        t1 = time.perf_counter()
        sampled = schedule.decomposed(step)
        if sampled:
            before = probe.seconds
            for row in probe.observe(step, [(info, p.grad) for info, p in weights], skip=skip):
                emit(row)
            probe_times.append(probe.seconds - before)
            most_stored = max(most_stored, probe.stored_bytes)
        t2 = time.perf_counter()
        try:
            opt.step()
        except FloatingPointError as exc:
            status, detail = "diverged", f"optimizer at step {step}: {exc}"
            break
        if sampled and c.spec.project:
            for row in _tracking(step, weights, opt, probe, c.rank):
                if row_key(row) not in skip:
                    emit(row)
        opt.zero_grad(set_to_none=True)
        sched.step()
        if cuda:
            torch.cuda.synchronize(burst.device)
        step_times.append((t1 - t0) + (time.perf_counter() - t2))
        losses.append(value)
        if progress:
            progress.advance(f"step {step + 1} loss {value:.3f}" + (" · sampled" if sampled else ""))
    if progress:
        for _ in range(settings.steps - len(step_times)):
            progress.advance(status)
    train_median = statistics.median(step_times) if step_times else None
    probe_median = statistics.median(probe_times) if probe_times else None
    emit({"kind": "probe_end", "status": status, "diverged": detail, "steps_done": len(step_times),
          "sampled_steps": len(probe_times), "train_step_median_s": train_median,
          "probe_s_per_sampled_step_median": probe_median,
          "probe_over_train_step": probe_median / train_median if probe_median and train_median else None,
          "probe_s_total": probe.seconds, "train_s_total": sum(step_times), "wall_s": time.perf_counter() - wall0,
          "stored_bases_bytes_max": most_stored, "basis_budget_bytes": settings.basis_budget_bytes,
          "initial_loss": losses[0] if losses else None, "final_train_loss": losses[-1] if losses else None,
          "train_loss": [round(v, 5) for v in losses], "date": now_iso()})
    return new


def _tracking(step: int, weights: list, opt: torch.optim.Optimizer, probe: SubspaceProbe,
              rank: int | None) -> list[dict]:
    """The share of this step's gradient captured by the basis the method projected it with, over the fresh top-r
    share (r the weight's effective rank)."""
    rows = []
    for info, p in weights:
        state = opt.state.get(p, {})
        basis = state.get("projector") if isinstance(state, dict) else None
        fresh = probe.fresh.get(info.name)
        if basis is None or fresh is None or p.grad is None:
            continue
        r = min(rank or basis.shape[1], min(info.shape))
        fresh_share = fresh.energy(r)
        share = captured_share(basis, p.grad)
        rows.append({"kind": "probe_tracking", "step": step, "name": info.name, "layer": info.layer,
                     "type": info.type, "m": info.shape[0], "n": info.shape[1], "rank": r,
                     "share": round(share, 6), "fresh_share": fresh_share,
                     "tracking": round(share / fresh_share, 6) if fresh_share else None})
    return rows
