"""Online Subspace Descent (Liang, Liu, Chen & Liu 2024, arXiv 2408.12857, NeurIPS 2024; code
kyleliang919/Online-Subspace-Descent@e694775, `galore_torch/galore_projector.py`, proj_type "continuous").

W is updated as GaLore does (Adam on R = PᵀG, projected back); every `update_gap` steps P takes one optimizer step
on the online-PCA loss of that step's gradient, for the side P projects (P: d×r, G̃ = G/‖G‖_F, d×n):

    L(P) = ‖P PᵀG̃ − G̃‖² + λ‖PᵀP − I‖²
    ∇L   = 2(A P (PᵀP) + P (Pᵀ A P)) − 4 A P + 4λ P (PᵀP − I),    A P = G̃ (G̃ᵀ P)   (A = G̃G̃ᵀ is never formed)

Variants [`variant`]:
- "paper" (default), Algorithm 1 as printed: P ← P + η_P(Δ_P − λ_P P) with Δ_P the Adam direction (0.9/0.999,
  eps 1e-8, bias-corrected) of ∇L, η_P = α·η_W, α = 5 [`alpha`], λ = 0.1 [`ortho_weight`], λ_P = 0
  [`projector_weight_decay`; GaLore-style runs use no decay]; SGD instead of Adam [`projector_optimizer="sgd"`,
  no momentum; the paper's 7B run used SGD]; Lion or Adafactor [`"lion"`, `"adafactor"`: the paper's Table 2
  "{W optimizer} + {P optimizer}" rows, as the code builds them — lion-pytorch's Lion, transformers' Adafactor with
  relative_step, scale_parameter, warmup_init off — run by `subprof.methods.bases`; the sign(c) or clipped
  factored-RMS direction computed at the due step waits in `projector_pending` (d×r) for the deferred move]. P_0 from the SVD of the first gradient, as the authors' code does
  (the paper only asks for "proper initialization"), and like the code no P step at step 0 (∇L at the SVD basis of
  G_0 is zero up to round-off, which Adam would turn into a full-size step) [`init="random"`: a seeded random
  orthonormal P_0, no SVD, P stepped from step 0].
- "code": the repository's rule — SVD start and no P step at step 0, then a torch AdamW step (weight_decay 0.01,
  eps 1e-8) on ‖P PᵀG̃ − G̃‖² without λ, lr_P = (1/gap)·(lr_t/lr_0), gap their `update_proj_gap` [`code_gap`, 200].
Defaults: lr 1e-2, α_W = 0.25 (the README's 60M command: `--lr 0.01 --galore_scale 0.25 --update_proj_gap 200`);
`update_gap` 1 (both the paper and the code step P every step; plan also searches 2, 5 and 10).
Choices and deviations:
- Order: G_t is projected with P_t and the P step from G_t gives P_{t+1}. Our optimizer refreshes *before*
  projecting, so the rule folds ∇L into P's moments at a due step t and applies the move at the start of step t+1
  (exact: the Adam direction depends only on the moments); the pending move's lr is a float (`projector_pending_lr`).
  η_W is the group lr of step t, handed over in `step_factor` (standalone: `set_lr`, the `lr` keyword or option `lr`).
- Forms [`form`]: "analytic" (default) evaluates ∇L in closed form — two d×n×r GEMMs on the unnormalised G, the
  1/‖G‖² folded into r×r factors; "autograd" builds L on G̃ and calls `backward()` (the code's way, ~six GEMMs).
  Equal to 1e-5 in tests. Big GEMMs in G's dtype, everything d×r in fp32. P is not re-orthonormalised (the λ term
  keeps PᵀP ≈ I only approximately).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

from subprof.methods.bases import BASES
from subprof.methods.galore import ADAM_STATES, SVD_WORKSPACE
from subprof.methods.lazy import torch
from subprof.methods.rule import LOCAL, ProjectionRule, orthonormal_columns, right_side
from subprof.methods.spec import (STREAMING_COMMS, SVD_FIRST_COMMS, Dtype, MethodSpec, Role, StateLayout, TensorSpec,
                                  basis_shape, full_shape, moment_shape, replicated, two_gemm_flops)

Tensor = Any

# --- online-PCA primitives (also used by Ori and SubTrack) ---------------------------------------------------------


def oriented(grad: Tensor, shape: tuple[int, ...] | None = None) -> Tensor:
    """G seen from the side P projects, as a d×n matrix (a view, no copy): G (m < n, P on the left) or Gᵀ (m ≥ n).
    `shape`: the whole weight's (m, n) when `grad` is a shard of it (`ProjectionRule.weight_shape`)."""
    return grad.T if right_side(grad.shape if shape is None else shape) else grad


