"""GrassWalk and GrassJump (Rajabi, Nonta, Vajpayee, Rambhatla 2025, arXiv 2510.01878): random subspaces instead of
SVD, refreshed every T steps, coupled with a subspace-aware Adam and recovery of the gradient outside the subspace.

What we followed (the paper's text beyond its abstract was not reachable here; the public implementation by the same
authors, saharsamr/StructuredVSRandomizedDP `low_rank_projector.py`, was read, and SubTrack++'s criticalml-uw/SubTrack
`adamw.py` for the moment transfer and recovery scaling):
- GrassJump: every T steps (step 0 included) a fresh P = Q of the thin QR of a d×r standard Gaussian (reference:
  `get_random_orthogonal_matrix`), signs fixed so diag(R) ≥ 0.
- GrassWalk: step 0 draws P as GrassJump does (choice: the reference's hybrid mode starts from an SVD, but
  METHODS.md's "no SVD at all" and the declared workspace say random); then every T steps Z ~ N(0, 1) of P's shape,
  tangent Δ = Z − P PᵀZ, a randomized rank-k SVD Δ ≈ U diag(σ) Vᵀ (reference `random_rank_k_matrix_estimation`:
  Gaussian sketch with 8 extra columns, no power iterations; k = `walk_rank` = 1) and the Grassmannian geodesic
      P ← P V diag(cos θ) Vᵀ + U diag(sin θ) Vᵀ + P (I − V Vᵀ)     (Edelman, Arias & Smith 1998, Thm 2.3)
  — SubTrack's step with a random tangent. Choice: θ = `walk_step` · σ / ‖σ‖₂, i.e. the geodesic length
  ‖θ‖₂ of every move is exactly `walk_step` radians, whatever the shape (the reference multiplies σ by a raw step
  size, so the angle grows with √d; its `step_size_tuning` flag normalises the same way we do). The paper's step
  size was not found; default `walk_step` = 0.5 rad, our choice. The new P is re-orthonormalised by a sign-fixed
  thin QR (a near-identity clean-up that keeps PᵀP = I to fp32 round-off over thousands of moves).
- Subspace-aware moments (SubTrack++ §3.2): with C = P_newᵀ P_old (r×r), the first moment moves into the new basis,
  m ← C m on the left side (R = PᵀG) or m ← m Cᵀ on the right side (R = G P); the second moment is carried as the
  second moment of the rotated gradient with the cross-covariances approximated by the mean: v ← |C∘C (v − m²) +
  (C m)²| (transposed on the right side). Choice: the SubTrack code multiplies that by (1 − β₂), which would shrink
  v a thousandfold at every refresh and blow up the following steps; we leave it out. Option `moment_transfer=False`
  keeps the moments untouched (GaLore's behaviour).
- Recovery (Fira, Chen et al. 2025; SubTrack++ "recovery scaling"): on by default (`recovery=True`), as the paper
  couples both methods with it. The residual G − P PᵀG is scaled per row/column by ‖N‖/‖R‖ along the rank axis
  (N: the low-rank Adam update, R: the low-rank gradient) and limited in norm growth: if its norm exceeds
  γ = `growth_limit` = 1.01 times the previous step's, it is scaled back to γ times that (SubTrack++/Fira default).
  The previous norm is kept as a Python float in `state["recovery_norm"]` (not a tensor: no declared memory).
- Randomness: one CPU `torch.Generator` per projected weight, seeded from option `seed` (default 0) plus the order in
  which weights first reach this rule; its state lives in `state["rng_state"]` (uint8), so state_dict round-trips and
  a resumed run draws the same P. Gaussian draws come from the CPU generator in fp32 (so a run draws the same
  numbers on any device) and are moved to the weight's device, where the QR, sketch and geodesic are computed.
"""

from __future__ import annotations

from typing import Any, Mapping

from subprof.methods.galore import ADAM_STATES
from subprof.methods.lazy import torch
from subprof.methods.spec import (Dtype, MethodSpec, Role, StateLayout, TensorSpec, basis_shape, full_shape,
                                  moment_shape)
from subprof.methods.rule import ProjectionRule, orthonormal_columns, right_side

Tensor = Any

