"""SUMO (Refael, Smorodinsky, Tirer & Lindenbaum, arXiv 2505.24749, NeurIPS 2025; code github.com/guy120494/SUMO,
not reachable here): one moment in a low-rank subspace refreshed every K steps; each step the moment is
orthogonalised exactly by the SVD of the small r × max(m, n) matrix (instead of Muon's Newton–Schulz).

Algorithm 1 as we implement it (projection convention of METHODS.md: Q is d×r, d = min(m, n)):
    every K steps (step 0 included):  Q_new = top-r singular vectors of G;  m ← (Q_newᵀ Q_old) m   (moment carried)
    every step:   ĝ = QᵀG (or G Q),  m ← μ m + ĝ,  m = U Σ Vᵀ (exact thin SVD, fp32),  O = U Vᵀ,
                  W ← W − η (α Q O + recovery) − η λ W   (the optimizer applies α = `scale`, η and λ)
What we followed and where we chose:
- Subspace: the paper uses a truncated *randomized* SVD; we use the exact `torch.linalg.svd(G.float())` (GaLore's
  `top_singular_basis`): deterministic, no RNG state to carry, and the declared refresh workspace (fp32 G, U, S,
  Vh) is what it allocates. K = `update_gap`, default 200 (our choice, as GaLore; the paper's value was not found).
- Moment: m ← μ m + ĝ without the (1 − μ) factor (Muon/SUMO form), μ = `momentum` = 0.95 (our choice, Muon's
  default). Only the first moment is kept (declared: exp_avg + projector) — the memory claim of the paper.
- Orthogonalisation: O = U Vᵀ over the singular values above 1e-7·σ_max only, so a rank-deficient (e.g. all-zero)
  moment gives a zero, not an arbitrary, direction. For a full-rank moment O Oᵀ = I on the small side.
- Recovery of the gradient outside the subspace and the norm-growth limiter: optional, off by default
  (`recovery=False`), our choice — the limiter is only meaningful on that term (‖O‖_F = √r is constant), and the
  term costs an m×n residual each step. When on, it is the Fira/SubTrack++ term of `grass.recovery_term` with O as
  the low-rank update and γ = `growth_limit` = 1.01.
- No bias correction and no update RMS matching: O has spectral norm 1 (entries ~ 1/√max(m, n)), so SUMO wants
  a larger η than Adam (Muon-like, ~1e-2) — say so to users; α = `scale` stays the optimizer's.
"""

from __future__ import annotations

from typing import Any, Mapping

from subprof.methods.galore import SVD_WORKSPACE
from subprof.methods.grass import RECOVERY_WORKSPACE, recovery_term, rotate_moments
from subprof.methods.lazy import torch
from subprof.methods.spec import Dtype, MethodSpec, Role, StateLayout, TensorSpec, basis_shape, moment_shape, svd_flops
from subprof.methods.rule import ProjectionRule, top_singular_basis

Tensor = Any

def orthogonalise(moment: Tensor, *, rtol: float = 1e-7) -> Tensor:
    """O = U Vᵀ from the exact thin SVD of `moment` (fp32), over singular values > rtol·σ_max only."""
    u, s, vh = torch.linalg.svd(moment.float(), full_matrices=False)
    keep = s > rtol * s.max().clamp_min(torch.finfo(torch.float32).tiny)
    if bool(keep.all()):
        return u @ vh
    return u[:, keep] @ vh[keep]


class SumoRule(ProjectionRule):
    """SUMO. Options: momentum (0.95), recovery (False), growth_limit (1.01). Overrides `low_rank_update`, so the
    optimizer runs no Adam: the returned O is projected back, scaled by α and applied with the learning rate."""

    defaults = {"momentum": 0.95, "recovery": False, "growth_limit": 1.01}

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        self.momentum = float(self.options["momentum"])
        self.recovery = bool(self.options["recovery"])
        self.growth_limit = float(self.options["growth_limit"])
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.growth_limit < 1.0:
            raise ValueError(f"growth_limit must be ≥ 1, got {self.growth_limit}")

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        if "projector" in state and not self.due(step):
            return
        q_new = top_singular_basis(grad, self.effective_rank(tuple(grad.shape)))
        if "projector" in state:
            rotate_moments(self, state, state["projector"].float(), q_new.float(), tuple(grad.shape), second=False)
        state["projector"] = q_new

    def low_rank_update(self, state: dict, r_grad: Tensor, group: dict, step: int) -> Tensor:
        """m ← μ m + ĝ (stored in the state_bits format), return O = orthogonalise(m) in ĝ's dtype."""
        if "exp_avg" not in state:
            self.init_moment(state, "exp_avg", r_grad)
        moment = self.read_moment(state, "exp_avg").mul_(self.momentum).add_(r_grad.float())
        self.write_moment(state, "exp_avg", moment)
        return orthogonalise(moment).to(r_grad.dtype)

    def recovery_term(self, state: dict, grad: Tensor, r_grad: Tensor, r_update: Tensor) -> Tensor | None:
        """The out-of-subspace term to add to the back-projected update (None unless `recovery=True`)."""
        if not self.recovery:
            return None
        return recovery_term(state, grad, r_grad, r_update, state["projector"], growth_limit=self.growth_limit)


STATES = (
    TensorSpec(name="exp_avg", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
    TensorSpec(name="projector", shape=basis_shape, dtype=Dtype.PARAM, role=Role.PROJECTION),
)
# refresh: the full SVD of G (as GaLore) and the carried moment (r × max(m, n), fp32)
REFRESH_WORKSPACE = SVD_WORKSPACE + (
    TensorSpec(name="rotated_moment", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),)
# exact thin SVD of the r × max(m, n) moment in fp32: its copy, U (r×r), S (r), Vh (r×max), and O = U Vh
STEP_WORKSPACE = (
    TensorSpec(name="moment_fp32", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="moment_u", shape=lambda m, n, r: (r, r), dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="moment_s", shape=lambda m, n, r: (r,), dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="moment_vh", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="orthogonalised", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
)


def layout(options: Mapping[str, Any]) -> StateLayout:
    """One moment and Q; with recovery, each step also holds the residual G − Q QᵀG (m×n, gradient dtype)."""
    return StateLayout(states=STATES, workspace=REFRESH_WORKSPACE,
                       step_workspace=STEP_WORKSPACE + (RECOVERY_WORKSPACE if options["recovery"] else ()))


SPEC = MethodSpec(
    name="sumo",
    title="SUMO",
    summary="one low-rank moment orthogonalised by an exact SVD each step; subspace refreshed every K steps",
    project=True,
    layout=layout,
    rule=SumoRule,
    refresh_cost="svd",
    default_update_gap=200,
    refresh_flops=svd_flops,
    paper="arXiv 2505.24749",
)
