"""GrassWalk and GrassJump (Rajabi, Nonta, Vajpayee & Rambhatla 2025, arXiv 2510.01878): random subspaces instead of
SVD, moved every T steps, with SubTrack++'s subspace-aware Adam and recovery scaling (`subprof.methods.moving`).

    GrassJump: every T steps P ← Q of the reduced QR of a d×r standard Gaussian
    GrassWalk: every T steps Z ~ N(0, 1) of P's shape, Δ = Z − P PᵀZ, rank-1 randomized SVD Δ ≈ u σ vᵀ, θ = η·σ,
               P ← (P v cos θ − u sin θ) vᵀ + P (I − v vᵀ)          (the Grassmann geodesic, Edelman et al. 1998)
    then the moments are rotated into the new basis and the recovery term is added (both as in SubTrack++)

Defaults follow the authors' projector (saharsamr/StructuredVSRandomizedDP@aee0363
`dpgrape/dpgrape/low_rank_torch/low_rank_projector.py`, the SubTrack group's later version; the paper's body was not
reachable — only its abstract, which pairs both walks with the subspace-aware optimizer and recovery):
- start [`init`]: GrassWalk from the SVD of the first gradient (`random_init=False`), GrassJump from a random draw
  (`random_projection=True`); `init="random"` / `"svd"` switch.
- walk: Z drawn in the projector's storage layout (r×n on the right side, m×r on the left), randomized rank-1 SVD of
  it with 8 oversampling columns and no power iterations [`oversample`, `power_iters`, `walk_rank`], θ = η·σ raw
  [`angle="raw"`]; `angle="normalised"` is the code's `step_size_tuning` (θ = η·σ/‖σ‖, = η for rank 1). No cap on θ.
- hybrid [`hybrid=False`, `jump_probability=0.3`]: at each move, a jump with probability 0.3, else a walk; the
  step-0 basis is the SVD (as the code forces in hybrid mode).
- moments [`moment_transfer="reference"`] and recovery [`recovery="reference"`, γ 1.01]: SubTrack++'s code forms,
  see `subprof.methods.moving`; scale α 0.25 and lr 1e-3 from SubTrack++'s c4 scripts (the same authors' optimizer).
Deviations and choices:
- η [`walk_step`] = 0.02: the code has no default and the paper's value was not found. θ = η·σ grows with the
  width (σ of the rank-1 sketch of a d×r Gaussian tangent is 75–90% of its top singular value ≈ √(d−r) + √r: the
  sketch has no power iterations). Measured on the catalogue shapes at the papers' ranks (`walk_angles`, checked by
  a test), η = 0.02 gives θ ≈ 0.26 rad (tiny, r 16), 0.49 (60m, r 128), 0.94 (1b, r 512), 1.33 (7b, r 1024):
  every move stays below π/2 (beyond it the angle folds back) while the large models turn most of one direction
  per move. Even at θ = π/2 a rank-1 move touches one of r directions: after K moves about (1 − sin²θ/r)^K of the
  start subspace's energy remains (1b, 50 moves: 94%) — walks explore slowly by construction; the hybrid's jumps
  renew the whole basis.
- Random numbers come from a per-weight CPU generator (seed [`seed`] + weight order, state in `state["rng_state"]`)
  instead of the global torch / Python RNGs: resumable and the same on any device; the hybrid's coin is drawn from
  it too. The sketch's QR is sign-fixed and the moved P re-orthonormalised by a sign-fixed QR (the code does
  neither; both leave the subspace and the geodesic unchanged). The moment rotation runs at the move, with
  C = P_newᵀ P_old (see `subprof.methods.subtrack` for the SubTrack++ code's timing).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from subprof.methods.galore import ADAM_STATES, SVD_WORKSPACE
from subprof.methods.lazy import torch
from subprof.methods.moving import MOVING_VARIANTS, MovingSubspaceRule, choice, recovery_workspace
from subprof.methods.rule import SeededRule, orthonormal_columns, right_side, top_singular_basis
from subprof.methods.spec import Dtype, MethodSpec, Role, StateLayout, TensorSpec, basis_shape, moment_shape
from subprof.methods.spec import CROSSED_PROJECTION, RECOVERY_NORM, SVD_FIRST_COMMS

Tensor = Any

WALK_STEP = 0.02
LR_SOURCE = ("SubTrack++ scripts/c4/llama_60m–350m.sh (--lr 1e-3, scale 0.25): the same authors' optimizer; the "
             "GrassWalk paper's values were not reachable")

MOVE_WORKSPACE = (
    # on the weight's device, fp32, at a move's peak (the moment rotation): P_old upcast and the new P (d×r each);
    # the rotated m, the centred v − m² and the rotated v (r × max(m, n) each). The draw phase before it (Z or the
    # moved P, its QR) is smaller, as d ≤ max(m, n). Not declared: at state_bits 16/8 `read_moment` returns fp32
    # copies of m and v (2 more r × max(m, n)).
    TensorSpec(name="projector_fp32", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="new_projector", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="rotated_moment", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="centred_moment_sq", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="rotated_moment_sq", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
)
# without the moment transfer a move holds only the draw: Z (or the moved P), its QR's Q and the clean-up
DRAW_WORKSPACE = tuple(TensorSpec(name=name, shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE)
                       for name in ("draw", "qr_q", "signed_q"))


def layout_for_init(default_init: str):
    def layout(options: Mapping[str, Any]) -> StateLayout:
        """Adam's moments and P. Refresh workspace: step 0's full SVD when the walk starts from it (it dominates the
        later moves' workspace while r ≤ d/2), else a move's; the step workspace holds recovery's m×n residual."""
        init = "svd" if options.get("hybrid") else options["init"] or default_init  # hybrid starts from the SVD
        moves = MOVE_WORKSPACE if choice("moment_transfer", options["moment_transfer"],
                                         ("reference", "unscaled", None)) else DRAW_WORKSPACE
        return StateLayout(states=ADAM_STATES, workspace=SVD_WORKSPACE if init == "svd" else moves,
                           step_workspace=recovery_workspace(dict(options)))
    return layout


def comms_for_init(default_init: str):
    def comms(options: Mapping[str, Any]) -> tuple:
        """Per rank under FSDP: an SVD start gathers G once; after it the same generator state on every rank draws
        the same P, so a move sends nothing; recovery's norm limiter sums one value per step; a crossed weight
        all-reduces R."""
        init = "svd" if options.get("hybrid") else options["init"] or default_init
        return ((CROSSED_PROJECTION,) + (SVD_FIRST_COMMS if init == "svd" else ())
                + ((RECOVERY_NORM,) if options["recovery"] else ()))
    return comms


def _qr_flops(m: int, n: int, r: int) -> float:
    return 4.0 * min(m, n) * r * r


def random_basis(gen: Tensor, d: int, r: int, *, right: bool, device: Any) -> Tensor:
    """GrassJump's draw as the authors' `get_random_orthogonal_matrix` makes it: Q of the reduced QR (no sign fix)
    of an r×d Gaussian transposed (right side, P stored r×n there) or of a d×r one (left side), on the CPU."""
    z = SeededRule.gaussian(gen, r, d).T if right else SeededRule.gaussian(gen, d, r)
    return torch.linalg.qr(z, mode="reduced")[0].to(device)


def randomized_rank_k(a: Tensor, k: int, gen: Tensor, *, oversample: int = 8,
                      power_iters: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k SVD of `a` by a Gaussian sketch (Halko, Martinsson & Tropp 2011, Alg. 4.1/4.3 + 5.1), as the authors'
    `random_rank_k_matrix_estimation`: ℓ = min(k + oversample, min(a.shape)), Ω (cols×ℓ) from `gen`, Y = A Ω,
    `power_iters` times Y = A (Aᵀ Y), Q = qr(Y), QᵀA = Ũ Σ Vᵀ, U = Q Ũ. Returns U (rows×k), σ (k), V (cols×k)."""
    ell = min(k + oversample, min(a.shape))
    omega = SeededRule.gaussian(gen, a.shape[1], ell).to(device=a.device, dtype=a.dtype)
    y = a @ omega
    for _ in range(power_iters):
        y = a @ (a.T @ y)
    q = orthonormal_columns(y)
    ub, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
    return (q @ ub)[:, :k], s[:k], vh[:k].T


def geodesic(p: Tensor, u: Tensor, theta: Tensor, v: Tensor) -> Tensor:
    """P moved against the rank-k tangent direction u diag(θ) vᵀ: P + P v diag(cos θ − 1) vᵀ − u diag(sin θ) vᵀ,
    i.e. (P v cos θ − u sin θ) vᵀ + P (I − v vᵀ) (the authors' sign: the basis turns towards −u)."""
    moved = p.clone()
    moved.addmm_(p @ v, (torch.cos(theta) - 1.0)[:, None] * v.T)
    moved.addmm_(u, -torch.sin(theta)[:, None] * v.T)
    return moved


class _GrassRule(MovingSubspaceRule, SeededRule):
    """P from the SVD or a random draw at step 0, moved every `update_gap` steps by `move` (the subclass)."""

    defaults = {"init": None, "seed": 0, "moment_transfer": "reference", "recovery": "reference",
                "growth_limit": 1.01}
    default_init = "svd"

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        self.init = choice("init", self.options["init"] or self.default_init, ("svd", "random"))

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        if "projector" in state and not self.due(step):
            return
        shape = tuple(grad.shape)
        gen = self.generator(state)
        if "projector" not in state:
            r = self.effective_rank(shape)
            if self.init == "svd":
                state["projector"] = top_singular_basis(grad, r)
            else:
                d, _ = basis_shape(shape[0], shape[1], r)
                state["projector"] = random_basis(gen, d, r, right=right_side(shape), device=grad.device).to(grad.dtype)
        else:
            p_old = state["projector"].float()
            p_new = self.move(gen, p_old, right_side(shape))
            self.transfer(state, p_old, p_new, shape)
            del p_old
            state["projector"].copy_(p_new)
        self.save_generator(state, gen)

    def move(self, gen: Tensor, p: Tensor, right: bool) -> Tensor:
        raise NotImplementedError


class GrassJumpRule(_GrassRule):
    """GrassJump: a fresh random orthonormal P every `update_gap` steps (see the module docstring for options)."""

    default_init = "random"

    def move(self, gen: Tensor, p: Tensor, right: bool) -> Tensor:
        return random_basis(gen, p.shape[0], p.shape[1], right=right, device=p.device)


class GrassWalkRule(_GrassRule):
    """GrassWalk: a random geodesic step every `update_gap` steps, optionally mixed with jumps (`hybrid`)."""

    defaults = {**_GrassRule.defaults, "walk_step": WALK_STEP, "angle": "raw", "walk_rank": 1, "oversample": 8,
                "power_iters": 0, "hybrid": False, "jump_probability": 0.3}

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        o = self.options
        self.walk_step = float(o["walk_step"])
        self.angle = choice("angle", o["angle"], ("raw", "normalised"))
        self.walk_rank = int(o["walk_rank"])
        self.oversample = int(o["oversample"])
        self.power_iters = int(o["power_iters"])
        self.hybrid = bool(o["hybrid"])
        self.jump_probability = float(o["jump_probability"])
        if self.hybrid:
            self.init = "svd"  # the code forces the SVD start in hybrid mode
        if self.walk_step <= 0 or self.walk_rank <= 0 or self.oversample < 0 or self.power_iters < 0:
            raise ValueError("walk_step and walk_rank must be positive, oversample and power_iters ≥ 0")
        if not 0.0 <= self.jump_probability <= 1.0:
            raise ValueError(f"jump_probability must lie in [0, 1], got {self.jump_probability}")

    def move(self, gen: Tensor, p: Tensor, right: bool) -> Tensor:
        d, r = p.shape
        if self.hybrid and float(torch.rand(1, generator=gen)) <= self.jump_probability:
            return random_basis(gen, d, r, right=right, device=p.device)
        if r >= d:  # P spans everything: no direction to move into
            return p
        # Z in the reference's storage layout (r×d on the right side), then seen as d×r
        z = (self.gaussian(gen, r, d).T if right else self.gaussian(gen, d, r)).to(p.device)
        z.sub_(p @ (p.T @ z))
        k = min(self.walk_rank, r, d - r)
        if right:  # the code sketches its r×d store: Ω has d rows; swap its (u, v) back to our d×r view
            v, sigma, u = randomized_rank_k(z.T, k, gen, oversample=self.oversample, power_iters=self.power_iters)
        else:
            u, sigma, v = randomized_rank_k(z, k, gen, oversample=self.oversample, power_iters=self.power_iters)
        del z
        if self.angle == "normalised":
            sigma = sigma / sigma.norm()
        return orthonormal_columns(geodesic(p, u, self.walk_step * sigma, v))


GRASSWALK = MethodSpec(
    name="grasswalk",
    title="GrassWalk",
    summary="random geodesic walk of P on the Grassmannian every T steps, from the SVD basis",
    project=True,
    layout=layout_for_init("svd"),
    rule=GrassWalkRule,
    subspace="random",
    variants={"random-start": {"init": "random"}, "hybrid": {"hybrid": True},
              "normalised-angle": {"angle": "normalised"}, **MOVING_VARIANTS},
    refresh_cost="gemm",
    default_update_gap=200,
    refresh_flops=_qr_flops,
    default_lr=1e-3,
    lr_source=LR_SOURCE,
    comms=comms_for_init("svd"),
    paper="arXiv 2510.01878",
)

GRASSJUMP = MethodSpec(
    name="grassjump",
    title="GrassJump",
    summary="fresh random orthonormal P every T steps (no SVD)",
    project=True,
    layout=layout_for_init("random"),
    rule=GrassJumpRule,
    subspace="random",
    variants={"svd-start": {"init": "svd"}, **MOVING_VARIANTS},
    refresh_cost="gemm",
    default_update_gap=200,
    refresh_flops=_qr_flops,
    default_lr=1e-3,
    lr_source=LR_SOURCE,
    comms=comms_for_init("random"),
    paper="arXiv 2510.01878",
)


def walk_angles(shapes: list[tuple[str, int, int]], step: float = WALK_STEP, seed: int = 0) -> list[dict]:
    """The measurement behind `walk_step`: σ of the rank-1 sketch of a d×r Gaussian tangent and θ = η·σ per shape
    (name, d, r), one draw each (CPU, fp32)."""
    out = []
    for name, d, r in shapes:
        gen = torch.Generator().manual_seed(seed)
        p = orthonormal_columns(torch.randn(d, r, generator=gen))
        z = torch.randn(d, r, generator=gen)
        z -= p @ (p.T @ z)
        _, sigma, _ = randomized_rank_k(z, 1, gen)
        theta = step * float(sigma[0])
        out.append({"shape": name, "d": d, "r": r, "sigma": float(sigma[0]), "theta": theta,
                    "retained_after_50_moves": (1 - math.sin(min(theta, math.pi / 2)) ** 2 / r) ** 50})
    return out

