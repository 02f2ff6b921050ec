"""Per-layer updates: each weight is stepped in its post-accumulate-grad hook, so only the gradients of weights whose
backward has finished but whose update has not yet run are alive — one layer's at a time (GaLore §4.3, "per-layer
weight updates"). Unlike the reference (galore-torch's README recipe and transformers' `LayerWiseDummyOptimizer`,
which step at every backward), this one:

- respects gradient accumulation: a weight is stepped in the hook of its `accumulation_steps`-th backward since its
  last update; earlier micro-batches only accumulate into `.grad` (torch's usual `+=`). So the gradients of all
  weights stay alive during accumulation — as with any optimizer — and per-layer updates save their memory only in
  the last micro-batch's backward (and with `accumulation_steps=1`, in every backward). `step()` then flushes
  whatever is still pending (a partial window at the end of an epoch, or a weight whose hook did not fire), so a
  loop that calls `step()` once per window behaves like the global optimizer. `zero_grad()` drops partial
  accumulations and resets the counters.
- supports global-norm clipping, lagged by one step: exact clipping needs every gradient before the first update,
  which is what per-layer updates give up. The hooks accumulate Σ‖gᵢ‖² over the weights they step; at `step()` the
  global norm of that step is known (`last_grad_norm`), and the next step scales every gradient by
  min(1, max_grad_norm / last_grad_norm) before its update. The first step is not clipped. For exact clipping use
  the global optimizer (`layerwise=False`) with `torch.nn.utils.clip_grad_norm_`.
- checks each gradient for NaN/inf in its hook (one host sync per weight): "raise" raises before that weight's
  update; "skip" drops that weight's gradient and leaves its weight and state untouched. Weights stepped earlier in
  the same backward stay updated — per-layer updates cannot be rolled back; `skipped_updates` counts the skips.

Data-parallel (`build_optimizer` passes what it found in the model):
- FSDP2: FSDP2 itself runs the hooks on the sharded parameters, after each unit's reduce-scatter. The parameters of
  one unit are stepped together once its last hook fired, after one all-reduce of their local ‖G‖² over the shard
  group, so every rank decides alike on NaN/inf and clips by the same global norm (a DTensor norm's `float()` would
  be this rank's part only). Accumulating with `set_requires_gradient_sync(False)` fires the hooks only on the synced
  backward: keep `accumulation_steps=1` then.
- DDP: its post-accumulate-grad hooks see the rank's unreduced gradient, so the updates run in DDP's communication
  hook instead: each bucket is all-reduced, averaged, and its weights stepped from it. Accumulate under
  `model.no_sync()` with `accumulation_steps=1`.

The object is a `torch.optim.Optimizer` sharing the inner optimizer's `param_groups` and `state` (so LR schedulers
and `transformers.Trainer(optimizers=(opt, scheduler))` work); with Trainer, pass the same `accumulation_steps` as
its `gradient_accumulation_steps`, and Trainer's own clipping sees no gradients (they are consumed in the hooks):
set `max_grad_norm` here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from subprof.errors import SubprofError
from subprof.optim.distributed import grad_norm, grad_norms
from subprof.optim.nonfinite import NonFiniteGradientError, check_policy, nonfinite_message, tracing
from subprof.optim.subspace import SubspaceAdamW


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Steps `inner`'s parameters one at a time in post-accumulate-grad hooks (module docstring)."""

    def __init__(self, inner: torch.optim.Optimizer, *, accumulation_steps: int = 1,
                 max_grad_norm: float | None = None, nonfinite: str = "raise",
                 param_names: dict[int, str] | None = None, ddp: Any = None,
                 units: list[list[torch.Tensor]] | None = None) -> None:
        if accumulation_steps < 1:
            raise SubprofError(f"accumulation_steps must be at least 1, got {accumulation_steps}")
        if ddp is not None and accumulation_steps != 1:
            raise SubprofError("per-layer updates under DDP step in its communication hook, which runs once per "
                               "synchronised backward: accumulate under model.no_sync() and keep "
                               "accumulation_steps=1")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise SubprofError(f"max_grad_norm must be positive, got {max_grad_norm}")
        check_policy(nonfinite)
        params = [p for g in inner.param_groups for p in g["params"]]
        super().__init__(params, dict(inner.defaults))
        self.inner = inner
        self.param_groups = inner.param_groups  # shared: schedulers that set group["lr"] reach the inner optimizer
        self.state = inner.state
        self.accumulation_steps = accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.nonfinite = nonfinite
        self.param_names = dict(param_names or {})
        self.pending: dict[int, int] = {}  # id(param) → backward passes accumulated since its last update
        self.skipped_updates = 0
        self._last_norm: torch.Tensor | None = None  # the previous step's global norm, on the device (0-d)
        self._sq_norm: torch.Tensor | float = 0.0  # Σ‖g‖² of this step so far, on the device once a weight stepped
        self._params = params
        self._groups = {id(p): g for g in inner.param_groups for p in g["params"]}
        self._stepped: set[int] = set()  # DDP: weights stepped in the communication hook since the last step()
        # FSDP2: the parameters of each unit (`fully_shard` module) reach their hooks together, after the unit's
        # reduce-scatter; they are stepped together, with one all-reduce of their ‖G‖² (`_flush`)
        self._unit_of = {id(p): i for i, unit in enumerate(units or ()) for p in unit}
        self._unit_size = [sum(q.requires_grad for q in unit) for unit in units or ()]
        self._queue: list[torch.Tensor] = []
        if ddp is not None:  # its post-accumulate-grad hooks would see this rank's unreduced gradient
            self._handles = []
            ddp.register_comm_hook(ddp.process_group, self._on_bucket)
        else:
            self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params if p.requires_grad]

    # --- hooks ---------------------------------------------------------------------------------------------------
    def _on_grad(self, p: torch.Tensor) -> None:
        count = self.pending.get(id(p), 0) + 1
        self.pending[id(p)] = count
        if count < self.accumulation_steps:
            return
        unit = self._unit_of.get(id(p))
        if unit is None:
            self._update(p, None if tracing() else grad_norm(p.grad))
            return
        if self._queue and self._unit_of[id(self._queue[0])] != unit:
            self._flush()
        self._queue.append(p)
        if len(self._queue) == self._unit_size[unit]:
            self._flush()

    def _flush(self) -> None:
        """Step the queued parameters of one FSDP2 unit: their ‖G‖² summed over the ranks in one all-reduce, so
        every rank takes the same decision on each (`distributed.grad_norms`)."""
        queued, self._queue = self._queue, []
        with_grad = [p for p in queued if p.grad is not None]
        norms = [None] * len(with_grad) if tracing() else grad_norms([p.grad for p in with_grad])
        for p in queued:
            self.pending[id(p)] = 0
        for p, norm in zip(with_grad, norms):
            self._update(p, norm)

    def _on_bucket(self, group, bucket):  # no annotations: DDP checks them (a string "Any" is refused)
        """DDP's communication hook: the bucket's mean over the ranks (all-reduced synchronously — on gloo a
        future's callback would run on the communication thread while autograd goes on), then each of its weights
        stepped from its view of the reduced bucket (/work/notes/dist_optim.md §10)."""
        import torch.distributed as dist

        buf = bucket.buffer()
        dist.all_reduce(buf, group=group)
        buf.div_(dist.get_world_size(group))
        for p, g in zip(bucket.parameters(), bucket.gradients()):
            p.grad = g
            self._on_grad(p)
            self._stepped.add(id(p))
        done = torch.futures.Future()
        done.set_result(buf)
        return done

    @torch.no_grad()
    def _update(self, p: torch.Tensor, norm: torch.Tensor | None) -> None:
        """Step `p` given its gradient's norm over every rank (a 0-d fp32 tensor on the device; None under a
        fake-tensor trace: no values, so no check and no clipping)."""
        self.pending[id(p)] = 0
        if p.grad is None:
            return
        if norm is None:
            self._step_one(p)
            p.grad = None
            return
        if self.nonfinite != "off" and not bool(torch.isfinite(norm)):  # the policy's one host sync per weight
            if self.nonfinite == "raise":
                raise NonFiniteGradientError(nonfinite_message(self.param_names.get(id(p), "a parameter"),
                                                                self.state.get(p, {}).get("step")))
            self.skipped_updates += 1
            p.grad = None
            return
        self._sq_norm = self._sq_norm + norm.square()
        if self.max_grad_norm is not None and self._last_norm is not None:
            p.grad.mul_(self.clip_coefficient().to(p.grad.dtype))
        self._step_one(p)
        p.grad = None

    def clip_coefficient(self) -> torch.Tensor:
        """min(1, max_grad_norm / previous step's global norm) as a 0-d tensor on the device (no host sync); 1
        without clipping or before the first step."""
        if self.max_grad_norm is None or self._last_norm is None:
            return torch.ones(())
        return torch.clamp(self.max_grad_norm / (self._last_norm + 1e-6), max=1.0)

    @property
    def last_grad_norm(self) -> float | None:
        """The previous step's global gradient norm (reading it synchronises with the device)."""
        return None if self._last_norm is None else float(self._last_norm)

    @last_grad_norm.setter
    def last_grad_norm(self, value: float | None) -> None:  # a checkpoint's (`subprof.optim.checkpoint`)
        self._last_norm = None if value is None else torch.tensor(float(value))

    def _step_one(self, p: torch.Tensor) -> None:
        """Step the inner optimizer for `p` only. SubspaceAdamW has a per-weight entry point; any other optimizer
        (torch AdamW, bitsandbytes AdamW8bit) is stepped with its groups restricted to `p` for the call."""
        if isinstance(self.inner, SubspaceAdamW):
            self.inner.step_parameter(p, self._groups[id(p)])
            return
        saved = [g["params"] for g in self.inner.param_groups]
        try:
            for g in self.inner.param_groups:
                g["params"] = [p] if any(q is p for q in g["params"]) else []
            self.inner.step()
        finally:
            for g, params in zip(self.inner.param_groups, saved):
                g["params"] = params

    # --- the optimizer surface -------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """End of an accumulation window: update the weights still pending (their hooks already stepped the rest)
        and fix this step's global gradient norm (`last_grad_norm`), which sets the next step's clipping."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._queue:
            self._flush()
        for p in self._params:
            if id(p) in self._stepped:  # DDP wrote the reduced bucket back into .grad after the hook stepped it
                p.grad = None
            elif self.pending.get(id(p), 0) > 0 or (p.grad is not None and p.requires_grad):
                self._update(p, None if tracing() or p.grad is None else grad_norm(p.grad))
        self._stepped.clear()
        self._last_norm = torch.as_tensor(self._sq_norm, dtype=torch.float32).sqrt()
        self._sq_norm = 0.0
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params:
            p.grad = None
        self.pending.clear()
        self._stepped.clear()
        self._queue = []

    def remove_hooks(self) -> None:
        """Detach from the model (the hooks keep stepping otherwise)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(),
                "layerwise": {"pending": [self.pending.get(id(p), 0) for p in self._params],
                              "last_grad_norm": self.last_grad_norm, "skipped_updates": self.skipped_updates,
                              "sq_norm": float(self._sq_norm)}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict["inner"])
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        extra = state_dict["layerwise"]
        self.pending = {id(p): int(n) for p, n in zip(self._params, extra["pending"]) if n}
        norm = extra["last_grad_norm"]
        self._last_norm = None if norm is None else torch.tensor(float(norm))
        self.skipped_updates = int(extra["skipped_updates"])
        self._sq_norm = float(extra["sq_norm"])
