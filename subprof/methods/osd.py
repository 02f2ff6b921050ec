"""Online Subspace Descent (Liang, Liu, Chen & Liu 2024, arXiv 2408.12857, NeurIPS 2024), Algorithm 1.

W is updated as GaLore does (Adam on R = PᵀG, projected back); P is updated **every step** by one optimizer step on
the online-PCA loss of this step's gradient, written for the side P projects (P: d×r, G̃ = G/‖G‖_F, d×n):

    L(P) = ‖P PᵀG̃ − G̃‖² + λ‖PᵀP − I‖²
    ∇L   = 2(A P (PᵀP) + P (Pᵀ A P)) − 4 A P + 4λ P (PᵀP − I),    A P = G̃ (G̃ᵀ P)   (A = G̃G̃ᵀ is never formed)

What we followed and where we chose (`OSDRule` options in brackets):
- Variant `paper` (default) — Algorithm 1 as printed: P_{t+1} = P_t + η_P (Δ_P − λ_P P_t) where Δ_P is the Adam
  (betas 0.9/0.999, eps 1e-8, bias-corrected) direction of ∇L at P_t on G_t, η_P = α·η_W with α = 5 [`alpha`],
  λ = 0.1 [`ortho_weight`], λ_P = λ_W [`projector_weight_decay`, 0 — GaLore's runs use no weight decay]. SGD instead
  of Adam [`projector_optimizer="sgd"`]: P ← P − η_P ∇L (no momentum; the paper's 7B run used SGD for P, momentum
  not stated). P_0 is not specified in what we could read; we draw a random orthonormal P_0 (Gaussian + sign-fixed
  QR, seeded [`seed`]) so the method needs no SVD at all [`init="svd"` starts from GaLore's SVD basis instead].
- Variant `code` [`variant="code"`] — the authors' repository (kyleliang919/Online-Subspace-Descent,
  `galore_projector.py`, proj_type "continuous"): P from the SVD at step 0 and no P step then; from step 1 a torch
  AdamW step (weight_decay 0.01, eps 1e-8) on ‖P PᵀG̃ − G̃‖² **without** the λ term, with lr_P =
  (1/gap)·(lr_t/lr_0) where gap is their `update_proj_gap` [`code_gap`, 200: the GaLore scripts' value].
- Order: in both, G_t is projected with P_t and the P step computed from G_t gives P_{t+1}. Our optimizer calls
  `update_projection` *before* projecting, so the rule defers the step: it updates P's moments (Adam) or keeps the
  gradient (SGD, in `projector_exp_avg`) at step t and applies the parameter move at the start of step t+1. This is
  exact (the Adam direction depends only on the moments) and needs no memory beyond the declared states; the
  learning rate of the pending move is kept as a float (`projector_pending_lr`).
- Learning rate: η_W is the current group lr, which the optimizer hands over in `step_factor(state, group, step)`
  (called after `update_projection` each step; the pending step's η_P is set there). Used standalone (timing,
  tests), the rule takes it from `set_lr(lr)` or the `lr` keyword of `update_projection`, else option `lr` (1e-3).
- Forms [`form`]: `analytic` (default) evaluates ∇L in closed form: two d×n×r GEMMs (GᵀP, then G·(GᵀP)) on the
  unnormalised G with the 1/‖G‖² folded into r×r factors, plus PᵀP, Pᵀ(AP) and two d×r×r products — G̃ is never
  materialised. `autograd` is the paper's code path: build L on G̃ = G/‖G‖, `backward()` (about six d×n×r GEMMs).
  Tests hold the two equal to 1e-5 in fp32. The big GEMMs run in G's dtype (bf16 under pure-bf16 training, as GaLore
  projects); everything d×r is fp32. P is not re-orthonormalised: the λ term only keeps PᵀP ≈ I (no 1e-3 promise).
"""

from __future__ import annotations

import math
from typing import Any

from subprof.methods.galore import ADAM_STATES
from subprof.methods.lazy import torch
from subprof.methods.spec import Dtype, MethodSpec, Role, StateLayout, TensorSpec, basis_shape, moment_shape, two_gemm_flops
from subprof.methods.rule import ProjectionRule, orthonormal_columns, right_side, top_singular_basis

