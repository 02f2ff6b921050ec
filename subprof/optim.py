"""Subspace optimizers as real torch optimizers: `build_optimizer(model, method, …)` and `SubspaceAdamW`.

One optimizer, many projection rules. `SubspaceAdamW` runs, for every projected weight W (2-D weights of
`nn.Linear` modules whose name contains "attn" or "mlp", as GaLore selects them), the loop documented in
`subprof.methods.rule` — refresh P (the rule decides), R = project(G), U = low_rank_update (Adam by default),
W ← W − lr·(α·back(U) [+ recovery]) then W ← W·(1 − lr·λ) — and plain Adam with the same ε, bias correction and
decay order for everything else (embeddings, norms, lm_head). With the `galore` rule and fp32 states it is
galore-torch 1.0's `GaLoreAdamW` (tests hold them equal step by step).

Rules are found by name in `RULES` (import paths, resolved on first use, so `import subprof.optim` stays cheap and a
missing rule only fails for its own method). A param group names its rule with plain data — "method", "rank",
"update_gap", "method_options" — so `state_dict()` holds only tensors and primitives (loadable with
`torch.load(weights_only=True)`) and `load_state_dict` rebuilds the rules.

Non-finite gradients: before any state changes, the step checks every gradient's norm (one `_foreach_norm` and one
host sync per step). `nonfinite="raise"` (default) raises `NonFiniteGradientError` naming the tensor;
`nonfinite="skip"` leaves weights and states untouched, counts the step in `skipped_steps` and drops the gradients.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable

import torch

from subprof.errors import SubprofError
from subprof.methods import ALIASES, get_method
from subprof.methods.rule import ProjectionRule, adam_correction, adam_direction, init_state_moment

# method name → "module:Class" of its ProjectionRule
RULES: dict[str, str] = {
    "galore": "subprof.methods.galore:GaLoreRule",
    "osd": "subprof.methods.osd:OSDRule",
    "ori": "subprof.methods.ori:OriRule",
    "subtrack": "subprof.methods.subtrack:SubTrackRule",
    "grasswalk": "subprof.methods.grass:GrassWalkRule",
    "grassjump": "subprof.methods.grass:GrassJumpRule",
    "sumo": "subprof.methods.sumo:SumoRule",
}
DEFAULT_RANK = 128
NONFINITE_POLICIES = ("raise", "skip")


class NonFiniteGradientError(SubprofError, FloatingPointError):
    """A NaN or inf gradient reached the optimizer; nothing was updated."""


def rule_class(method: str) -> type[ProjectionRule]:
    """The ProjectionRule class registered for `method` (imported now)."""
    if method not in RULES:
        raise SubprofError(f"method {method!r} has no projection rule; known: {', '.join(RULES)}")
    module, _, name = RULES[method].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SubprofError(f"the {method} rule ({RULES[method]}) is not available: {exc}") from exc


def is_projected(name: str, module: torch.nn.Module) -> bool:
    """GaLore's selection: weights of nn.Linear modules whose qualified name contains "attn" or "mlp"."""
    return isinstance(module, torch.nn.Linear) and ("attn" in name or "mlp" in name)


def split_parameters(model: torch.nn.Module) -> tuple[dict[str, torch.nn.Parameter], dict[str, torch.nn.Parameter]]:
    """(projected, plain) trainable parameters by qualified name; shared (tied) parameters appear once."""
    projected: dict[str, torch.nn.Parameter] = {}
    for name, module in model.named_modules():
        if is_projected(name, module) and module.weight.requires_grad and module.weight.dim() == 2:
            projected[f"{name}.weight"] = module.weight
    ids = {id(p) for p in projected.values()}
    plain = {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in ids}
    return projected, plain


