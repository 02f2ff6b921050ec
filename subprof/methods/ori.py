"""Ori: streaming k-PCA tracking of the gradient subspace (ICLR 2026 submission 21959), in the style of Oja++
(Allen-Zhu & Li 2017, "First Efficient Convergence for Streaming k-PCA", arXiv 1607.07837).

Every step (update_gap 1), for P d×r on the side it projects and G̃ = G/‖G‖_F (d×n):

    P ← QR(P + η_t · G̃ (G̃ᵀ P))          (Oja's block step; sign-fixed thin QR, so PᵀP = I to fp32 round-off)

What we followed and where we chose (`OriRule` options in brackets):
- Ori's own code is anonymous and unreachable, and the text of arXiv 1607.07837 was not reachable from here either;
  what follows is the Oja / Oja++ scheme as summarised in METHODS.md (unverified against the paper — say so when
  citing). Oja (Alg. 1 there): Q_0 a d×k standard Gaussian, Q_t = QR((I + η_t x_t x_tᵀ) Q_{t−1}); we feed the whole
  normalised gradient, x x_tᵀ → G̃G̃ᵀ (a rank-n sample of the gradient covariance). Oja++: start with k/2 random
  columns and add k/4, k/8, … fresh random columns at epoch boundaries.
- Column activation [`oja_pp`, True]: P always has r orthonormal columns (the optimizer's moments are r-wide from
  step 0), drawn from a seeded Gaussian [`seed`] at step 0. Only the first k_e columns take the Oja step, with
  k_e = r − ⌊r / 2^(e+1)⌋ in epoch e = ⌊t / E⌋ (r/2, then 3r/4, 7r/8, …, all r after ⌈log2 r⌉ epochs) and E =
  [`epoch_steps`, 10] steps per epoch (our choice: the paper's epochs are set by its rate analysis, which needs
  the eigengap we do not know). The not-yet-active columns stay the random directions they were drawn as; the QR of
  [active | inactive] keeps the active span and re-orthogonalises the rest against it. `oja_pp=False` is plain Oja
  (all r columns from step 0). [`init="svd"`] starts from GaLore's SVD basis instead (all columns active).
- Step size [`eta`, 1.0; `schedule`]: η_t = eta · r · s(t). The factor r makes it scale-free: with ‖G̃‖_F = 1 and the
  gradient's energy spread over ~r directions, each direction's eigenvalue of G̃G̃ᵀ is ~1/r, so η_t λ ≈ eta — one
  step moves a tracked direction by a fixed fraction of its error (with eta = 1 the signal directions are amplified
  ~2× against the noise per step). s(t) = 1 by default (`constant`: tracking a drifting subspace needs a step that
  does not vanish — the point of Ori); `inv_sqrt` gives classic Oja's s(t) = 1/√(t+1).
- Order: the step uses this step's gradient before it is projected (Oja's Q_t sees x_t); a zero gradient leaves
  the active columns unchanged.
- Forms [`form`]: `fast` = `oja_step` (one fused addmm, G̃ never formed, 1/‖G‖² folded into the small GᵀP) and
  `cholesky_qr` (CholeskyQR2, BLAS-3); `reference` = `oja_step_reference` (explicit G̃ and products) and the
  sign-fixed Householder QR. Both QRs give the unique Q with diag(R) > 0; tests hold the forms equal to 1e-5 (fp32).
"""

from __future__ import annotations

import math
from typing import Any

from subprof.methods.galore import ADAM_STATES
from subprof.methods.lazy import torch
from subprof.methods.spec import Dtype, MethodSpec, Role, StateLayout, TensorSpec, basis_shape, moment_shape, two_gemm_flops
from subprof.methods.osd import initial_basis, oriented
from subprof.methods.rule import ProjectionRule, orthonormal_columns

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


def cholesky_qr(y: Tensor) -> Tensor:
    """Q of the thin QR of y (d×r, fp32) with diag(R) > 0 — the same Q as the sign-fixed Householder QR — by
    CholeskyQR2 (Fukaya et al. 2014): twice Q ← Q R⁻¹ with RᵀR = QᵀQ. Two Gram GEMMs and two triangular solves,
    all BLAS-3; accurate while cond(y) ≪ 1/√eps (an Oja step has cond ≤ 1 + η‖G̃‖²). Falls back to Householder when
    either Gram matrix is not numerically positive definite."""
    l1, info1 = torch.linalg.cholesky_ex(y.T @ y)
    q = torch.linalg.solve_triangular(l1.T, y, upper=True, left=False)
    l2, info2 = torch.linalg.cholesky_ex(q.T @ q)
    if int(info1.bitwise_or(info2)) != 0:  # the only host sync
        return orthonormal_columns(y)
    return torch.linalg.solve_triangular(l2.T, q, upper=True, left=False)


