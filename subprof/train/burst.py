"""Training bursts: short real training runs that compare methods, ranks and update gaps on equal terms.

Every configuration of a sweep starts from the same weights (`torch.manual_seed(seed)` before the model is built)
and sees the same batches in the same order (window offsets drawn once from `numpy.random.default_rng(data_seed)`),
so the first training loss is bit-identical across configurations and differences come from the optimizer alone.

Per case: next-token cross-entropy every step; validation loss every `eval_every` steps and at the end, on a fixed
set of windows spread evenly over the held-out split; tokens/s over the timed steps; the time spent inside the
projection updates (every call of a rule's `update_methods` is timed) as a share of step time; memory —
`torch.cuda.max_memory_allocated` on a GPU, and on the CPU the peak of the first two steps repeated on a separate
copy (state creation and first projection, then a step with the state resident) traced by torch's `MemTracker`,
plus the bytes held in `optimizer.state` at the end. A NaN/inf loss (or an optimizer refusing a non-finite
gradient) ends the case with `status: "diverged"`; the sweep goes on. Rows are appended to a JSONL `ResultLog`
as each case finishes.

Learning rate: `lr` if given, else each method's published default (`MethodSpec.default_lr`), or a small grid
around it per configuration (`subprof.train.lrgrid`: `expand_cases(..., lr_grid=K)`, `best_rows`); scale 0.25 for
every low-rank method; a linear warm-up over the first 10% of steps and a cosine decay to 10% of the peak
(transformers' `get_cosine_with_min_lr_schedule_with_warmup`, the shape of GaLore's schedule). Rules that schedule
something over the run (an option `total_steps`, e.g. Ori's column activation) are told the burst's length.
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
from subprof.config import MIN_REFRESHES, TrainConfig, refreshes
from subprof.errors import SubprofError
from subprof.methods import get_method
from subprof.quiet import known_noise_filtered
from subprof.results import ResultLog, case_key, now_iso
from subprof.train.corpus import Corpus
from subprof.train.lrgrid import lr_grid as grid_around

KEY_FIELDS = ("model", "method", "rank", "update_gap", "state_bits", "lr", "steps", "batch", "seq", "seed", "data_seed",
              "dtype", "corpus_key", "nproc", "strategy")
FINAL = ("ok", "diverged")
CPU_PARAM_LIMIT = 25_000_000  # bursts on a CPU: models up to the 20m preset finish 200 steps in minutes


@dataclass(kw_only=True, slots=True)
class BurstCase:
    """One configuration to train: a `TrainConfig` (model, method, rank, update gap, dtype, micro-batch, sequence)
    and the peak learning rate (None: the method's published default, `effective_lr`); `lr_grid` is the grid the
    case's lr was taken from (empty when no grid was asked for)."""

    config: TrainConfig
    lr: float | None = None
    lr_grid: tuple[float, ...] = ()

    @property
    def label(self) -> str:
        c = self.config
        return " ".join([c.method] + ([f"r{c.rank}"] if c.rank else []) + ([f"T{c.update_gap}"] if c.update_gap
                                                                           else []))

    def effective_lr(self) -> float:
        from subprof.methods.bases import default_lr

        return self.lr if self.lr is not None else default_lr(self.config.spec.default_lr, self.config.base)

    @property
    def lr_source(self) -> str:
        """"grid" (one point of an lr grid), "given" (--lr) or "default" (the method's published lr)."""
        return "grid" if self.lr_grid else ("given" if self.lr is not None else "default")


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
    threads: int | None = None  # torch intra-op threads; None: `config.default_threads()`
    nproc: int = 1  # data-parallel processes (`subprof.train.parallel`): the global batch split over them
    strategy: str = "fsdp"  # with nproc > 1: fsdp (FSDP2, the declared layout) or ddp

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise SubprofError(f"--nproc must be at least 1, got {self.nproc}")
        if self.strategy not in ("fsdp", "ddp"):
            raise SubprofError(f"--strategy {self.strategy!r}: a burst runs fsdp or ddp")
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


def method_gaps(spec: Any, gaps: list[int]) -> tuple[list[int], str | None]:
    """The requested gaps a method runs at: those up to the largest it searches (`MethodSpec.update_gaps`; a
    streaming method's (1, 2, 5, 10) leaves out 50 and 200), else its default gap; and a note on what was left out."""
    wanted = sorted(set(gaps))
    use = [g for g in wanted if g <= max(spec.update_gaps)] or [spec.default_update_gap]
    skipped = [g for g in wanted if g not in use]
    note = (f"{spec.name} updates its projection every {'/'.join(map(str, spec.update_gaps))} steps: gap "
            f"{', '.join(map(str, use))} (skipped {', '.join(map(str, skipped))})") if skipped else None
    return use, note


def refresh_notes(cases: list["BurstCase"], steps: int) -> list[str]:
    """One note per projected case whose run holds fewer than `MIN_REFRESHES` refreshes: at that length it cannot
    show what its update gap does (a gap longer than the run is a fixed basis)."""
    out = []
    for case in cases:
        c = case.config
        if c.spec.periodic and refreshes(c.update_gap, steps) < MIN_REFRESHES:
            out.append(f"{c.label()}: {refreshes(c.update_gap, steps)} refresh(es) after step 0 in {steps} steps — "
                       f"too few to show what gap {c.update_gap} does (use --steps ≥ "
                       f"{MIN_REFRESHES * c.update_gap + 1} to compare it)")
    return out


def expand_cases(models: list[str], methods: list[str], ranks: list[int], gaps: list[int], *, batch: int = 8,
                 seq: int = 256, dtype: str = "fp32", lr: float | None = None,
                 lr_grid: int | None = None, base: str | None = None) -> tuple[list[BurstCase], list[str]]:
    """The sweep's cases and notes on the combinations left out: full-rank methods ignore rank and gap; each method
    runs the requested gaps it searches (`method_gaps`); ranks beyond every weight's smaller side are skipped.
    `lr_grid` = K: every configuration at K learning rates around `lr` or the method's default (`lrgrid`). `base`:
    the base optimizer of every method that runs it (the others keep theirs, with a note)."""
    cases, notes = [], []
    for name in models:
        cfg = load_model(name)
        for method in methods:
            spec = get_method(method)
            options = {"base": base} if base and base in spec.bases else {}
            if base and not options and name == models[0]:
                notes.append(f"{spec.name} runs {', '.join(spec.bases)}: --base {base} does not apply to it")

            def case(rank: int | None = None, gap: int | None = None) -> list[BurstCase]:
                config = TrainConfig(model=cfg, method=method, rank=rank, update_gap=gap, dtype=dtype,  # alias: its bits
                                     batch=batch, seq=seq, method_options=options)
                if not lr_grid:
                    return [BurstCase(config=config, lr=lr)]
                from subprof.methods.bases import default_lr

                grid = tuple(grid_around(lr if lr is not None else default_lr(spec.default_lr, config.base), lr_grid))
                return [BurstCase(config=config, lr=point, lr_grid=grid) for point in grid]

            if not spec.project:
                cases.extend(case())
                continue
            use_gaps, note = method_gaps(spec, gaps)
            if note:
                notes.append(note)
            for rank in ranks:
                if rank > cfg.rank_limit():
                    notes.append(f"{name}: rank {rank} > every weight's smaller side (widest {cfg.rank_limit()}), "
                                 f"skipped")
                    continue
                for g in use_gaps:
                    cases.extend(case(rank, g))
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
    rank' = max(1, round(rank · h' / h)), h the hidden size, capped at the proxy's rank limit."""
    rank = None if config.rank is None else min(proxy.rank_limit(),
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
        proxy = BurstCase(config=proxy_config(target, cfg), lr=case.lr, lr_grid=case.lr_grid)
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
    options = dict(c.method_options)
    if "total_steps" in c.spec.option_defaults:  # a rule that schedules over the run learns its length
        options.setdefault("total_steps", settings.steps)
    return build_optimizer(model, c.method, rank=c.rank, update_gap=c.update_gap, scale=settings.scale,
                           lr=case.effective_lr(), weight_decay=0.0, state_bits=c.state_bits, **options)


def build_scheduler(optimizer: torch.optim.Optimizer, settings: BurstSettings) -> Any:
    """transformers' linear warm-up over ⌈warmup·steps⌉ steps, then cosine decay to 10% of the peak
    (`get_cosine_with_min_lr_schedule_with_warmup`, the shape of GaLore's training schedule)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    warm = max(1, math.ceil(settings.warmup_fraction * settings.steps))
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=warm,
                                                       num_training_steps=settings.steps, min_lr_rate=0.1)


@contextmanager
def projection_timer(device: str) -> Iterator[list[float]]:
    """Times every projection update of every ProjectionRule subclass — the calls of its `update_methods`
    (`update_projection` unless the rule splits it) that the optimizer makes once per projected weight and step;
    yields the list of call durations in seconds."""
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
        if cls in seen:
            continue
        seen.add(cls)
        for name in cls.update_methods:
            if name in cls.__dict__:
                patched.append((cls, name, cls.__dict__[name]))
                setattr(cls, name, wrap(cls.__dict__[name]))
    try:
        yield calls
    finally:
        for cls, name, fn in patched:
            setattr(cls, name, fn)


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def loss_and_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, step: int,
                      replica: Any = None) -> tuple[float, str | None]:
    """The training loss of one batch and its backward pass; a non-finite loss skips backward and comes back with
    the reason (the caller ends the run as diverged). With a replica (`subprof.train.parallel.Replica`) the loss is
    the mean over the ranks' rows, so every rank sees the same value and ends alike."""
    loss = loss_of(model, x, y)
    value = loss.item() if replica is None else replica.mean(loss.item())
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
    with known_noise_filtered(), tracker:  # torch's ModTracker warns on LLaMA's re-entered modules (subprof.quiet)
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
            "state_bits": c.state_bits, "method_options": dict(c.method_options), "lr": case.effective_lr(),
            "lr_source": case.lr_source, "lr_grid": list(case.lr_grid), "scale": settings.scale, "steps": settings.steps, "batch": c.batch,
            "seq": c.seq, "seed": settings.seed, "data_seed": settings.data_seed, "dtype": c.dtype,
            "device": settings.device, "eval_every": settings.eval_every, "val_windows": settings.val_windows,
            **corpus.summary(), "params": c.model.params, "torch": torch.__version__, "machine": platform.machine(),
            "threads": torch.get_num_threads(), "date": now_iso(),
            **({"nproc": settings.nproc, "strategy": settings.strategy} if settings.nproc > 1 else {})}


