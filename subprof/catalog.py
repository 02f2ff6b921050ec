"""Model and GPU catalogues: LLaMA-shaped decoder configs (HF `config.json`) and `profiles/gpus.toml`. Pure Python,
no torch.

A model is a `config.json` of a decoder family in `FAMILIES`: the presets in `profiles/models/` (GaLore-paper sizes,
LLaMA-2 13b, `tiny`), a user's path, or a Hugging Face Hub id whose config.json is read from the local HF cache or
fetched alone (`hub_config_path`). Every family is the LLaMA layer — RMSNorm, rotary attention with q/k/v/o
projections (grouped-query allowed), a gated MLP with gate/up/down — with known differences in its weights (extra
norms, q/k norms, fused projections, biases). Parameter counts follow transformers' models exactly (tested on the
meta device for each family): embeddings V·h, per layer q/o h·(H·d), k/v h·(KV·d), gate/up/down 3·h·I, the
family's norms, a final norm h, `lm_head` V·h unless the embeddings are tied, and biases where the family has them.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from subprof.errors import SubprofError
from subprof.units import parse_size

if TYPE_CHECKING:
    import logging


def profiles_dir() -> Path:
    """The shipped `profiles/` folder: `subprof/profiles` in an installed package (pyproject maps the top-level
    `profiles/` there), the repository's top-level `profiles/` in a source checkout or editable install."""
    here = Path(__file__).resolve().parent
    installed = here / "profiles"
    return installed if (installed / "gpus.toml").exists() else here.parent / "profiles"


# ---------------------------------------------------------------------------------------------------------- models


