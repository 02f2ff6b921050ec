"""`BaseSpec`: what a base optimizer declares, as pure data (the registry is `subprof.methods.bases`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from subprof.methods.spec import AxesRule, CommSpec, ShapeRule, TensorSpec


@dataclass(frozen=True, kw_only=True, slots=True)
class BaseSpec:
    """One base optimizer, as pure data.

    - `moments(shape, axes)`: its state tensors for a tensor of that shape rule (and axes rule: which dims follow the
      weight's sharded side), in the names `optimizer.state` uses;
    - `step_workspace(shape, axes)`: what a projected step allocates beyond the method's declared step workspace
      (which counts Adam's R-sized direction and the m×n back-projection);
    - `plain_temporary_bytes(numel, state_bits, param_bytes)`: the temporaries of one unprojected tensor's step;
    - `comms`: the collectives a projected step needs per sharded weight beyond the method's own; `plain_comms`
      those of a full-rank weight (FSDP2's Shard(0));
    - `state_bits_supported`, the 8-bit form where one exists; `default_lr` with its source;
    - `update`: the torch class (`subprof.methods.bases.*`), None for AdamW (the optimizer's built-in Adam);
    - `moment_decay`: the per-step decay of its slowest moment — what a subspace refresh leaves in the old
      coordinates until it decays (the quality model's refresh cost, `subprof.plan.quality`)."""

    name: str
    title: str
    paper: str
    moments: Callable[[ShapeRule, AxesRule], tuple[TensorSpec, ...]]
    default_lr: float
    lr_source: str
    state_bits_supported: tuple[int, ...] = (32, 16, 8)
    step_workspace: Callable[[ShapeRule, AxesRule], tuple[TensorSpec, ...]] = field(default=lambda s, a: ())
    plain_temporary_bytes: Callable[[int, int, int], int] | None = None
    comms: tuple[CommSpec, ...] = ()
    plain_comms: tuple[CommSpec, ...] = ()  # the same for a full-rank weight on Shard(0)
    update: type | None = None
    moment_decay: float = 0.999
