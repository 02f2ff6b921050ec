"""The torch side of a method: how P is refreshed, and how a gradient is projected and an update projected back.

A rule is stateless: everything it keeps lives in the optimizer's per-parameter state dict under the names its
`MethodSpec` declares (`projector`, `projector_exp_avg`, …), so `Optimizer.state_dict()` round-trips it and the
memory model's declaration can be checked against `optimizer.state` byte for byte. Randomized rules keep their
generator state in `state["rng_state"]` (a uint8 tensor, not counted as memory).

Convention (GaLore "std"): for W of shape (m, n), if m ≥ n then P is n×r and R = G·P (m×r), else P is m×r and
R = Pᵀ·G (r×n). P is stored in the gradient's dtype; the rules compute in fp32 where precision matters.
"""

from __future__ import annotations

from typing import Any

from subprof.lazy import torch
from subprof.methods.base import MethodSpec

Tensor = Any  # torch.Tensor, without importing torch at module import


def right_side(shape: tuple[int, ...]) -> bool:
    """True when P multiplies G from the right (m ≥ n)."""
    return shape[0] >= shape[1]


class ProjectionRule:
    """Base class. Subclasses set `spec` and implement `update_projection`; most keep the default geometry."""

    spec: MethodSpec

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        if update_gap <= 0:
            raise ValueError(f"update_gap must be positive, got {update_gap}")
        self.rank = rank
        self.update_gap = update_gap
        self.options = options

    # --- geometry -------------------------------------------------------------------------------------------
    def effective_rank(self, shape: tuple[int, ...]) -> int:
        return min(self.rank, min(shape))

    def project(self, state: dict, grad: Tensor) -> Tensor:
        """R = G·P (m ≥ n) or Pᵀ·G (m < n), in G's dtype."""
        p = state["projector"]
        return grad @ p if right_side(grad.shape) else p.T @ grad

    def project_back(self, state: dict, low_rank: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Full-size update of a weight of `shape` from a low-rank one: N·Pᵀ (m ≥ n) or P·N (m < n)."""
        p = state["projector"]
        return low_rank @ p.T if right_side(shape) else p @ low_rank

    # --- refresh ----------------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether P is refreshed at this 0-based step (step 0 always)."""
        return self.spec.refresh_every_step or step % self.update_gap == 0

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        """Create (step 0) or refresh `state["projector"]` (and any projector states) from this step's gradient.
        Called by the optimizer every step before `project`; the rule decides whether anything is due."""
        raise NotImplementedError


def orthonormal_columns(a: Tensor) -> Tensor:
    """Q of a thin QR, with signs fixed so that diag(R) ≥ 0 (deterministic across LAPACK builds)."""
    q, r = torch.linalg.qr(a, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return q * signs


def top_singular_basis(grad: Tensor, rank: int) -> Tensor:
    """GaLore's projector: the top-`rank` singular vectors of the projected side of G, from
    `torch.linalg.svd(G.float(), full_matrices=False)`, cast back to G's dtype (galore-torch 1.0, `std`)."""
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    basis = vh[:rank, :].T if right_side(grad.shape) else u[:, :rank]
    return basis.to(grad.dtype).contiguous()
