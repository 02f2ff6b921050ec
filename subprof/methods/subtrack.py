"""SubTrack-Grad (Rajabi et al. 2025, arXiv 2502.01586; code criticalml-uw/SubTrack `low_rank_projector.py`):
P initialised by GaLore's SVD at step 0, then moved every T steps along a Grassmannian geodesic by the rank-1 SVD of
the tangent of the least-squares residual.

The update, for P d×r on the side it projects and G̃ the d×n gradient seen from that side (Gᵀ when m ≥ n):
    W = PᵀG̃ (least squares, P orthonormal),  F(P) = ‖G̃ − P W‖²,  ∂F/∂P = −2 (G̃ − P W) Wᵀ,
    Δ = (I − PPᵀ) ∂F/∂P = −2 (I − PPᵀ) G̃G̃ᵀP  →  rank-1 SVD Δ ≈ u σ vᵀ,  θ = min(η σ, π/2),
    P ← (P v cos θ − u sin θ) vᵀ + P (I − v vᵀ)          (Edelman, Arias & Smith 1998, Thm 2.3; descent along −Δ)
What we followed and where we chose (`SubTrackRule` options in brackets):
- The residual is never formed: Δ = −2 (AP − P(PᵀAP)) with AP = G̃(G̃ᵀP) — two d×n×r GEMMs, no m×n workspace
  (the reference code builds the m×n residual and solves a least-squares problem with lstsq).
- Right side (m ≥ n): we orient the gradient (G̃ = Gᵀ), so the tangent is the projection onto the complement of P's
  columns, the correct form. The reference code stores P as r×n there and applies (I − PPᵀ) — ≈ 0 for orthonormal
  rows — so its right-side subspace barely moves; a test holds ours to moving and tracking on tall weights.
- Step size [`step_size`, η = 0.5]: G̃ = G·√r/‖G‖_F (scale-free: energy ~1 per tracked direction when the
  gradient's energy is spread over ~r directions). For a direction off by a small angle φ carrying that energy,
  σ ≈ 2φ, so η = 0.5 makes θ ≈ φ: one geodesic step removes that direction's error to first order. The reference
  code multiplies σ of the raw gradient by 1e-3 (argument parser), 10 (its c4 scripts) or 10000 (README): those
  depend on the gradient's scale and do not transfer. θ is capped at π/2.
- The moved P is cleaned by a sign-fixed thin QR (exact geodesics keep PᵀP = I; this keeps it there in fp32 over
  thousands of moves).
- SubTrack++ extras are off by default: [`moment_transfer`, False] rotates Adam's moments into the new basis
  (grass.rotate_moments), [`recovery`, False] adds Fira-style recovery of the out-of-subspace gradient with
  growth limit [`growth_limit`, 1.01] (grass.recovery_term; an m×n residual per step, declared when on).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from subprof.methods.galore import ADAM_STATES, SVD_WORKSPACE
from subprof.methods.grass import RECOVERY_WORKSPACE, recovery_term, rotate_moments
from subprof.methods.lazy import torch
from subprof.methods.spec import MethodSpec, StateLayout
from subprof.methods.osd import covariance_product, oriented
from subprof.methods.rule import ProjectionRule, orthonormal_columns, top_singular_basis

Tensor = Any

def tangent(p: Tensor, g: Tensor, *, scale: float) -> Tensor:
    """Δ = (I − PPᵀ)∂F/∂P = −2 (AP − P(PᵀAP)), AP = scale·G(GᵀP)/‖G‖² (fp32 d×r; `g` is d×n, `p` fp32 d×r)."""
    c, inv = covariance_product(g, p)
    ap = c.mul_(inv * scale)
    return ap.sub_(p @ (p.T @ ap)).mul_(-2.0)


def tangent_reference(p: Tensor, g: Tensor, *, scale: float) -> Tensor:
    """The same tangent written as SubTrack does: least-squares W, residual Rs = G̃ − P W, (I − PPᵀ)(−2 Rs Wᵀ)."""
    gt = g.float() * math.sqrt(scale) / torch.linalg.vector_norm(g.float())
    w = torch.linalg.lstsq(p, gt).solution
    residual = gt - p @ w
    eye = torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    return (eye - p @ p.T) @ (-2.0 * residual @ w.T)


def geodesic_step(p: Tensor, delta: Tensor, step_size: float) -> Tensor:
    """Move P against the rank-1 part u σ vᵀ of Δ by θ = min(η σ, π/2): (P v cos θ − u sin θ) vᵀ + P (I − v vᵀ)."""
    u_all, s_all, vh_all = torch.linalg.svd(delta, full_matrices=False)
    u, sigma, v = u_all[:, :1], s_all[:1], vh_all[:1].T
    theta = torch.clamp(step_size * sigma, max=math.pi / 2)
    pv = p @ v
    return p + (pv * (torch.cos(theta) - 1.0) - u * torch.sin(theta)) @ v.T


class SubTrackRule(ProjectionRule):
    """SubTrack-Grad. Options: step_size (0.5), form ("fast" | "reference"), moment_transfer (False), recovery
    (False), growth_limit (1.01)."""

    defaults = {"step_size": 0.5, "form": "fast", "moment_transfer": False, "recovery": False, "growth_limit": 1.01}

    def __init__(self, *, rank: int, update_gap: int = 200, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        o = self.options
        self.step_size = float(o["step_size"])
        self.form = str(o["form"])
        self.moment_transfer = bool(o["moment_transfer"])
        self.recovery = bool(o["recovery"])
        self.growth_limit = float(o["growth_limit"])
        if self.step_size <= 0:
            raise ValueError(f"step_size must be positive, got {self.step_size}")
        if self.form not in ("fast", "reference"):
            raise ValueError(f"form must be 'fast' or 'reference', got {self.form!r}")

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        r = self.effective_rank(tuple(grad.shape))
        if "projector" not in state:
            state["projector"] = top_singular_basis(grad, r)
            return
        if not self.due(step):
            return
        p_old = state["projector"].float()
        if r >= p_old.shape[0]:  # P spans the whole side: nothing to track
            return
        fn = tangent if self.form == "fast" else tangent_reference
        delta = fn(p_old, oriented(grad), scale=float(r))
        p_new = orthonormal_columns(geodesic_step(p_old, delta, self.step_size))
        if self.moment_transfer:
            rotate_moments(self, state, p_old, p_new, tuple(grad.shape), second=True)
        state["projector"].copy_(p_new)

    def recovery_term(self, state: dict, grad: Tensor, r_grad: Tensor, r_update: Tensor) -> Tensor | None:
        """SubTrack++'s recovery scaling (None unless `recovery=True`)."""
        if not self.recovery:
            return None
        return recovery_term(state, grad, r_grad, r_update, state["projector"], growth_limit=self.growth_limit)


def layout(options: Mapping[str, Any]) -> StateLayout:
    """Adam's moments and P. The peak refresh is step 0's full SVD (as GaLore); a geodesic step holds only GᵀP
    (r × max(m, n)) and a few d×r fp32 matrices (AP, the tangent and its thin SVD), far below the SVD's m×n copy and
    factors. With recovery, each step also holds the residual G − P PᵀG (m×n)."""
    return StateLayout(states=ADAM_STATES, workspace=SVD_WORKSPACE,
                       step_workspace=RECOVERY_WORKSPACE if options["recovery"] else ())


SPEC = MethodSpec(
    name="subtrack",
    title="SubTrack-Grad",
    summary="Grassmannian subspace tracking: rank-1 geodesic step of P every T steps",
    project=True,
    layout=layout,
    rule=SubTrackRule,
    subspace="tracked",
    refresh_cost="gemm",
    default_update_gap=200,
    refresh_flops=lambda m, n, r: 4.0 * m * n * r + 14.0 * min(m, n) * r * r,
    paper="Rajabi et al. 2025, arXiv 2502.01586",
)
