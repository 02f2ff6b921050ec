"""Checkpoints through torch.distributed.checkpoint (DCP) that resume on any number of ranks:
`save_checkpoint(path, model, optimizer)` and `load_checkpoint(path, model, optimizer)`.

One format for one process, DDP and FSDP2, written by every rank together (each its own shards, replicated values
once) and read back on any world size, DCP resharding what is sharded:
- "model": torch's `get_model_state_dict` (DTensors under FSDP2; DDP's "module." prefix removed).
- "optimizer": one entry per (parameter name, state name). Moments cut like their weight (FSDP2's plain-Adam
  moments; a projected weight's moments along its sharded long side, `TensorSpec.shard_dim`) are DTensors of their
  whole shape; everything replicated (P, projector moments, generator states, crossed weights' moments, step
  counters, floats) is stored as it is. 8-bit moments are stored dequantised (fp32, reshardable) and as each rank's
  own codes and block maxima: their blocks of 256 follow the rank's shard, so only a rank of the same layout
  (`@rank/ranks`) takes its codes back exactly; on another layout the values are quantised again in the loading
  rank's blocks (not bit for bit: the signed map's largest code is not 1.0, so a block's maximum moves).
- "extra": counters outside `optimizer.state` (skipped steps, per-layer pending counts and lagged clipping norm)
  and each param group's hyper-parameters (lr, as a scheduler left it).
Why not `get_optimizer_state_dict`: it fills an empty optimizer by a fake zero-lr step, whose state lacks entries
that only later steps create (OSD's pending projector step), and it drops optimizer-level counters
(/work/notes/dist_optim.md §9). Here the loading side reads the checkpoint's own list of entries (its metadata).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from subprof.errors import SubprofError
from subprof.methods import get_method
from subprof.methods.moments import read_state_moment, write_state_moment
from subprof.methods.spec import Dtype
from subprof.optim.distributed import chunk_bounds, local
from subprof.optim.layerwise import LayerwiseOptimizer
from subprof.optim.subspace import SubspaceAdamW

SEP = "::"  # between a parameter's name and a state name in an "optimizer" key


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write model and optimizer to the folder `path` (every rank calls it; module docstring)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = {"model": get_model_state_dict(model), "optimizer": _entries(model, optimizer),
             "extra": _extra(model, optimizer)}
    dcp.save(state, checkpoint_id=str(path), no_dist=not _distributed())


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read a checkpoint written by `save_checkpoint` on any number of ranks into `model` and a freshly built
    `optimizer` of the same method and options (every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    if not Path(path, ".metadata").is_file():
        raise SubprofError(f"{path}: not a checkpoint folder (no .metadata; write one with save_checkpoint)")
    meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    params = _named(model, optimizer)
    target: dict[str, Any] = {}
    for key, item in meta.items():
        if not key.startswith("optimizer."):
            continue
        name, entry = key[len("optimizer."):].rsplit(SEP, 1)
        if "@" in entry and not entry.endswith(_place(params.get(name))):
            continue  # another rank's 8-bit codes (or this rank's of another layout): requantised from the values
        if name not in params:
            raise SubprofError(f"{path}: the checkpoint holds optimizer state of {name!r}, which this model's "
                               f"optimizer does not train")
        if isinstance(item, TensorStorageMetadata):
            target[name + SEP + entry] = _empty(params[name], optimizer, entry, tuple(item.size),
                                                item.properties.dtype)
        else:
            target[name + SEP + entry] = None
    state = {"model": get_model_state_dict(model), "optimizer": target, "extra": _extra(model, optimizer)}
    dcp.load(state, checkpoint_id=str(path), no_dist=not _distributed())
    set_model_state_dict(model, state["model"])
    _restore(params, optimizer, state["optimizer"])
    _restore_extra(model, optimizer, state["extra"])


# ------------------------------------------------------------------------------------------------ which optimizer


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return optimizer.inner if isinstance(optimizer, LayerwiseOptimizer) else optimizer


def _named(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.nn.Parameter]:
    """The optimizer's parameters by their name in the model (DDP's "module." prefix removed)."""
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    return {n.removeprefix("module."): p for n, p in model.named_parameters() if id(p) in ids}


def _group(optimizer: torch.optim.Optimizer, p: torch.nn.Parameter) -> dict:
    return next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))


def _sharded_dim(optimizer: torch.optim.Optimizer, p: Any, entry: str, shape: tuple[int, ...]) -> int | None:
    """The dim of state `entry` (of `shape`) that is cut like parameter `p`, or None when it is whole on every rank."""
    from torch.distributed.tensor import DTensor

    if not isinstance(p, DTensor):
        return None
    inner = _inner(optimizer)
    if not isinstance(inner, SubspaceAdamW):  # torch's AdamW: moments of the parameter's shape, cut like it
        return inner_dim(p) if shape == tuple(p.shape) else None
    group = _group(inner, p)
    if group.get("method") is None:
        if group.get("base", "adamw") == "adamw":
            return inner_dim(p) if entry in ("exp_avg", "exp_avg_sq") else None
        m, n = (tuple(p.shape) + (1,))[:2]
        spec = next((t for t in _plain_states(group, len(p.shape)) if t.name == entry), None)
        return None if spec is None else spec.shard_dim(m, n, 0, inner_dim(p))
    ctx = inner.context(p)
    m, n = ctx.global_shape
    r = min(group["rank"], m, n)
    spec = next((t for t in _group_layout(group).states if t.name == entry), None)
    return None if spec is None else spec.shard_dim(m, n, r, ctx.dim)


def _group_layout(group: dict) -> Any:
    """A projected group's declared tensors, its base optimizer included (kept apart from the rule's options)."""
    return get_method(group["method"]).layout_for({**(group.get("method_options") or {}),
                                                   "base": group.get("base", "adamw")})


def _plain_states(group: dict, ndim: int) -> tuple:
    """The base's declared states of an unprojected tensor (a 1-D one as m × 1, cut along m)."""
    from subprof.methods.spec import base_moments, expand, full_shape

    if ndim >= 2:
        return expand((base_moments(full_shape),), group.get("base", "adamw"))
    return expand((base_moments(lambda m, n, r: (m,), axes=lambda m, n, r: ("m",)),), group.get("base", "adamw"))


