"""`SubspaceAdamW`: Adam on projected gradients (GaLoreAdamW semantics) with one projection rule per method.

For every projected weight W it runs the loop documented in `subprof.methods.rule` — refresh P (the rule decides),
R = project(G), U = low_rank_update (Adam by default), W ← W − lr·(α·back(U) [+ recovery]) then W ← W·(1 − lr·λ) —
and plain Adam with the same ε, bias correction and decay order for everything else (embeddings, norms, lm_head).
With the `galore` rule and fp32 states it is galore-torch 1.0's `GaLoreAdamW` (tests hold them equal bit for bit).

A param group names its method with plain data — "method", "rank", "update_gap", "method_options" — and the rule
class comes from the method registry (`MethodSpec.rule`), so `state_dict()` holds only tensors and primitives
(loadable with `torch.load(weights_only=True)`) and `load_state_dict` rebuilds the rules.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from subprof.errors import SubprofError
from subprof.methods import get_method
from subprof.methods.bases import get_base, update_for
from subprof.methods.moments import adam_correction, adam_direction, adam_directions, init_state_moment
from subprof.methods.rule import ProjectionRule
from subprof.methods.spec import FOREACH_NUMEL
from subprof.optim.distributed import check_parameters, context_for, local
from subprof.optim.nonfinite import NonFiniteGradientError, check_finite, check_policy, nonfinite_message

EPS = 1e-6  # GaLoreAdamW's (galore-torch 1.0 adamw.py)
EPS_8BIT = 1e-8  # GaLoreAdamW8bit's and bitsandbytes' AdamW8bit's (galore-torch adamw8bit.py, bnb optim/adamw.py)


class SubspaceAdamW(torch.optim.Optimizer):
    """Adam on projected gradients (GaLoreAdamW semantics) with pluggable projection rules.

    Param groups: `{"params": [...], "method": "galore", "rank": 128, "update_gap": 200, "method_options": {...}}`
    for projected 2-D weights; groups without "method" (or method None) get plain Adam. Group (and default)
    hyper-parameters: lr, betas (0.9, 0.999), eps (None: 1e-6 as GaLoreAdamW at 32/16 bits, 1e-8 at 8 bits as
    GaLoreAdamW8bit and bitsandbytes' AdamW8bit), weight_decay (decoupled, applied after the update), scale α (0.25;
    multiplies the back-projected low-rank update only), state_bits (32 fp32, 16 bf16, 8 bitsandbytes blockwise;
    see `subprof.methods.quant8`), base ("adamw", "lion" or "adafactor": the update on R and on every unprojected
    tensor, `subprof.methods.bases`; a method option "base" in the group's method_options sets it too) and
    base_options (the base's own, e.g. Adafactor's relative_step).

    At 8 bits the plain-Adam tensors follow bitsandbytes' `AdamW8bit` exactly (the same kernels and order: decay
    p ← p(1 − lr·λ) inside the kernel, before the step; fp32 moments and its 32-bit kernel's arithmetic under
    4096 values) — which is also what galore-torch's `GaLoreAdamW8bit` does with its unprojected tensors; its
    projected ones decay after the update, as here.

    Memory: weights are updated one at a time, so the step's temporaries are one weight's (see the method spec's
    `step_workspace`); plain tensors allocate one gradient-sized direction (none at 8 bits on CUDA, where
    bitsandbytes' fused kernel updates W in place).
    """

    def __init__(self, params: Iterable[Any], *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float | None = None, weight_decay: float = 0.0, scale: float = 0.25, state_bits: int = 32,
                 method: str | None = None, rank: int | None = None, update_gap: int | None = None,
                 method_options: dict | None = None, nonfinite: str = "raise",
                 param_names: dict[int, str] | None = None, base: str = "adamw",
                 base_options: dict | None = None) -> None:
        check_policy(nonfinite)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, scale=scale,
                        state_bits=state_bits, method=method, rank=rank, update_gap=update_gap,
                        method_options=dict(method_options or {}), base=base, base_options=dict(base_options or {}))
        self._rules: dict[tuple, ProjectionRule] = {}
        self._contexts: dict[int, Any] = {}  # id(param) → where it lives (`distributed.context_for`)
        self.nonfinite = nonfinite
        self.skipped_steps = 0
        self.param_names = dict(param_names or {})
        super().__init__(params, defaults)
        params = [q for g in self.param_groups for q in g["params"]]
        self.sharded = check_parameters({self.param_names.get(id(p), f"parameter {i}"): p
                                         for i, p in enumerate(params)})
        for p in params if self.sharded else ():  # an unsupported layout is refused now, not at the first step
            self.context(p)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["eps"] is None:
            group["eps"] = EPS_8BIT if group["state_bits"] == 8 else EPS
        if group["lr"] < 0 or group["weight_decay"] < 0 or group["eps"] < 0:
            raise SubprofError("lr, weight_decay and eps must be non-negative")
        if not all(0.0 <= b < 1.0 for b in group["betas"]):
            raise SubprofError(f"betas must lie in [0, 1), got {group['betas']}")
        if group["state_bits"] not in (32, 16, 8):
            raise SubprofError(f"state_bits must be 32, 16 or 8, got {group['state_bits']}")
        options = dict(group.get("method_options") or {})
        group["base"] = get_base(options.pop("base", None) or group["base"]).name
        group["method_options"] = options
        base = get_base(group["base"])
        if group["state_bits"] not in base.state_bits_supported:
            raise SubprofError(f"base {base.name} has no {group['state_bits']}-bit state; use state_bits "
                               f"{' or '.join(map(str, base.state_bits_supported))}")
        update = update_for(base.name)
        if update is not None and hasattr(update, "options"):
            try:
                update.options(group)
            except ValueError as exc:
                raise SubprofError(str(exc)) from exc
        if group["method"] is not None and base.name not in get_method(group["method"]).bases:
            runs = ", ".join(get_method(group["method"]).bases)
            raise SubprofError(f"{group['method']} runs base optimizer(s) {runs}, not {base.name}")
        if group["method"] is not None:
            for p in group["params"]:
                if p.dim() != 2:
                    raise SubprofError(f"projected parameters must be 2-D weights, got shape {tuple(p.shape)}")
            self.rule(group)  # validates method, rank and update_gap now

    def rule(self, group: dict) -> ProjectionRule | None:
        """The group's ProjectionRule (built once per distinct configuration), or None for plain Adam."""
        if group.get("method") is None:
            return None
        options = group.get("method_options") or {}
        key = (group["method"], group["rank"], group["update_gap"], group["state_bits"], tuple(group["betas"]),
               repr(sorted(options.items())))
        if key not in self._rules:
            cls = get_method(group["method"]).rule
            if cls is None:
                raise SubprofError(f"method {group['method']!r} projects nothing: it has no projection rule")
            try:
                self._rules[key] = cls(rank=group["rank"], update_gap=group["update_gap"],
                                       state_bits=group["state_bits"], betas=tuple(group["betas"]), **options)
            except (TypeError, ValueError) as exc:
                raise SubprofError(f"{group['method']}: {exc}") from exc
        return self._rules[key]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        bad = None if self.nonfinite == "off" else check_finite(params, self.param_names, agree=self.sharded)
        if bad is not None:
            if self.nonfinite == "raise":
                step = next((self.state[p].get("step") for p in params if p in self.state), 0)
                raise NonFiniteGradientError(nonfinite_message(bad, step))
            self.skipped_steps += 1
            for p in params:
                p.grad = None
            return loss
        for group in self.param_groups:
            batch, alone = [], []  # small unprojected tensors in one foreach pass (same bits as one by one)
            plain = self.rule(group) is None and group["base"] == "adamw"
            for p in group["params"]:
                if p.grad is not None:
                    small = plain and p.numel() <= FOREACH_NUMEL and self._foreach_ready(p, group)
                    (batch if small else alone).append(p)
            self._plain_adam_foreach(batch, group)
            for p in alone:
                self.step_parameter(p, group)
        return loss

    @torch.no_grad()
    def step_parameter(self, p: torch.Tensor, group: dict) -> None:
        """One weight's update from its `.grad` (no finiteness check: `step` or the per-layer hook does it). Under
        FSDP2 everything runs on this rank's shards (`local`) and the rule calls the weight's context for the rest
        (`subprof.optim.distributed`); the state holds this rank's tensors."""
        state, grad, w = self.state[p], local(p.grad), local(p)
        step = state.get("step", 0)
        lr, rule = group["lr"], self.rule(group)
        base = update_for(group["base"])
        decayed = False
        if rule is None and base is None and self._foreach_ready(p, group):
            self._plain_adam_foreach([p], group)
            return
        if rule is None and base is None:
            decayed = self._plain_adam(w, grad, state, group, step)
        elif rule is None:
            decayed = self._plain_base(base, p, w, grad, state, group, step)
        else:
            if step == 0:  # the weight's position: random rules seed its stream from it (`SeededRule`)
                state.setdefault("stream", self._position(p))
            with rule.acting_on(self.context(p)):
                r_grad = rule.refresh_and_project(state, grad, step)
                if base is None:
                    update = rule.low_rank_update(state, r_grad, group, step)
                else:
                    update = base.direction(state, r_grad, group, step, weight=w, ctx=rule.ctx,
                                            cut=_projected_cut(rule.ctx, r_grad))
                extra = rule.recovery_term(state, grad, r_grad, update, scale=group["scale"])
                del r_grad
                # a base whose direction carries its own step size (Adafactor's ρ) is applied at 1·f
                step_size = (1.0 if base is not None and base.lr_inside else lr) * rule.step_factor(state, group, step)
                if extra is not None:
                    w.add_(extra, alpha=-step_size)
                    del extra
                full = rule.project_back(state, update.to(grad.dtype), tuple(p.shape))
            del update
            if base is not None and base.decay_first and group["weight_decay"] > 0:
                w.add_(w, alpha=-group["weight_decay"] * base.decay_lr())  # Adafactor: decay, then the update
                decayed = True
            if base is None:
                w.add_(full.mul_(group["scale"]), alpha=-step_size)
            else:
                w.add_(base.finish(full, group["scale"]), alpha=-step_size)
            del full
        if group["weight_decay"] > 0 and not decayed:
            w.add_(w, alpha=-lr * group["weight_decay"])
        state["step"] = step + 1

    def context(self, p: torch.Tensor) -> Any:
        """Where `p` lives: `LOCAL` (one process, DDP) or its FSDP2 `ShardContext` (`distributed.context_for`)."""
        ctx = self._contexts.get(id(p))
        if ctx is None:
            ctx = self._contexts[id(p)] = context_for(p, self.param_names.get(id(p), "a parameter"),
                                                      self._position(p))
        return ctx

    @staticmethod
    def _foreach_ready(p: torch.Tensor, group: dict) -> bool:
        """Whether an unprojected tensor takes the foreach Adam: 32/16-bit moments in its gradient's own dtype."""
        return group["state_bits"] != 8 and (torch.bfloat16 if group["state_bits"] == 16 else torch.float32) == \
            p.grad.dtype

    def _plain_adam_foreach(self, params: list[torch.Tensor], group: dict) -> None:
        """Adam (GaLoreAdamW's order: p ← p − lr·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v+ε), then decoupled decay) on unprojected
        tensors whose moments share their gradient's dtype, one foreach call per operation for the whole list —
        the path every such tensor takes, alone (per-layer) or together (`step`), so both give the same bits.
        Advances each tensor's step. Under FSDP2 each rank steps its shards (`local`)."""
        by_step: dict[int, list[torch.Tensor]] = {}
        for p in params:
            state = self.state[p]
            if "exp_avg" not in state:
                init_state_moment(state, "exp_avg", local(p), group["state_bits"])
                init_state_moment(state, "exp_avg_sq", local(p), group["state_bits"])
            by_step.setdefault(state.get("step", 0), []).append(p)
        lr, wd = group["lr"], group["weight_decay"]
        for step, ps in by_step.items():
            states = [self.state[p] for p in ps]
            ws = [local(p) for p in ps]
            directions = adam_directions([s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                                         [local(p.grad) for p in ps], betas=group["betas"], eps=group["eps"])
            torch._foreach_add_(ws, directions, alpha=-lr * adam_correction(group["betas"], step + 1))
            del directions
            if wd > 0:
                torch._foreach_add_(ws, ws, alpha=-lr * wd)
            for state in states:
                state["step"] = step + 1

    def _plain_base(self, base: Any, p: torch.Tensor, w: torch.Tensor, grad: torch.Tensor, state: dict,
                    group: dict, step: int) -> bool:
        """A non-Adam base (`subprof.methods.bases`) on an unprojected tensor, one tensor at a time: W ← W − lr·f·U
        with U the base's direction finished as a whole-tensor update (Lion: its sign); returns whether the decay
        was applied (Adafactor decays first, with its own ρ)."""
        ctx = self.context(p) if self.sharded else None
        cut = (ctx.dim, tuple(ctx.global_shape)) if ctx is not None and ctx.world > 1 else None
        update = base.direction(state, grad, group, step, weight=w, ctx=ctx, cut=cut)
        decayed = False
        if base.decay_first and group["weight_decay"] > 0:
            w.add_(w, alpha=-group["weight_decay"] * base.decay_lr())
            decayed = True
        size = 1.0 if base.lr_inside else group["lr"]
        w.add_(base.finish(update, 1.0), alpha=-size * base.step_factor(state, group, step))
        return decayed

    def _position(self, p: torch.Tensor) -> int:
        return next(i for i, q in enumerate(q for g in self.param_groups for q in g["params"]) if q is p)

    def _plain_adam(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict, step: int) -> bool:
        """Adam on an unprojected tensor; returns whether the weight decay was already applied (8 bits)."""
        if "exp_avg" not in state:
            init_state_moment(state, "exp_avg", p, group["state_bits"])
            init_state_moment(state, "exp_avg_sq", p, group["state_bits"])
        lr, wd, t = group["lr"], group["weight_decay"], step + 1
        if state["exp_avg"].dtype == torch.uint8:  # bitsandbytes' blockwise kernel, decay inside (before the step)
            from subprof.methods import quant8

            quant8.adam_step(grad, p, state, betas=group["betas"], eps=group["eps"], t=t, lr=lr, weight_decay=wd)
            return True
        if group["state_bits"] == 8:  # under 4096 values: bitsandbytes' 32-bit kernel's order and ε placement
            if wd > 0:
                p.mul_(1.0 - lr * wd)
            update = adam_direction(state, grad, betas=group["betas"], eps=group["eps"], t=t, corrected=False,
                                    eps_after_correction=True)
            p.add_(update, alpha=-lr * math.sqrt(1.0 - group["betas"][1] ** t) / (1.0 - group["betas"][0] ** t))
            return True
        # GaLoreAdamW's order of operations: p ← p − (lr·√(1−β₂ᵗ)/(1−β₁ᵗ))·m/(√v+ε)
        update = adam_direction(state, grad, betas=group["betas"], eps=group["eps"], t=t, corrected=False)
        p.add_(update, alpha=-lr * adam_correction(group["betas"], t))
        return False

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        out = super().state_dict()
        out["subprof"] = {"skipped_steps": self.skipped_steps}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but every state tensor keeps its saved dtype (torch would cast uint8 codes, bf16 moments
        and generator states to the parameter's dtype) and generator states stay on the CPU."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("subprof", {})
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for index, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(index, {}).items():
                if isinstance(value, torch.Tensor):
                    device = "cpu" if key == "rng_state" else p.device
                    self.state[p][key] = value.detach().to(device=device, copy=True)
        self.skipped_steps = int(extra.get("skipped_steps", 0))


def _projected_cut(ctx: Any, r_grad: torch.Tensor) -> tuple[int, tuple[int, ...]] | None:
    """(dim of R cut over the ranks, R's whole shape) for a weight sharded on its long side (R = G·P is cut along
    m, PᵀG along n); None when R is whole here (one process, DDP, or a crossed weight whose R is all-reduced)."""
    if not ctx.sharded or ctx.crossed:
        return None
    m, n = ctx.global_shape
    return (0, (m, r_grad.shape[1])) if m >= n else (1, (r_grad.shape[0], n))
