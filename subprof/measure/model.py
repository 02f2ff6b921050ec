"""Build a model for measurement: its family's transformers class (`LlamaForCausalLM` for the catalogue,
`Qwen3ForCausalLM`, `Gemma2ForCausalLM`, … for the others of `catalog.FAMILIES`) from a `ModelConfig`, random init,
directly on the device in the training dtype — the way `shared/reference/README.md` built its H100 rows.

Training dtypes (`subprof.config`):
- `bf16`: pure bf16 weights, gradients and optimizer states. The model is created inside
  `torch.set_default_dtype(torch.bfloat16)` + `with torch.device(device)`, so no fp32 copy ever exists.
- `mixed`: fp32 master weights (and fp32 gradients and states); the forward runs under bf16 `torch.autocast`
  (`train_context`).
- `fp32`: fp32 weights, no autocast.

Attention is `attn_implementation="sdpa"` (on CUDA that dispatches to the flash / memory-efficient kernels), or
what the family trains with where transformers has no sdpa path for it (`ModelConfig.attention`: Gemma 2's
soft-capped attention scores run eagerly).
Initialisation: transformers' own `_init_weights` (normal(0, 0.02)); on fake or meta tensors it costs nothing.
Torch-only module: imports torch at the top.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from subprof.catalog import ModelConfig
from subprof.config import default_threads, param_bytes


def param_dtype(dtype: str) -> torch.dtype:
    """The dtype weights live in: bf16 for pure-bf16 training, fp32 for `mixed` (master weights) and `fp32`."""
    return torch.bfloat16 if param_bytes(dtype) == 2 else torch.float32


def hf_config(cfg: ModelConfig):
    """The transformers config of the model's family (`LlamaConfig`, `Qwen3Config`, `Gemma2Config`, …) from its raw
    `config.json`, with the family's training attention (`ModelConfig.attention`) and no KV cache."""
    from transformers import AutoConfig

    raw = {k: v for k, v in cfg.raw.items() if k not in ("architectures", "model_type", "torch_dtype", "dtype")}
    raw["use_cache"] = False  # training: no KV cache
    config = AutoConfig.for_model(cfg.family, **raw)
    config._attn_implementation = cfg.attention
    return config


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_model(cfg: ModelConfig, *, dtype: str = "bf16", device: str | torch.device = "cpu",
                checkpointing: bool = False, seed: int = 0) -> torch.nn.Module:
    """The family's causal LM (`LlamaForCausalLM` for the catalogue) built on `device` in the training dtype, in
    train mode, random init with `seed`.

    With `checkpointing`, transformers' gradient checkpointing (non-reentrant `torch.utils.checkpoint` around each
    decoder layer) keeps only each layer's input during forward and recomputes the rest in backward."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with default_dtype(param_dtype(dtype)), torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(cfg))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def train_context(dtype: str, device_type: str) -> contextlib.AbstractContextManager:
    """Forward-pass context: bf16 autocast for `mixed`, nothing for pure bf16 or fp32."""
    if dtype == "mixed":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def random_tokens(cfg: ModelConfig, batch: int, seq: int, *, device: str | torch.device = "cpu",
                  seed: int = 0) -> torch.Tensor:
    """Fixed-seed random token ids of shape (batch, seq), as the reference rows used."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, cfg.vocab, (batch, seq), generator=gen)
    return ids.to(device)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run with `n` torch CPU threads (None: `config.default_threads()`), restoring the previous count after."""
    before = torch.get_num_threads()
    chosen = n or default_threads()
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(before)


def available_host_memory() -> int | None:
    """Bytes of host memory available to a new allocation now (`MemAvailable` in /proc/meminfo), or None where the
    system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