@dataclass(frozen=True, kw_only=True, slots=True)
class LinearShape:
    """One projected weight: `name` in the module tree, torch's (out, in) = (m, n), and how often it occurs."""

    name: str
    m: int
    n: int
    count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    """The fields of a decoder's `config.json` that decide sizes, as its family reads them (`_from_hf`).

    `layer_norms`: h-sized norm weights per layer (2; Gemma 2/3: 4); `q_norm`/`k_norm`: elements of the per-layer
    query/key norm weights (Qwen3, Gemma 3: d each; OLMo 2/3: H·d and KV·d; else 0); `fused_qkv`/`fused_gate_up`:
    Phi-3's single qkv_proj ((H+2KV)·d × h) and gate_up_proj (2I × h); `window_layers`: how many layers attend
    within `sliding_window`; `final_logit_softcap`/`attn_logit_softcap`: Gemma 2's tanh soft-capping of the logits
    and of the attention scores; `norm_fp32_weight`: the RMSNorm multiplies its weight in fp32 and keeps the fp32
    product (Gemma 1/2/3, OLMo 2/3); `attention`: the attention implementation transformers trains it with ("sdpa",
    or "eager" where the class has no sdpa path). `plan.activations` reads these to count saved activations."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int
    tied: bool = False
    attention_bias: bool = False
    qkv_bias: bool = False
    mlp_bias: bool = False
    layer_norms: int = 2
    q_norm: int = 0
    k_norm: int = 0
    fused_qkv: bool = False
    fused_gate_up: bool = False
    sliding_window: int | None = None
    window_layers: int = 0
    final_logit_softcap: float | None = None
    attn_logit_softcap: float | None = None
    norm_fp32_weight: bool = False
    attention: str = "sdpa"
    family: str = "llama"
    max_positions: int = 2048
    source: str = ""
    preset: bool = False
    hub_id: str = ""
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    _hash: int = field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for key in ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab", "head_dim"):
            if getattr(self, key) <= 0:
                raise SubprofError(f"model {self.name}: {key} must be positive, got {getattr(self, key)}")
        if self.heads % self.kv_heads:
            raise SubprofError(f"model {self.name}: num_attention_heads {self.heads} is not a multiple of "
                               f"num_key_value_heads {self.kv_heads}")
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, name) for name in _MODEL_IDENTITY)))

    def __hash__(self) -> int:
        """The dataclass hash (of every field `==` compares), computed once: the config is frozen, and `plan` looks
        it up in its caches some 45,000 times, each of which hashed all 28 fields again."""
        return self._hash

    def __getstate__(self) -> tuple:
        """Pickled without the stored hash: a string hashes differently in another process (a spawned rank)."""
        return tuple(getattr(self, name) for name in _MODEL_STATE)

    def __setstate__(self, state: tuple) -> None:
        for name, value in zip(_MODEL_STATE, state):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, name) for name in _MODEL_IDENTITY)))

    @property
    def ref(self) -> str:
        """What `load_model` takes to rebuild this config: the catalogue name, the Hub id, or a user's file path."""
        return self.name if self.preset else self.hub_id or self.source

    # --- shapes -------------------------------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> tuple[LinearShape, ...]:
        """The attention and MLP weights that subspace methods project, as torch stores them (out × in)."""
        return _linear_shapes(self)

    def distinct_shapes(self) -> list[tuple[int, int]]:
        """Distinct (m, n) of the projected weights, in order of first appearance."""
        seen: list[tuple[int, int]] = []
        for s in self.linear_shapes():
            if (s.m, s.n) not in seen:
                seen.append((s.m, s.n))
        return seen

    def shape_counts(self) -> tuple[tuple[int, int, int], ...]:
        """(m, n, how many projected weights have that shape) for each distinct shape, in order of first appearance.
        Per-weight byte formulas read (m, n) alone, so a sum over the weights is Σ count · f(m, n) and a maximum takes
        each shape once (7b: 3 shapes for its 7 weights a layer; cached per config)."""
        return _shape_counts(self)

    def rank_limit(self) -> int:
        """The largest rank any projected weight can use: the widest weight's smaller side. Each weight uses
        min(rank, m, n), so with grouped-query attention k and v stop at their own width while q, o and the MLP go
        on (TinyLlama: k/v 256×2048, q 2048×2048 → limit 2048)."""
        return _rank_limit(self)

    # --- parameter counts ---------------------------------------------------------------------------------------
    @property
    def projected_params(self) -> int:
        return _projected_params(self)

    @property
    def bias_params(self) -> int:
        L = self.layers
        attn = (self.q_dim + 2 * self.kv_dim + self.hidden) * L if self.attention_bias else 0
        attn += (self.q_dim + 2 * self.kv_dim) * L if self.qkv_bias else 0
        mlp = (2 * self.intermediate + self.hidden) * L if self.mlp_bias else 0
        return attn + mlp

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        """(norms per layer · L + 1) · h, plus the q/k norm weights of every layer."""
        return (self.layer_norms * self.layers + 1) * self.hidden + (self.q_norm + self.k_norm) * self.layers

    @property
    def params(self) -> int:
        """Total parameters, as `sum(p.numel() for p in <Family>ForCausalLM(cfg).parameters())` (cached per config:
        every memory estimate and throughput prediction reads it)."""
        return _params(self)

    @property
    def unprojected_params(self) -> int:
        """Parameters that stay in plain AdamW under a subspace method (embeddings, norms, lm_head, biases)."""
        return self.params - self.projected_params

    def layer_vectors(self) -> list[int]:
        """Element counts of one decoder layer's 1-D tensors (norm weights, q/k norms, biases), in module order."""
        sizes = [self.hidden] * self.layer_norms + [n for n in (self.q_norm, self.k_norm) if n]
        if self.attention_bias:
            sizes += [self.q_dim, self.kv_dim, self.kv_dim, self.hidden]
        if self.qkv_bias:
            sizes += [self.q_dim, self.kv_dim, self.kv_dim]
        if self.mlp_bias:
            sizes += [self.intermediate, self.intermediate, self.hidden]
        return sizes

    def unprojected_tensors(self) -> list[int]:
        """Element counts of the tensors kept in plain AdamW (for per-tensor rules such as 8-bit thresholds)."""
        sizes = [self.embedding_params] + self.layer_vectors() * self.layers + [self.hidden]
        if not self.tied:
            sizes.append(self.lm_head_params)
        return sizes

    def forward_flops_per_token(self, seq: int) -> int:
        """Matmul FLOPs of one forward pass per token: 2·(weights used) plus attention scores 2·2·S·H·d per layer
        (causal halves it; we count the full square as the kernels largely do — nanoGPT's estimate_mfu / PaLM
        appendix B), a sliding-window layer attending to at most its window."""
        weights = self.projected_params + self.vocab * self.hidden
        windowed = self.window_layers if self.sliding_window else 0
        span = windowed * min(seq, self.sliding_window or seq) + (self.layers - windowed) * seq
        return 2 * weights + 2 * 2 * span * self.q_dim


