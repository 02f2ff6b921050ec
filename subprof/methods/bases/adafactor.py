"""Adafactor (Shazeer & Stern 2018, arXiv 1804.04235, Algorithms 4–5) as transformers' `Adafactor` and galore-torch
1.0's `GaLoreAdafactor` (transformers' step with GaLore's projection around it) compute it, β₁ = None (no first
moment, their default and OSD's runs):

    t = step;  β₂ₜ = 1 − t^(−0.8);  S = g² + ε₁
    2-D g (R, or an unprojected matrix): row ← β₂ₜ·row + (1−β₂ₜ)·mean(S, −1);  col ← β₂ₜ·col + (1−β₂ₜ)·mean(S, −2)
        U = g · rsqrt(row / mean(row)) ⊗ rsqrt(col);    1-D: v ← β₂ₜ v + (1−β₂ₜ) S;  U = g · rsqrt(v)
    U ← U / max(1, RMS(U)/d);  U ← ρ·U;   W ← W − ρλW;  W ← W − α·back(U)
    ρ = lr, or with relative_step min(10⁻², 1/√t) (warmup_init: min(10⁻⁶·t, 1/√t)), × max(ε₂, RMS(W)) with
    scale_parameter.

State per tensor: a row and a column factor (r + max(m, n) values for R) instead of Adam's 2·r·max(m, n); always
fp32 (the references upcast g and keep the factors in its dtype), so `--state-bits 16` stores the same bytes and
there is no 8-bit form. Defaults (options `base_options`): ε = (1e-30, 1e-3), d = 1.0, decay −0.8 (transformers');
relative_step, scale_parameter and warmup_init off with lr 1e-3 — OSD's runs (`torchrun_main.py`: relative_step=False,
scale_parameter=False, warmup_init=False, lr=args.lr) and transformers' docstring's external-lr recipe
("scale_parameter=False, relative_step=False, warmup_init=False, lr=1e-3"); pass relative_step=True,
scale_parameter=True for transformers' own defaults (the golden tests run both).
Sharded (FSDP2, R cut on its long side): the factor mean across the cut dim, mean(row) and RMS(U) (and RMS(W)) are
sums over ranks — one all-reduce of the cut-side partial sums (r values for R) and two or three scalars per step.
Deviations: β₁ is not offered (it would add m of R); bf16 weights round after the decay and after the update
separately (the references round once, from an fp32 copy of W).
"""

from __future__ import annotations

import math
from typing import Any

from subprof.methods.bases.declaration import BaseSpec
from subprof.methods.lazy import torch
from subprof.methods.spec import Collective, CommSpec, Dtype, Role, TensorSpec, When

Tensor = Any
DEFAULTS = {"eps": (1e-30, 1e-3), "clip_threshold": 1.0, "decay_rate": -0.8, "relative_step": False,
            "scale_parameter": False, "warmup_init": False}


def _rms(t: Tensor) -> Tensor:
    return t.norm(2) / (t.numel() ** 0.5)  # transformers' `_rms`


class AdafactorUpdate:
    """Adafactor's direction, ρ included (so its step factor is 1); `last_lr` is ρ of the last call (the decay's)."""

    defaults = DEFAULTS
    decay_first = True
    lr_inside = True  # U already holds ρ
    last_lr: Any = 0.0

    def options(self, group: dict) -> dict:
        opts = {**self.defaults, **(group.get("base_options") or {})}
        unknown = sorted(set(opts) - set(self.defaults))
        if unknown:
            raise ValueError(f"adafactor: unknown option(s) {', '.join(unknown)}; known: {', '.join(self.defaults)}")
        return opts

    def direction(self, state: dict, grad: Tensor, group: dict, step: int, *, weight: Tensor | None = None,
                  ctx: Any = None, cut: tuple[int, tuple[int, ...]] | None = None) -> Tensor:
        """U = ρ·clipped factored-RMS-normalised g (a new fp32 tensor). `cut` = (dim of g split over the ranks of
        `ctx`, g's whole shape), None when g is whole here."""
        opts = self.options(group)
        g = grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad
        factored = g.dim() >= 2
        if "exp_avg_sq_row" not in state and "exp_avg_sq" not in state:
            if factored:
                state["exp_avg_sq_row"] = torch.zeros(g.shape[:-1], dtype=g.dtype, device=g.device)
                state["exp_avg_sq_col"] = torch.zeros(g.shape[:-2] + g.shape[-1:], dtype=g.dtype, device=g.device)
            else:
                state["exp_avg_sq"] = torch.zeros_like(g)
        t = step + 1
        rel = group["lr"]
        if opts["relative_step"]:
            rel = min(1e-6 * t if opts["warmup_init"] else 1e-2, 1.0 / math.sqrt(t))
        lr = rel
        if opts["scale_parameter"]:
            w = weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight
            whole = tuple(ctx.global_shape) if ctx is not None and ctx.sharded else None
            lr = max(opts["eps"][1], self._rms(w, ctx, whole)) * rel
        beta2t = 1.0 - math.pow(t, opts["decay_rate"])
        sq = g**2
        sq.add_(opts["eps"][0])  # in place: the same bits as (g**2) + ε₁, one fp32 tensor fewer
        if factored:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row_mean, col_mean = self._mean(sq, -1, ctx, cut), self._mean(sq, -2, ctx, cut)
            del sq
            row.mul_(beta2t).add_(row_mean, alpha=1.0 - beta2t)
            col.mul_(beta2t).add_(col_mean, alpha=1.0 - beta2t)
            del row_mean, col_mean
            row_cut = None if cut is None or cut[0] != 0 else (0, cut[1][:-1])
            r_factor = (row / self._mean(row, -1, ctx, row_cut, keepdim=True)).rsqrt_().unsqueeze(-1)
            update = torch.mul(r_factor, col.unsqueeze(-2).rsqrt())
        else:
            v = state["exp_avg_sq"]
            v.mul_(beta2t).add_(sq, alpha=1.0 - beta2t)
            del sq
            update = v.rsqrt()
        update.mul_(g)
        del g
        update.div_((self._rms(update, ctx, None if cut is None else cut[1]) / opts["clip_threshold"]).clamp_(min=1.0))
        update.mul_(lr)
        self.last_lr = lr
        return update

    @staticmethod
    def _mean(t: Tensor, dim: int, ctx: Any, cut: tuple | None, keepdim: bool = False) -> Tensor:
        """t.mean(dim), summed over the ranks when `dim` is the cut one."""
        if cut is None or dim % t.dim() != cut[0]:
            return t.mean(dim=dim, keepdim=keepdim)
        return ctx.sum_(t.sum(dim=dim, keepdim=keepdim)).div_(cut[1][dim])

    @staticmethod
    def _rms(t: Tensor, ctx: Any, whole: tuple[int, ...] | None) -> Tensor:
        if whole is None:
            return _rms(t)
        return ctx.norm(t) / (math.prod(whole) ** 0.5)

    def step_factor(self, state: dict, group: dict, step: int) -> float:
        return 1.0  # ρ is inside U

    def finish(self, full: Tensor, scale: float) -> Tensor:
        return full.mul_(scale)

    def decay_lr(self) -> float:
        return float(self.last_lr)


