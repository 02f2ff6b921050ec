"""How moments are stored at 32, 16 and 8 bits, and Adam's direction on them. Shared by the rules (which rotate or
read moments at a refresh) and the optimizer's plain-Adam path.

- 32: an fp32 tensor.  16: a bf16 tensor.  8: bitsandbytes' blockwise dynamic 8-bit format — `state[name]` holds
  uint8 codes of the moment's shape and `state[name + "_absmax"]` one fp32 absmax per block of 256 values
  (`subprof.methods.quant8`); tensors under 4096 values stay fp32 (bitsandbytes' `min_8bit_size`). Names ending in
  "_sq" (second moments, never negative) use the unsigned dynamic map, the others the signed one, as
  bitsandbytes' Adam does for state2 / state1. This is exactly the layout `spec.tensor_bytes` declares.
"""

from __future__ import annotations

import math
from typing import Any

from subprof.methods.lazy import torch
from subprof.methods.spec import QUANT_MIN_NUMEL

Tensor = Any


def uses_8bit(numel: int, state_bits: int) -> bool:
    """Whether a moment of `numel` values is stored in 8 bits (bitsandbytes keeps small tensors in fp32)."""
    return state_bits == 8 and numel >= QUANT_MIN_NUMEL


def read_state_moment(state: dict, name: str) -> Tensor:
    """The moment `name` as an fp32 tensor: the stored tensor itself at 32 bits (in-place changes persist), else
    a fresh fp32 copy (dequantised at 8 bits). Store changes with `write_state_moment`."""
    stored = state[name]
    if stored.dtype == torch.uint8:
        from subprof.methods import quant8

        return quant8.dequantize(stored, state[name + "_absmax"], signed=quant8.is_signed(name))
    return stored if stored.dtype == torch.float32 else stored.float()


def write_state_moment(state: dict, name: str, value: Tensor, state_bits: int) -> None:
    """Store `value` (any float dtype) as moment `name` in the `state_bits` format, in place when a tensor of
    that format already exists, creating it otherwise. When it creates the entry and `value` already has the stored
    dtype, the state takes `value` itself (no copy): don't modify it afterwards."""
    stored = state.get(name)
    if uses_8bit(value.numel(), state_bits):
        from subprof.methods import quant8

        codes, absmax = quant8.quantize(value, signed=quant8.is_signed(name))
        if stored is not None and stored.dtype == torch.uint8 and stored.shape == value.shape:
            stored.copy_(codes)
            state[name + "_absmax"].copy_(absmax)
        else:
            state[name], state[name + "_absmax"] = codes, absmax
        return
    dtype = torch.bfloat16 if state_bits == 16 else torch.float32
    state.pop(name + "_absmax", None)
    if stored is not None and stored.dtype == dtype and stored.shape == value.shape:
        if stored is not value:
            stored.copy_(value)
    else:
        state[name] = value.to(dtype).contiguous()


def init_state_moment(state: dict, name: str, like: Tensor, state_bits: int) -> None:
    """Create moment `name` as zeros of `like`'s shape and device in the `state_bits` format: zeros (8 bits: zero codes and zero absmax, which dequantise to 0)."""
    if uses_8bit(like.numel(), state_bits):
        from subprof.methods import quant8

        state[name] = torch.zeros(like.shape, dtype=torch.uint8, device=like.device)
        state[name + "_absmax"] = torch.zeros(quant8.blocks(like.numel()), dtype=torch.float32, device=like.device)
    else:
        dtype = torch.bfloat16 if state_bits == 16 else torch.float32
        state[name] = torch.zeros(like.shape, dtype=dtype, device=like.device)


def adam_direction(state: dict, grad: Tensor, *, betas: tuple[float, float], eps: float, t: int,
                   corrected: bool = True, eps_after_correction: bool = False) -> Tensor:
    """Update `exp_avg`/`exp_avg_sq` in place with `grad` and return Adam's direction U (a new tensor of grad's
    shape and dtype, the only allocation besides what the 8-bit kernel needs): U = m / (√v + ε), times
    √(1−β₂ᵗ)/(1−β₁ᵗ) when `corrected`, computed as GaLoreAdamW does (moments in their own dtype, in place).
    `eps_after_correction`: U = m / (√v + ε·√(1−β₂ᵗ)) instead — bitsandbytes' 32-bit Adam kernel, i.e. ε added to
    the bias-corrected √v̂ (what an 8-bit optimizer does with tensors under 4096 values, which it keeps in fp32).
    8-bit moments: bitsandbytes' kernel, always corrected, U = m̂ / (√v̂ + ε)."""
    beta1, beta2 = betas
    m, v = state["exp_avg"], state["exp_avg_sq"]
    if m.dtype == torch.uint8:
        from subprof.methods import quant8

        out = torch.zeros_like(grad)
        quant8.adam_step(grad, out, state, betas=betas, eps=eps, t=t, lr=1.0)
        return out.neg_()
    m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    out = torch.empty_like(grad)
    torch.sqrt(v, out=out)
    out.add_(eps * math.sqrt(1.0 - beta2**t) if eps_after_correction else eps)
    torch.div(m, out, out=out)
    return out.mul_(adam_correction(betas, t)) if corrected else out


def adam_directions(ms: list, vs: list, grads: list, *, betas: tuple[float, float], eps: float) -> list:
    """`adam_direction` (uncorrected, 16/32-bit moments) for lists of tensors, one foreach call per operation: the
    same arithmetic in the same order, so the same bits, with a handful of kernel launches for the whole list
    instead of a handful per tensor. Returns the directions m / (√v + ε) (new tensors): one temporary per tensor
    when the list holds one (the division writes into the denominator, as `adam_direction`), two per tensor
    otherwise (the foreach division needs both lists). At 16 bits the scalar products round as torch's foreach
    kernels do (the scalar kept in fp32), which differs in the last bit from `Tensor.mul_` (scalar cast to bf16)."""
    beta1, beta2 = betas
    torch._foreach_mul_(ms, beta1)
    torch._foreach_add_(ms, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_add_(denom, eps)
    if len(denom) == 1:
        return [torch.div(ms[0], denom[0], out=denom[0])]
    return torch._foreach_div(ms, denom)


def adam_correction(betas: tuple[float, float], t: int) -> float:
    """Adam's bias correction of the step size, √(1−β₂ᵗ)/(1−β₁ᵗ) (Kingma & Ba 2015, §2), t 1-based."""
    return math.sqrt(1.0 - betas[1] ** t) / (1.0 - betas[0] ** t)
