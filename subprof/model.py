"""Build a LLaMA model for measurement: transformers' `LlamaForCausalLM` from a catalogue `ModelConfig`, random
init, directly on the device in the training dtype — the way `shared/reference/README.md` built its H100 rows.

Training dtypes (DESIGN.md, "Measurement conventions"):
- `bf16`: pure bf16 weights, gradients and optimizer states. The model is created inside
  `torch.set_default_dtype(torch.bfloat16)` + `with torch.device(device)`, so no fp32 copy ever exists.
- `mixed`: fp32 master weights (and fp32 gradients and states); the forward runs under bf16 `torch.autocast`
  (`train_context`).

Attention is `attn_implementation="sdpa"` (on CUDA that dispatches to the flash / memory-efficient kernels).
Initialisation: transformers' own `_init_weights` (normal(0, 0.02)); on fake or meta tensors it costs nothing.
Torch-only module: imports torch at the top.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from subprof.catalog import ModelConfig
from subprof.errors import SubprofError

DTYPES = ("bf16", "mixed")


def param_dtype(dtype: str) -> torch.dtype:
    """The dtype weights live in: bf16 for pure-bf16 training, fp32 master weights for `mixed`."""
    if dtype not in DTYPES:
        raise SubprofError(f"--dtype {dtype!r} unknown: use bf16 or mixed")
    return torch.bfloat16 if dtype == "bf16" else torch.float32


def hf_config(cfg: ModelConfig):
    """A transformers `LlamaConfig` from the catalogue entry's raw `config.json`, with sdpa attention."""
    from transformers import LlamaConfig

    raw = {k: v for k, v in cfg.raw.items() if k not in ("architectures", "model_type", "torch_dtype", "dtype")}
    raw["use_cache"] = False  # training: no KV cache
    config = LlamaConfig(**raw)
    config._attn_implementation = "sdpa"
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
    """`LlamaForCausalLM` built on `device` in the training dtype, in train mode, random init with `seed`.

    With `checkpointing`, transformers' gradient checkpointing (non-reentrant `torch.utils.checkpoint` around each
    decoder layer) keeps only each layer's input during forward and recomputes the rest in backward."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with default_dtype(param_dtype(dtype)), torch.device(device):
        model = LlamaForCausalLM(hf_config(cfg))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def train_context(dtype: str, device_type: str) -> contextlib.AbstractContextManager:
    """Forward-pass context: bf16 autocast for `mixed`, nothing for pure bf16."""
    if dtype == "mixed":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def random_tokens(cfg: ModelConfig, batch: int, seq: int, *, device: str | torch.device = "cpu",
                  seed: int = 0) -> torch.Tensor:
    """Fixed-seed random token ids of shape (batch, seq), as the reference rows used."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, cfg.vocab, (batch, seq), generator=gen)
    return ids.to(device)


def train_step(model: torch.nn.Module, opt, ids: torch.Tensor, *, dtype: str) -> torch.Tensor:
    """One reference step: `loss = model(input_ids=x, labels=x).loss; loss.backward(); opt.step();
    opt.zero_grad(set_to_none=True)`. Returns the (detached) loss."""
    with train_context(dtype, ids.device.type):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


# ------------------------------------------------------------------------------------------------------ optimizers

REF_METHODS = ("adamw", "galore-ref")  # built here without subprof.optim


class Layerwise:
    """Per-layer updates (GaLore's `torchrun_main.py --optimizer galore_adamw8bit_per_layer`): one optimizer per
    parameter, stepped in a post-accumulate-grad hook so each gradient is freed as soon as it is used. The main
    loop's `step()`/`zero_grad()` are no-ops."""

    def __init__(self, params: list, make) -> None:
        self.optimizers = []
        for p in params:
            opt = make(p)
            self.optimizers.append(opt)
            p.register_post_accumulate_grad_hook(_hook(opt))

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    @property
    def state(self) -> dict:
        return {k: v for o in self.optimizers for k, v in o.state.items()}


def _hook(opt):
    def run(p) -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run