_MODEL_IDENTITY = tuple(f.name for f in fields(ModelConfig) if f.compare)  # what == compares and the hash covers
_MODEL_STATE = tuple(f.name for f in fields(ModelConfig) if f.name != "_hash")


@cache
def _linear_shapes(m: ModelConfig) -> tuple[LinearShape, ...]:
    h, i, L = m.hidden, m.intermediate, m.layers
    attn = (LinearShape(name="self_attn.qkv_proj", m=m.q_dim + 2 * m.kv_dim, n=h, count=L),) if m.fused_qkv else (
        LinearShape(name="self_attn.q_proj", m=m.q_dim, n=h, count=L),
        LinearShape(name="self_attn.k_proj", m=m.kv_dim, n=h, count=L),
        LinearShape(name="self_attn.v_proj", m=m.kv_dim, n=h, count=L))
    mlp = (LinearShape(name="mlp.gate_up_proj", m=2 * i, n=h, count=L),) if m.fused_gate_up else (
        LinearShape(name="mlp.gate_proj", m=i, n=h, count=L),
        LinearShape(name="mlp.up_proj", m=i, n=h, count=L))
    return (*attn, LinearShape(name="self_attn.o_proj", m=h, n=m.q_dim, count=L), *mlp,
            LinearShape(name="mlp.down_proj", m=h, n=i, count=L))


@cache
def _shape_counts(m: ModelConfig) -> tuple[tuple[int, int, int], ...]:
    counts: dict[tuple[int, int], int] = {}
    for s in _linear_shapes(m):
        counts[(s.m, s.n)] = counts.get((s.m, s.n), 0) + s.count
    return tuple((rows, cols, k) for (rows, cols), k in counts.items())


@cache
def _rank_limit(m: ModelConfig) -> int:
    return max(min(s.m, s.n) for s in _linear_shapes(m))


@cache
def _projected_params(m: ModelConfig) -> int:
    return sum(s.m * s.n * s.count for s in _linear_shapes(m))


@cache
def _params(m: ModelConfig) -> int:
    return m.projected_params + m.bias_params + m.embedding_params + m.lm_head_params + m.norm_params


def model_names() -> list[str]:
    names = [p.stem for p in (profiles_dir() / "models").glob("*.json")]
    return sorted(names, key=lambda n: load_model(n).params)


# ------------------------------------------------------------------------------------------------ decoder families


def _every_layer(cfg: dict, layers: int) -> int:
    """Mistral, Phi-3: every layer attends within `sliding_window` when one is set."""
    return layers


def _above_max_window_layers(cfg: dict, layers: int) -> int:
    """Qwen2/Qwen3 with `use_sliding_window`: layers i ≥ `max_window_layers` (transformers' `layer_types`)."""
    return max(0, layers - int(cfg["max_window_layers"])) if cfg.get("use_sliding_window") else 0


def _all_but_every(k: str | int) -> Callable[[dict, int], int]:
    """Gemma 2 (every 2nd layer global), Gemma 3 (every `sliding_window_pattern`-th, 6), OLMo 3 (every 4th): the
    other layers attend within the window."""
    def windowed(cfg: dict, layers: int) -> int:
        every = int(cfg[k]) if isinstance(k, str) else k
        return layers - layers // every
    return windowed


def _without_rope(cfg: dict, layers: int) -> int:
    """SmolLM3 with `use_sliding_window`: its layers without rotary embeddings (every `no_rope_layer_interval`-th)."""
    return layers // int(cfg.get("no_rope_layer_interval") or 4) if cfg.get("use_sliding_window") else 0


def _no_window(cfg: dict, layers: int) -> int:
    return 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Family:
    """A decoder family: its transformers class and how its layer's weights differ from LLaMA's. `defaults` are
    the transformers config class's defaults for the keys read here: a config.json leaves out what equals them.
    `bias_keys`: the config flags (`attention_bias`, `mlp_bias`) that add biases; `qk_norm`: "head" (q/k norms over
    head_dim), "proj" (over H·d and KV·d) or ""; `windowed`: how many layers attend within `sliding_window` when no
    `layer_types` says so; `attention`: what transformers trains it with."""

    architecture: str
    defaults: dict = field(default_factory=dict)
    bias_keys: tuple[str, ...] = ()
    qkv_bias: bool = False
    layer_norms: int = 2
    qk_norm: str = ""
    fused: bool = False
    windowed: Callable[[dict, int], int] = _no_window
    attention: str = "sdpa"
    norm_fp32_weight: bool = False