def inner_dim(p: Any) -> int:
    return next(pl.dim for pl in p.placements if pl.is_shard())


def _is_moment(optimizer: torch.optim.Optimizer, p: Any, entry: str) -> bool:
    """Whether `entry` is a moment stored in the group's state_bits format (declared STATE dtype; plain Adam's)."""
    inner = _inner(optimizer)
    if not isinstance(inner, SubspaceAdamW):
        return False
    group = _group(inner, p)
    if group.get("method") is None:
        if group.get("base", "adamw") == "adamw":
            return entry in ("exp_avg", "exp_avg_sq")
        return any(t.name == entry and t.dtype is Dtype.STATE for t in _plain_states(group, p.dim()))
    return any(t.name == entry and t.dtype is Dtype.STATE for t in _group_layout(group).states)


# ------------------------------------------------------------------------------------------------ save side


def _entries(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, p in _named(model, optimizer).items():
        state = optimizer.state.get(p, {})
        for entry, value in state.items():
            if entry.endswith("_absmax") and entry[:-len("_absmax")] in state:
                continue  # saved with its codes
            if isinstance(value, torch.Tensor) and entry + "_absmax" in state:
                here = _place(p)  # this rank's own 8-bit codes and block maxima, for resuming on the same layout
                out[name + SEP + entry + here] = value
                out[name + SEP + entry + "_absmax" + here] = state[entry + "_absmax"]
                value = read_state_moment(state, entry)  # 8-bit codes → fp32 values, reshardable
            if isinstance(value, torch.Tensor):
                value = _dress(optimizer, p, entry, local(value))
            out[name + SEP + entry] = value
    return out


def _place(p: Any) -> str:
    """"@rank/ranks" of this process in the group `p` is sharded over ("@0/1" when whole): the suffix of the 8-bit
    codes only this rank can reuse as they are."""
    from torch.distributed.tensor import DTensor

    if not isinstance(p, DTensor):
        return "@0/1"
    mesh_dim = _mesh_dim(p)
    return f"@{p.device_mesh.get_local_rank(mesh_dim)}/{p.device_mesh.size(mesh_dim)}"


def _dress(optimizer: torch.optim.Optimizer, p: Any, entry: str, value: torch.Tensor) -> Any:
    """This rank's part of a state tensor as a DTensor of the whole shape when it is cut like `p` (a plain tensor
    would be taken as replicated and saved from one rank only)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(p, DTensor):
        return value
    whole = _whole_shape(optimizer, p, entry, tuple(value.shape))
    dim = _sharded_dim(optimizer, p, entry, whole)
    if dim is None:
        return value
    return DTensor.from_local(value.contiguous(), p.device_mesh, _placements(p, dim), run_check=False,
                              shape=torch.Size(whole), stride=_strides(whole))


def _whole_shape(optimizer: torch.optim.Optimizer, p: Any, entry: str, local_shape: tuple[int, ...]) -> tuple:
    """The whole shape of a state tensor from its local one: the declared shape for a projected weight's states,
    the parameter's for plain moments (local shapes differ per rank when the split is uneven)."""
    inner = _inner(optimizer)
    if isinstance(inner, SubspaceAdamW) and _group(inner, p).get("method") is not None:
        group = _group(inner, p)
        m, n = tuple(p.shape)
        r = min(group["rank"], m, n)
        spec = next((t for t in _group_layout(group).states if t.name == entry), None)
        return tuple(spec.shape(m, n, r)) if spec is not None else local_shape
    if isinstance(inner, SubspaceAdamW) and _group(inner, p).get("base", "adamw") != "adamw":
        m, n = (tuple(p.shape) + (1,))[:2]  # a base's plain states (Adafactor's factors) from their declaration
        spec = next((t for t in _plain_states(_group(inner, p), p.dim()) if t.name == entry), None)
        return tuple(spec.shape(m, n, 0)) if spec is not None else local_shape
    return tuple(p.shape) if len(local_shape) == p.dim() else local_shape


def _placements(p: Any, dim: int) -> tuple:
    from torch.distributed.tensor import Shard

    return tuple(Shard(dim) if pl.is_shard() else pl for pl in p.placements)


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))


