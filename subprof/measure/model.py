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
from subprof.modes import is_checkpointed_layer, parse_checkpointing


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
                checkpointing: str | bool = "none", seed: int = 0) -> torch.nn.Module:
    """The family's causal LM (`LlamaForCausalLM` for the catalogue) built on `device` in the training dtype, in
    train mode, random init with `seed`, with the activation checkpointing mode `checkpointing`
    (`subprof.modes`; `apply_checkpointing`)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with default_dtype(param_dtype(dtype)), torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(cfg))
    apply_checkpointing(model, parse_checkpointing(checkpointing))
    model.train()
    return model


# torchtitan's op-level save list (parallelisms/parallelize_llama.py `_save_list`, commit 9dec370) + the CPU flash
# kernel, which stands in for CUDA's flash kernel in traces (`subprof.measure.trace`)
_SAVE_OPS = frozenset(op for op in (
    torch.ops.aten.mm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    getattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention", None) and
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten.abs.default,
    torch.ops.aten.max.default,
) if op)


def selective_context():
    """torchtitan's op-level selective checkpointing policy for one layer call: save the outputs of the ops in
    `_SAVE_OPS` except every second matmul (counted separately in forward and in recompute), recompute the rest."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    count = {False: 0, True: 0}

    def policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
        if func == torch.ops.aten.mm.default:
            count[ctx.is_recompute] += 1
            if count[ctx.is_recompute] % 2 == 0:
                return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if func in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_checkpointing(model: torch.nn.Module, mode: str) -> None:
    """transformers' gradient checkpointing (non-reentrant `torch.utils.checkpoint` around each decoder layer, as
    torchtitan wraps each transformer block): `full` on every layer, `every:K` on every K-th (torchtitan's count),
    `selective` on every layer with `selective_context` as the checkpoint's context (only what the policy does not
    save is recomputed)."""
    if mode == "none":
        return
    kwargs = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = selective_context
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.2x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for i, layer in enumerate(model.model.layers):
        if mode != "selective":
            layer.gradient_checkpointing = is_checkpointed_layer(mode, i)


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
