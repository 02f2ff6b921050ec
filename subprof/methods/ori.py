"""Ori: streaming k-PCA tracking of the gradient subspace (ICLR 2026 submission 21959, "Ori: Capturing Gradient
Subspace Drift via Streaming k-PCA for Very Low-Rank LLM Training"), in the style of Oja++ (Allen-Zhu & Li 2017,
arXiv 1607.07837). NOT VERIFIED: Ori's code is anonymous and was not reachable, nor was its paper's body or the
Oja++ paper's text (only their abstracts) — every choice below is ours, written from METHODS.md's summary.

    every T steps (default every step), on the k active columns P_k (d×k) and G̃ = G/‖G‖_F seen from P's side:
    P_k ← QR(P_k + η_t · G̃ (G̃ᵀ P_k))          (Oja's block step; sign-fixed thin QR, so PᵀP = I on the active part)

Choices (`OriRule` options in brackets):
- Oja++ column activation [`oja_pp`, True]: k/2 random columns at step 0, then at epoch boundaries fresh random
  columns are appended, k_e = r − ⌊r/2^(e+1)⌋ active in epoch e (r/2, 3r/4, 7r/8, …, all r at epoch ⌊log2 r⌋). The
  epochs are tied to a share of training [`activation_share`, 0.1]: E = ⌊share · total_steps / ⌊log2 r⌋⌋ steps, so
  every column is active after the first 10% of training — the warm-up share of the GaLore/SubTrack recipes (1000 of
  10000 steps). total_steps [`total_steps`]: the run's length (burst passes it); unknown → 10,000, the length of those
  recipes' 60m–350m runs.
- Inactive columns are kept out of the projection: they are zero in P, so R = PᵀG (or G P) is zero there, Adam's
  moments stay zero and the update has no component along them. The moments keep their full r width (the declared
  memory does not change); a column activated at step t starts from zero moments, so its first updates are up to ~3×
  an ordinary Adam step (the bias correction counts the weight's steps, not the column's).
- Step size [`eta`, 1.0; `schedule`]: η_t = eta · r · s(t). The factor r makes it scale-free: ‖G̃‖_F = 1 spread over
  ~r directions gives eigenvalues of G̃G̃ᵀ ~1/r, so η_t λ ≈ eta — each step moves a tracked direction by a fixed
  fraction of its error. s(t) = 1 [`constant`, default: tracking a drifting subspace needs a step that does not
  vanish]; `inv_sqrt` gives classic Oja's s(t) = 1/√(t+1).
- Start [`init`]: random (Gaussian + QR, per-weight generator [`seed`], state in `state["rng_state"]`); "svd" starts
  from GaLore's basis with every column active. Update gap [`update_gap`]: every T steps like any streaming method
  (plan searches 1, 2, 5, 10). lr 1e-2, α 0.25: the GaLore recipe, which Ori's Adam on R shares (Ori's own values
  were not reachable).
- Forms [`form`]: "fast" = `oja_step` (one fused addmm, G̃ never formed) + shifted CholeskyQR3 (`cholesky_qr`,
  no host sync); "reference" = explicit G̃ and the Householder QR. Tests hold them equal to 1e-5 (fp32).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from subprof.methods.bases import BASES
from subprof.methods.galore import ADAM_STATES, SVD_WORKSPACE
from subprof.methods.lazy import torch
from subprof.methods.moving import choice
from subprof.methods.osd import covariance_product, oriented
from subprof.methods.rule import SeededRule, orthonormal_columns
from subprof.methods.spec import Dtype, MethodSpec, Role, StateLayout, TensorSpec, basis_shape, moment_shape, two_gemm_flops
from subprof.methods.spec import STREAMING_COMMS, SVD_FIRST_COMMS

DEFAULT_TOTAL_STEPS = 10_000  # the GaLore / SubTrack++ recipes' 60m–350m runs (--num_training_steps 10000)

Tensor = Any

def oja_step(p: Tensor, g: Tensor, eta: float) -> Tensor:
    """P + η G̃G̃ᵀP before the QR (fp32, d×r), fused: the scalar η/‖G‖² scales the small GᵀP, then one addmm adds
    G(GᵀP) onto P. No host sync (a zero gradient gives P unchanged). `g` is d×n, `p` fp32 d×r."""
    sq = torch.linalg.vector_norm(g, dtype=torch.float32).square()
    scale = torch.where(sq > 0, eta / sq, torch.zeros_like(sq))
    gtp = (g.T @ p.to(g.dtype)).mul_(scale.to(g.dtype))
    if g.dtype == torch.float32:
        return torch.addmm(p, g, gtp)
    return (g @ gtp).float().add_(p)


def oja_step_reference(p: Tensor, g: Tensor, eta: float) -> Tensor:
    """The same step written plainly: G̃ = G/‖G‖ materialised, A P = G̃ (G̃ᵀ P), P + η A P."""
    gt = g.float() / torch.linalg.vector_norm(g.float())
    return p + eta * (gt @ (gt.T @ p))


SHIFT = 1e-6  # relative diagonal shift of the first Gram matrix (undone by the next two passes)


def cholesky_qr(y: Tensor) -> Tensor:
    """Q of the thin QR of y (d×r, fp32) with diag(R) > 0 — the same Q as the sign-fixed Householder QR — by
    shifted CholeskyQR3 (Fukaya, Kannan, Nakatsukasa, Yamamoto & Yanagisawa 2020): Q ← Q R⁻¹ with RᵀR = QᵀQ three
    times, the first Gram matrix shifted by SHIFT · its mean diagonal. Three Gram GEMMs and three triangular solves,
    all BLAS-3, and no host sync (`cholesky_ex`, whose error check is not needed: the shift keeps the first
    factorisation defined even for a rank-deficient y, and the passes after it restore orthonormality). Any
    invertible R keeps span(y), so for a full-rank y, Q equals the Householder one to fp32 round-off."""
    q = y
    for shift in (SHIFT, 0.0, 0.0):
        gram = q.T @ q
        if shift:
            gram.diagonal().add_(gram.diagonal().mean() * shift)
        factor, _ = torch.linalg.cholesky_ex(gram)
        q = torch.linalg.solve_triangular(factor.T, q, upper=True, left=False)
    return q


def active_columns(rank: int, step: int, epoch_steps: int) -> int:
    """Oja++'s active column count: r − ⌊r / 2^(e+1)⌋ in epoch e = ⌊step / epoch_steps⌋."""
    e = step // epoch_steps
    return rank if e >= 62 else rank - (rank >> (e + 1))


