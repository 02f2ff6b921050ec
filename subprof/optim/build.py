"""`build_optimizer(model, method, …)`: the optimizer of a method for a model, as a real `torch.optim.Optimizer`.

Projected weights are GaLore's selection: 2-D weights of `nn.Linear` modules whose qualified name contains "attn" or
"mlp"; everything else (embeddings, norms, lm_head, biases) stays in plain Adam. Full-rank AdamW is torch's own
(`foreach` as CUDA users get it) or, at 8 bits, bitsandbytes' `AdamW8bit`; every projected method is
`SubspaceAdamW` with the method's rule. `layerwise=True` wraps either in `LayerwiseOptimizer`.
"""

from __future__ import annotations

from typing import Any

import torch

from subprof.config import DEFAULT_RANK
from subprof.errors import SubprofError
from subprof.methods import forced_state_bits, get_method
from subprof.methods.bases import default_lr, get_base
from subprof.optim.distributed import check_parameters, fsdp_units, local
from subprof.optim.layerwise import LayerwiseOptimizer
from subprof.optim.nonfinite import install_nonfinite_guard
from subprof.optim.subspace import SubspaceAdamW
from subprof.quiet import known_noise_filtered


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


def _resolve(method: str, state_bits: int | None, dtype: torch.dtype) -> tuple[str, int]:
    """Method name (aliases such as adamw8bit resolved) and state_bits (None → 16 for 16-bit weights, else 32)."""
    key = method.strip().lower()
    spec = get_method(key)
    forced = forced_state_bits(key)
    if forced is not None and state_bits not in (None, forced):
        raise SubprofError(f"{method} implies state_bits={forced}, but state_bits={state_bits} was given")
    bits = forced or state_bits or (16 if dtype in (torch.bfloat16, torch.float16) else 32)
    if bits not in spec.state_bits_supported:
        raise SubprofError(f"{spec.name} supports state_bits {spec.state_bits_supported}, got {bits}")
    return spec.name, bits


