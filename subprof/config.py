"""One training configuration: what estimate, plan, bench, burst and the trace all describe. Pure data, no torch.

A `TrainConfig` is a model × method × rank × update gap × state precision × per-layer × dtype × micro-batch ×
sequence × checkpointing × accumulation (+ the method's options). Bench cases and burst cases wrap one and add only
what they add (backend and steps; learning rate). The defaults a user gets when they leave something out are
stated here once: `DEFAULT_RANK`, each method's own `default_update_gap`, and the state precision that follows the
dtype (`default_state_bits`).

Training dtypes, one vocabulary for every command (`--dtype`):
- `bf16`: pure bf16 weights, gradients and optimizer states (as the GaLore scripts run);
- `mixed`: fp32 master weights, gradients and states, forward under bf16 autocast;
- `fp32`: everything fp32, no autocast (small CPU runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from subprof.catalog import ModelConfig, load_model
from subprof.errors import SubprofError
from subprof.methods import forced_state_bits, get_method
from subprof.methods.spec import MethodSpec
from subprof.modes import check_loss, checkpointed_layers, parse_checkpointing

DTYPES = ("bf16", "mixed", "fp32")
DTYPE_HELP = ("Training dtype: bf16 (pure bf16 weights, gradients and states, as the GaLore scripts), mixed (fp32 "
              "master weights and states, bf16 autocast) or fp32 (everything fp32).")
MIN_REFRESHES = 3  # a run compares refresh intervals only when each holds at least this many refreshes after step 0


def refreshes(update_gap: int | None, steps: int) -> int:
    """Subspace updates after the one at step 0 that a run of `steps` steps holds at this gap."""
    return (steps - 1) // update_gap if update_gap else 0


DEFAULT_RANK = 128  # GaLore's rank for its 60m runs; every weight uses min(rank, m, n)


def default_threads() -> int:
    """Torch CPU threads when `--threads` is not given: half the cores, at least 1, at most 8. On a shared 2-core
    machine torch's default (every core) ran several times slower than one thread (issue 12: 923 vs 3,387 tokens/s
    on a tiny burst), because the threads wait on each other when another process holds a core."""
    import os

    return max(1, min(8, (os.cpu_count() or 2) // 2))


def check_dtype(dtype: str, allowed: tuple[str, ...] = DTYPES) -> str:
    """`dtype` if it is one of `allowed`, else a one-line error naming them."""
    if dtype not in allowed:
        raise SubprofError(f"--dtype {dtype!r} unknown: use {', '.join(allowed)}")
    return dtype


def param_bytes(dtype: str) -> int:
    """Bytes per weight/gradient element: bf16 (2) in pure-bf16 training, fp32 (4) otherwise."""
    return 2 if check_dtype(dtype) == "bf16" else 4


def default_state_bits(dtype: str) -> int:
    """Optimizer states follow the weights: 16 bits for pure bf16, 32 otherwise."""
    return 16 if check_dtype(dtype) == "bf16" else 32


def accumulation_for(tokens_per_step: int, *, batch: int, seq: int, ranks: int = 1) -> int:
    """Micro-batches accumulated per optimizer step: tokens_per_step / (batch · seq · ranks), which must be whole
    (`plan`'s rows accumulate to its `--tokens-per-step`, whole job)."""
    per_micro = batch * seq * ranks
    if tokens_per_step < per_micro or tokens_per_step % per_micro:
        across = f" × {ranks} GPUs" if ranks > 1 else ""
        raise SubprofError(f"--tokens-per-step {tokens_per_step} is not a whole number of micro-batches of {per_micro} "
                           f"tokens (batch {batch} × seq {seq}{across})")
    return tokens_per_step // per_micro


def _normalize(model: ModelConfig, method: str, rank: int | None, update_gap: int | None, state_bits: int | None,
               dtype: str, checkpointing: str | bool, loss: str, options: tuple, cached: bool = True) -> tuple:
    """A configuration's method-side fields validated and filled in: (method, rank, update gap, state bits,
    checkpointing mode, options) — the method's name for an alias, its defaults, the base dropped when it is the
    default; one line naming the problem otherwise. `cached`: the method's fields from `_method_fields` (options
    must then be hashable)."""
    get_method(method)  # an unknown method is the first thing said
    forced = forced_state_bits(method)
    if forced is not None and state_bits not in (None, forced):
        raise SubprofError(f"--method {method} implies --state-bits {forced}")
    check_dtype(dtype)
    checkpointing = parse_checkpointing(checkpointing)
    check_loss(loss)
    name, rank, state_bits, opts, default_gap = (_method_fields if cached else _normalize_method)(
        model, method, rank, forced or state_bits or default_state_bits(dtype), options)
    if default_gap is None:  # full rank: no rank, no update gap
        return name, None, None, state_bits, checkpointing, opts
    if update_gap is None:
        update_gap = default_gap
    if update_gap <= 0:
        raise SubprofError(f"update gap must be positive, got {update_gap}")
    return name, rank, update_gap, state_bits, checkpointing, opts


def _normalize_method(model: ModelConfig, method: str, rank: int | None, state_bits: int,
                      options: tuple) -> tuple:
    """The fields that depend on the method together, after the state bits are filled in: (method, rank, state
    bits, options, the method's default update gap — None for a full-rank method). Its own cache
    (`_method_fields`): `plan` varies the update gap, checkpointing mode and loss kind of each method setting,
    which `_normalized` keys on too."""
    spec = get_method(method)
    if state_bits not in spec.state_bits_supported:
        raise SubprofError(f"--state-bits {state_bits} unsupported: use one of "
                           f"{', '.join(map(str, spec.state_bits_supported))}")
    opts = _check_base(spec, dict(options), state_bits)
    if not spec.project:
        if set(opts) - {"base"}:
            raise SubprofError(f"{spec.name} projects nothing: options {sorted(opts)} do not apply")
        return spec.name, None, state_bits, tuple(opts.items()), None
    try:
        spec.resolve_options(opts)
    except ValueError as exc:
        raise SubprofError(str(exc)) from None
    limit = model.rank_limit()
    if spec.fixed_rank is not None:  # the method runs at its own rank whatever is asked (APOLLO-Mini)
        rank = spec.fixed_rank
    if rank is None:
        rank = min(DEFAULT_RANK, limit)
    if rank <= 0:
        raise SubprofError(f"rank must be positive, got {rank}")
    if rank > limit:
        raise SubprofError(f"rank {rank} exceeds every weight's smaller side in {model.name} (the widest "
                           f"is {limit}); use a rank ≤ {limit} (each weight uses min(rank, m, n))")
    return spec.name, rank, state_bits, tuple(opts.items()), spec.default_update_gap


_normalized = lru_cache(maxsize=4096)(_normalize)
_method_fields = lru_cache(maxsize=4096)(_normalize_method)


def _check_base(spec: MethodSpec, options: dict, state_bits: int) -> dict:
    """The base optimizer: known, run by the method, at this state precision; dropped from the options when it
    is the default."""
    from subprof.methods.bases import DEFAULT_BASE, get_base

    base = get_base(options.get("base")).name
    if base not in spec.bases:
        raise SubprofError(f"--base {base}: {spec.name} runs {', '.join(spec.bases)}")
    bits = get_base(base).state_bits_supported
    if state_bits not in bits:
        raise SubprofError(f"--base {base} has no {state_bits}-bit state: use --state-bits "
                           f"{' or '.join(map(str, bits))}")
    options.pop("base", None)
    if base != DEFAULT_BASE:
        options["base"] = base
    return options


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """One training configuration. `method` may be an alias (`adamw8bit` sets state_bits 8); `rank` and
    `update_gap` default to `DEFAULT_RANK` and the method's gap, and are None
    for full-rank methods; `method_options` go to the method's rule (validated against its declared options). The
    base optimizer is the option "base" (`subprof.methods.bases`; read it as `.base`), kept only when not the
    default "adamw", so a configuration without one is what it always was."""

    model: ModelConfig
    method: str = "adamw"
    rank: int | None = None
    update_gap: int | None = None
    state_bits: int | None = None
    layerwise: bool = False
    dtype: str = "bf16"
    batch: int = 8
    seq: int = 256
    checkpointing: str = "none"  # subprof.modes: none, full, selective, every:K (a bool reads as none/full)
    loss: str = "full"  # subprof.modes: full, chunked, fused
    accumulation: int = 1
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("batch", "seq", "accumulation"):
            if getattr(self, name) <= 0:
                raise SubprofError(f"{name} must be at least 1, got {getattr(self, name)}")
        args = (self.model, self.method, self.rank, self.update_gap, self.state_bits, self.dtype, self.checkpointing,
                self.loss)
        try:
            options = tuple(sorted(self.method_options.items()))
            norm = _normalized(*args, options)  # `plan` builds thousands of configurations of a few methods
        except TypeError:  # an unhashable option value: validated uncached
            norm = _normalize(*args, tuple(self.method_options.items()), cached=False)
        self.method, self.rank, self.update_gap, self.state_bits, self.checkpointing, options = norm
        self.method_options = dict(options)

    @property
    def base(self) -> str:
        """The base optimizer on R and on the unprojected tensors (`subprof.methods.bases`)."""
        return self.method_options.get("base", "adamw")

    @property
    def spec(self) -> MethodSpec:
        return get_method(self.method)

    @property
    def recomputes(self) -> bool:
        """Whether any activation is recomputed in backward (any checkpointing mode but `none`)."""
        return self.checkpointing != "none"

    @property
    def recomputed_layers(self) -> int:
        """Decoder layers checkpointed whole (`full`: all; `every:K`: ⌊L/K⌋; `selective`, `none`: 0)."""
        return checkpointed_layers(self.checkpointing, self.model.layers)

    @property
    def param_bytes(self) -> int:
        return param_bytes(self.dtype)

    @property
    def tokens(self) -> int:
        """Tokens per micro-batch."""
        return self.batch * self.seq

    def label(self) -> str:
        parts = [self.method if self.base == "adamw" else f"{self.method}+{self.base}"]
        if self.rank:
            parts.append(f"r{self.rank}")
        if self.update_gap and self.update_gap > 1:
            parts.append(f"T{self.update_gap}")
        if self.state_bits == 8:
            parts.append("8bit")
        if self.layerwise:
            parts.append("layerwise")
        if self.recomputes:
            parts.append({"full": "ckpt", "selective": "sac"}.get(self.checkpointing, f"ckpt/{self.checkpointing[6:]}"))
        if self.loss != "full":
            parts.append(f"{self.loss}-ce")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON rows and subprocesses): the model by name, or by path for a user's config.json."""
        return {"model": self.model.ref, "method": self.method, "rank": self.rank, "update_gap": self.update_gap,
                "state_bits": self.state_bits, "layerwise": self.layerwise, "dtype": self.dtype, "batch": self.batch,
                "seq": self.seq, "checkpointing": self.checkpointing, "loss": self.loss, "accumulation": self.accumulation,
                "method_options": dict(self.method_options)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {k: data[k] for k in ("method", "rank", "update_gap", "state_bits", "layerwise", "dtype", "batch",
                                      "seq", "checkpointing", "loss", "accumulation", "method_options")
                 if data.get(k) is not None}
        return cls(model=load_model(str(data["model"])), **known)