def active_columns(rank: int, step: int, epoch_steps: int) -> int:
    """Oja++'s active column count: r − ⌊r / 2^(e+1)⌋ in epoch e = ⌊step / epoch_steps⌋."""
    e = step // epoch_steps
    return rank if e >= 62 else rank - (rank >> (e + 1))


class OriRule(ProjectionRule):
    """Ori's every-step Oja++ tracking of P. Options: eta (1.0), schedule ("constant" | "inv_sqrt"), oja_pp (True),
    epoch_steps (10), init ("random" | "svd"), seed (0), form ("fast" | "reference")."""

    defaults = {"eta": 1.0, "schedule": "constant", "oja_pp": True, "epoch_steps": 10, "init": "random", "seed": 0,
                "form": "fast"}

    def __init__(self, *, rank: int, update_gap: int = 1, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        o = self.options
        self.eta = float(o["eta"])
        self.schedule = str(o["schedule"])
        self.oja_pp = bool(o["oja_pp"])
        self.epoch_steps = int(o["epoch_steps"])
        self.init = str(o["init"])
        self.seed = int(o["seed"])
        self.form = str(o["form"])
        if self.eta <= 0 or self.epoch_steps <= 0:
            raise ValueError("eta and epoch_steps must be positive")
        if self.schedule not in ("constant", "inv_sqrt"):
            raise ValueError(f"schedule must be 'constant' or 'inv_sqrt', got {self.schedule!r}")
        if self.init not in ("random", "svd"):
            raise ValueError(f"init must be 'random' or 'svd', got {self.init!r}")
        if self.form not in ("fast", "reference"):
            raise ValueError(f"form must be 'fast' or 'reference', got {self.form!r}")
        self._streams = 0

    def step_size(self, step: int, rank: int) -> float:
        """η_t = eta · r · s(t), s = 1 (constant) or 1/√(t+1) (inv_sqrt)."""
        s = 1.0 if self.schedule == "constant" else 1.0 / math.sqrt(step + 1)
        return self.eta * rank * s

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        r = self.effective_rank(tuple(grad.shape))
        if "projector" not in state:
            state["projector"] = self._initial(grad, r)
        if not self.due(step):
            return
        p = state["projector"].float()
        k = r if (self.init == "svd" or not self.oja_pp) else active_columns(r, step, self.epoch_steps)
        fast = self.form == "fast"
        moved = (oja_step if fast else oja_step_reference)(p[:, :k], oriented(grad), self.step_size(step, r))
        if k < r:
            moved = torch.cat([moved, p[:, k:]], dim=1)
        state["projector"].copy_(cholesky_qr(moved) if fast else orthonormal_columns(moved))

    def _initial(self, grad: Tensor, r: int) -> Tensor:
        p = initial_basis(grad, r, init=self.init, seed=self.seed * 1_000_003 + self._streams)
        self._streams += 1
        return p


SPEC = MethodSpec(
    name="ori",
    title="Ori (streaming k-PCA, Oja++)",
    summary="P tracked every step by an Oja step and a thin QR",
    project=True,
    layout=StateLayout(
        states=ADAM_STATES,
        workspace=(
            # GᵀP (r × max(m, n)), P + η G̃G̃ᵀP (d×r) and the thin QR's Q (d×r), fp32
            TensorSpec(name="gtp", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
            TensorSpec(name="oja_step", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
            TensorSpec(name="qr_q", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
        ),
    ),
    rule=OriRule,
    subspace="tracked",
    refresh_cost="gemm",
    default_update_gap=1,
    update_gaps=(1,),
    timing_options={"oja_pp": False},  # time the Oja step with every column active
    refresh_flops=lambda m, n, r: two_gemm_flops(m, n, r) + 4.0 * min(m, n) * r * r,
    paper="ICLR 2026 submission 21959; Allen-Zhu & Li 2017, arXiv 1607.07837",
)
