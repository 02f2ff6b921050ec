"""Where a weight lives under FSDP2: the per-weight context the optimizer hands a rule (`ShardContext`), the
validation of a wrapped model's parameters, and the optimizer-wide agreements (non-finite gradients, norms).

FSDP2 (`fully_shard`) makes every parameter a DTensor split on one dim over the ranks of its shard group with
torch.chunk (⌈size/W⌉ per rank, the last ranks shorter or empty); its gradient, after the reduce-scatter, has the
same placement. The optimizer works on the local shards (`to_local()`: FSDP2's own storage, so in-place updates
persist and the next forward gathers them) and calls collectives only where a rule needs more than its shard — the
operations `subprof.methods.rule.LocalContext` runs locally for one process and DDP:

- projection: local when the weight is cut on its long side ("aligned", the declared layout `MethodSpec.weight_shard`:
  R, its moments and the update are cut like the weight); cut on P's side ("crossed", e.g. FSDP2's default Shard(0)
  for m < n), R = Σ_ranks P_localᵀ G_local is one all-reduce of R, and R's moments are whole on every rank;
- sums over the long side (‖G‖², G(GᵀP), SUMO's Gram, recovery norms): one all-reduce each, results bitwise equal on
  every rank (every rank receives the same sum);
- work on the whole gradient (SVD refreshes): gathered to the weight's owner rank (its position mod W), computed
  there, the result broadcast — the memory of one whole gradient and one SVD on one rank at a time;
- random draws: from the same generator state on every rank (nothing sent).
What each method sends is declared in `subprof.methods.spec` (`MethodSpec.comms`); /work/notes/dist_optim.md has the
measurements behind every choice. DDP needs none of this: after its all-reduce every rank holds the whole, equal
gradient, so every weight gets `LOCAL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from subprof.errors import SubprofError
from subprof.methods.rule import LOCAL, right_side


def chunk_bounds(size: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s piece of `size` under torch.chunk (FSDP2's and DTensor's Shard split)."""
    chunk = -(-size // world) if size else 0
    start = min(rank * chunk, size)
    return start, min(start + chunk, size)


def local(t: Any) -> Any:
    """The local shard of a DTensor (FSDP2's storage itself), or `t`."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


@dataclass(frozen=True, eq=False, slots=True)
class ShardContext:
    """One weight cut on `dim` over the `world` ranks of `group` (this process is `rank` there); `owner` is the group
    rank that does the weight's whole-gradient work. `mesh` and `placements` are the parameter's own (for wrapping
    states as DTensors in checkpoints)."""

    global_shape: tuple[int, ...]
    dim: int
    rank: int
    world: int
    group: Any
    owner: int
    mesh: Any
    placements: tuple
    sharded = True

    # --- geometry -----------------------------------------------------------------------------------------------
    def shape(self, t: Any) -> tuple[int, ...]:
        """The whole weight's shape, whatever shard (or R of a shard) `t` is."""
        return self.global_shape

    @property
    def crossed(self) -> bool:
        """Cut on P's side: the columns when m ≥ n (P is n×r), the rows when m < n."""
        return len(self.global_shape) == 2 and self.dim == (1 if right_side(self.global_shape) else 0)

    def bounds(self) -> tuple[int, int]:
        return chunk_bounds(self.global_shape[self.dim], self.world, self.rank)

    def _p_rows(self, p: torch.Tensor) -> torch.Tensor:
        """The rows of P (d×r) that meet this rank's part of a crossed weight."""
        a, b = self.bounds()
        return p[a:b]

    # --- projection ---------------------------------------------------------------------------------------------
    def project(self, grad: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """R: this rank's part (aligned), or the whole R summed over the ranks (crossed: one all-reduce of R)."""
        right = right_side(self.global_shape)
        if not self.crossed:
            return grad @ p if right else p.T @ grad
        rows = self._p_rows(p)
        return self.sum_((grad @ rows if right else rows.T @ grad).contiguous())

    def project_back(self, low_rank: torch.Tensor, p: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """This rank's shard of N·Pᵀ or P·N (crossed: N is whole, P's rows of this rank)."""
        rows = self._p_rows(p) if self.crossed else p
        return low_rank @ rows.T if right_side(self.global_shape) else rows @ low_rank

    # --- sums over ranks ----------------------------------------------------------------------------------------
    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place over the shard group."""
        dist.all_reduce(t, group=self.group)
        return t

    def norm(self, t: torch.Tensor) -> torch.Tensor:
        """‖T‖_F of a weight-sized tensor from this rank's shard (0-d fp32): one all-reduce of one fp32 value."""
        sq = torch.linalg.vector_norm(t, dtype=torch.float32).square().reshape(1)
        return self.sum_(sq).sqrt()[0]

    def covariance_product(self, g: torch.Tensor, p: torch.Tensor,
                           gtp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, ‖G‖²) with C = g(gᵀP) (d×r fp32) for the oriented gradient g (d×N) of which this rank holds a part.
        Aligned (g cut along N): one all-reduce of d·r + 1 fp32 values; `gtp`, this rank's g_lᵀP when already
        computed (its R), saves a GEMM. Crossed (g cut along d): gᵀP = Σ g_lᵀP_l is one all-reduce of N·r + 1, then
        the rows g_l(gᵀP) are all-gathered (d·r)."""
        sq = torch.linalg.vector_norm(g, dtype=torch.float32).square().reshape(1)
        if not self.crossed:
            c = (g @ (g.T @ p.to(g.dtype) if gtp is None else gtp)).float()
            buf = self.sum_(torch.cat([c.reshape(-1), sq]))
            return buf[:-1].view_as(c), buf[-1]
        gtp = (g.T @ self._p_rows(p).to(g.dtype)).float()
        buf = self.sum_(torch.cat([gtp.reshape(-1), sq]))
        gtp, total = buf[:-1].view_as(gtp), buf[-1]
        rows = (g @ gtp.to(g.dtype)).float()
        return self._all_gather_rows(rows, p.shape[0]), total

    def _all_gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        """Every rank's rows (torch.chunk pieces of `total`, padded to equal size for the collective), in order."""
        chunk = -(-total // self.world)
        padded = rows.new_zeros((chunk,) + tuple(rows.shape[1:]))
        padded[:rows.shape[0]] = rows
        out = rows.new_empty((chunk * self.world,) + tuple(rows.shape[1:]))
        dist.all_gather_into_tensor(out, padded, group=self.group)
        return out[:total]

    # --- the whole gradient at its owner ----------------------------------------------------------------------
    def whole(self, grad: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor],
              shape: tuple[int, ...]) -> torch.Tensor:
        """fn(G) of the whole gradient: G gathered to the owner rank (one gather of m·n values), fn run there, its
        `shape`-sized result (G's dtype) broadcast to every rank — the same bits everywhere."""
        owner = dist.get_global_rank(self.group, self.owner)
        full = self._gather(grad, owner)
        out = fn(full).contiguous() if full is not None else grad.new_empty(shape)
        dist.broadcast(out, src=owner, group=self.group)
        return out

    def _gather(self, grad: torch.Tensor, owner: int) -> torch.Tensor | None:
        """The whole gradient on the owner (padded torch.chunk pieces, unpadded there), None elsewhere."""
        size = self.global_shape[self.dim]
        chunk = -(-size // self.world)
        piece = grad if self.dim == 0 else grad.T
        padded = piece.new_zeros((chunk,) + tuple(piece.shape[1:]))
        padded[:piece.shape[0]] = piece
        pieces = [torch.empty_like(padded) for _ in range(self.world)] if self.rank == self.owner else None
        dist.gather(padded, pieces, dst=owner, group=self.group)
        if pieces is None:
            return None
        full = torch.cat(pieces)[:size]
        return full if self.dim == 0 else full.T.contiguous()


def context_for(p: Any, name: str, position: int) -> Any:
    """`LOCAL` for a plain tensor; for an FSDP2 parameter (a DTensor cut once, on dim 0 or 1, over one mesh dim
    and replicated over any other — FSDP2's and HSDP's layouts) its `ShardContext`, the owner its position mod the
    group size. Any other layout is one clear error naming the parameter."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(p, DTensor):
        return LOCAL
    shards = [(i, pl) for i, pl in enumerate(p.placements) if isinstance(pl, Shard)]
    others = [pl for pl in p.placements if not isinstance(pl, (Shard, Replicate))]
    if len(shards) != 1 or others:
        raise SubprofError(f"{name}: placements {tuple(p.placements)} — the optimizer steps parameters sharded "
                           f"once, as fully_shard (FSDP2) or HSDP make them (one Shard, the rest Replicate)")
    mesh_dim, placement = shards[0]
    if placement.dim not in (0, 1) or placement.dim >= p.dim():
        raise SubprofError(f"{name}: sharded on dim {placement.dim}; the optimizer needs dim 0 or 1")
    world = p.device_mesh.size(mesh_dim)
    if placement.dim == 1 and p.shape[1] % world:
        raise SubprofError(f"{name}: {p.shape[1]} columns do not split evenly over {world} ranks (Shard(1) must; "
                           f"FSDP2 refuses it too): shard it on dim 0, or use a world size that divides "
                           f"{p.shape[1]}")
    return ShardContext(global_shape=tuple(p.shape), dim=placement.dim, rank=p.device_mesh.get_local_rank(mesh_dim),
                        world=world, group=p.device_mesh.get_group(mesh_dim), owner=position % world,
                        mesh=p.device_mesh, placements=tuple(p.placements))


def check_parameters(named: dict[str, Any]) -> bool:
    """Whether the parameters are FSDP2-sharded (DTensors); mixed sharded and plain trainable parameters, or
    DTensors on different meshes, are one error naming a parameter of each kind. FSDP1's flat parameters too."""
    from torch.distributed.tensor import DTensor

    sharded = {n: p for n, p in named.items() if isinstance(p, DTensor)}
    plain = [n for n in named if n not in sharded]
    flat = [n for n in named if "_flat_param" in n or "_fsdp_wrapped_module" in n]
    if flat:
        raise SubprofError(f"{flat[0]}: FullyShardedDataParallel (FSDP1) flattens parameters; wrap the model with "
                           f"torch.distributed.fsdp.fully_shard (FSDP2) instead")
    if sharded and plain:
        raise SubprofError(f"{plain[0]} is a plain tensor while {next(iter(sharded))} is sharded (an FSDP2 DTensor): "
                           f"its gradient would never be reduced across ranks — apply fully_shard to the module that "
                           f"holds it (usually fully_shard(model) on the root after the layers)")
    meshes = {p.device_mesh for p in sharded.values()}
    if len(meshes) > 1:
        raise SubprofError(f"the sharded parameters live on {len(meshes)} device meshes; the optimizer needs one")
    return bool(sharded)


def agree_first(index: int, device: Any, *, read: bool = True) -> int:
    """The smallest `index` over all ranks (one all-reduce of one int64 on the gradients' `device`: NCCL reduces
    only GPU tensors): every rank then names the same first non-finite gradient and takes the same decision,
    whichever rank's shard holds the NaN. `read=False` (a fake-tensor trace: no values) issues the collective and
    returns `index`."""
    t = torch.tensor([index], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t) if read else index


def grad_norms(grads: list[Any]) -> list[torch.Tensor]:
    """‖G‖_F of each (possibly sharded) gradient, the same on every rank, as 0-d fp32 tensors on their device (no
    host read). `float()` of a DTensor norm would return this rank's part silently (/work/notes/dist_optim.md §7):
    gradients sharded on one mesh sum their local ‖G_l‖² over the shard group in one all-reduce."""
    from torch.distributed.tensor import DTensor

    if not grads or not isinstance(grads[0], DTensor):
        return [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
    sq = torch.stack([torch.linalg.vector_norm(g.to_local(), dtype=torch.float32).square() for g in grads])
    mesh_dim = next(i for i, pl in enumerate(grads[0].placements) if pl.is_shard())
    dist.all_reduce(sq, group=grads[0].device_mesh.get_group(mesh_dim))
    return list(sq.sqrt().unbind())


def fsdp_units(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """The parameters of each FSDP2 unit (each module `fully_shard` was applied to, without those of units inside
    it): FSDP2 reduces them together and then runs their post-accumulate-grad hooks one after another."""
    from torch.distributed.fsdp import FSDPModule

    def own(module: torch.nn.Module) -> list[torch.nn.Parameter]:
        out = list(module.parameters(recurse=False))
        for child in module.children():
            if not isinstance(child, FSDPModule):
                out += own(child)
        return out

    return [own(m) for m in model.modules() if isinstance(m, FSDPModule)]


def grad_norm(grad: Any) -> torch.Tensor:
    """`grad_norms` of one gradient (a sharded one: one all-reduce of one fp32 value)."""
    return grad_norms([grad])[0]