_GEMMA = {"head_dim": 256, "tie_word_embeddings": True, "num_key_value_heads": 16}
# Differences from the LLaMA layer, read off each transformers modeling file (5.x) and held to transformers' own
# parameter counts by tests/test_hub_models.py: Qwen2 biases q, k, v; Qwen3 and Gemma 3 RMS-normalise q and k per
# head, OLMo 2/3 over the whole projection (and use two post-norms instead of pre-norms); Gemma 2/3 have four norms
# per layer, tied embeddings and a 256k vocabulary, and Gemma 2 soft-caps attention scores (no sdpa path: eager
# attention) and logits; Phi-3 fuses q/k/v into one qkv_proj and gate/up into one gate_up_proj; Granite and SmolLM3
# are the LLaMA layer with scaling multipliers / layers without rotary embeddings.
FAMILIES: dict[str, Family] = {
    "llama": Family(architecture="LlamaForCausalLM", bias_keys=("attention_bias", "mlp_bias")),
    "mistral": Family(architecture="MistralForCausalLM", defaults={"sliding_window": 4096, "num_key_value_heads": 8},
                      windowed=_every_layer),
    "qwen2": Family(architecture="Qwen2ForCausalLM", qkv_bias=True, windowed=_above_max_window_layers,
                    defaults={"max_window_layers": 28, "num_key_value_heads": 32}),
    "qwen3": Family(architecture="Qwen3ForCausalLM", bias_keys=("attention_bias",), qk_norm="head",
                    windowed=_above_max_window_layers,
                    defaults={"head_dim": 128, "max_window_layers": 28, "num_key_value_heads": 32}),
    "gemma": Family(architecture="GemmaForCausalLM", defaults=_GEMMA, bias_keys=("attention_bias",),
                    norm_fp32_weight=True),
    "gemma2": Family(architecture="Gemma2ForCausalLM", bias_keys=("attention_bias",), layer_norms=4,
                     defaults={**_GEMMA, "sliding_window": 4096, "final_logit_softcapping": 30.0,
                               "attn_logit_softcapping": 50.0, "num_key_value_heads": 4},
                     windowed=_all_but_every(2), attention="eager", norm_fp32_weight=True),
    "gemma3_text": Family(architecture="Gemma3ForCausalLM", bias_keys=("attention_bias",), layer_norms=4,
                          qk_norm="head", defaults={**_GEMMA, "sliding_window": 4096, "sliding_window_pattern": 6,
                                                    "num_key_value_heads": 4},
                          windowed=_all_but_every("sliding_window_pattern"), norm_fp32_weight=True),
    "phi3": Family(architecture="Phi3ForCausalLM", fused=True, windowed=_every_layer),
    "olmo2": Family(architecture="Olmo2ForCausalLM", bias_keys=("attention_bias",), qk_norm="proj",
                    norm_fp32_weight=True),
    "olmo3": Family(architecture="Olmo3ForCausalLM", bias_keys=("attention_bias",), qk_norm="proj",
                    defaults={"sliding_window": 4096}, windowed=_all_but_every(4), norm_fp32_weight=True),
    "granite": Family(architecture="GraniteForCausalLM", bias_keys=("attention_bias", "mlp_bias")),
    "smollm3": Family(architecture="SmolLM3ForCausalLM", bias_keys=("attention_bias", "mlp_bias"),
                      defaults={"tie_word_embeddings": True, "num_key_value_heads": 4}, windowed=_without_rope),
}

