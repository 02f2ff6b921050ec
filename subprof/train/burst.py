"""Training bursts: short real training runs that compare methods, ranks and update gaps on equal terms.

Every configuration of a sweep starts from the same weights (`torch.manual_seed(seed)` before the model is built)
and sees the same batches in the same order (window offsets drawn once from `numpy.random.default_rng(data_seed)`),
so the first training loss is bit-identical across configurations and differences come from the optimizer alone.

Per case: next-token cross-entropy every step; validation loss every `eval_every` steps and at the end, on a fixed
set of windows spread evenly over the held-out split; tokens/s over the timed steps; the time spent inside the
projection updates (every `ProjectionRule.update_projection` call is timed) as a share of step time; memory —
`torch.cuda.max_memory_allocated` on a GPU, and on the CPU the peak of the first two steps repeated on a separate
copy (state creation and first projection, then a step with the state resident) traced by torch's `MemTracker`,
plus the bytes held in `optimizer.state` at the end. A NaN/inf loss (or an optimizer refusing a non-finite
gradient) ends the case with `status: "diverged"`; the sweep goes on. Rows are appended to a JSONL `ResultLog`
as each case finishes.

Learning rate: `lr` if given, else AdamW 1e-3 and every low-rank method 1e-2 with scale 0.25 (the GaLore paper's
recipe for its LLaMA 60m–1b runs, applied here to all low-rank methods alike), with a linear warm-up over the first
10% of steps and a cosine decay to 10% of the peak (transformers' `get_cosine_with_min_lr_schedule_with_warmup`).
"""

from __future__ import annotations

import hashlib
import math
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import numpy as np
import torch

from subprof.catalog import ModelConfig, load_model, model_names
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import get_method
from subprof.results import ResultLog, case_key, now_iso
from subprof.train.corpus import Corpus

KEY_FIELDS = ("model", "method", "rank", "update_gap", "lr", "steps", "batch", "seq", "seed", "data_seed", "dtype",
              "corpus_key")
FINAL = ("ok", "diverged")
LOWRANK_LR, ADAMW_LR = 1e-2, 1e-3
CPU_PARAM_LIMIT = 25_000_000  # bursts on a CPU: models up to the 20m preset finish 200 steps in minutes


@dataclass(kw_only=True, slots=True)
class BurstCase:
    """One configuration to train: a `TrainConfig` (model, method, rank, update gap, dtype, micro-batch, sequence)
    and the peak learning rate (None: the method's default, `effective_lr`)."""

    config: TrainConfig
    lr: float | None = None

    @property
    def label(self) -> str:
        c = self.config
        return " ".join([c.method] + ([f"r{c.rank}"] if c.rank else []) + ([f"T{c.update_gap}"] if c.update_gap
                                                                           else []))

    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else (LOWRANK_LR if self.config.spec.project else ADAMW_LR)


