"""8-bit optimizer states: bitsandbytes' blockwise dynamic quantisation (Dettmers et al. 2022, "8-bit Optimizers
via Block-wise Quantization", arXiv 2110.02861), used by every method at `state_bits=8`.

Layout of one 8-bit moment of shape S (what `subprof.methods.spec.tensor_bytes` declares): uint8 codes of shape S
plus one fp32 absmax per block of 256 consecutive values (numel + 4·⌈numel/256⌉ bytes). Values are v ≈
absmax_block · map[code], with bitsandbytes' dynamic map — signed for first moments, unsigned for second moments
(names ending in "_sq"), as its Adam does for state1 / state2. Tensors under 4096 values stay fp32.

Why bitsandbytes rather than torchao's low-bit optimizers:
- it is what GaLore's 8-bit variant (galore-torch `GaLoreAdamW8bit`) and `bnb.optim.AdamW8bit` use, so
  `adamw --state-bits 8` and the subspace methods share one format and one kernel, and the memory model's byte rule
  (block 256, fp32 absmax, fp32 under 4096 values) is bitsandbytes' own;
- bitsandbytes ≥ 0.45 runs its blockwise quantise/dequantise and the 8-bit Adam kernel on CPU (checked with the
  installed 0.50.2: `quantize_blockwise`, `optimizer_update_8bit_blockwise` and `AdamW8bit` all run), so tests run
  here; on CUDA the update is fused (no fp32 copy of the moments), on CPU it dequantises, updates and requantises;
- torchao's optimizers keep their state as tensor subclasses and compile their step with `torch.compile` (a C++
  toolchain and seconds of compile time on CPU) and would need an extra dependency; our moment transfers
  (rotating m and v into a new basis) need plain dequantise/requantise, which bitsandbytes exposes directly.
"""

from __future__ import annotations

import math

import torch

from subprof.methods.spec import QUANT_BLOCK

_MAPS: dict[tuple[bool, str], torch.Tensor] = {}


def _bnb_functional():
    """bitsandbytes.functional, imported on first use (it prints backend notices at import)."""
    import bitsandbytes.functional as functional

    return functional


def is_signed(name: str) -> bool:
    """Second moments (names ending in "_sq") are non-negative and use the unsigned map."""
    return not name.endswith("_sq")


def blocks(numel: int) -> int:
    return math.ceil(numel / QUANT_BLOCK)


def dynamic_map(signed: bool, device: torch.device) -> torch.Tensor:
    """bitsandbytes' 256-entry dynamic quantisation map (fp32), cached per device; not part of any state.
    Under a FakeTensorMode (the memory tracer) an uncached placeholder of the same size: fakes carry no values."""
    key = (signed, str(device))
    if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None:  # = subprof.optim.tracing()
        return torch.empty(256, dtype=torch.float32, device=device)
    if key not in _MAPS:
        _MAPS[key] = _bnb_functional().create_dynamic_map(signed=signed).to(device)
    return _MAPS[key]


def quantize(value: torch.Tensor, *, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes of value's shape, fp32 absmax per 256-value block) of an fp32 (or bf16) tensor."""
    code = dynamic_map(signed, value.device)
    codes, absmax = torch.ops.bitsandbytes.quantize_blockwise(value.contiguous(), code, QUANT_BLOCK)
    return codes.view(value.shape), absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """fp32 values from codes and block absmax (a new tensor)."""
    code = dynamic_map(signed, codes.device)
    out = torch.ops.bitsandbytes.dequantize_blockwise(codes, absmax, code, QUANT_BLOCK, torch.float32)
    return out.view(codes.shape)


def adam_step(grad: torch.Tensor, target: torch.Tensor, state: dict, *, betas: tuple[float, float], eps: float,
              t: int, lr: float, weight_decay: float = 0.0) -> None:
    """bitsandbytes' blockwise 8-bit Adam on `state["exp_avg"]`/`state["exp_avg_sq"]` (uint8 + `_absmax`):
    target ← target·(1 − lr·λ) − lr · m̂ / (√v̂ + ε), t the 1-based step, the decay inside the kernel before the
    step (as `bnb.optim.AdamW8bit`; projected weights pass λ = 0 and the optimizer decays after the update)."""
    _bnb_functional().optimizer_update_8bit_blockwise(
        "adam", grad.contiguous(), target, state["exp_avg"], state["exp_avg_sq"], betas[0], betas[1], 0.0, 0.0,
        eps, t, lr, dynamic_map(True, grad.device), dynamic_map(False, grad.device), state["exp_avg_absmax"],
        state["exp_avg_sq_absmax"], weight_decay, 1.0, False)
