"""Model and GPU catalogues: LLaMA-shaped configs (HF `config.json`) and `profiles/gpus.toml`. Pure Python, no torch.

A model is any LLaMA-shaped `config.json` (model_type llama, mistral or qwen2): the presets in `profiles/models/`
(GaLore-paper sizes, LLaMA-2 13b, `tiny`) or a user's path. Parameter counts follow transformers' models exactly
(tested on the meta device): embeddings V·h, per layer q/o h·(H·d), k/v h·(KV·d), gate/up/down 3·h·I, two RMSNorm
weights h, a final norm h, `lm_head` V·h unless the embeddings are tied, and biases where the family has them.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from subprof.errors import SubprofError
from subprof.units import parse_size


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
    """The fields of a LLaMA `config.json` that decide sizes."""

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
    sliding_window: int | None = None
    family: str = "llama"
    max_positions: int = 2048
    source: str = ""
    preset: bool = False
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        for key in ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab", "head_dim"):
            if getattr(self, key) <= 0:
                raise SubprofError(f"model {self.name}: {key} must be positive, got {getattr(self, key)}")
        if self.heads % self.kv_heads:
            raise SubprofError(f"model {self.name}: num_attention_heads {self.heads} is not a multiple of "
                               f"num_key_value_heads {self.kv_heads}")

    @property
    def ref(self) -> str:
        """What `load_model` takes to rebuild this config: the catalogue name, or the path of a user's file."""
        return self.name if self.preset else self.source

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
        return (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        """Total parameters, as `sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())`."""
        return (self.projected_params + self.bias_params + self.embedding_params + self.lm_head_params
                + self.norm_params)

    @property
    def unprojected_params(self) -> int:
        """Parameters that stay in plain AdamW under a subspace method (embeddings, norms, lm_head, biases)."""
        return self.params - self.projected_params

    def unprojected_tensors(self) -> list[int]:
        """Element counts of the tensors kept in plain AdamW (for per-tensor rules such as 8-bit thresholds)."""
        sizes = [self.embedding_params] + [self.hidden] * (2 * self.layers + 1)
        if not self.tied:
            sizes.append(self.lm_head_params)
        if self.attention_bias:
            sizes += [self.q_dim, self.kv_dim, self.kv_dim, self.hidden] * self.layers
        if self.qkv_bias:
            sizes += [self.q_dim, self.kv_dim, self.kv_dim] * self.layers
        if self.mlp_bias:
            sizes += [self.intermediate, self.intermediate, self.hidden] * self.layers
        return sizes

    def forward_flops_per_token(self, seq: int) -> int:
        """Matmul FLOPs of one forward pass per token: 2·(weights used) plus attention scores 2·2·L·S·H·d (causal
        halves it; we count the full square as the kernels largely do — nanoGPT's estimate_mfu / PaLM appendix B)."""
        weights = self.projected_params + self.vocab * self.hidden
        span = min(seq, self.sliding_window) if self.sliding_window else seq  # keys a query attends to (at most)
        attention = 2 * self.layers * span * self.q_dim
        return 2 * weights + 2 * attention


@cache
def _linear_shapes(m: ModelConfig) -> tuple[LinearShape, ...]:
    h, i, L = m.hidden, m.intermediate, m.layers
    return (
        LinearShape(name="self_attn.q_proj", m=m.q_dim, n=h, count=L),
        LinearShape(name="self_attn.k_proj", m=m.kv_dim, n=h, count=L),
        LinearShape(name="self_attn.v_proj", m=m.kv_dim, n=h, count=L),
        LinearShape(name="self_attn.o_proj", m=h, n=m.q_dim, count=L),
        LinearShape(name="mlp.gate_proj", m=i, n=h, count=L),
        LinearShape(name="mlp.up_proj", m=i, n=h, count=L),
        LinearShape(name="mlp.down_proj", m=h, n=i, count=L),
    )


@cache
def _rank_limit(m: ModelConfig) -> int:
    return max(min(s.m, s.n) for s in _linear_shapes(m))


@cache
def _projected_params(m: ModelConfig) -> int:
    return sum(s.m * s.n * s.count for s in _linear_shapes(m))


def model_names() -> list[str]:
    names = [p.stem for p in (profiles_dir() / "models").glob("*.json")]
    return sorted(names, key=lambda n: load_model(n).params)


# LLaMA-shaped decoders: pre-norm RMSNorm, rotary attention with q/k/v/o projections (grouped-query allowed), a
# SwiGLU MLP with gate/up/down — the layer shapes and saved activations the memory model counts. What differs:
# Qwen2 puts biases on q, k and v; Mistral may attend within a sliding window (attention cost only).
FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _family(cfg: dict, source: str) -> str:
    model_type = str(cfg.get("model_type", "")).lower()
    if model_type in FAMILIES:
        return model_type
    archs = [str(a) for a in cfg.get("architectures") or []]
    for family, arch in FAMILIES.items():
        if arch in archs:
            return family
    found = f"model_type {cfg.get('model_type')!r}" if cfg.get("model_type") else "no model_type"
    raise SubprofError(f"{source} has {found}: subprof plans LLaMA-shaped decoders only — model_type "
                       f"{', '.join(FAMILIES)} (RMSNorm, rotary attention with q/k/v/o projections, a SwiGLU MLP "
                       f"with gate/up/down), whose layer shapes and saved activations its memory model counts")


def _from_hf(name: str, cfg: dict, source: str, preset: bool = False) -> ModelConfig:
    family = _family(cfg, source)
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size") if k not in cfg]
    if missing:
        raise SubprofError(f"{source} lacks {', '.join(missing)}: not a complete {family} config.json")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        head_dim = cfg.get("head_dim") or hidden // heads
        return ModelConfig(
            name=name,
            hidden=hidden,
            intermediate=int(cfg["intermediate_size"]),
            layers=int(cfg["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            vocab=int(cfg["vocab_size"]),
            head_dim=int(head_dim),
            tied=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=family == "llama" and bool(cfg.get("attention_bias", False)),
            qkv_bias=family == "qwen2",
            mlp_bias=family == "llama" and bool(cfg.get("mlp_bias", False)),
            sliding_window=_window(family, cfg),
            family=family,
            max_positions=int(cfg.get("max_position_embeddings") or 2048),
            source=source,
            preset=preset,
            raw=cfg,
        )
    except (TypeError, ValueError) as exc:
        raise SubprofError(f"{source}: malformed {family} config ({exc})") from None


def _window(family: str, cfg: dict) -> int | None:
    """The attention window: Mistral's `sliding_window` (None = full), Qwen2's when `use_sliding_window`."""
    window = cfg.get("sliding_window")
    if family == "mistral" or (family == "qwen2" and cfg.get("use_sliding_window")):
        return int(window) if window else None
    return None


@cache
def load_model(name_or_path: str) -> ModelConfig:
    """A catalogue preset by name (`7b`, `llama-7b`, `60M`) or a path to a LLaMA `config.json` (or its folder)."""
    key = name_or_path.strip()
    preset = profiles_dir() / "models" / f"{key.lower().removeprefix('llama-').removeprefix('llama_')}.json"
    path = Path(key).expanduser()
    if preset.exists():
        path, name = preset, preset.stem
    elif path.is_dir():
        path, name = path / "config.json", path.name
    elif path.suffix == ".json" or "/" in key or path.exists():
        name = path.stem if path.name != "config.json" else path.parent.name or "config"
    else:
        names = [p.stem for p in (profiles_dir() / "models").glob("*.json")]
        close = difflib.get_close_matches(key.lower(), names, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(names))}"
        raise SubprofError(f"unknown model {key!r}{hint} (or pass a path to a LLaMA config.json)")
    if not path.exists():
        raise SubprofError(f"model config {str(path)!r} does not exist")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SubprofError(f"cannot read {str(path)!r} as JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise SubprofError(f"{str(path)!r} is not a config.json object")
    return _from_hf(name, cfg, str(path), preset=path == preset)


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