Tensor = Any

# --- online-PCA primitives (also used by Ori and SubTrack) ---------------------------------------------------------


def oriented(grad: Tensor) -> Tensor:
    """G seen from the side P projects, as a d×n matrix (a view, no copy): G (m < n, P on the left) or Gᵀ (m ≥ n)."""
    return grad.T if right_side(grad.shape) else grad


def covariance_product(g: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """(C, c) with C = G(GᵀP) in fp32 (the two d×n×r GEMMs, run in G's dtype) and c = 1/‖G‖_F² as a 0-d fp32
    tensor (0 for a zero gradient), so that A P = G̃G̃ᵀP = c·C. `g` is d×n (see `oriented`), `p` d×r."""
    c = g @ (g.T @ p.to(g.dtype))
    sq = torch.linalg.vector_norm(g, dtype=torch.float32).square()
    inv = torch.where(sq > 0, 1.0 / sq, torch.zeros_like(sq))
    return c.float(), inv


def random_orthonormal(d: int, r: int, *, seed: int) -> Tensor:
    """A d×r orthonormal basis from a seeded CPU Gaussian (sign-fixed thin QR), fp32."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return orthonormal_columns(torch.randn(d, r, generator=gen, dtype=torch.float32))


def initial_basis(grad: Tensor, r: int, *, init: str, seed: int) -> Tensor:
    """The step-0 projector of a streaming rule: GaLore's SVD basis (`init="svd"`) or a random orthonormal one
    drawn from `seed`, in G's dtype and on its device."""
    if init == "svd":
        return top_singular_basis(grad, r)
    d, _ = basis_shape(grad.shape[0], grad.shape[1], r)
    return random_orthonormal(d, r, seed=seed).to(device=grad.device, dtype=grad.dtype)


def online_pca_grad(p: Tensor, g: Tensor, *, ortho_weight: float) -> Tensor:
    """∇L(P) in closed form (fp32, d×r): AP(2PᵀP − 4I) + P(2PᵀAP + 4λ(PᵀP − I)), with AP = c·G(GᵀP).

    `p` is the fp32 d×r basis, `g` the d×n gradient (any dtype). Cost: two d×n×r GEMMs + four d×r×r products."""
    ap, inv = covariance_product(g, p)
    r = p.shape[1]
    eye = torch.eye(r, dtype=torch.float32, device=p.device)
    s = p.T @ p
    b = (p.T @ ap).mul_(inv)  # PᵀAP
    m1 = (2.0 * s - 4.0 * eye).mul_(inv)  # the 1/‖G‖² of AP folded into an r×r factor
    m2 = b.mul_(2.0).add_(s - eye, alpha=4.0 * ortho_weight)
    out = ap @ m1
    return out.addmm_(p, m2)


def online_pca_grad_autograd(p: Tensor, g: Tensor, *, ortho_weight: float) -> Tensor:
    """∇L(P) by autograd, as the paper's code computes it: G̃ = G/‖G‖ materialised, L built and `backward()`."""
    with torch.enable_grad():
        x = p.detach().float().clone().requires_grad_(True)
        g32 = g.float()
        gt = g32 / torch.linalg.vector_norm(g32)
        loss = (x @ (x.T @ gt) - gt).square().sum()
        if ortho_weight:
            eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
            loss = loss + ortho_weight * (x.T @ x - eye).square().sum()
        loss.backward()
    return x.grad


def online_pca_loss(p: Tensor, g: Tensor, *, ortho_weight: float) -> float:
    """L(P) itself (fp64, for tests and diagnostics)."""
    p64, g64 = p.double(), g.double()
    gt = g64 / torch.linalg.vector_norm(g64)
    eye = torch.eye(p.shape[1], dtype=torch.float64, device=p.device)
    return float((p64 @ (p64.T @ gt) - gt).square().sum() + ortho_weight * (p64.T @ p64 - eye).square().sum())


class OSDRule(ProjectionRule):
    """Online Subspace Descent's P update (see the module docstring for every choice).

    Options: variant ("paper" | "code"), projector_optimizer ("adam" | "sgd"), alpha (5.0), ortho_weight (0.1),
    projector_weight_decay (0.0; "code": 0.01), form ("analytic" | "autograd"), init ("random" | "svd"; "code": svd),
    seed (0), lr (1e-3, used only when no learning rate was handed over), base_lr ("code": lr_0, default the first
    non-zero lr seen), code_gap (200), betas ((0.9, 0.999)), eps (1e-8)."""

    defaults = {"variant": "paper", "projector_optimizer": "adam", "alpha": 5.0, "ortho_weight": 0.1,
                "projector_weight_decay": None, "form": "analytic", "init": None, "seed": 0, "lr": 1e-3,
                "base_lr": None, "code_gap": 200, "betas": (0.9, 0.999), "eps": 1e-8}

    def __init__(self, *, rank: int, update_gap: int = 1, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        o = self.options
        self.variant = str(o["variant"])
        if self.variant not in ("paper", "code"):
            raise ValueError(f"variant must be 'paper' or 'code', got {self.variant!r}")
        code = self.variant == "code"
        self.optimizer = str(o["projector_optimizer"])
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"projector_optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        self.form = str(o["form"])
        if self.form not in ("analytic", "autograd"):
            raise ValueError(f"form must be 'analytic' or 'autograd', got {self.form!r}")
        self.init = str(o["init"] or ("svd" if code else "random"))
        if self.init not in ("random", "svd"):
            raise ValueError(f"init must be 'random' or 'svd', got {self.init!r}")
        self.alpha = float(o["alpha"])
        self.ortho_weight = 0.0 if code else float(o["ortho_weight"])
        wd = o["projector_weight_decay"]
        self.weight_decay = float((0.01 if code else 0.0) if wd is None else wd)
        self.default_lr = float(o["lr"])
        self.base_lr = o["base_lr"]
        self.code_gap = int(o["code_gap"])
        self.betas = tuple(float(b) for b in o["betas"])
        self.eps = float(o["eps"])
        self.seed = int(o["seed"])
        if self.alpha <= 0 or self.code_gap <= 0 or self.ortho_weight < 0 or self.weight_decay < 0:
            raise ValueError("alpha and code_gap must be positive, ortho_weight and projector_weight_decay ≥ 0")
        self._lr: float | None = None
        self._streams = 0

    def set_lr(self, lr: float) -> None:
        """The W learning rate of the current step (η_W); the P step uses α·η_W ("paper") or the code's ratio."""
        self._lr = float(lr)

    def loss_grad(self, p: Tensor, g: Tensor) -> Tensor:
        fn = online_pca_grad if self.form == "analytic" else online_pca_grad_autograd
        return fn(p, g, ortho_weight=self.ortho_weight)

    def update_projection(self, state: dict, grad: Tensor, step: int, lr: float | None = None) -> None:
        if lr is not None:
            self.set_lr(lr)
        lr_w = self._lr if self._lr is not None else self.default_lr
        if "projector" not in state:
            state["projector"] = self._initial(grad)
            if self.variant == "code":  # the code creates P (and its optimizer) at step 0 and steps from step 1
                return
        else:
            self._apply_pending(state)
        lr_p = self._projector_lr(state, lr_w)
        grad_p = self.loss_grad(state["projector"].float(), oriented(grad))
        self._record(state, grad_p, lr_p)

    # --- internals ------------------------------------------------------------------------------------------------
    def _initial(self, grad: Tensor) -> Tensor:
        p = initial_basis(grad, self.effective_rank(tuple(grad.shape)), init=self.init,
                          seed=self.seed * 1_000_003 + self._streams)
        self._streams += 1
        return p

    def _projector_lr(self, state: dict, lr_w: float, initial_lr: float | None = None) -> float:
        """η_P: α·η_W ("paper"), or (η_W/η_0)/code_gap ("code"; η_0 = option base_lr, else the group's
        `initial_lr` as torch schedulers set it, else the first non-zero group lr seen, kept in the state, else
        η_W itself)."""
        if self.variant == "paper":
            return self.alpha * lr_w
        base = self.base_lr or initial_lr or state.get("projector_lr_init") or lr_w
        return (lr_w / base if base else 0.0) / self.code_gap

    def step_factor(self, state: dict, group: dict, step: int) -> float:
        """The optimizer's per-step hook that sees `group` (called after `low_rank_update`, before the next
        `update_projection`): besides the base's factor, it reads this step's learning rate and sets the pending P
        step's η_P from it, so η_P follows the schedule exactly. The W step itself is the base's Adam."""
        lr = group.get("lr")
        if lr is not None:
            if self.variant == "code" and lr > 0 and "projector_lr_init" not in state:
                state["projector_lr_init"] = float(lr)
            if "projector_pending_lr" in state:
                state["projector_pending_lr"] = self._projector_lr(state, float(lr), group.get("initial_lr"))
        return super().step_factor(state, group, step)

    def _record(self, state: dict, grad_p: Tensor, lr_p: float) -> None:
        """Fold ∇L into P's optimizer state; the move itself is applied at the next call (`_apply_pending`)."""
        if self.optimizer == "sgd":
            self.write_moment(state, "projector_exp_avg", grad_p)
        else:
            b1, b2 = self.betas
            if "projector_exp_avg" in state:
                m = self.read_moment(state, "projector_exp_avg")
                v = self.read_moment(state, "projector_exp_avg_sq")
            else:
                m, v = torch.zeros_like(grad_p), torch.zeros_like(grad_p)
            m.mul_(b1).add_(grad_p, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(grad_p, grad_p, value=1.0 - b2)
            self.write_moment(state, "projector_exp_avg", m)
            self.write_moment(state, "projector_exp_avg_sq", v)
        state["projector_step"] = int(state.get("projector_step", 0)) + 1
        state["projector_pending_lr"] = float(lr_p)

    def _apply_pending(self, state: dict) -> None:
        """P ← P(1 − η_P λ_P) − η_P Δ_P with Δ_P the bias-corrected Adam direction (or the kept SGD gradient)."""
        lr = state.pop("projector_pending_lr", None)
        if lr is None or lr == 0.0:
            return
        p = state["projector"].float()  # P itself when fp32: updated in place
        if self.weight_decay:
            p.mul_(1.0 - lr * self.weight_decay)
        if self.optimizer == "sgd":
            p.add_(self.read_moment(state, "projector_exp_avg"), alpha=-lr)
        else:
            b1, b2 = self.betas
            k = int(state["projector_step"])
            m = self.read_moment(state, "projector_exp_avg")
            denom = self.read_moment(state, "projector_exp_avg_sq").sqrt().div_(math.sqrt(1.0 - b2**k)).add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / (1.0 - b1**k))
        if p is not state["projector"]:
            state["projector"].copy_(p)


SPEC = MethodSpec(
    name="osd",
    title="Online Subspace Descent",
    summary="P updated every step by one Adam step on the online-PCA loss",
    project=True,
    layout=StateLayout(
        states=ADAM_STATES + (
            TensorSpec(name="projector_exp_avg", shape=basis_shape, dtype=Dtype.STATE, role=Role.MOMENT),
            TensorSpec(name="projector_exp_avg_sq", shape=basis_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        ),
        workspace=(
            # analytic step: GᵀP (r × max(m, n)), AP = G(GᵀP) and P in fp32, ∇L, Adam's denominator (d×r each)
            TensorSpec(name="gtp", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
            TensorSpec(name="ap", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
            TensorSpec(name="projector_fp32", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
            TensorSpec(name="grad_p", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
            TensorSpec(name="denom_p", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
        ),
    ),
    rule=OSDRule,
    subspace="tracked",
    refresh_cost="gemm",
    default_update_gap=1,
    update_gaps=(1,),
    timing_variants={"osd-autograd": {"form": "autograd"}},
    refresh_flops=lambda m, n, r: two_gemm_flops(m, n, r) + 8.0 * min(m, n) * r * r,
    paper="Liang et al. 2024, arXiv 2408.12857",
)