def activation_epoch(rank: int, total_steps: int, share: float) -> int:
    """Steps per activation epoch: E = ⌊share · total_steps / ⌊log2 r⌋⌋ (≥ 1), so all r columns are active from step
    ⌊log2 r⌋ · E ≤ share · total_steps on (less than ⌊log2 r⌋ steps before it)."""
    epochs = max(1, rank.bit_length() - 1)
    return max(1, math.floor(share * total_steps / epochs))


class OriRule(SeededRule):
    """Ori's Oja++ tracking of P (see the module docstring). Options: eta (1.0), schedule ("constant" | "inv_sqrt"),
    oja_pp (True), activation_share (0.1), total_steps (None: 10,000), init ("random" | "svd"), seed (0),
    form ("fast" | "reference")."""

    defaults = {"eta": 1.0, "schedule": "constant", "oja_pp": True, "activation_share": 0.1, "total_steps": None,
                "init": "random", "seed": 0, "form": "fast"}

    def __init__(self, *, rank: int, update_gap: int = 1, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        o = self.options
        self.eta = float(o["eta"])
        self.schedule = choice("schedule", o["schedule"], ("constant", "inv_sqrt"))
        self.oja_pp = bool(o["oja_pp"])
        self.activation_share = float(o["activation_share"])
        self.total_steps = int(o["total_steps"] or DEFAULT_TOTAL_STEPS)
        self.init = choice("init", o["init"], ("random", "svd"))
        self.form = choice("form", o["form"], ("fast", "reference"))
        if self.eta <= 0 or self.total_steps <= 0 or not 0.0 < self.activation_share <= 1.0:
            raise ValueError("eta and total_steps must be positive and activation_share in (0, 1]")

    def step_size(self, step: int, rank: int) -> float:
        """η_t = eta · r · s(t), s = 1 (constant) or 1/√(t+1) (inv_sqrt)."""
        s = 1.0 if self.schedule == "constant" else 1.0 / math.sqrt(step + 1)
        return self.eta * rank * s

    def active(self, rank: int, step: int) -> int:
        """How many columns take part at this step (all unless Oja++ activation from a random start)."""
        if self.init == "svd" or not self.oja_pp:
            return rank
        return active_columns(rank, step, activation_epoch(rank, self.total_steps, self.activation_share))

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        shape = self.weight_shape(grad)
        r = self.effective_rank(shape)
        if "projector" not in state:
            self._initial(state, grad, shape, r, step)
        if not self.due(step):
            return
        p = state["projector"]
        k_old, k = int(state.get("active_columns", r)), self.active(r, step)
        y = p[:, :k_old].float()
        if k > k_old:  # Oja++: fresh random columns join (scaled to unit length, so the QR stays well conditioned)
            gen = self.generator(state)
            fresh = self.gaussian(gen, p.shape[0], k - k_old, y.device).div_(math.sqrt(p.shape[0]))
            self.save_generator(state, gen)
            y = torch.cat([y, fresh], dim=1)
        fast = self.form == "fast"
        g, eta = oriented(grad, shape), self.step_size(step, r)
        if self.ctx.sharded:  # G(GᵀP) and ‖G‖² summed over the shards: one all-reduce of d·k + 1 values
            c, inv = covariance_product(g, y, self.ctx)
            moved = y + c.mul_(inv * eta)
        else:
            moved = (oja_step if fast else oja_step_reference)(y, g, eta)
        p[:, :k].copy_(cholesky_qr(moved) if fast else orthonormal_columns(moved))
        state["active_columns"] = k

    def _initial(self, state: dict, grad: Tensor, shape: tuple[int, ...], r: int, step: int) -> None:
        """P_0: GaLore's SVD basis, or k_0 random orthonormal columns followed by r − k_0 zero (inactive) ones."""
        if self.init == "svd":
            state["projector"] = self.svd_basis(grad, r)
            state["active_columns"] = r
            return
        d, _ = basis_shape(shape[0], shape[1], r)
        k = self.active(r, step)
        gen = self.generator(state)
        p = torch.zeros(d, r, dtype=torch.float32)
        p[:, :k] = orthonormal_columns(self.gaussian(gen, d, k))
        self.save_generator(state, gen)
        state["projector"] = p.to(device=grad.device, dtype=grad.dtype)
        state["active_columns"] = k


def layout(options: Mapping[str, Any]) -> StateLayout:
    """Adam's moments (always r wide) and P (d×r, inactive columns zero). Refresh: the SVD when P starts from it, else
    an Oja step's GᵀP (r × max(m, n)), P + η G̃G̃ᵀP and its Q (d×r each) and CholeskyQR's r×r Gram factor, fp32."""
    return StateLayout(states=ADAM_STATES, workspace=SVD_WORKSPACE if options["init"] == "svd" else (
        TensorSpec(name="gtp", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
        TensorSpec(name="oja_step", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
        TensorSpec(name="qr_q", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
        TensorSpec(name="gram", shape=lambda m, n, r: (r, r), dtype=Dtype.FP32, role=Role.WORKSPACE)))


SPEC = MethodSpec(
    name="ori",
    title="Ori (streaming k-PCA, Oja++)",
    summary="P tracked every T steps (default every step) by an Oja step and a thin QR, columns activated Oja++-style",
    project=True,
    layout=layout,
    rule=OriRule,
    subspace="tracked",
    bases=tuple(BASES),
    variants={"svd-start": {"init": "svd"}, "plain-oja": {"oja_pp": False}, "inv-sqrt": {"schedule": "inv_sqrt"}},
    refresh_cost="gemm",
    default_update_gap=1,
    update_gaps=(1, 2, 5, 10),
    timing_options={"oja_pp": False},  # time the Oja step with every column active
    refresh_flops=lambda m, n, r: two_gemm_flops(m, n, r) + 4.0 * min(m, n) * r * r,
    default_lr=1e-2,
    lr_source="not published (Ori's code and paper body not reachable): the GaLore recipe's 1e-2 with scale 0.25",
    # per rank under FSDP: one all-reduce of A·P (d·r + 1; Oja++ moves ≤ r columns) per step
    comms=lambda o: STREAMING_COMMS + (SVD_FIRST_COMMS if o["init"] == "svd" else ()),
    paper="ICLR 2026 submission 21959; Allen-Zhu & Li 2017, arXiv 1607.07837",
)