def build_optimizer(model: torch.nn.Module, method: str, *, rank: int | None = None, update_gap: int | None = None,
                    scale: float | None = None, lr: float | None = None, weight_decay: float = 0.0,
                    state_bits: int | None = None, layerwise: bool = False, nonfinite: str = "raise",
                    accumulation_steps: int = 1, max_grad_norm: float | None = None, foreach: bool | None = None,
                    base: str | None = None, base_options: dict | None = None,
                    **method_options: Any) -> torch.optim.Optimizer:
    """The optimizer of `method` for `model`.

    adamw: `torch.optim.AdamW(lr, weight_decay)` with torch's default implementation (foreach on CUDA); its moments
    follow the parameter dtype, so state_bits must match it (16 for bf16 weights, 32 for fp32). state_bits=8:
    bitsandbytes `AdamW8bit`. Other methods: `SubspaceAdamW` over the projected weights (rule of `method`) and plain
    Adam for the rest. lr defaults to the method's published one (`MethodSpec.default_lr`); rank to 128 (each
    weight uses min(rank, m, n)); update_gap and scale to the method's declared defaults; state_bits to the
    parameter dtype's width. `method_options` go to the rule.
    `layerwise=True` returns a `subprof.layerwise.LayerwiseOptimizer` stepping each weight in its
    post-accumulate-grad hook after `accumulation_steps` backward passes, with optional lagged global-norm clipping
    (`max_grad_norm`; see there). `nonfinite`: "raise" or "skip" (`subprof.optim.nonfinite`). `foreach` goes to
    torch's AdamW (None: torch's default for the device — foreach on CUDA, the per-tensor loop on CPU; the trace
    passes True to reproduce CUDA).
    `base` ("adamw", "lion", "adafactor"; also accepted as the method option "base") is the base optimizer on R and
    on every unprojected tensor (`subprof.methods.bases`); a non-Adam base, full-rank too, runs in `SubspaceAdamW`,
    its lr defaulting to the base's published one. `base_options`: the base's own (Adafactor's relative_step, …).

    Data-parallel models work unchanged: wrapped by FSDP2 (`fully_shard`; its parameters are DTensors — ideally
    placed as the method declares, `subprof.optim.sharding.shard_model`; every rank steps its shards,
    `subprof.optim.distributed`) or by DDP (pass the `DistributedDataParallel` module itself, so that per-layer
    updates can step in its communication hook). 8-bit AdamW on FSDP2 is `SubspaceAdamW`'s blockwise 8-bit kernel
    per shard (bitsandbytes' optimizers do not step DTensors). A layout it cannot step — trainable parameters partly
    sharded and partly not, FSDP1's flat parameters, a DTensor placement other than FSDP2's or HSDP's, a Shard(1)
    that does not split evenly — is one `SubprofError` naming the parameter.
    """
    base = get_base(method_options.pop("base", None) or base).name
    if lr is None:  # the method's published learning rate (MethodSpec.default_lr), or the base's
        lr = default_lr(get_method(method.strip().lower()).default_lr, base)
    if lr < 0 or weight_decay < 0:
        raise SubprofError(f"lr and weight_decay must be non-negative, got lr={lr}, weight_decay={weight_decay}")
    if not layerwise and (accumulation_steps != 1 or max_grad_norm is not None):
        raise SubprofError("accumulation_steps and max_grad_norm are options of layerwise=True; without it, "
                           "call step() after the last micro-batch and clip with torch.nn.utils.clip_grad_norm_")
    projected, plain = split_parameters(model)
    everything = {**projected, **plain}
    if not everything:
        raise SubprofError("the model has no trainable parameters")
    sharded = check_parameters(everything)  # FSDP2 (DTensors) or not; a mixed or foreign layout is refused here
    dtype = next(iter(everything.values())).dtype
    name, bits = _resolve(method, state_bits, dtype)
    if base not in get_method(name).bases:
        raise SubprofError(f"{name} runs base optimizer(s) {', '.join(get_method(name).bases)}, not {base}")
    if bits not in get_base(base).state_bits_supported:
        raise SubprofError(f"base {base} has no {bits}-bit state; use state_bits "
                           f"{' or '.join(map(str, get_base(base).state_bits_supported))}")
    if bits == 8:  # import it here, quietly: the 8-bit kernels (AdamW8bit, methods.quant8) find it loaded
        _bitsandbytes()
    names = {id(p): n for n, p in everything.items()}
    spec = get_method(name)
    if spec.project:
        rank = DEFAULT_RANK if rank is None else rank
        update_gap = spec.default_update_gap if update_gap is None else update_gap
        if not isinstance(rank, int) or rank <= 0:
            raise SubprofError(f"rank must be a positive integer, got {rank!r}")
        if not isinstance(update_gap, int) or update_gap <= 0:
            raise SubprofError(f"update_gap must be a positive integer, got {update_gap!r}")
    elif method_options:  # rank and update_gap are ignored for full-rank methods (sweeps pass them to all)
        raise SubprofError(f"{name} projects nothing: method options {sorted(method_options)} do not apply")

    def make(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return _make(name, spec, params, projected, lr=lr, weight_decay=weight_decay, bits=bits, rank=rank,
                     update_gap=update_gap, scale=spec.default_scale if scale is None else scale,
                     options=method_options, nonfinite=nonfinite, names=names, guard=not layerwise,
                     foreach=foreach, sharded=sharded, base=base, base_options=dict(base_options or {}))

    params = list(everything.values())
    if layerwise:
        ddp = model if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None
        return LayerwiseOptimizer(make(params), accumulation_steps=accumulation_steps, max_grad_norm=max_grad_norm,
                                  nonfinite=nonfinite, param_names=names, ddp=ddp,
                                  units=fsdp_units(model) if sharded else None)
    return make(params)


def _make(name: str, spec: Any, params: list[torch.nn.Parameter], projected: dict, *, lr: float,
          weight_decay: float, bits: int, rank: int | None, update_gap: int | None, scale: float, options: dict,
          nonfinite: str, names: dict[int, str], guard: bool, foreach: bool | None,
          sharded: bool, base: str, base_options: dict) -> torch.optim.Optimizer:
    if not spec.project and base != "adamw":  # full-rank Lion / Adafactor: the bases' plain path
        return SubspaceAdamW([{"params": params}], lr=lr, weight_decay=weight_decay, state_bits=bits,
                             nonfinite=nonfinite, param_names=names, base=base, base_options=base_options)
    if not spec.project and bits == 8 and sharded:
        # bitsandbytes' optimizers do not step DTensors (bitsandbytes #89): the same blockwise 8-bit Adam kernel on
        # each rank's shard, through SubspaceAdamW's plain-Adam path (bit for bit AdamW8bit's on whole tensors)
        return SubspaceAdamW([{"params": params}], lr=lr, weight_decay=weight_decay, state_bits=8,
                             nonfinite=nonfinite, param_names=names)
    if not spec.project:
        if bits == 8:
            opt = _bitsandbytes().optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
        else:
            widths = {p.element_size() * 8 for p in params}
            if widths != {bits}:
                raise SubprofError(f"torch AdamW keeps its moments in the parameter dtype ({sorted(widths)}-bit "
                                   f"here), so state_bits={bits} is not available; convert the model "
                                   f"(model.to(torch.bfloat16) for 16) or use state_bits=8")
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=foreach)
        if guard:  # per-layer updates check each gradient in their hook instead
            install_nonfinite_guard(opt, nonfinite, names, agree=sharded)
        return opt
    ids = {id(p) for p in projected.values()}
    groups = [{"params": [p for p in params if id(p) in ids], "method": name, "rank": rank,
               "update_gap": update_gap, "method_options": dict(options)},
              {"params": [p for p in params if id(p) not in ids]}]
    groups = [g for g in groups if g["params"]]
    return SubspaceAdamW(groups, lr=lr, weight_decay=weight_decay, scale=scale, state_bits=bits,
                         nonfinite=nonfinite, param_names=names, base=base, base_options=base_options)


def _bitsandbytes() -> Any:
    """bitsandbytes, imported with its known import-time noise filtered (`subprof.quiet`: on CPUs with AVX512-BF16
    its CPU backend logs a failed Hub download mentioning `trust_remote_code`, which concerns no subprof run)."""
    with known_noise_filtered():
        import bitsandbytes

    return bitsandbytes


def state_tensor_bytes(state: dict) -> int:
    """Bytes of one weight's optimizer state on this rank (a DTensor's local part) as the memory model declares it
    (`MethodSpec.rank_state_bytes`): every tensor except the step counter, a generator's state (`rng_state`),
    bitsandbytes' shared 256-entry code maps (`qmap1`, `qmap2`, one per optimizer, not per weight) and 0-d scalars
    (such as the recovery term's last norm)."""
    skip = {"step", "rng_state", "qmap1", "qmap2"}
    return sum(local(v).numel() * v.element_size() for k, v in state.items()
               if isinstance(v, torch.Tensor) and k not in skip and v.dim() > 0)
