"""Counting what goes through the process group: `with CollectiveCounter() as c: opt.step()` records every c10d
collective dispatched inside (torch.distributed's calls, FSDP2's and DTensor's own all dispatch `torch.ops.c10d.*`)
with its payload bytes, so a test can hold the optimizer's traffic to what a method declares
(`MethodSpec.comm_bytes`; /work/notes/dist_optim.md §12).

Payload, as `methods/spec.py` counts it: the whole tensor a collective moves — the all-reduced or broadcast tensor,
the all-gather's output, the gathered stack (on every rank, the root's receive buffer), the reduce-scatter's input.
Collectives DTensor issues inside its own ops (e.g. `clip_grad_norm_`'s norm all-reduce) are not seen by a dispatch
mode; the optimizer issues none of those.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# c10d op → the collective's name in `methods.spec.Collective`
OPS = {"allreduce_": "all_reduce", "broadcast_": "broadcast", "gather_": "gather", "_allgather_base_": "all_gather",
       "allgather_": "all_gather", "allgather_into_tensor_coalesced_": "all_gather",
       "_reduce_scatter_base_": "reduce_scatter", "reduce_scatter_": "reduce_scatter",
       "reduce_scatter_tensor_coalesced_": "reduce_scatter"}


def _bytes(x: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor))


def _group_size(group: Any) -> int:
    """The size of the process group a c10d op was dispatched with (a TorchScript object wrapping it)."""
    from torch._C._distributed_c10d import ProcessGroup

    return ProcessGroup.unbox(group).size()


class CollectiveCounter(TorchDispatchMode):
    """Every collective dispatched while active: `calls` [(op, payload bytes)], `by_op()` {op: bytes}."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._opname if func.namespace == "c10d" else None
        if name in OPS:
            self.calls.append((OPS[name], self._payload(name, args)))
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _payload(name: str, args: tuple) -> int:
        if name in ("gather_", "allgather_"):  # outputs: W tensors on the root (gather: empty elsewhere)
            return _bytes(args[0]) or _bytes(args[1]) * _group_size(args[2])
        if name in ("_reduce_scatter_base_", "reduce_scatter_", "reduce_scatter_tensor_coalesced_"):
            return _bytes(args[1])
        return _bytes(args[0])

    def by_op(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for op, nbytes in self.calls:
            out[op] += nbytes
        return dict(out)