def covariance_product(g: Tensor, p: Tensor, ctx: Any = LOCAL, gtp: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(C, c) with C = G(GᵀP) in fp32 (the two d×n×r GEMMs, run in G's dtype) and c = 1/‖G‖_F² as a 0-d fp32
    tensor (0 for a zero gradient), so that A P = G̃G̃ᵀP = c·C. `g` is d×n (see `oriented`), `p` d×r; `gtp`, when
    given, is GᵀP already computed (the projected gradient R, transposed on the left side): one GEMM fewer.
    Sharded (`ctx`), both are sums over the ranks' shards: one all-reduce of d·r + 1 values
    (`ctx.covariance_product`)."""
    if ctx.sharded:
        c, sq = ctx.covariance_product(g, p, gtp)
    else:
        c = (g @ (g.T @ p.to(g.dtype) if gtp is None else gtp)).float()
        sq = torch.linalg.vector_norm(g, dtype=torch.float32).square()
    inv = torch.where(sq > 0, 1.0 / sq, torch.zeros_like(sq))
    return c, inv


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


def online_pca_grad(p: Tensor, g: Tensor, *, ortho_weight: float, ctx: Any = LOCAL,
                    gtp: Tensor | None = None) -> Tensor:
    """∇L(P) in closed form (fp32, d×r): AP(2PᵀP − 4I) + P(2PᵀAP + 4λ(PᵀP − I)), with AP = c·G(GᵀP).

    `p` is the fp32 d×r basis, `g` the d×n gradient (any dtype). Cost: two d×n×r GEMMs (one when `gtp` = GᵀP is
    given) + four d×r×r products."""
    ap, inv = covariance_product(g, p, ctx, gtp)
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

    Options: variant ("paper" | "code"), projector_optimizer ("adam" | "sgd" | "lion" | "adafactor"), alpha (5.0), ortho_weight (0.1),
    projector_weight_decay (0.0; "code": 0.01), form ("analytic" | "autograd"), init ("svd" | "random"),
    seed (0), lr (1e-3, used only when no learning rate was handed over), base_lr ("code": lr_0, default the first
    non-zero lr seen), code_gap (200), betas ((0.9, 0.999)), eps (1e-8)."""

    defaults = {"variant": "paper", "projector_optimizer": "adam", "alpha": 5.0, "ortho_weight": 0.1,
                "projector_weight_decay": None, "form": "analytic", "init": "svd", "seed": 0, "lr": 1e-3,
                "base_lr": None, "code_gap": 200, "betas": (0.9, 0.999), "eps": 1e-8}

    def __init__(self, *, rank: int, update_gap: int = 1, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        o = self.options
        self.variant = str(o["variant"])
        if self.variant not in ("paper", "code"):
            raise ValueError(f"variant must be 'paper' or 'code', got {self.variant!r}")
        code = self.variant == "code"
        self.optimizer = str(o["projector_optimizer"])
        if self.optimizer not in PROJECTOR_OPTIMIZERS:
            raise ValueError(f"projector_optimizer must be one of {', '.join(map(repr, PROJECTOR_OPTIMIZERS))}, "
                             f"got {self.optimizer!r}")
        self.form = str(o["form"])
        if self.form not in ("analytic", "autograd"):
            raise ValueError(f"form must be 'analytic' or 'autograd', got {self.form!r}")
        self.init = str(o["init"])
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

    def loss_grad(self, p: Tensor, g: Tensor, gtp: Tensor | None = None) -> Tensor:
        """∇L at `p` on `g` in this rule's form (`gtp` = GᵀP, reused by the analytic form when given)."""
        if self.form == "analytic":
            return online_pca_grad(p, g, ortho_weight=self.ortho_weight, ctx=self.ctx, gtp=gtp)
        if self.ctx.sharded:
            raise ValueError("form='autograd' builds L on the whole gradient; a sharded weight needs "
                             "form='analytic' (one all-reduce of d·r + 1 values)")
        return online_pca_grad_autograd(p, g, ortho_weight=self.ortho_weight)

    update_methods = ("_advance", "_step_projector")  # both paths below are made of these two

    def update_projection(self, state: dict, grad: Tensor, step: int, lr: float | None = None) -> None:
        if lr is not None:
            self.set_lr(lr)
        if self._advance(state, grad, step):
            self._step_projector(state, grad)

    def refresh_and_project(self, state: dict, grad: Tensor, step: int) -> Tensor:
        """As the base, with one GEMM fewer: the P step is taken at P_t on G_t, exactly the pair that projects
        this step's gradient, so R = G·P_t (or P_tᵀG) is also the GᵀP the analytic ∇L needs."""
        due = self._advance(state, grad, step)
        r_grad = self.project(state, grad)
        if due:
            self._step_projector(state, grad, gtp=r_grad if right_side(self.weight_shape(grad)) else r_grad.T)
        return r_grad

    def _advance(self, state: dict, grad: Tensor, step: int) -> bool:
        """Create P (step 0) or apply the pending move; whether a P step is due now."""
        if "projector" not in state:
            state["projector"] = self._initial(state, grad)
            if self.init == "svd":  # P_0 is optimal for G_0 (∇L = 0 up to round-off, which Adam would blow up to a
                return False        # full step); the code, too, creates P (and its optimizer) at step 0, steps from 1
        else:
            self._apply_pending(state)  # the move computed at the last due step, applied the step after it
        return self.due(step)

    def _step_projector(self, state: dict, grad: Tensor, gtp: Tensor | None = None) -> None:
        """Fold ∇L at P_t on G_t into P's optimizer (`_record`); `gtp` = GᵀP when already computed."""
        lr_p = self._projector_lr(state, self._lr if self._lr is not None else self.default_lr)
        self._record(state, self.loss_grad(state["projector"].float(), oriented(grad, self.weight_shape(grad)), gtp),
                     lr_p)

    # --- internals ------------------------------------------------------------------------------------------------
    def _initial(self, state: dict, grad: Tensor) -> Tensor:
        """P_0: GaLore's SVD basis, or a random orthonormal one seeded by the weight's stream (its position in the
        optimizer, `state["stream"]`, else the order in which weights first reach the rule)."""
        stream = state.get("stream")
        if stream is None:
            stream, self._streams = self._streams, self._streams + 1
        m, n = self.weight_shape(grad)
        r = self.effective_rank((m, n))
        if self.init == "svd":
            return self.svd_basis(grad, r)
        d, _ = basis_shape(m, n, r)
        return random_orthonormal(d, r, seed=self.seed * 1_000_003 + int(stream)).to(device=grad.device,
                                                                                        dtype=grad.dtype)

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
        elif self.optimizer in ("lion", "adafactor"):
            self.write_moment(state, "projector_pending", self._base_direction(state, grad_p))
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

    def _base_direction(self, state: dict, grad_p: Tensor) -> Tensor:
        """Lion's sign(β₁m + (1−β₁)∇L) (m ← β₂m + (1−β₂)∇L) or Adafactor's clipped direction (its factors
        updated) of P's gradient, by the base's own update on P's states (names prefixed "projector_"); the step
        size is η_P, applied with the move. P is whole on every rank: nothing to sum."""
        from subprof.methods.bases import update_for

        own = {k[len("projector_"):]: v for k, v in state.items()
               if k.startswith("projector_exp_avg")}  # the base's names, sharing the stored tensors
        group = {"lr": 1.0, "state_bits": self.state_bits, "base_options": {}}
        direction = update_for(self.optimizer).direction(own, grad_p, group, int(state.get("projector_step", 0)))
        for k, v in own.items():
            state["projector_" + k] = v
        return direction.sign_() if self.optimizer == "lion" else direction

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
        elif self.optimizer in ("lion", "adafactor"):
            p.add_(self.read_moment(state, "projector_pending"), alpha=-lr)
        else:
            b1, b2 = self.betas
            k = int(state["projector_step"])
            m = self.read_moment(state, "projector_exp_avg")
            denom = self.read_moment(state, "projector_exp_avg_sq").sqrt().div_(math.sqrt(1.0 - b2**k)).add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / (1.0 - b1**k))
        if p is not state["projector"]:
            state["projector"].copy_(p)


STREAMING_WORKSPACE = (
    # analytic step: GᵀP (r × max(m, n)), AP = G(GᵀP) and P in fp32, ∇L, Adam's denominator (d×r each)
    TensorSpec(name="gtp", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="ap", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="projector_fp32", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="grad_p", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="denom_p", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
)
# the autograd form builds L on G̃: measured peak 5.2 m×n fp32 with fp32 gradients, 6.2 with bf16 ones (the G.float()
# copy); declared as six m×n fp32 tensors (the bf16 case; one too many at fp32) plus the small ones above
AUTOGRAD_WORKSPACE = tuple(TensorSpec(name=name, shape=full_shape, dtype=Dtype.FP32, role=Role.WORKSPACE)
                           for name in ("g_fp32", "g_normalised", "reconstruction", "residual", "residual_sq",
                                        "residual_grad")) + STREAMING_WORKSPACE
PROJECTOR_OPTIMIZERS = ("adam", "sgd", "lion", "adafactor")
PENDING = TensorSpec(name="projector_pending", shape=basis_shape, dtype=Dtype.STATE, role=Role.MOMENT)
PROJECTOR_ADAM = (
    TensorSpec(name="projector_exp_avg", shape=basis_shape, dtype=Dtype.STATE, role=Role.MOMENT),
    TensorSpec(name="projector_exp_avg_sq", shape=basis_shape, dtype=Dtype.STATE, role=Role.MOMENT),
)


def layout(options: Mapping[str, Any]) -> StateLayout:
    """W's base moments and P, plus P's optimizer state: Adam's two d×r moments, with SGD the one d×r gradient
    kept for the deferred move, with Lion or Adafactor their states of P and the pending d×r direction. Refresh: the autograd form's m×n tensors (they exceed an SVD's), else step 0's SVD
    when P starts from it (it dominates an analytic step's d×r and r × max(m, n) tensors), else the analytic step's."""
    sgd = options["projector_optimizer"] == "sgd"
    workspace = (AUTOGRAD_WORKSPACE if options["form"] == "autograd" else
                 SVD_WORKSPACE if options["init"] == "svd" else STREAMING_WORKSPACE)
    if options["projector_optimizer"] in ("lion", "adafactor"):  # the base's states of P, and the pending move
        moments = tuple(replace(t, name="projector_" + t.name)
                        for t in BASES[options["projector_optimizer"]].moments(basis_shape, replicated))
        return StateLayout(states=ADAM_STATES + moments + (PENDING,), workspace=workspace)
    return StateLayout(states=ADAM_STATES + (PROJECTOR_ADAM[:1] if sgd else PROJECTOR_ADAM), workspace=workspace)


SPEC = MethodSpec(
    name="osd",
    title="Online Subspace Descent",
    summary="P updated every T steps (default every step) by one Adam step on the online-PCA loss, from the SVD",
    project=True,
    layout=layout,
    rule=OSDRule,
    subspace="tracked",
    variants={"code": {"variant": "code"}, "random-start": {"init": "random"}, "sgd": {"projector_optimizer": "sgd"},
              "lion-p": {"projector_optimizer": "lion"}, "adafactor-p": {"projector_optimizer": "adafactor"}},
    bases=tuple(BASES),  # OSD Table 2: its W optimizer is Adam, Lion or Adafactor
    refresh_cost="gemm",
    default_update_gap=1,
    update_gaps=(1, 2, 5, 10),
    timing_variants={"osd-autograd": {"form": "autograd"}},
    refresh_flops=lambda m, n, r: two_gemm_flops(m, n, r) + 8.0 * min(m, n) * r * r,
    default_lr=1e-2,
    lr_source="OSD README, LLaMA-60M command (--lr 0.01 --galore_scale 0.25)",
    # per rank under FSDP: one all-reduce of A·P (d·r + 1) per step; an SVD start gathers G once
    comms=lambda o: STREAMING_COMMS + (SVD_FIRST_COMMS if o["init"] == "svd" else ()),
    paper="Liang et al. 2024, arXiv 2408.12857",
)