# Decoders that are not the LLaMA layer, and why (the rest get the generic refusal)
_MOE = "mixture-of-experts (expert weights and routing are not in the memory model)"
_GPT = "LayerNorm with biases and a non-gated MLP, not the LLaMA layer"
NOT_PLANNED = {
    **dict.fromkeys(("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "dbrx", "gpt_oss",
                     "granitemoe", "phimoe", "llama4"), _MOE),
    **dict.fromkeys(("gpt2", "gpt_neox", "gptj", "gpt_neo", "opt", "bloom", "falcon", "phi", "starcoder2",
                     "gpt_bigcode"), _GPT),
    "gemma3": "Gemma 3 with its vision tower (Gemma3ForConditionalGeneration); subprof plans the text decoder: save "
              "the config's text_config as a config.json with model_type gemma3_text",
}


def _family(cfg: dict, source: str) -> str:
    model_type = str(cfg.get("model_type", "")).lower()
    if model_type in FAMILIES:
        return model_type
    archs = [str(a) for a in cfg.get("architectures") or []]
    for family, spec in FAMILIES.items():
        if spec.architecture in archs:
            return family
    found = f"model_type {cfg.get('model_type')!r}" if cfg.get("model_type") else "no model_type"
    why = f" — {NOT_PLANNED[model_type]}" if model_type in NOT_PLANNED else ""
    raise SubprofError(f"{source} has {found}{why}: subprof plans LLaMA-shaped decoders only — model_type "
                       f"{', '.join(FAMILIES)} (RMSNorm, rotary attention with q/k/v/o projections, a gated MLP "
                       f"with gate/up/down), whose layer shapes and saved activations its memory model counts")