WORKSPACE = (
    # on the weight's device, fp32, at the refresh's peak (the moment transfer): P_old upcast (a copy for 16-bit
    # weights) and the new P (d×r each); the rotated m, the centred v − m² and the rotated v (r × max(m, n) each).
    # The draw phase before it (Z or the moved P, its QR and sign fix: 3·d·r) is smaller, as d ≤ max(m, n).
    # Not declared: at state_bits 16/8 `read_moment` returns fp32 copies of m and v (2 more r × max(m, n)).
    TensorSpec(name="projector_fp32", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="new_projector", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="rotated_moment", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="centred_moment_sq", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="rotated_moment_sq", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
)
# without the moment transfer the refresh holds only the draw: Z (or the moved P), its QR's Q and the sign fix
DRAW_WORKSPACE = tuple(TensorSpec(name=name, shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE)
                       for name in ("draw", "qr_q", "signed_q"))
# recovery (on by default): the residual G − P PᵀG (m×n, in the gradient's dtype), held through the step
RECOVERY_WORKSPACE = (TensorSpec(name="residual", shape=full_shape, dtype=Dtype.PARAM, role=Role.WORKSPACE),)


def layout(options: Mapping[str, Any]) -> StateLayout:
    """Adam's moments and P; the refresh workspace depends on the moment transfer, the step workspace on recovery."""
    return StateLayout(states=ADAM_STATES, workspace=WORKSPACE if options["moment_transfer"] else DRAW_WORKSPACE,
                       step_workspace=RECOVERY_WORKSPACE if options["recovery"] else ())


def _qr_flops(m: int, n: int, r: int) -> float:
    return 4.0 * min(m, n) * r * r


# --- shared torch helpers (also used by SUMO) -----------------------------------------------------------------------


def _read(rule: ProjectionRule, state: dict, name: str) -> Tensor | None:
    """A moment as an fp32 tensor, or None before the optimizer created it."""
    if name not in state:
        return None
    return rule.read_moment(state, name)


def rotate_moments(rule: ProjectionRule, state: dict, p_old: Tensor, p_new: Tensor, shape: tuple[int, ...],
                   *, second: bool) -> None:
    """Carry exp_avg (and exp_avg_sq when `second`) from the basis p_old into p_new (both d×r, fp32).

    C = P_newᵀ P_old. Left (R = PᵀG): m ← C m, v ← |C∘C (v − m²) + (C m)²|. Right (R = G P): the transposes,
    m ← m Cᵀ, v ← |(v − m²)(C∘C)ᵀ + (m Cᵀ)²|. Exact for m when the subspace is unchanged (C orthogonal)."""
    c = p_new.T @ p_old
    right = right_side(shape)
    m = _read(rule, state, "exp_avg")
    if m is None:
        return
    m_new = m @ c.T if right else c @ m
    if second:
        v = _read(rule, state, "exp_avg_sq")
        if v is not None:
            centred = v - m.square()
            v_new = centred @ c.square().T if right else c.square() @ centred
            del centred
            v_new.addcmul_(m_new, m_new).abs_()
            rule.write_moment(state, "exp_avg_sq", v_new)
    rule.write_moment(state, "exp_avg", m_new)


def recovery_term(state: dict, grad: Tensor, r_grad: Tensor, r_update: Tensor, projector: Tensor, *,
                  growth_limit: float) -> Tensor:
    """Fira-style recovery: (G − P PᵀG) scaled along the non-rank axis by ‖N‖/‖R‖, then norm-growth limited.

    Returned in G's dtype, to be added to the back-projected update before the learning rate is applied."""
    right = right_side(grad.shape)
    p = projector.to(grad.dtype)
    r = r_grad.to(grad.dtype)
    residual = (r @ p.T if right else p @ r).neg_().add_(grad)  # one m×n tensor: the declared step workspace
    axis = 1 if right else 0  # the rank axis of R / N
    factor = r_update.float().norm(dim=axis) / (r_grad.float().norm(dim=axis) + 1e-8)
    residual.mul_((factor[:, None] if right else factor[None, :]).to(grad.dtype))
    norm = float(torch.linalg.vector_norm(residual, dtype=torch.float32))
    previous = state.get("recovery_norm")
    if previous is not None and norm > growth_limit * previous:
        residual.mul_(growth_limit * previous / norm)
        norm = growth_limit * previous
    state["recovery_norm"] = norm
    return residual


class _RandomRule(ProjectionRule):
    """A rule that draws P from a per-weight CPU generator kept in state["rng_state"]."""

    defaults = {"seed": 0, "moment_transfer": True, "recovery": True, "growth_limit": 1.01}

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        o = self.options
        self.seed = int(o["seed"])
        self.moment_transfer = bool(o["moment_transfer"])
        self.recovery = bool(o["recovery"])
        self.growth_limit = float(o["growth_limit"])
        if self.growth_limit < 1.0:
            raise ValueError(f"growth_limit must be ≥ 1, got {self.growth_limit}")
        self._streams = 0  # weights seen so far: gives each weight its own seed at step 0

    def generator(self, state: dict) -> Tensor:
        gen = torch.Generator(device="cpu")
        if "rng_state" in state:
            gen.set_state(state["rng_state"].cpu())
        else:
            gen.manual_seed(self.seed * 1_000_003 + self._streams)
            self._streams += 1
        return gen

    def save_generator(self, state: dict, gen: Tensor) -> None:
        state["rng_state"] = gen.get_state()

    def gaussian(self, gen: Tensor, rows: int, cols: int, device: Any) -> Tensor:
        """A rows×cols standard Gaussian from the CPU generator, fp32, moved to `device`."""
        return torch.randn(rows, cols, generator=gen, dtype=torch.float32).to(device)

    def random_basis(self, gen: Tensor, d: int, r: int, device: Any) -> Tensor:
        """GrassJump's draw: Q of the sign-fixed thin QR of a d×r standard Gaussian (fp32)."""
        return orthonormal_columns(self.gaussian(gen, d, r, device))

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        if "projector" in state and not self.due(step):
            return
        d, r = basis_shape(grad.shape[0], grad.shape[1], self.effective_rank(tuple(grad.shape)))
        gen = self.generator(state)
        if "projector" not in state:
            state["projector"] = self.random_basis(gen, d, r, grad.device).to(grad.dtype)
        else:
            p_old = state["projector"].float()
            p_new = self.move(gen, p_old)
            if self.moment_transfer:
                rotate_moments(self, state, p_old, p_new, tuple(grad.shape), second=True)
            del p_old
            state["projector"].copy_(p_new)
        self.save_generator(state, gen)

    def move(self, gen: Tensor, p: Tensor) -> Tensor:
        raise NotImplementedError

    def recovery_term(self, state: dict, grad: Tensor, r_grad: Tensor, r_update: Tensor) -> Tensor | None:
        """The out-of-subspace term to add to the back-projected update (None when `recovery=False`)."""
        if not self.recovery:
            return None
        return recovery_term(state, grad, r_grad, r_update, state["projector"], growth_limit=self.growth_limit)


class GrassJumpRule(_RandomRule):
    """GrassJump: a fresh random orthonormal P every `update_gap` steps. Options: seed (0), moment_transfer (True),
    recovery (True), growth_limit (1.01)."""

    def move(self, gen: Tensor, p: Tensor) -> Tensor:
        return self.random_basis(gen, p.shape[0], p.shape[1], p.device)


class GrassWalkRule(_RandomRule):
    """GrassWalk: a geodesic step of length `walk_step` rad (0.5) along the rank-`walk_rank` (1) part of a random
    tangent, every `update_gap` steps. Other options as GrassJump."""

    defaults = {**_RandomRule.defaults, "walk_step": 0.5, "walk_rank": 1, "oversample": 8}

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        self.walk_step = float(self.options["walk_step"])
        self.walk_rank = int(self.options["walk_rank"])
        self.oversample = int(self.options["oversample"])
        if not 0.0 < self.walk_step <= 3.2:
            raise ValueError(f"walk_step is an angle in radians in (0, π], got {self.walk_step}")
        if self.walk_rank <= 0:
            raise ValueError(f"walk_rank must be positive, got {self.walk_rank}")

    def move(self, gen: Tensor, p: Tensor) -> Tensor:
        d, r = p.shape
        if r >= d:  # P spans everything: no direction to move into
            return p
        tangent = self.gaussian(gen, d, r, p.device)
        tangent.sub_(p @ (p.T @ tangent))
        u, sigma, v = randomized_rank_k(tangent, min(self.walk_rank, r, d - r), gen, oversample=self.oversample)
        del tangent
        theta = self.walk_step * sigma / sigma.norm()
        moved = p.clone()
        moved.addmm_(p @ v, (torch.cos(theta) - 1.0)[:, None] * v.T)
        moved.addmm_(u, torch.sin(theta)[:, None] * v.T)
        return orthonormal_columns(moved)


def randomized_rank_k(a: Tensor, k: int, gen: Tensor, *, oversample: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k SVD of `a` (d×r) by a Gaussian sketch (Halko, Martinsson & Tropp 2011, Alg. 4.1 + 5.1, no power
    iterations): Y = A Ω, Q = qr(Y), B = QᵀA = Ũ Σ Vᵀ, U = Q Ũ. Returns U (d×k), σ (k), V (r×k)."""
    ell = min(k + oversample, min(a.shape))
    omega = torch.randn(a.shape[1], ell, generator=gen, dtype=torch.float32).to(device=a.device, dtype=a.dtype)
    q = orthonormal_columns(a @ omega)
    ub, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
    return (q @ ub)[:, :k], s[:k], vh[:k].T


GRASSWALK = MethodSpec(
    name="grasswalk",
    title="GrassWalk",
    summary="random geodesic walk of P on the Grassmannian every T steps (no SVD)",
    project=True,
    layout=layout,
    rule=GrassWalkRule,
    subspace="random",
    refresh_cost="gemm",
    default_update_gap=200,
    refresh_flops=_qr_flops,
    paper="arXiv 2510.01878",
)

GRASSJUMP = MethodSpec(
    name="grassjump",
    title="GrassJump",
    summary="fresh random orthonormal P every T steps (no SVD)",
    project=True,
    layout=layout,
    rule=GrassJumpRule,
    subspace="random",
    refresh_cost="gemm",
    default_update_gap=200,
    refresh_flops=_qr_flops,
    paper="arXiv 2510.01878",
)
