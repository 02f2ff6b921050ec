"""Non-finite gradients: one check before any state changes, and what happens then.

`check_finite` takes one `_foreach_norm` over the gradients and one host sync. Policies: "raise" (default) raises
`NonFiniteGradientError` naming the first tensor with a NaN/inf, before any weight or state changes; "skip" leaves
weights and states untouched, drops the gradients and counts the step (`skipped_steps`); "off" checks nothing, so
`step()` never waits for the device (the check is the step's only host sync — per weight in per-layer mode). `SubspaceAdamW` checks in
its `step`, `LayerwiseOptimizer` per weight in its hook, and optimizers we don't own (torch AdamW, bitsandbytes
AdamW8bit) through `install_nonfinite_guard`, a step pre-hook.
"""

from __future__ import annotations

from typing import Any

import torch

from subprof.errors import SubprofError

NONFINITE_POLICIES = ("raise", "skip", "off")


class NonFiniteGradientError(SubprofError, FloatingPointError):
    """A NaN or inf gradient reached the optimizer; nothing was updated."""


def check_policy(policy: str) -> str:
    if policy not in NONFINITE_POLICIES:
        raise SubprofError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {policy!r}")
    return policy


def tracing() -> bool:
    """Whether a FakeTensorMode is active (the memory tracer runs the real step on fake tensors: no values)."""
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def check_finite(params: list[torch.Tensor], names: dict[int, str], *, agree: bool = False) -> str | None:
    """None if every gradient is finite, else the name of the first tensor with a NaN/inf (one host sync).
    Sharded gradients (FSDP2 DTensors) are checked on this rank's shards; `agree` then makes every rank take the
    same decision and name the same tensor, whichever rank's shard holds the NaN (one all-reduce of one int64,
    `distributed.agree_first`). Under a fake-tensor trace there are no values to check: None."""
    from subprof.optim.distributed import agree_first, local

    with_grad = [p for p in params if p.grad is not None]
    values = not tracing()
    first = len(with_grad)
    if with_grad and values:
        norms = torch.stack([n.float() for n in torch._foreach_norm([local(p.grad) for p in with_grad])])
        bad = ~torch.isfinite(norms)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
    if agree:  # under a trace too: the collective is part of the step (its value is not read)
        first = agree_first(first, local(with_grad[0].grad).device if with_grad else None, read=values)
    if not values or first >= len(with_grad):
        return None
    return names.get(id(with_grad[first]), f"parameter {first}")


def nonfinite_message(where: str, step: int | None) -> str:
    at = f" at step {step}" if step is not None else ""
    return (f"non-finite gradient (NaN/inf) in {where}{at}; no weight or optimizer state was changed — lower the "
            f"learning rate, check the data/loss scaling, or pass nonfinite='skip' to skip such steps")


def install_nonfinite_guard(optimizer: torch.optim.Optimizer, policy: str, names: dict[int, str], *,
                            agree: bool = False) -> None:
    """For optimizers we don't own (torch AdamW, bitsandbytes AdamW8bit): a step pre-hook that raises on a
    non-finite gradient, or drops every gradient (so the step updates nothing) and counts `skipped_steps`; `agree`
    as in `check_finite` (sharded parameters)."""
    check_policy(policy)
    optimizer.skipped_steps = 0
    if policy == "off":
        return

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        bad = check_finite(params, names, agree=agree)
        if bad is None:
            return
        if policy == "raise":
            raise NonFiniteGradientError(nonfinite_message(bad, None))
        opt.skipped_steps += 1
        for p in params:
            p.grad = None

    optimizer.register_step_pre_hook(hook)
