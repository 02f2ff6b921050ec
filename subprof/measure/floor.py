"""The floor of an optimizer step: the arithmetic a method cannot avoid, timed on the same device in the same run as
the step itself, so `bench` can report step / floor.

Per projected weight W (m×n, rank r, P d×r on GaLore's "std" side, R the projected gradient):
    R = G·P (or PᵀG)                          one m×n×r GEMM
    Adam on R: m ← β₁m + (1−β₁)R, v ← β₂v + (1−β₂)R², U = m/(√v + ε)      one fused pass over R-sized tensors
    W ← W − η·(U Pᵀ) (or P U)                 one m×n×r GEMM accumulated into W (addmm, no m×n temporary)
    + G(GᵀP) when the method updates P by products with G on this step (`refresh_cost` "gemm" at update gap 1)
and for every other tensor (embeddings, norms, lm_head) and for full-rank AdamW: one foreach Adam pass
(`torch._foreach_*`: torch's foreach AdamW less its bias-correction division). Shapes and counts come from the model's own parameters; tensors of one
shape share their buffers (the work, not the cache footprint, is what is timed). Moments are in the training dtype
(the 16-bit floor also serves 8-bit steps: their target is a ratio to the 16-bit step).
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

import torch

from subprof.config import TrainConfig
from subprof.measure.timing import time_call
from subprof.methods.spec import basis_shape, moment_shape


def _moments(ms: list, vs: list, gs: list) -> list:
    """The moment update of one foreach Adam pass (β 0.9/0.999, ε 1e-8): m ← lerp(m, g, 0.1),
    v ← 0.999·v + 0.001·g², and the denominator √v + ε (a new list)."""
    torch._foreach_lerp_(ms, gs, 0.1)
    torch._foreach_mul_(vs, 0.999)
    torch._foreach_addcmul_(vs, gs, gs, value=0.001)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_add_(denom, 1e-8)
    return denom


def floor_fn(model: torch.nn.Module, config: TrainConfig, *, buffers: dict | None = None) -> Any:
    """A zero-argument callable doing the floor of one optimizer step of `config` on `model`'s parameter shapes.
    `buffers`: a dict shared by several floors of one model (a benchmark that keeps them all alive), in which
    tensors of equal role, shape and dtype are allocated once."""
    cache = {} if buffers is None else buffers

    def tensor(role: str, shape: tuple, fill: Any) -> torch.Tensor:
        key = (role, tuple(shape), dtype, str(device))
        if key not in cache:
            cache[key] = fill(*shape, device=device, dtype=dtype)
        return cache[key]

    from subprof.optim import split_parameters

    projected, plain = split_parameters(model)
    spec = config.spec
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    if not spec.project:
        plain = {**projected, **plain}
        projected = {}
    shapes = Counter(tuple(p.shape) for p in projected.values())
    streaming = spec.refresh_cost == "gemm" and config.update_gap == 1
    work = []
    for (m, n), count in shapes.items():
        r = min(config.rank, m, n)
        g, w = tensor("grad", (m, n), torch.randn), tensor("weight", (m, n), torch.zeros)
        p = tensor("basis", basis_shape(m, n, r), torch.randn)
        mom = [tensor(k, moment_shape(m, n, r), torch.zeros) for k in ("m", "v")]
        work.append((g, w, p, mom, count, m >= n))
    # one buffer per tensor, by name (foreach lists must not alias)
    plain_params, plain_grads, plain_m, plain_v = (
        [tensor(f"{role} {name}", tuple(t.shape), fill) for name, t in plain.items()]
        for role, fill in (("param", torch.zeros), ("grad", torch.randn), ("m", torch.zeros), ("v", torch.zeros)))

    def step() -> None:
        for g, w, p, (m, v), count, right in work:
            for _ in range(count):
                r = g @ p if right else p.T @ g
                (denom,) = _moments([m], [v], [r])
                u = m / denom
                if right:
                    w.addmm_(u, p.T, alpha=-1e-3)
                else:
                    w.addmm_(p, u, alpha=-1e-3)
                if streaming:
                    gt = g.T if right else g
                    gt @ (gt.T @ p)
        if plain_params:  # as torch's foreach AdamW, less its bias-correction division
            torch._foreach_addcdiv_(plain_params, plain_m, _moments(plain_m, plain_v, plain_grads), value=-1e-3)

    return step


def step_floor_seconds(model: torch.nn.Module, config: TrainConfig, *, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of the floor (module docstring) on the model's device."""
    device = str(next(model.parameters()).device)
    return statistics.median(time_call(floor_fn(model, config), repeats=repeats, warmup=warmup, device=device))
