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


def nonfinite_message(where: str, step: int | None) -> str:
    at = f" at step {step}" if step is not None else ""
    return (f"non-finite gradient (NaN/inf) in {where}{at}; no weight or optimizer state was changed — lower the "
            f"learning rate, check the data/loss scaling, or pass nonfinite='skip' to skip such steps")


def install_nonfinite_guard(optimizer: torch.optim.Optimizer, policy: str, names: dict[int, str]) -> None:
    """For optimizers we don't own (torch AdamW, bitsandbytes AdamW8bit): a step pre-hook that raises on a
    non-finite gradient, or drops every gradient (so the step updates nothing) and counts `skipped_steps`."""
    check_policy(policy)
    optimizer.skipped_steps = 0
    if policy == "off":
        return

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        bad = check_finite(params, names)
        if bad is None:
            return
        if policy == "raise":
            raise NonFiniteGradientError(nonfinite_message(bad, None))
        opt.skipped_steps += 1
        for p in params:
            p.grad = None

    optimizer.register_step_pre_hook(hook)