class Bnb8bitAdamWTrace(torch.optim.Optimizer):
    """bitsandbytes `AdamW8bit`'s memory, for fake tensors (its CUDA kernels cannot run there). Per parameter:
    `state1`/`state2` uint8 of the parameter's shape + fp32 `absmax1`/`absmax2` of ⌈numel/256⌉ blocks, or fp32
    `state1`/`state2` when numel < 4096 (bitsandbytes 0.4x `Optimizer2State.init_state`); the two 256-entry qmaps
    are shared. The update is in place, like the fused blockwise kernel: no temporaries."""

    def __init__(self, params, lr: float = 1e-3, min_8bit_size: int = 4096, blocksize: int = 256) -> None:
        super().__init__(params, {"lr": lr})
        self.min_8bit_size, self.blocksize = min_8bit_size, blocksize
        self.qmaps: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    if p.numel() < self.min_8bit_size:
                        st["state1"] = torch.zeros_like(p, dtype=torch.float32)
                        st["state2"] = torch.zeros_like(p, dtype=torch.float32)
                    else:
                        if not self.qmaps:
                            self.qmaps = [torch.zeros(256, device=p.device, dtype=torch.float32) for _ in range(2)]
                        blocks = -(-p.numel() // self.blocksize)
                        st["state1"] = torch.zeros_like(p, dtype=torch.uint8)
                        st["state2"] = torch.zeros_like(p, dtype=torch.uint8)
                        st["absmax1"] = torch.zeros(blocks, device=p.device, dtype=torch.float32)
                        st["absmax2"] = torch.zeros(blocks, device=p.device, dtype=torch.float32)
                p.add_(p.grad, alpha=-group["lr"])  # stands for the in-place fused kernel
        return None


def _galore_groups(model: torch.nn.Module, rank: int, update_gap: int) -> list[dict]:
    """shared/reference/README.md: GaLore on every 2-D weight whose name contains `attn` or `mlp` (rank, gap,
    scale 0.25, proj_type std); plain AdamW groups for the rest (embeddings, norms, lm_head)."""
    lowrank, rest = [], []
    for name, p in model.named_parameters():
        (lowrank if p.dim() == 2 and ("attn" in name or "mlp" in name) else rest).append(p)
    return [{"params": rest},
            {"params": lowrank, "rank": rank, "update_proj_gap": update_gap, "scale": 0.25, "proj_type": "std"}]


def make_optimizer(model: torch.nn.Module, method: str, *, rank: int | None = None, update_gap: int | None = None,
                   state_bits: int | None = None, layerwise: bool = False, lr: float = 1e-3,
                   trace: bool = False):
    """The optimizer of a case. `adamw`: torch AdamW with `foreach=True` (CUDA's default; forced so the CPU trace
    matches), or bitsandbytes `AdamW8bit` with `state_bits=8` (`Bnb8bitAdamWTrace` under a trace). `galore-ref`:
    galore-torch 1.0's `GaLoreAdamW` (8-bit: `GaLoreAdamW8bit`) as in the reference rows. Every other method:
    `subprof.optim.build_optimizer`. `layerwise`: one optimizer per parameter stepped in backward hooks."""
    method = method.strip().lower()
    bits8 = state_bits == 8
    if method == "adamw":
        if bits8:
            if trace:
                return _maybe_layerwise(model, layerwise, lambda ps: Bnb8bitAdamWTrace(ps, lr=lr))
            import bitsandbytes as bnb

            return _maybe_layerwise(model, layerwise, lambda ps: bnb.optim.AdamW8bit(ps, lr=lr))
        return _maybe_layerwise(model, layerwise, lambda ps: torch.optim.AdamW(ps, lr=lr, foreach=True))
    if method == "galore-ref":
        import galore_torch

        cls = galore_torch.GaLoreAdamW8bit if bits8 else galore_torch.GaLoreAdamW
        if bits8 and trace:
            raise SubprofError("galore-ref with 8-bit states runs bitsandbytes kernels: not traceable; "
                               "use --backend cuda, or --methods galore --state-bits 8")
        rank, update_gap = rank or 128, update_gap or 200
        if layerwise:
            groups = _galore_groups(model, rank, update_gap)
            lowrank = {id(p) for p in groups[1]["params"]}
            extra = {k: v for k, v in groups[1].items() if k != "params"}
            return Layerwise([p for p in model.parameters()],
                             lambda p: cls([{"params": [p], **(extra if id(p) in lowrank else {})}], lr=lr))
        return cls(_galore_groups(model, rank, update_gap), lr=lr)
    from subprof.optim import build_optimizer

    return build_optimizer(model, method, rank=rank, update_gap=update_gap, state_bits=state_bits,
                           layerwise=layerwise, lr=lr)


def _maybe_layerwise(model: torch.nn.Module, layerwise: bool, make):
    params = [p for p in model.parameters() if p.requires_grad]
    if layerwise:
        return Layerwise(params, lambda p: make([p]))
    return make(params)