def run_burst(case: BurstCase, settings: BurstSettings, corpus: Corpus,
              on_step: Callable[[int, float], None] | None = None, replica: Any = None) -> dict:
    """Train one case for `settings.steps` steps; returns its result row (status ok or diverged). `replica`: this
    process's place in a data-parallel burst (`subprof.train.parallel.Replica`): the model wrapped, each global
    batch's rows split over the processes, losses averaged over them; None: one process."""
    c = case.config
    corpus.require(c.seq)
    row = case_row(case, settings, corpus)
    offsets = train_offsets(corpus.train.size, c, settings)
    voffsets = val_offsets(corpus.val.size, c, settings)
    row["data_order"] = data_order_hash(offsets)
    cuda = settings.device.startswith("cuda")
    if not cuda:
        row["peak_tracked_bytes"] = traced_first_step_peak(case, settings, corpus, offsets) if replica is None \
            else None
    model = build_model(c, corpus.vocab_size, settings)
    row["params"] = sum(p.numel() for p in model.parameters())
    if replica is not None:
        model = replica.wrap(model, c.method)
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
            if replica is not None:
                x, y = replica.rows(x), replica.rows(y)
            t0 = time.perf_counter()
            value, detail = loss_and_backward(model, x, y, step, replica)
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
        "refreshes": refreshes(c.update_gap, len(step_times)) if c.spec.project else None,
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
    from subprof.measure.model import torch_threads

    check_cases(cases, settings, corpus)
    log = ResultLog(out, resume=resume) if out else None
    with torch_threads(settings.threads):
        return _run_all(cases, settings, corpus, log, progress)