def _row(shape):
    return lambda m, n, r: shape(m, n, r)[:-1] if len(shape(m, n, r)) >= 2 else shape(m, n, r)


def _col(shape):
    return lambda m, n, r: shape(m, n, r)[:-2] + shape(m, n, r)[-1:]


def moments(shape, axes) -> tuple[TensorSpec, ...]:
    """Factored for 2-D tensors (every projected R, embeddings, lm_head), a full second moment for 1-D ones."""
    if len(shape(4, 2, 1)) < 2:
        return (TensorSpec(name="exp_avg_sq", shape=shape, dtype=Dtype.FP32, role=Role.MOMENT, axes=axes),)
    return (TensorSpec(name="exp_avg_sq_row", shape=_row(shape), dtype=Dtype.FP32, role=Role.MOMENT,
                       axes=lambda m, n, r: axes(m, n, r)[:-1]),
            TensorSpec(name="exp_avg_sq_col", shape=_col(shape), dtype=Dtype.FP32, role=Role.MOMENT,
                       axes=lambda m, n, r: axes(m, n, r)[:-2] + axes(m, n, r)[-1:]))


def step_workspace(shape, axes) -> tuple[TensorSpec, ...]:
    """U in fp32 beside its cast to the gradient's dtype and the back-projection (the method's declared ones)."""
    return (TensorSpec(name="adafactor_direction_fp32", shape=shape, dtype=Dtype.FP32, role=Role.WORKSPACE,
                       axes=axes),)


def plain_temporary_bytes(numel: int, state_bits: int, param_bytes: int) -> int:
    """S = g² + ε₁ (then U, after S is freed) in fp32, plus g's fp32 copy when g is bf16."""
    return 4 * numel + (4 * numel if param_bytes == 2 else 0)


# one all-reduce per projected sharded (aligned) weight and step: the cut-side factor's partial sums (≤ r values)
# plus mean(row) and RMS(U) (and RMS(W) with scale_parameter): r + 3 fp32 values, bounded
FACTOR_SUMS = CommSpec(name="adafactor_factor_sums", op=Collective.ALL_REDUCE, shape=lambda m, n, r: (r + 3,),
                       dtype=Dtype.FP32, when=When.STEP, layout="aligned")

# a full-rank m×n weight on Shard(0): the column factor's partial sums (n values) and the same scalars
PLAIN_FACTOR_SUMS = CommSpec(name="adafactor_factor_sums", op=Collective.ALL_REDUCE, shape=lambda m, n, r: (n + 3,),
                             dtype=Dtype.FP32, when=When.STEP)

SPEC = BaseSpec(
    name="adafactor",
    title="Adafactor",
    paper="Shazeer & Stern 2018, arXiv 1804.04235",
    moments=moments,
    default_lr=1e-3,
    lr_source="transformers' Adafactor docstring, external-lr recipe (lr=1e-3, relative_step=False, "
              "scale_parameter=False, warmup_init=False), as OSD's runs set it",
    state_bits_supported=(32, 16),
    step_workspace=step_workspace,
    plain_temporary_bytes=plain_temporary_bytes,
    comms=(FACTOR_SUMS,),
    plain_comms=(PLAIN_FACTOR_SUMS,),
    update=AdafactorUpdate,
    # its factored second moment decays by β₂(t) = 1 − t^decay_rate: 0.9994 at step 10,000, i.e. Adam's 0.999 over
    # the bulk of a pretraining run
    moment_decay=0.999,
)