def _extra(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    inner = _inner(optimizer)
    out: dict[str, Any] = {"skipped_steps": int(getattr(inner, "skipped_steps", 0)),
                           "groups": [{k: v for k, v in g.items() if k in ("lr", "initial_lr")}
                                      for g in optimizer.param_groups]}
    if isinstance(optimizer, LayerwiseOptimizer):
        names = {id(p): n for n, p in _named(model, optimizer).items()}
        out["layerwise"] = {"pending": {names[id(p)]: optimizer.pending.get(id(p), 0) for p in optimizer._params},
                            "last_grad_norm": optimizer.last_grad_norm, "skipped_updates": optimizer.skipped_updates,
                            "sq_norm": float(optimizer._sq_norm)}
    return out


# ------------------------------------------------------------------------------------------------ load side


def _empty(p: Any, optimizer: torch.optim.Optimizer, entry: str, shape: tuple[int, ...], dtype: torch.dtype) -> Any:
    """A tensor for DCP to load `entry` into: this rank's part of it as a DTensor where the loading layout cuts it,
    else the whole tensor."""
    from torch.distributed.tensor import DTensor

    dim = _sharded_dim(optimizer, p, entry, shape)
    if dim is None:
        return torch.empty(shape, dtype=dtype, device="cpu" if entry == "rng_state" else _device(p))
    mesh_dim = _mesh_dim(p)
    a, b = chunk_bounds(shape[dim], p.device_mesh.size(mesh_dim), p.device_mesh.get_local_rank(mesh_dim))
    local_shape = list(shape)
    local_shape[dim] = b - a
    return DTensor.from_local(torch.empty(local_shape, dtype=dtype, device=_device(p)), p.device_mesh,
                              _placements(p, dim), run_check=False, shape=torch.Size(shape), stride=_strides(shape))


def _mesh_dim(p: Any) -> int:
    return next(i for i, pl in enumerate(p.placements) if pl.is_shard())


def _device(p: Any) -> torch.device:
    return local(p).device


def _restore(params: dict[str, Any], optimizer: torch.optim.Optimizer, loaded: dict[str, Any]) -> None:
    """The loaded entries into `optimizer.state` as this rank keeps them: local tensors, moments in the group's
    state_bits format (8-bit: quantised in this rank's blocks)."""
    inner = _inner(optimizer)
    for key, value in loaded.items():
        name, entry = key.rsplit(SEP, 1)
        if "@" in entry:
            continue
        p = params[name]
        state = inner.state[p]
        if isinstance(value, torch.Tensor):
            value = local(value)
            if _is_moment(optimizer, p, entry):
                write_state_moment(state, entry, value.contiguous(), _group(inner, p)["state_bits"])
                codes = loaded.get(key + _place(p))
                if isinstance(state[entry], torch.Tensor) and state[entry].dtype == torch.uint8 and \
                        codes is not None and codes.shape == state[entry].shape:
                    state[entry] = codes  # the same blocks as when saved: the saved codes exactly
                    state[entry + "_absmax"] = loaded[key + "_absmax" + _place(p)]
                continue
            value = _redress(inner, p, value)
        state[entry] = value


def _redress(inner: torch.optim.Optimizer, p: Any, value: torch.Tensor) -> Any:
    """torch's AdamW keeps DTensor moments for DTensor parameters: dress its local part again."""
    from torch.distributed.tensor import DTensor

    if isinstance(inner, SubspaceAdamW) or not isinstance(p, DTensor) or value.dim() != p.dim():
        return value
    return DTensor.from_local(value, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())


def _restore_extra(model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> None:
    inner = _inner(optimizer)
    if hasattr(inner, "skipped_steps"):
        inner.skipped_steps = int(extra["skipped_steps"])
    for group, saved in zip(optimizer.param_groups, extra["groups"]):
        group.update(saved)
    if isinstance(optimizer, LayerwiseOptimizer) and "layerwise" in extra:
        saved = extra["layerwise"]
        names = {id(p): n for n, p in _named(model, optimizer).items()}
        optimizer.pending = {id(p): int(saved["pending"][names[id(p)]]) for p in optimizer._params
                             if saved["pending"].get(names[id(p)])}
        optimizer.last_grad_norm = saved["last_grad_norm"]
        optimizer.skipped_updates = int(saved["skipped_updates"])
        optimizer._sq_norm = float(saved["sq_norm"])