def check_split(cases: list[BurstCase], settings: BurstSettings) -> None:
    """With `--nproc N`, every case's global batch must split into N equal shares (checked before the corpus loads)."""
    for case in cases:
        if case.config.batch % settings.nproc:
            raise SubprofError(f"--batch {case.config.batch} does not split into {settings.nproc} equal shares: give a "
                               f"multiple of --nproc {settings.nproc}")


def check_cases(cases: list[BurstCase], settings: BurstSettings, corpus: Corpus) -> None:
    """Everything that can be refused before training starts: a sequence longer than the corpus splits or the
    model's positions, a CPU burst that does not fit this machine's memory (on the corpus's vocabulary)."""
    for case in cases:
        corpus.require(case.config.seq)
        check_positions(case)
        check_host_memory(case, settings, corpus.vocab_size)


def check_before_corpus(cases: list[BurstCase], settings: BurstSettings) -> None:
    """What can be refused before the corpus is read and tokenised (minutes for a new one): the model's positions,
    and host memory at the smallest vocabulary any corpus has (`MIN_VOCAB`) — a lower bound on the memory the run
    needs, so a refusal here stands; `check_cases` repeats it on the corpus's own vocabulary."""
    for case in cases:
        check_positions(case)
        check_host_memory(case, settings, MIN_VOCAB)