@dataclass(kw_only=True, slots=True)
class BurstSettings:
    """What every case of a sweep shares besides its configuration."""

    steps: int = 200
    eval_every: int = 50
    val_windows: int = 64
    seed: int = 0
    data_seed: int = 0
    device: str = "auto"
    scale: float = 0.25
    warmup_fraction: float = 0.1
    threads: int | None = None  # torch intra-op threads; None keeps torch's default

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "val_windows"):
            if getattr(self, name) <= 0:
                raise SubprofError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads <= 0:
            raise SubprofError(f"--threads must be at least 1, got {self.threads}")
        self.device = resolve_device(self.device)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SubprofError(f"--device {device}: no CUDA device is visible; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise SubprofError(f"--device {device!r} unknown: use auto, cpu or cuda[:N]")
    return device


# ------------------------------------------------------------------------------------------------ case lists


def expand_cases(models: list[str], methods: list[str], ranks: list[int], gaps: list[int], *, batch: int = 8,
                 seq: int = 256, dtype: str = "fp32", lr: float | None = None) -> tuple[list[BurstCase], list[str]]:
    """The sweep's cases and notes on the combinations left out: full-rank methods ignore rank and gap; methods
    that update every step by default and search no other gap (`MethodSpec.update_gaps == (1,)`) run at gap 1
    only — other gaps would repeat it; ranks beyond a model's smallest weight dimension are skipped."""
    cases, notes = [], []
    for name in models:
        cfg = load_model(name)
        for method in methods:
            spec = get_method(method)

            def case(rank: int | None = None, gap: int | None = None) -> BurstCase:
                return BurstCase(config=TrainConfig(model=cfg, method=spec.name, rank=rank, update_gap=gap,
                                                    dtype=dtype, batch=batch, seq=seq), lr=lr)

            if not spec.project:
                cases.append(case())
                continue
            every_step = spec.update_gaps == (1,)
            use_gaps = [1] if every_step else sorted(set(gaps))
            if every_step and set(gaps) != {1}:
                notes.append(f"{spec.name} updates its projection every step: gap 1 only (skipped "
                             f"{', '.join(str(g) for g in sorted(set(gaps)) if g != 1)})")
            for rank in ranks:
                if rank > cfg.min_weight_dim():
                    notes.append(f"{name}: rank {rank} > smallest weight dimension {cfg.min_weight_dim()}, skipped")
                    continue
                cases.extend(case(rank, g) for g in use_gaps)
    return cases, list(dict.fromkeys(notes))


def fits_locally(case: BurstCase, settings: BurstSettings) -> bool:
    """Whether a burst of `case` is practical here: on a GPU its estimated peak (`subprof.plan.memory`) within 90% of
    the device memory; on a CPU at most CPU_PARAM_LIMIT parameters (a time limit, not a memory one)."""
    if settings.device == "cpu":
        return case.config.model.params <= CPU_PARAM_LIMIT
    from subprof.plan.memory import estimate

    est = estimate(case.config)
    return est.peak_allocated_bytes <= 0.9 * torch.cuda.get_device_properties(settings.device).total_memory


def proxy_config(config: TrainConfig, proxy: ModelConfig) -> TrainConfig:
    """`config` on a smaller `proxy` model with the same method, update gap and rank-to-width ratio:
    rank' = max(1, round(rank · h' / h)), h the hidden size, capped at the proxy's smallest weight dimension."""
    rank = None if config.rank is None else min(proxy.min_weight_dim(),
                                                max(1, round(config.rank * proxy.hidden / config.model.hidden)))
    return replace(config, model=proxy, rank=rank)


def proxy_case(case: BurstCase, settings: BurstSettings,
               fits: Callable[[BurstCase, BurstSettings], bool] = fits_locally) -> tuple[BurstCase, str | None]:
    """The case itself if it fits the local device, else the largest smaller catalogue model that does (with
    `proxy_config`). Returns (case, note saying what was done)."""
    if fits(case, settings):
        return case, None
    target = case.config
    smaller = sorted((load_model(n) for n in model_names()), key=lambda c: c.params, reverse=True)
    for cfg in smaller:
        if cfg.params >= target.model.params:
            continue
        proxy = BurstCase(config=proxy_config(target, cfg), lr=case.lr)
        if fits(proxy, settings):
            rank = proxy.config.rank
            ratio = f", rank {target.rank} → {rank} (rank/hidden {target.rank}/{target.model.hidden})" if rank else ""
            return proxy, f"{target.model.name} does not fit {settings.device}; proxy {cfg.name}{ratio}"
    raise SubprofError(f"no catalogue model smaller than {target.model.name} fits {settings.device} for a burst")


# ------------------------------------------------------------------------------------------------ data order


def train_offsets(n_tokens: int, config: TrainConfig, settings: BurstSettings) -> np.ndarray:
    """(steps, batch) window starts, a function of the corpus length, the batch shape and the data seed only."""
    rng = np.random.default_rng(settings.data_seed)
    return rng.integers(0, n_tokens - config.seq, size=(settings.steps, config.batch), dtype=np.int64)


def val_offsets(n_tokens: int, config: TrainConfig, settings: BurstSettings) -> np.ndarray:
    """Fixed validation windows spread evenly over the held-out split."""
    count = min(settings.val_windows, max(1, n_tokens - config.seq))
    return np.linspace(0, n_tokens - config.seq - 1, count).astype(np.int64)


def windows(tokens: np.ndarray, offsets: np.ndarray, seq: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    block = np.stack([tokens[o: o + seq + 1] for o in offsets]).astype(np.int64)
    t = torch.from_numpy(block).to(device)
    return t[:, :-1], t[:, 1:]


def data_order_hash(offsets: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(offsets).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ model, optimizer


def build_model(config: TrainConfig, vocab_size: int, settings: BurstSettings) -> torch.nn.Module:
    """transformers' LlamaForCausalLM (`subprof.measure.model.build_model`) from the catalogue config with the
    corpus's vocabulary, in the configuration's dtype, seeded so every case starts from the same weights."""
    from subprof.measure.model import build_model as build

    cfg = config.model
    if config.seq > cfg.max_positions:
        raise SubprofError(f"--seq {config.seq} exceeds {cfg.name}'s max_position_embeddings {cfg.max_positions}")
    cfg = replace(cfg, vocab=vocab_size, raw=dict(cfg.raw, vocab_size=vocab_size))
    return build(cfg, dtype=config.dtype, device=settings.device, seed=settings.seed)


def build_case_optimizer(model: torch.nn.Module, case: BurstCase, settings: BurstSettings) -> torch.optim.Optimizer:
    from subprof.optim import build_optimizer

    c = case.config
    return build_optimizer(model, c.method, rank=c.rank, update_gap=c.update_gap, scale=settings.scale,
                           lr=case.effective_lr(), weight_decay=0.0, state_bits=c.state_bits, **c.method_options)


def build_scheduler(optimizer: torch.optim.Optimizer, settings: BurstSettings) -> Any:
    """transformers' linear warm-up over ⌈warmup·steps⌉ steps, then cosine decay to 10% of the peak
    (`get_cosine_with_min_lr_schedule_with_warmup`, the shape of GaLore's training schedule)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    warm = max(1, math.ceil(settings.warmup_fraction * settings.steps))
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=warm,
                                                       num_training_steps=settings.steps, min_lr_rate=0.1)


@contextmanager
def projection_timer(device: str) -> Iterator[list[float]]:
    """Times every `update_projection` call of every ProjectionRule subclass (the optimizer calls it once per
    projected weight and step); yields the list of call durations in seconds."""
    from subprof.methods.rule import ProjectionRule

    calls: list[float] = []
    patched: list[tuple[type, Any]] = []
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def wrap(fn: Any) -> Any:
        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            sync()
            t0 = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                sync()
                calls.append(time.perf_counter() - t0)
        return timed

    todo, seen = [ProjectionRule], set()
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls not in seen and "update_projection" in cls.__dict__:
            seen.add(cls)
            patched.append((cls, cls.__dict__["update_projection"]))
            cls.update_projection = wrap(cls.__dict__["update_projection"])
    try:
        yield calls
    finally:
        for cls, fn in patched:
            cls.update_projection = fn


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def loss_and_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      step: int) -> tuple[float, str | None]:
    """The training loss of one batch and its backward pass; a non-finite loss skips backward and comes back with
    the reason (the caller ends the run as diverged)."""
    loss = loss_of(model, x, y)
    value = loss.item()
    if not math.isfinite(value):
        return value, f"training loss {value} at step {step}"
    loss.backward()
    return value, None


@torch.no_grad()
def val_loss(model: torch.nn.Module, corpus: Corpus, offsets: np.ndarray, config: TrainConfig, device: str) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(offsets), config.batch):
        x, y = windows(corpus.val, offsets[i: i + config.batch], config.seq, device)
        total += loss_of(model, x, y).item() * len(x)
    model.train()
    return total / len(offsets)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in `optimizer.state` (moments, projections), each storage counted once."""
    seen: dict[int, int] = {}
    for st in optimizer.state.values():
        for name, v in (st.items() if isinstance(st, dict) else ()):
            if isinstance(v, torch.Tensor) and name != "rng_state":  # a generator's state is not training memory
                seen[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
    return sum(seen.values())


def traced_first_step_peak(case: BurstCase, settings: BurstSettings, corpus: Corpus,
                           offsets: np.ndarray) -> int | None:
    """Peak bytes over the first two steps on a separate model copy, traced by torch's MemTracker: step 0 creates
    the optimizer state and the first projection (SVD workspace); step 1 runs forward and backward with that state
    resident, which is where a step's peak sits when activations and logits dominate. None where the tracker is
    unavailable."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        return None
    c = case.config
    model = build_model(c, corpus.vocab_size, settings)
    opt = build_case_optimizer(model, case, settings)
    tracker = MemTracker()
    tracker.track_external(model, opt)
    peaks = []
    with tracker:
        for step in range(min(2, len(offsets))):
            x, y = windows(corpus.train, offsets[step], c.seq, settings.device)
            loss_of(model, x, y).backward()
            try:
                opt.step()
            except FloatingPointError:  # a non-finite gradient: the real run will report the divergence
                break
            opt.zero_grad(set_to_none=True)
            peaks.append(sum(v.get("Total", 0) for v in tracker.get_tracker_snapshot("peak").values()))
            tracker.reset_mod_stats()  # MemTracker traces one iteration at a time
    return int(max(peaks)) if peaks else None


# ------------------------------------------------------------------------------------------------ running


def case_row(case: BurstCase, settings: BurstSettings, corpus: Corpus) -> dict:
    """The identifying fields of a burst row (and the settings it ran with)."""
    c = case.config
    return {"kind": "burst", "model": c.model.name, "method": c.method, "rank": c.rank, "update_gap": c.update_gap,
            "lr": case.effective_lr(), "scale": settings.scale, "steps": settings.steps, "batch": c.batch,
            "seq": c.seq, "seed": settings.seed, "data_seed": settings.data_seed, "dtype": c.dtype,
            "device": settings.device, "eval_every": settings.eval_every, "val_windows": settings.val_windows,
            **corpus.summary(), "params": c.model.params, "torch": torch.__version__, "machine": platform.machine(),
            "threads": torch.get_num_threads(), "date": now_iso()}


def run_burst(case: BurstCase, settings: BurstSettings, corpus: Corpus,
              on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train one case for `settings.steps` steps; returns its result row (status ok or diverged)."""
    c = case.config
    corpus.require(c.seq)
    row = case_row(case, settings, corpus)
    offsets = train_offsets(corpus.train.size, c, settings)
    voffsets = val_offsets(corpus.val.size, c, settings)
    row["data_order"] = data_order_hash(offsets)
    cuda = settings.device.startswith("cuda")
    if not cuda:
        row["peak_tracked_bytes"] = traced_first_step_peak(case, settings, corpus, offsets)
    model = build_model(c, corpus.vocab_size, settings)
    row["params"] = sum(p.numel() for p in model.parameters())
    opt = build_case_optimizer(model, case, settings)
    sched = build_scheduler(opt, settings)
    if cuda:
        torch.cuda.synchronize(settings.device)
        torch.cuda.reset_peak_memory_stats(settings.device)
    losses, curve, step_times = [], [], []
    status, detail = "ok", None
    wall0 = time.perf_counter()
    with projection_timer(settings.device) as proj_calls:
        for step in range(settings.steps):
            x, y = windows(corpus.train, offsets[step], c.seq, settings.device)
            t0 = time.perf_counter()
            value, detail = loss_and_backward(model, x, y, step)
            if detail:
                status = "diverged"
                break
            try:
                opt.step()
            except FloatingPointError as exc:  # subprof.optim's NonFiniteGradientError: nothing was updated
                status, detail = "diverged", f"optimizer at step {step}: {exc}"
                break
            opt.zero_grad(set_to_none=True)
            sched.step()
            if cuda:
                torch.cuda.synchronize(settings.device)
            step_times.append(time.perf_counter() - t0)
            losses.append(value)
            if on_step:
                on_step(step, value)
            if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
                v = val_loss(model, corpus, voffsets, c, settings.device)
                curve.append([step + 1, v])
                if not math.isfinite(v):
                    status, detail = "diverged", f"validation loss {v} after step {step + 1}"
                    break
    train_s = sum(step_times)
    row.update({
        "status": status, "diverged": detail, "steps_done": len(step_times),
        "initial_loss": losses[0] if losses else None, "final_train_loss": losses[-1] if losses else None,
        "train_loss": [round(v, 5) for v in losses], "val_curve": curve,
        "val_loss": curve[-1][1] if curve and status == "ok" else None,
        "tokens_per_s": c.tokens * len(step_times) / train_s if train_s else None,
        "step_time_median_s": statistics.median(step_times) if step_times else None,
        "first_step_s": step_times[0] if step_times else None, "train_s": train_s,
        "wall_s": time.perf_counter() - wall0, "projection_s": sum(proj_calls),
        "projection_share": sum(proj_calls) / train_s if train_s else None,
        "optimizer_state_bytes": state_bytes(opt),
    })
    if cuda:
        row["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(settings.device)
        row["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(settings.device)
    return row


def run_bursts(cases: list[BurstCase], settings: BurstSettings, corpus: Corpus, *, out: str | None = None,
               resume: bool = False, progress: Any = None) -> list[dict]:
    """Run every case with shared settings; rows are appended to `out` as they finish; with `resume`, cases already
    in `out` with a final status are returned from there, not rerun. Returns one row per case, in order:
    `val_loss`, `tokens_per_s`, `peak_tracked_bytes` (CPU) or `peak_allocated_bytes` (CUDA), `status`, the loss
    curves and the rest of the row. `progress`, if given, gets `advance(label)` once per training step."""
    for case in cases:
        corpus.require(case.config.seq)
    log = ResultLog(out, resume=resume) if out else None
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _run_all(cases, settings, corpus, log, progress)
    finally:
        torch.set_num_threads(threads)


def _run_all(cases: list[BurstCase], settings: BurstSettings, corpus: Corpus, log: ResultLog | None,
             progress: Any) -> list[dict]:
    done = {case_key(r, KEY_FIELDS): r for r in (log.existing if log else []) if r.get("status") in FINAL}
    rows = []
    for case in cases:
        key = case_key(case_row(case, settings, corpus), KEY_FIELDS)
        if key in done:
            rows.append(dict(done[key], resumed=True))
            if progress:
                for _ in range(settings.steps):
                    progress.advance(f"{case.label}: done earlier")
            continue
        hook = (lambda s, v, c=case: progress.advance(f"{c.label} step {s + 1} loss {v:.3f}")) if progress else None
        row = run_burst(case, settings, corpus, on_step=hook)
        if progress and row["steps_done"] < settings.steps:
            for _ in range(settings.steps - row["steps_done"]):
                progress.advance(f"{case.label}: {row['status']}")
        if log:
            log.append(row)
        rows.append(row)
    return rows