def tracing() -> bool:
    """Whether a FakeTensorMode is active (the memory tracer runs the real step on fake tensors: no values)."""
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def check_finite(params: list[torch.Tensor], names: dict[int, str]) -> str | None:
    """None if every gradient is finite, else the name of the first tensor with a NaN/inf (one host sync).
    Under a fake-tensor trace there are no values to check: None."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or tracing():
        return None
    norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])
    bad = ~torch.isfinite(norms)
    if not bool(bad.any()):
        return None
    first = int(bad.nonzero()[0, 0])
    with_grad = [p for p in params if p.grad is not None]
    return names.get(id(with_grad[first]), f"parameter {first}")


def _nonfinite_message(where: str, step: int | None) -> str:
    at = f" at step {step}" if step is not None else ""
    return (f"non-finite gradient (NaN/inf) in {where}{at}; no weight or optimizer state was changed — lower the "
            f"learning rate, check the data/loss scaling, or pass nonfinite='skip' to skip such steps")


class SubspaceAdamW(torch.optim.Optimizer):
    """Adam on projected gradients (GaLoreAdamW semantics) with pluggable projection rules.

    Param groups: `{"params": [...], "method": "galore", "rank": 128, "update_gap": 200, "method_options": {...}}`
    for projected 2-D weights; groups without "method" (or method None) get plain Adam. Group (and default)
    hyper-parameters: lr, betas (0.9, 0.999), eps (1e-6, GaLoreAdamW's), weight_decay (decoupled, applied after the
    update), scale α (0.25; multiplies the back-projected low-rank update only), state_bits (32 fp32, 16 bf16,
    8 bitsandbytes blockwise; see `subprof.quant8`).

    Memory: weights are updated one at a time, so the step's temporaries are one weight's (see the method spec's
    `step_workspace`); plain tensors allocate one gradient-sized direction (none at 8 bits on CUDA, where
    bitsandbytes' fused kernel updates W in place).
    """

    def __init__(self, params: Iterable[Any], *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, scale: float = 0.25, state_bits: int = 32,
                 method: str | None = None, rank: int | None = None, update_gap: int | None = None,
                 method_options: dict | None = None, nonfinite: str = "raise",
                 param_names: dict[int, str] | None = None) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise SubprofError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, scale=scale,
                        state_bits=state_bits, method=method, rank=rank, update_gap=update_gap,
                        method_options=dict(method_options or {}))
        self._rules: dict[tuple, ProjectionRule] = {}
        self.nonfinite = nonfinite
        self.skipped_steps = 0
        self.param_names = dict(param_names or {})
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["lr"] < 0 or group["weight_decay"] < 0 or group["eps"] < 0:
            raise SubprofError("lr, weight_decay and eps must be non-negative")
        if not all(0.0 <= b < 1.0 for b in group["betas"]):
            raise SubprofError(f"betas must lie in [0, 1), got {group['betas']}")
        if group["state_bits"] not in (32, 16, 8):
            raise SubprofError(f"state_bits must be 32, 16 or 8, got {group['state_bits']}")
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
        key = (group["method"], group["rank"], group["update_gap"], group["state_bits"], repr(sorted(options.items())))
        if key not in self._rules:
            cls = rule_class(group["method"])
            try:
                self._rules[key] = cls(rank=group["rank"], update_gap=group["update_gap"],
                                       state_bits=group["state_bits"], **options)
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
        bad = check_finite(params, self.param_names)
        if bad is not None:
            if self.nonfinite == "raise":
                step = next((self.state[p].get("step") for p in params if p in self.state), 0)
                raise NonFiniteGradientError(_nonfinite_message(bad, step))
            self.skipped_steps += 1
            for p in params:
                p.grad = None
            return loss
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.step_parameter(p, group)
        return loss

    @torch.no_grad()
    def step_parameter(self, p: torch.Tensor, group: dict) -> None:
        """One weight's update from its `.grad` (no finiteness check: `step` or the per-layer hook does it)."""
        state, grad = self.state[p], p.grad
        step = state.get("step", 0)
        lr, rule = group["lr"], self.rule(group)
        if rule is None:
            self._plain_adam(p, grad, state, group, step)
        else:
            rule.update_projection(state, grad, step)
            r_grad = rule.project(state, grad)
            update = rule.low_rank_update(state, r_grad, group, step)
            extra = rule.recovery_term(state, grad, r_grad, update)
            del r_grad
            step_size = lr * rule.step_factor(state, group, step)
            if extra is not None:
                p.add_(extra, alpha=-step_size)
                del extra
            full = rule.project_back(state, update.to(grad.dtype), tuple(p.shape))
            del update
            p.add_(full.mul_(group["scale"]), alpha=-step_size)
            del full
        if group["weight_decay"] > 0:
            p.add_(p, alpha=-lr * group["weight_decay"])
        state["step"] = step + 1

    def _plain_adam(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict, step: int) -> None:
        if "exp_avg" not in state:
            init_state_moment(state, "exp_avg", p, group["state_bits"])
            init_state_moment(state, "exp_avg_sq", p, group["state_bits"])
        if state["exp_avg"].dtype == torch.uint8:
            from subprof import quant8

            quant8.adam_step(grad, p, state, betas=group["betas"], eps=group["eps"], t=step + 1, lr=group["lr"])
            return
        # GaLoreAdamW's order of operations: p ← p − (lr·√(1−β₂ᵗ)/(1−β₁ᵗ))·m/(√v+ε)
        update = adam_direction(state, grad, betas=group["betas"], eps=group["eps"], t=step + 1, corrected=False)
        p.add_(update, alpha=-group["lr"] * adam_correction(group["betas"], step + 1))

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


def install_nonfinite_guard(optimizer: torch.optim.Optimizer, policy: str, names: dict[int, str]) -> None:
    """For optimizers we don't own (torch AdamW, bitsandbytes AdamW8bit): a step pre-hook that raises on a
    non-finite gradient, or drops every gradient (so the step updates nothing) and counts `skipped_steps`."""
    if policy not in NONFINITE_POLICIES:
        raise SubprofError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {policy!r}")
    optimizer.skipped_steps = 0

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        bad = check_finite(params, names)
        if bad is None:
            return
        if policy == "raise":
            raise NonFiniteGradientError(_nonfinite_message(bad, None))
        opt.skipped_steps += 1
        for p in params:
            p.grad = None

    optimizer.register_step_pre_hook(hook)


def _resolve(method: str, state_bits: int | None, dtype: torch.dtype) -> tuple[str, int]:
    """Method name (aliases such as adamw8bit resolved) and state_bits (None → 16 for 16-bit weights, else 32)."""
    key = method.strip().lower()
    spec = get_method(key)
    forced = ALIASES.get(key, (None, None))[1]
    if forced is not None and state_bits not in (None, forced):
        raise SubprofError(f"{method} implies state_bits={forced}, but state_bits={state_bits} was given")
    bits = forced or state_bits or (16 if dtype in (torch.bfloat16, torch.float16) else 32)
    if bits not in spec.state_bits_supported:
        raise SubprofError(f"{spec.name} supports state_bits {spec.state_bits_supported}, got {bits}")
    return spec.name, bits


def build_optimizer(model: torch.nn.Module, method: str, *, rank: int | None = None, update_gap: int | None = None,
                    scale: float | None = None, lr: float = 1e-3, weight_decay: float = 0.0,
                    state_bits: int | None = None, layerwise: bool = False, nonfinite: str = "raise",
                    accumulation_steps: int = 1, max_grad_norm: float | None = None,
                    **method_options: Any) -> torch.optim.Optimizer:
    """The optimizer of `method` for `model`.

    adamw: `torch.optim.AdamW(lr, weight_decay)` with torch's default implementation (foreach on CUDA); its moments
    follow the parameter dtype, so state_bits must match it (16 for bf16 weights, 32 for fp32). state_bits=8:
    bitsandbytes `AdamW8bit`. Other methods: `SubspaceAdamW` over the projected weights (rule of `method`) and plain
    Adam for the rest. rank defaults to 128 (each weight uses min(rank, m, n)); update_gap and scale to the
    method's declared defaults; state_bits to the parameter dtype's width. `method_options` go to the rule.
    `layerwise=True` returns a `subprof.layerwise.LayerwiseOptimizer` stepping each weight in its
    post-accumulate-grad hook after `accumulation_steps` backward passes, with optional lagged global-norm clipping
    (`max_grad_norm`; see there). `nonfinite`: "raise" or "skip" (module docstring).
    """
    if lr < 0 or weight_decay < 0:
        raise SubprofError(f"lr and weight_decay must be non-negative, got lr={lr}, weight_decay={weight_decay}")
    if not layerwise and (accumulation_steps != 1 or max_grad_norm is not None):
        raise SubprofError("accumulation_steps and max_grad_norm are options of layerwise=True; without it, "
                           "call step() after the last micro-batch and clip with torch.nn.utils.clip_grad_norm_")
    projected, plain = split_parameters(model)
    everything = {**projected, **plain}
    if not everything:
        raise SubprofError("the model has no trainable parameters")
    dtype = next(iter(everything.values())).dtype
    name, bits = _resolve(method, state_bits, dtype)
    names = {id(p): n for n, p in everything.items()}
    spec = get_method(name)
    if spec.project:
        rank = DEFAULT_RANK if rank is None else rank
        update_gap = (1 if spec.refresh_every_step else spec.default_update_gap) if update_gap is None else update_gap
        if not isinstance(rank, int) or rank <= 0:
            raise SubprofError(f"rank must be a positive integer, got {rank!r}")
        if not isinstance(update_gap, int) or update_gap <= 0:
            raise SubprofError(f"update_gap must be a positive integer, got {update_gap!r}")
    elif method_options:  # rank and update_gap are ignored for full-rank methods (sweeps pass them to all)
        raise SubprofError(f"{name} projects nothing: method options {sorted(method_options)} do not apply")

    def make(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return _make(name, spec, params, projected, lr=lr, weight_decay=weight_decay, bits=bits, rank=rank,
                     update_gap=update_gap, scale=spec.default_scale if scale is None else scale,
                     options=method_options, nonfinite=nonfinite, names=names, guard=not layerwise)

    params = list(everything.values())
    if layerwise:
        from subprof.layerwise import LayerwiseOptimizer

        return LayerwiseOptimizer(make(params), accumulation_steps=accumulation_steps, max_grad_norm=max_grad_norm,
                                  nonfinite=nonfinite, param_names=names)
    return make(params)


def _make(name: str, spec: Any, params: list[torch.nn.Parameter], projected: dict, *, lr: float,
          weight_decay: float, bits: int, rank: int | None, update_gap: int | None, scale: float, options: dict,
          nonfinite: str, names: dict[int, str], guard: bool) -> torch.optim.Optimizer:
    if not spec.project:
        if bits == 8:
            import bitsandbytes as bnb

            opt = bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
        else:
            widths = {p.element_size() * 8 for p in params}
            if widths != {bits}:
                raise SubprofError(f"torch AdamW keeps its moments in the parameter dtype ({sorted(widths)}-bit "
                                   f"here), so state_bits={bits} is not available; convert the model "
                                   f"(model.to(torch.bfloat16) for 16) or use state_bits=8")
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        if guard:  # per-layer updates check each gradient in their hook instead
            install_nonfinite_guard(opt, nonfinite, names)
        return opt
    ids = {id(p) for p in projected.values()}
    groups = [{"params": [p for p in params if id(p) in ids], "method": name, "rank": rank,
               "update_gap": update_gap, "method_options": dict(options)},
              {"params": [p for p in params if id(p) not in ids]}]
    groups = [g for g in groups if g["params"]]
    return SubspaceAdamW(groups, lr=lr, weight_decay=weight_decay, scale=scale, state_bits=bits,
                         nonfinite=nonfinite, param_names=names)


def state_tensor_bytes(state: dict) -> int:
    """Bytes of one weight's optimizer state as the memory model declares it: every tensor except the step counter,
    a generator's state (`rng_state`) and bitsandbytes' shared 256-entry code maps (`qmap1`, `qmap2`, one per
    optimizer, not per weight)."""
    skip = {"step", "rng_state", "qmap1", "qmap2"}
    return sum(v.numel() * v.element_size() for k, v in state.items()
               if isinstance(v, torch.Tensor) and k not in skip)