def check_positions(case: BurstCase) -> None:
    if case.config.seq > case.config.model.max_positions:
        raise SubprofError(f"--seq {case.config.seq} exceeds {case.config.model.name}'s max_position_embeddings "
                           f"{case.config.model.max_positions}")


HOST_MARGIN = 1.25  # the CPU run needs its estimated peak plus room for Python, the corpus and the allocator
MIN_VOCAB = 64  # the fewest token ids a corpus can have: a .bin file's largest id + 1, rounded up to 64 (a text corpus's BPE: ≥ 257)


def check_host_memory(case: BurstCase, settings: BurstSettings, vocab_size: int) -> None:
    """On the CPU, refuse a burst whose estimated peak (the memory model, at the corpus's vocabulary `vocab_size`)
    does not fit the memory this machine has available — before anything is allocated."""
    from subprof.measure.model import available_host_memory
    from subprof.plan.memory import estimate

    if settings.device != "cpu":
        return
    available = available_host_memory()
    if available is None:
        return
    model = replace(case.config.model, vocab=vocab_size, raw=dict(case.config.model.raw, vocab_size=vocab_size))
    est = estimate(replace(case.config, model=model))
    need = est.peak_allocated_bytes - est.components["cuda_runtime"]
    if need * HOST_MARGIN > available:
        raise SubprofError(f"a {case.config.dtype} burst of {case.config.model.name} ({case.label}) on the CPU needs "
                           f"≈ {need * HOST_MARGIN / 2**30:.1f} GiB (estimated peak {need / 2**30:.1f} GiB + 25%), "
                           f"and this machine has {available / 2**30:.1f} GiB available: use a smaller model "
                           f"(`subprof models`) or a GPU (--device cuda)")


def _run_all(cases: list[BurstCase], settings: BurstSettings, corpus: Corpus, log: ResultLog | None,
             progress: Any) -> list[dict]:
    done, advance = finished_rows(log), progress.advance if progress else None
    rows = []
    for case in cases:
        row = done.get(case_key(case_row(case, settings, corpus), KEY_FIELDS))
        rows.append(resumed_row(case, row, settings, advance) if row is not None else
                    train_case(case, settings, corpus, advance=advance, log=log))
    return rows


def finished_rows(log: ResultLog | None) -> dict[tuple, dict]:
    """The rows already in `log` with a final status, by case key: what `--resume` does not run again."""
    return {case_key(r, KEY_FIELDS): r for r in (log.existing if log else []) if r.get("status") in FINAL}


def resumed_row(case: BurstCase, row: dict, settings: BurstSettings, advance: Callable[[str], Any] | None) -> dict:
    """A case finished in an earlier run: its row, marked, and its steps counted on the progress."""
    for _ in range(settings.steps if advance else 0):
        advance(f"{case.label}: done earlier")
    return dict(row, resumed=True)


def train_case(case: BurstCase, settings: BurstSettings, corpus: Corpus, *, advance: Callable[[str], Any] | None,
               log: ResultLog | None, replica: Any = None) -> dict:
    """`run_burst` with its progress — `advance(label)` once per step trained, then once per step a diverged run
    did not take — and its row appended to `log` as soon as it exists."""
    hook = (lambda s, v: advance(f"{case.label} step {s + 1} loss {v:.3f}")) if advance else None
    row = run_burst(case, settings, corpus, on_step=hook, replica=replica)
    for _ in range(settings.steps - row["steps_done"] if advance else 0):
        advance(f"{case.label}: {row['status']}")
    if log:
        log.append(row)
    return row
