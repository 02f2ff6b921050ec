"""SubTrack++ (Rajabi et al. 2025, arXiv 2502.01586; code criticalml-uw/SubTrack@94f2b65): GaLore's SVD at step 0,
then every T steps a rank-1 Grassmannian geodesic step along the tangent of the least-squares residual, with the
subspace-aware Adam and recovery scaling of `subprof.methods.moving`.

For P d×r on the side it projects and G̃ the d×n gradient seen from that side (Gᵀ when m ≥ n):
    Δ = (I − PPᵀ) ∂F/∂P = −2 (I − PPᵀ) G̃G̃ᵀP   (F = ‖G̃ − P PᵀG̃‖²),   Δ ≈ u σ vᵀ (rank 1),   θ = η σ
    P ← (P v cos θ − u sin θ) vᵀ + P (I − v vᵀ);   then rotate the moments (C = P_newᵀP_old) and add recovery

Defaults are what the authors' scripts run (`scripts/c4/llama_*.sh` all pass `--adaptive_optimizer
--recovery_scaling`): T = 200, α = 0.25, lr 1e-3 (60m–350m; 1e-4 from 1b), η = 10 on the raw gradient
[`step_rule="raw"`, `step_size`] (the argument parser says 1e-3, the README and the paper's Table 4 say 10000 — the
scripts' 10 is what ran), moment rotation with the (1 − β₂) factor [`moment_transfer="reference"`], recovery with
G − α·PPᵀG and γ = 1.01 [`recovery="reference"`, `growth_limit`].
Deviations:
- Tall weights (m ≥ n, P on the right) [`tangent="corrected"`]: the code stores P as r×n there and applies
  (I_r − PPᵀ) to the r×n derivative — ≈ 0 for orthonormal rows (a test measures ‖Δ‖/‖∂‖ ~ 1e-7), so q/k/v/o/gate/
  up never move. We take the projection onto the complement of P's columns, the correct tangent (as the authors'
  later projector in StructuredVSRandomizedDP does); `tangent="reference"` reproduces the code (P frozen on tall
  weights) for comparison. Wide weights are the same in both.
- Rotation timing: the code rotates one step *before* each move (its test uses the post-increment step) and always
  with C = P_currentᵀP₀ (`prev_ortho_matrix` is never refreshed): the first rotation has C = I (v shrinks 1000×),
  later ones rotate moments that already live in P_k by P_kᵀP₀. We rotate at the move with C = P_newᵀP_old and keep
  the (1 − β₂) factor — the same once-per-move shrink of v, applied to the right basis.
- The residual is never formed: Δ = −2 (AP − P(PᵀAP)) with AP = G̃(G̃ᵀP), two d×n×r GEMMs, no m×n workspace
  (the code solves lstsq on the m×n gradient; `form="lstsq"` computes it that way, equal to 1e-5 in tests).
- The moved P is re-orthonormalised by a sign-fixed thin QR (exact geodesics keep PᵀP = I; this keeps it there in
  fp32). θ is not capped on the raw rule (as the code); `step_rule="scale_free"` is our earlier rule:
  G̃ = G·√r/‖G‖_F, η = 0.5, θ ≤ π/2 (for a direction off by φ carrying its share of the energy σ ≈ 2φ, so one
  step removes that error to first order; independent of the gradient's scale, unlike η = 10 on the raw gradient).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

from subprof.methods.galore import ADAM_STATES, SVD_WORKSPACE
from subprof.methods.lazy import torch
from subprof.methods.moving import MOVING_VARIANTS, MovingSubspaceRule, choice, recovery_workspace
from subprof.methods.osd import covariance_product, oriented
from subprof.methods.rule import orthonormal_columns, right_side, top_singular_basis
from subprof.methods.spec import MethodSpec, StateLayout
from subprof.methods.spec import CROSSED_PROJECTION, RECOVERY_NORM, STREAMING_COMMS, SVD_FIRST_COMMS, When

Tensor = Any

STEP_SIZES = {"raw": 10.0, "scale_free": 0.5}


def tangent(p: Tensor, g: Tensor, *, scale: float | None = None) -> Tensor:
    """Δ = −2 (AP − P(PᵀAP)) (fp32 d×r; `g` is d×n, `p` fp32 d×r) with AP = G(GᵀP) (`scale` None: the raw
    gradient, as the code) or AP = scale·G(GᵀP)/‖G‖² (scale-free)."""
    c, inv = covariance_product(g, p)
    ap = c if scale is None else c.mul_(inv * scale)
    return ap.sub_(p @ (p.T @ ap)).mul_(-2.0)


def tangent_lstsq(p: Tensor, g: Tensor, *, scale: float | None = None) -> Tensor:
    """The same tangent written as the code does: least-squares W, residual Rs = G̃ − P W, (I − PPᵀ)(−2 Rs Wᵀ)."""
    gt = g.float()
    if scale is not None:
        gt = gt * math.sqrt(scale) / torch.linalg.vector_norm(gt)
    w = torch.linalg.lstsq(p, gt).solution
    residual = gt - p @ w
    eye = torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    return (eye - p @ p.T) @ (-2.0 * residual @ w.T)


def reference_tall_tangent(delta: Tensor, p: Tensor) -> Tensor:
    """The code's tangent on a tall weight, in our d×r layout: it stores B = Pᵀ (r×n) and computes (I_r − BBᵀ)∂ with
    ∂ = Δᵀ (the derivative is already orthogonal to P there), i.e. Δ (I_r − PᵀP) — round-off for orthonormal P."""
    eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
    return delta @ (eye - p.T @ p)


def geodesic_step(p: Tensor, delta: Tensor, step_size: float, *, max_angle: float | None = None) -> Tensor:
    """Move P against the rank-1 part u σ vᵀ of Δ by θ = η σ (capped at `max_angle`): (P v cos θ − u sin θ) vᵀ +
    P (I − v vᵀ)."""
    u_all, s_all, vh_all = torch.linalg.svd(delta, full_matrices=False)
    u, sigma, v = u_all[:, :1], s_all[:1], vh_all[:1].T
    theta = step_size * sigma
    if max_angle is not None:
        theta = torch.clamp(theta, max=max_angle)
    pv = p @ v
    return p + (pv * (torch.cos(theta) - 1.0) - u * torch.sin(theta)) @ v.T


class SubTrackRule(MovingSubspaceRule):
    """SubTrack++. Options: step_rule ("raw" | "scale_free"), step_size (None: 10 raw, 0.5 scale-free), tangent
    ("corrected" | "reference"), form ("fast" | "lstsq"), moment_transfer, recovery, growth_limit."""

    defaults = {"step_rule": "raw", "step_size": None, "tangent": "corrected", "form": "fast",
                "moment_transfer": "reference", "recovery": "reference", "growth_limit": 1.01}

    def __init__(self, *, rank: int, update_gap: int = 200, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        o = self.options
        self.step_rule = choice("step_rule", o["step_rule"], tuple(STEP_SIZES))
        self.step_size = float(STEP_SIZES[self.step_rule] if o["step_size"] is None else o["step_size"])
        self.tangent = choice("tangent", o["tangent"], ("corrected", "reference"))
        self.form = choice("form", o["form"], ("fast", "lstsq"))
        if self.step_size <= 0:
            raise ValueError(f"step_size must be positive, got {self.step_size}")

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        shape = tuple(grad.shape)
        r = self.effective_rank(shape)
        if "projector" not in state:
            state["projector"] = top_singular_basis(grad, r)
            return
        if not self.due(step):
            return
        p_old = state["projector"].float()
        if r >= p_old.shape[0]:  # P spans the whole side: nothing to track
            return
        scale = None if self.step_rule == "raw" else float(r)
        delta = (tangent if self.form == "fast" else tangent_lstsq)(p_old, oriented(grad), scale=scale)
        if self.tangent == "reference" and right_side(shape):
            delta = reference_tall_tangent(delta, p_old)
        cap = math.pi / 2 if self.step_rule == "scale_free" else None
        p_new = orthonormal_columns(geodesic_step(p_old, delta, self.step_size, max_angle=cap))
        self.transfer(state, p_old, p_new, shape)
        state["projector"].copy_(p_new)


def layout(options: Mapping[str, Any]) -> StateLayout:
    """Adam's moments and P. The peak refresh is step 0's full SVD (as GaLore); a geodesic step holds only GᵀP
    (r × max(m, n)) and a few d×r fp32 matrices, far below it. With recovery, each step holds the m×n residual."""
    return StateLayout(states=ADAM_STATES, workspace=SVD_WORKSPACE, step_workspace=recovery_workspace(dict(options)))


def comms(options: Mapping[str, Any]) -> tuple:
    """Per rank under FSDP: the SVD start gathers G once; each geodesic move needs A·P = G̃(G̃ᵀP) summed over shards
    (the streaming all-reduce, every update_gap steps); recovery's norm limiter sums one value per step."""
    moves = tuple(c if c is CROSSED_PROJECTION else replace(c, when=When.REFRESH) for c in STREAMING_COMMS)
    return SVD_FIRST_COMMS + moves + ((RECOVERY_NORM,) if options["recovery"] else ())


SPEC = MethodSpec(
    name="subtrack",
    title="SubTrack++",
    summary="Grassmannian subspace tracking (rank-1 geodesic step every T steps) with moment rotation and recovery",
    project=True,
    layout=layout,
    rule=SubTrackRule,
    subspace="tracked",
    variants={"reference-tangent": {"tangent": "reference"}, "scale-free": {"step_rule": "scale_free"},
              "subtrack-grad": {"moment_transfer": None, "recovery": None}, **MOVING_VARIANTS},
    refresh_cost="gemm",
    default_update_gap=200,
    refresh_flops=lambda m, n, r: 4.0 * m * n * r + 14.0 * min(m, n) * r * r,
    default_lr=1e-3,
    lr_source="SubTrack++ scripts/c4/llama_60m–350m.sh (--lr 1e-3, scale 0.25; 1b–7b: 1e-4)",
    comms=comms,
    paper="Rajabi et al. 2025, arXiv 2502.01586",
)