def _from_hf(name: str, cfg: dict, source: str, preset: bool = False, hub_id: str = "") -> ModelConfig:
    family = _family(cfg, source)
    spec = FAMILIES[family]
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size") if k not in cfg]
    if missing:
        raise SubprofError(f"{source} lacks {', '.join(missing)}: not a complete {family} config.json")
    read = {**spec.defaults, **cfg}  # a key the file leaves out takes the config class's default; null stays null
    try:
        heads, hidden = int(read["num_attention_heads"]), int(read["hidden_size"])
        layers = int(read["num_hidden_layers"])
        kv_heads = int(read.get("num_key_value_heads") or heads)
        head_dim = int(read.get("head_dim") or hidden // heads)
        window = int(read["sliding_window"]) if read.get("sliding_window") else None
        windowed = _window_layers(spec, read, layers) if window else 0
        return ModelConfig(
            name=name,
            hidden=hidden,
            intermediate=int(read["intermediate_size"]),
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            vocab=int(read["vocab_size"]),
            head_dim=head_dim,
            tied=bool(read.get("tie_word_embeddings", False)),
            attention_bias="attention_bias" in spec.bias_keys and bool(read.get("attention_bias", False)),
            qkv_bias=spec.qkv_bias,
            mlp_bias="mlp_bias" in spec.bias_keys and bool(read.get("mlp_bias", False)),
            layer_norms=spec.layer_norms,
            q_norm={"head": head_dim, "proj": heads * head_dim}.get(spec.qk_norm, 0),
            k_norm={"head": head_dim, "proj": kv_heads * head_dim}.get(spec.qk_norm, 0),
            fused_qkv=spec.fused,
            fused_gate_up=spec.fused,
            sliding_window=window if windowed else None,
            window_layers=windowed,
            final_logit_softcap=float(read["final_logit_softcapping"]) if read.get("final_logit_softcapping")
            else None,
            attn_logit_softcap=float(read["attn_logit_softcapping"]) if read.get("attn_logit_softcapping")
            else None,
            norm_fp32_weight=spec.norm_fp32_weight,
            attention=spec.attention,
            family=family,
            max_positions=int(read.get("max_position_embeddings") or 2048),
            source=source,
            preset=preset,
            hub_id=hub_id,
            raw=cfg,
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise SubprofError(f"{source}: malformed {family} config ({exc})") from None


def _window_layers(spec: Family, cfg: dict, layers: int) -> int:
    """Layers that attend within the sliding window: the config's own `layer_types` when it lists them (transformers
    5 writes them), else the family's rule."""
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == layers:
        return sum(t == "sliding_attention" for t in types)
    return spec.windowed(cfg, layers)


# ------------------------------------------------------------------------------------------- Hugging Face Hub ids

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_hub_id(text: str) -> bool:
    """`org/name` as the Hub spells repository ids (not a `.json` path, not `./x` or `~/x`)."""
    return bool(_HUB_ID.fullmatch(text)) and not text.endswith(".json")


def hub_cache_dir() -> Path:
    """The Hugging Face cache, read as huggingface_hub reads it, at call time: HF_HUB_CACHE, else
    HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub (HF_HOME: $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("HF_HOME") or Path(xdg) / "huggingface").expanduser() / "hub"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE) set to 1/ON/YES/TRUE, as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def cached_hub_config(repo_id: str, cache_dir: Path) -> Path | None:
    """config.json of `repo_id` in a huggingface_hub cache, without importing it: `models--org--name/refs/main`
    names the snapshot, `snapshots/<commit>/config.json` is the file; None when it is not there."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    path = repo / "snapshots" / commit / "config.json"
    return path if path.is_file() else None


# huggingface_hub's exceptions (by name: the module is optional) → what went wrong, in the user's words
_HUB_FAILURES = {
    "GatedRepoError": "is gated: accept its licence on huggingface.co and `hf auth login`",
    "RepositoryNotFoundError": "is no Hub model (or a private one: `hf auth login`)",
    "EntryNotFoundError": "has no config.json",
    "RemoteEntryNotFoundError": "has no config.json",
    "LocalEntryNotFoundError": "could not be fetched: the Hugging Face Hub is unreachable from here",
}


def hub_config_path(repo_id: str) -> Path:
    """The config.json of a Hub model: from the local cache, else downloaded alone (`hf_hub_download(repo_id,
    "config.json")`, never weights) unless HF_HUB_OFFLINE is set. Every failure is one line naming HF_HUB_OFFLINE,
    the cache and the config.json path alternative."""
    cache_dir = hub_cache_dir()
    found = cached_hub_config(repo_id, cache_dir)
    if found is not None:
        return found
    alternative = "or pass --model path/to/config.json"
    if hub_offline():
        raise SubprofError(f"--model {repo_id!r}: not a file here, and as a Hugging Face Hub id its config.json is "
                           f"not in the cache {str(cache_dir)!r} while HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE to "
                           f"fetch config.json alone (no weights), {alternative}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise SubprofError(f"--model {repo_id!r}: not in the Hugging Face cache {str(cache_dir)!r}, and fetching its "
                           f"config.json needs huggingface_hub (pip install huggingface_hub; HF_HUB_OFFLINE=1 keeps "
                           f"to the cache), {alternative}") from None
    try:
        with _retries_quiet():
            return Path(hf_hub_download(repo_id, "config.json", cache_dir=str(cache_dir)))
    except Exception as exc:  # noqa: BLE001 - no network, 404, gated, proxy: one line with the fix either way
        kind = type(exc).__name__
        first = (str(exc).splitlines() or [""])[0][:120]
        why = _HUB_FAILURES.get(kind, f"could not be fetched ({kind}: {first})")
        raise SubprofError(f"--model {repo_id!r} {why}; it is not in the Hugging Face cache {str(cache_dir)!r} "
                           f"(HF_HUB_OFFLINE=1 keeps subprof to the cache): fetch it where the Hub is reachable "
                           f"(`hf download {repo_id} config.json`), {alternative}") from None


def _not_a_retry(record: logging.LogRecord) -> bool:
    return not re.search(r"Retrying in|thrown while requesting", record.getMessage())


@contextlib.contextmanager
def _retries_quiet() -> Iterator[None]:
    """huggingface_hub retries an unreachable Hub five times (about 20 s), logging each try; the error that follows
    says it in one line, so the tries are not shown (scoped to this call, like `subprof.quiet`). `logging` is
    imported here: only a Hub fetch needs it, and `plan` starts without it."""
    import logging

    logger = logging.getLogger("huggingface_hub.utils._http")
    logger.addFilter(_not_a_retry)
    try:
        yield
    finally:
        logger.removeFilter(_not_a_retry)


@cache
def load_model(name_or_path: str) -> ModelConfig:
    """A catalogue preset by name (`7b`, `llama-7b`, `60M`), a path to a `config.json` (or its folder), or a Hugging
    Face Hub id (`meta-llama/Llama-3.1-8B`: `hub_config_path`)."""
    key = name_or_path.strip()
    preset = profiles_dir() / "models" / f"{key.lower().removeprefix('llama-').removeprefix('llama_')}.json"
    path = Path(key).expanduser()
    hub_id = ""
    if preset.exists():
        path, name = preset, preset.stem
    elif path.is_dir():
        path, name = path / "config.json", path.name
    elif not path.exists() and is_hub_id(key):
        path, name, hub_id = hub_config_path(key), key, key
    elif path.suffix == ".json" or "/" in key or path.exists():
        name = path.stem if path.name != "config.json" else path.parent.name or "config"
    else:
        names = [p.stem for p in (profiles_dir() / "models").glob("*.json")]
        close = difflib.get_close_matches(key.lower(), names, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(names))}"
        raise SubprofError(f"unknown model {key!r}{hint} (or pass a path to a config.json, or a Hugging Face Hub "
                           f"id such as meta-llama/Llama-3.1-8B)")
    if not path.exists():
        raise SubprofError(f"model config {str(path)!r} does not exist")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SubprofError(f"cannot read {str(path)!r} as JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise SubprofError(f"{str(path)!r} is not a config.json object")
    return _from_hf(name, cfg, str(path), preset=path == preset, hub_id=hub_id)


def model_from_config(raw: dict, name: str) -> ModelConfig:
    """A `ModelConfig` from a config dict already in memory (a live model's `config.to_dict()`), called `name`."""
    return _from_hf(name, raw, f"the config of {name}")


# ------------------------------------------------------------------------------------------------------------ GPUs


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuSpec:
    """One catalogue GPU. `memory_bytes` is the total the driver reports (nvidia-smi / torch total_memory)."""

    key: str
    name: str
    memory_bytes: int
    memory_label: str
    bandwidth_gbs: float
    bf16_tflops: float
    price_per_hour: float
    vendor: str = "nvidia"
    aliases: tuple[str, ...] = ()
    sources: dict = field(default_factory=dict, compare=False, hash=False)
    notes: str = ""
    intra_node_gbs: float = 0.0  # GB/s one GPU sends to peers in its node (NVLink / PCIe), one direction
    intra_node_link: str = ""
    inter_node_gbs: float = 0.0  # GB/s one GPU sends to other nodes (its share of the node's NICs), one direction
    inter_node_link: str = ""
    host_link_gbs: float = 0.0  # GB/s between the GPU and host memory (its PCIe interface), one direction
    host_link: str = ""


@cache
def gpu_catalog() -> dict[str, GpuSpec]:
    path = profiles_dir() / "gpus.toml"
    data = tomllib.loads(path.read_text())
    gpus = {}
    for key, row in data["gpu"].items():
        gpus[key] = GpuSpec(
            key=key,
            name=row["name"],
            memory_bytes=int(row.get("memory_bytes") or parse_size(row["memory"]).bytes),
            memory_label=row["memory"],
            bandwidth_gbs=float(row["bandwidth_gbs"]),
            bf16_tflops=float(row["bf16_tflops"]),
            price_per_hour=float(row["price_usd_per_hour"]),
            vendor=row.get("vendor", "nvidia"),
            aliases=tuple(row.get("aliases", ())),
            sources=dict(row.get("sources", {})),
            notes=row.get("notes", ""),
            intra_node_gbs=float(row.get("intra_node_gbs", 0.0)),
            intra_node_link=row.get("intra_node_link", ""),
            inter_node_gbs=float(row.get("inter_node_gbs", 0.0)),
            host_link_gbs=float(row.get("host_link_gbs", 0.0)),
            host_link=row.get("host_link", ""),
            inter_node_link=row.get("inter_node_link", ""),
        )
    return gpus


def _norm(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def find_gpu(name: str) -> GpuSpec | None:
    """A catalogue GPU by key, alias or name, ignoring case, spaces and dashes (`4090`, `h100-sxm`, `H100 SXM`)."""
    want = _norm(name)
    for gpu in gpu_catalog().values():
        if want in _labels(gpu):
            return gpu
    return None


def _labels(gpu: GpuSpec) -> set[str]:
    return {_norm(gpu.key), _norm(gpu.name), *(_norm(a) for a in gpu.aliases)}


def gpus_starting_with(name: str) -> list[GpuSpec]:
    """Catalogue GPUs one of whose labels starts with `name` (normalised): `a100` → the 40 GB and 80 GB cards."""
    want = _norm(name)
    if not want:
        return []
    return [g for g in gpu_catalog().values() if any(label.startswith(want) for label in _labels(g))]


def _choices(gpus: list[GpuSpec]) -> str:
    return ", ".join(f"{g.key} ({g.memory_label})" for g in gpus)


def _unknown_gpu(text: str, flag: str) -> str:
    """Why `text` names no catalogue GPU: a family that several cards share (the choices), or an unknown name
    (the closest ones)."""
    family = gpus_starting_with(text)
    if len(family) > 1:
        return f"{flag} {text.strip()!r} names {len(family)} catalogue GPUs: {_choices(family)}; give one of these keys"
    keys = list(gpu_catalog())
    close = [g.key for g in family] or difflib.get_close_matches(text.strip().lower(), keys, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else "`subprof gpus` lists them"
    return f"{flag} {text.strip()!r}: unknown GPU; {hint}"


def gpu_by_name(name: str, flag: str = "--gpu") -> GpuSpec:
    """The catalogue GPU `name` names; a one-line error naming `flag` otherwise — with the choices when the name is
    shared by several cards (`a100`, `h100`, `v100`), since picking one silently would plan for the wrong memory."""
    gpu = find_gpu(name)
    if gpu is not None:
        return gpu
    try:
        size = parse_size(name)
    except SubprofError:
        size = None
    if size is not None and size.unit != "B" and flag == "--gpu":
        raise SubprofError(f"--gpu {name.strip()!r} is a memory size, not a catalogue GPU: give it as --gpu-mem "
                           f"{name.strip()} (--gpu names the card whose speed to assume)")
    raise SubprofError(_unknown_gpu(name, flag))


@dataclass(frozen=True, slots=True)
class Budget:
    """A memory budget: bytes, plus how it was read (for the output to say which unit it used)."""

    bytes: int
    described: str
    gpu: GpuSpec | None = None
    text: str = ""


def gpu_budget(gpu: GpuSpec, text: str = "") -> Budget:
    """A card's whole memory as the budget: what the driver reports."""
    return Budget(gpu.memory_bytes, f"{gpu.name}: {gpu.memory_bytes / 2**30:.2f} GiB as the driver reports "
                                    f"({gpu.memory_label} on the label)", gpu, text.strip() or gpu.key)


def parse_budget(text: str, flag: str = "--gpu-mem") -> Budget:
    """`--gpu-mem`: a catalogue GPU (`4090`, `h100-sxm`) or a size (`24GB` = 24·10^9 B, `24GiB` = 24·2^30 B, `80G`,
    `24000MiB`). A catalogue name wins over a bare number, so `4090` is the card, not 4090 bytes. Errors name
    `flag`, the option the user typed."""
    gpu = find_gpu(text)
    if gpu is not None:
        return gpu_budget(gpu, text)
    stripped = text.strip()
    if not stripped[:1].isdigit() and stripped[:1] not in "+-.":
        family = gpus_starting_with(text)
        if len(family) > 1:
            raise SubprofError(_unknown_gpu(text, flag))
        close = [g.key for g in family] or difflib.get_close_matches(text.lower(), list(gpu_catalog()), n=3,
                                                                      cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SubprofError(f"{flag} {text!r} is neither a size (24GB, 24GiB, 24000MiB) nor a GPU from "
                           f"`subprof gpus`{hint}")
    try:
        size = parse_size(text)
    except SubprofError as exc:
        raise SubprofError(f"{flag}: {exc}") from None
    if size.unit == "B" and not stripped.lower().endswith("b"):
        cards = gpus_starting_with(stripped)
        named = f" and names no catalogue GPU (did you mean {', '.join(g.key for g in cards[:3])}?)" if cards else ""
        raise SubprofError(f"{flag} {stripped!r} has no unit{named}: write e.g. {stripped}GB (10^9 bytes) or "
                           f"{stripped}GiB (2^30 bytes), or a GPU from `subprof gpus`")
    base = "2^n" if "i" in size.unit else "10^n"
    return Budget(size.bytes, f"{size.text} = {size.bytes:,} B ({size.unit}, {base} bytes) = "
                              f"{size.bytes / 2**30:.2f} GiB", None, size.text)
