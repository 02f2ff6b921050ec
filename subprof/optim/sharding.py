"""Wrapping a LLaMA-shaped model for data-parallel training the way subprof plans it: FSDP2 (`fully_shard`) on every
decoder layer and then on the root, each projected weight on the side its method declares
(`MethodSpec.weight_shard`: the long side, so projecting is local), or DDP. The trace (`bench --backend trace
--world-size N`), the real multi-GPU bench, `burst --nproc N` and the tests all wrap with these functions, so what is
measured is what is planned.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from subprof.methods import get_method
from subprof.optim.build import split_parameters


def declared_placement(model: torch.nn.Module, method: str, ranks: int) -> Callable[[torch.nn.Parameter], Any]:
    """`shard_placement_fn` for `fully_shard`: Shard(dim) of each projected weight as `method` declares it for a
    shard group of `ranks` (Shard(1) for m < n when `ranks` divides n), Shard(0) for everything else."""
    from torch.distributed.tensor import Shard

    spec = get_method(method)
    projected, _ = split_parameters(model)
    sides = {id(p): spec.weight_shard(p.shape[0], p.shape[1], ranks).dim for p in projected.values()}
    return lambda p: Shard(sides.get(id(p), 0))


def shard_model(model: torch.nn.Module, method: str, mesh: Any, *, reshard_after_forward: bool = True,
                mixed: bool = False) -> torch.nn.Module:
    """`fully_shard` on every decoder layer (`model.model.layers`), then on the root (which keeps torch's default
    for the root: not resharded between forward and backward, unless `reshard_after_forward` is False for all);
    projected weights placed by `declared_placement` over the mesh's shard dim (the last); `mixed`: bf16 compute
    over fp32 shards with fp32 gradient reduction (`MixedPrecisionPolicy`). Returns the model (wrapped in place)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
                          "shard_placement_fn": declared_placement(model, method, mesh.size(mesh.ndim - 1))}
    if mixed:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, **kw)
    fully_shard(model, **{**kw, "reshard_after_forward": None if reshard_after_forward else False})
    return model


def wrap_model(model: torch.nn.Module, method: str, strategy: str, *, device: str = "cpu") -> torch.nn.Module:
    """The model as one rank of a data-parallel job in the initialised default process group: "fsdp" (a 1-D mesh
    over every rank, `shard_model`) or "ddp" (`DistributedDataParallel`)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if strategy == "ddp":
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    return shard_model(model, method, mesh)
