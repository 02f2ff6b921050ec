"""SUMO (Refael, Smorodinsky, Tirer & Lindenbaum, arXiv 2505.24749, NeurIPS 2025; code github.com/guy120494/SUMO
not reachable here, so the paper's Algorithm 1 is the reference): one moment in a low-rank subspace, orthogonalised
exactly by an SVD each step.

    every K steps:  Q ← top-r basis of G by randomized SVD;  M ← (Q_newᵀQ_old) M       (Q d×r, d = min(m, n))
    every step:     Ĝ = QᵀG,  M ← μ M + Ĝ,  O = U Vᵀ (thin SVD of M),  O ← c·O
                    W ← W − η ((G − QĜ) + α Q O) − η λ W                              (η = lr, α = scale)

Defaults and their sources:
- subspace [`subspace="randomized"`]: the paper's Truncated_Randomized_SVD (Halko, Martinsson & Tropp 2011, Alg.
  4.4 + 5.1): ℓ = r + 10 Gaussian columns [`oversample`], 2 power iterations with a QR after each [`power_iters`]
  (the oversampling Halko et al. recommend and the iterations of `torch.svd_lowrank`; the paper's values were not
  found), Ω from a per-weight CPU generator [`seed`, state in `state["rng_state"]`]; `subspace="exact"` is
  GaLore's full SVD (the paper allows it).
- out-of-subspace term [`residual="paper"`]: Algorithm 1 adds the raw residual G − QQᵀG with the learning rate, no
  scaling; computed without an m×n temporary (W −= η G, then the low-rank part carries −QĜ). `"fira"`: Fira's scaled
  and growth-limited term (`subprof.methods.moving`, γ = `growth_limit`) with O as the low-rank update; None: off.
- update size [`update_scale="moonlight"`]: c = 0.2·√max(m, n) — Moonlight's rule (Liu et al. 2025, arXiv
  2502.16982 §2.2) that the SUMO paper cites ("scaling updates by √max(m, n) ... similar to AdamW"): it gives O's
  entries in the subspace an RMS of 0.2, the RMS of a typical AdamW update, so SUMO's step is comparable to Adam's
  at the same lr (a test compares it with GaLore's). Measured here on the tiny LLaMA (stdlib corpus, rank 16, lr
  1e-2, median over the 28 projected weights): GaLore's Adam direction in the subspace has RMS 0.91 at step 0, 0.35
  at step 5, 0.14 at step 20 and 0.085 from step 40 — 0.2 sits inside that range; "shape": c = √max(m, n) (the factor as the SUMO text states
  it, without Moonlight's 0.2); None: c = 1 (‖QO‖_F = √r, 10–45× smaller than GaLore's step).
- K = 200 [`update_gap`] (our choice; the paper's grid on 130m suggests 250), μ = 0.95 [`momentum`] (Muon's
  default; the paper's value was not found), lr 1e-2 (the GaLore recipe: with the update scale SUMO's steps are
  Adam-sized; the paper's pretraining lr was not found), α = 0.25 as the other methods.
Deviations:
- M ← μM + Ĝ without (1 − μ), as printed; the optional limiter of Block 3 on O (γ = 1.1) is not implemented: with
  ‖O‖_F = √rank(M) it only acts when M's rank changes. O is formed over singular values above 1e-7·σ_max only, so a
  rank-deficient (e.g. zero) moment gives a zero, not an arbitrary, direction.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from subprof.methods.galore import SVD_WORKSPACE
from subprof.methods.lazy import torch
from subprof.methods.moving import RECOVERY_WORKSPACE, choice, recovery_term, rotate_moments
from subprof.methods.osd import oriented
from subprof.methods.rule import SeededRule, orthonormal_columns, right_side
from subprof.methods.spec import (Dtype, MethodSpec, Role, StateLayout, TensorSpec, basis_shape, full_shape,
                                  moment_shape)
from subprof.methods.spec import RECOVERY_NORM, SVD_REFRESH_COMMS, Collective, CommSpec, QualityTraits, When

Tensor = Any

RESIDUALS = ("paper", "fira", None)
UPDATE_SCALES = {"moonlight": 0.2, "shape": 1.0, None: None}


def orthogonalise(moment: Tensor, *, rtol: float = 1e-7) -> Tensor:
    """O = U Vᵀ from the exact thin SVD of `moment` (fp32), over singular values > rtol·σ_max only."""
    u, s, vh = torch.linalg.svd(moment.float(), full_matrices=False)
    keep = s > rtol * s.max().clamp_min(torch.finfo(torch.float32).tiny)
    return (u * keep.to(u.dtype)) @ vh  # dropped directions as zero columns: no host sync


def sketch(gen: Tensor, m: int, n: int, rank: int, oversample: int) -> Tensor:
    """Ω (N×ℓ, N = max(m, n), ℓ = min(rank + oversample, min(m, n))): the randomized SVD's Gaussian test matrix, from
    the weight's generator. Drawn on every rank of a sharded weight, so their generators stay equal."""
    return SeededRule.gaussian(gen, max(m, n), min(rank + oversample, min(m, n)))


def orthogonalise_sharded(moment: Tensor, ctx: Any, *, rtol: float = 1e-7) -> Tensor:
    """This rank's part of O = U Vᵀ of a moment M cut along its long side (r × N_local, or N_local × r): with the
    r×r Gram K = Σ_ranks M_l M_lᵀ (one fp64 all-reduce of r² values, `methods/spec.py` "moment_gram"),
    O = K^(-1/2) M over eigenvalues > (rtol·σ_max)², the same O as `orthogonalise` on the whole M (to 5e-6 in
    fp32, /work/notes/dist_optim.md §4)."""
    wide = moment.shape[0] <= moment.shape[1] if not ctx.sharded else not right_side(ctx.shape(moment))
    small = moment.double() if wide else moment.double().T  # r × N_local
    gram = ctx.sum_((small @ small.T).contiguous())
    evals, evecs = torch.linalg.eigh(gram)
    keep = evals > (rtol**2) * evals.max().clamp_min(torch.finfo(torch.float64).tiny)
    inv_sqrt = (evecs[:, keep] * evals[keep].rsqrt()) @ evecs[:, keep].T
    o = inv_sqrt @ small
    return (o if wide else o.T).float()


def randomized_basis(grad: Tensor, rank: int, gen: Tensor | None, *, oversample: int, power_iters: int,
                     omega: Tensor | None = None) -> Tensor:
    """Top-`rank` left singular vectors of G̃ (G seen from the side P projects, d×N) by a randomized SVD: Ω (N×ℓ)
    Gaussian (`omega`, else drawn from `gen`), Y = G̃Ω, `power_iters` × (Q = qr(Y), Y = G̃(G̃ᵀQ)), Q = qr(Y),
    B = QᵀG̃ = Ũ Σ Vᵀ, basis Q Ũ[:, :r]; fp32 inside, returned in G's dtype."""
    g = oriented(grad).float()
    if omega is None:
        omega = sketch(gen, grad.shape[0], grad.shape[1], rank, oversample)
    omega = omega.to(g.device)
    y = g @ omega
    del omega
    for _ in range(power_iters):
        y = g @ (g.T @ orthonormal_columns(y))
    q = orthonormal_columns(y)
    ub, _, _ = torch.linalg.svd(q.T @ g, full_matrices=False)
    return (q @ ub[:, :rank]).to(grad.dtype).contiguous()


class SumoRule(SeededRule):
    """SUMO. Options: subspace ("randomized" | "exact"), oversample (10), power_iters (2), seed (0), momentum (0.95),
    residual ("paper" | "fira" | None), update_scale ("moonlight" | "shape" | None), growth_limit (1.01, "fira").
    Overrides `low_rank_update`: no Adam, no bias correction."""

    defaults = {"subspace": "randomized", "oversample": 10, "power_iters": 2, "seed": 0, "momentum": 0.95,
                "residual": "paper", "update_scale": "moonlight", "growth_limit": 1.01}

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        o = self.options
        self.subspace = choice("subspace", o["subspace"], ("randomized", "exact"))
        self.oversample, self.power_iters = int(o["oversample"]), int(o["power_iters"])
        self.momentum = float(o["momentum"])
        self.residual = choice("residual", o["residual"], RESIDUALS)
        self.update_scale = choice("update_scale", o["update_scale"], tuple(UPDATE_SCALES))
        self.growth_limit = float(o["growth_limit"])
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.oversample < 0 or self.power_iters < 0 or self.growth_limit < 1.0:
            raise ValueError("oversample and power_iters must be ≥ 0 and growth_limit ≥ 1")

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        if "projector" in state and not self.due(step):
            return
        shape = self.weight_shape(grad)
        r = self.effective_rank(shape)
        if self.subspace == "exact":
            q_new = self.svd_basis(grad, r)
        else:
            gen = self.generator(state)
            omega = sketch(gen, shape[0], shape[1], r, self.oversample)
            self.save_generator(state, gen)
            q_new = self.ctx.whole(grad, lambda g: randomized_basis(g, r, None, oversample=self.oversample,
                                                                    power_iters=self.power_iters, omega=omega),
                                   basis_shape(shape[0], shape[1], r))
        if "projector" in state:
            rotate_moments(self, state, state["projector"].float(), q_new.float(), shape, second=False)
        state["projector"] = q_new

    def shape_factor(self, r_grad: Tensor) -> float:
        """c: 0.2·√max(m, n) (moonlight), √max(m, n) (shape) or 1; max(m, n) is R's long side (of the whole R: the
        context's shape, as R's long side is the weight's)."""
        factor = UPDATE_SCALES[self.update_scale]
        return 1.0 if factor is None else factor * math.sqrt(max(self.ctx.shape(r_grad)))

    def low_rank_update(self, state: dict, r_grad: Tensor, group: dict, step: int) -> Tensor:
        """M ← μ M + Ĝ (stored in the state_bits format); returns c·O, minus Ĝ/α when the paper's residual is on
        (so that α·back(U) + G = G − QĜ + α c Q O, with the optimizer adding G as the recovery term)."""
        if "exp_avg" not in state:
            self.init_moment(state, "exp_avg", r_grad)
        moment = self.read_moment(state, "exp_avg").mul_(self.momentum).add_(r_grad.float())
        self.write_moment(state, "exp_avg", moment)
        sharded = self.ctx.sharded and not self.ctx.crossed  # M is cut along its long side: its Gram is a sum
        o = orthogonalise_sharded(moment, self.ctx) if sharded else orthogonalise(moment)
        update = o.mul_(self.shape_factor(r_grad))
        scale = group.get("scale", 1.0)
        if self.residual == "paper" and scale > 0:
            update.sub_(r_grad.float(), alpha=1.0 / scale)
        return update.to(r_grad.dtype)

    def recovery_term(self, state: dict, grad: Tensor, r_grad: Tensor, r_update: Tensor, *,
                      scale: float = 1.0) -> Tensor | None:
        """paper: G itself (no copy; its in-subspace part is cancelled by the low-rank update), or G − QĜ when
        α = 0; fira: Fira's scaled term with O as the update; None: nothing."""
        if self.residual is None:
            return None
        if self.residual == "paper":
            if scale > 0:
                return grad
            return grad - self.project_back(state, r_grad, tuple(grad.shape))
        return recovery_term(state, grad, r_grad, r_update, state["projector"], alpha=1.0,
                             growth_limit=self.growth_limit, ctx=self.ctx)


STATES = (
    TensorSpec(name="exp_avg", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
    TensorSpec(name="projector", shape=basis_shape, dtype=Dtype.PARAM, role=Role.PROJECTION),
)
ROTATED_MOMENT = TensorSpec(name="rotated_moment", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE)


def randomized_workspace(oversample: int) -> tuple[TensorSpec, ...]:
    """The randomized SVD's tensors (fp32), ℓ = min(r + oversample, d), N = max(m, n): G upcast (m×n), Ω (N×ℓ),
    Y and its Q (d×ℓ each), G̃ᵀQ in a power iteration (N×ℓ), B = QᵀG̃ (ℓ×N), the SVD's copy of B and its Ũ, Σ, Vᵀ.
    An upper bound: Ω is freed before the power iterations and those temporaries before B is formed."""
    ell = lambda m, n, r: min(r + oversample, min(m, n))  # noqa: E731
    d = lambda m, n: min(m, n)  # noqa: E731
    big = lambda m, n: max(m, n)  # noqa: E731
    spec = [("g_fp32", lambda m, n, r: (m, n)), ("sketch", lambda m, n, r: (big(m, n), ell(m, n, r))),
            ("range_y", lambda m, n, r: (d(m, n), ell(m, n, r))), ("range_q", lambda m, n, r: (d(m, n), ell(m, n, r))),
            ("power_product", lambda m, n, r: (big(m, n), ell(m, n, r))),
            ("small", lambda m, n, r: (ell(m, n, r), big(m, n))), ("small_clone", lambda m, n, r: (ell(m, n, r), big(m, n))),
            ("small_u", lambda m, n, r: (ell(m, n, r), ell(m, n, r))), ("small_s", lambda m, n, r: (ell(m, n, r),)),
            ("small_vh", lambda m, n, r: (ell(m, n, r), big(m, n)))]
    return tuple(TensorSpec(name=name, shape=shape, dtype=Dtype.FP32, role=Role.WORKSPACE) for name, shape in spec)


# an ordinary step, upper bound (the two phases are not alive together): the exact thin SVD of the r × max(m, n)
# moment in fp32 (its copy, U r×r, S, Vh, O = U Vh), then c·O in the gradient's dtype and its m×n back-projection
STEP_WORKSPACE = (
    TensorSpec(name="moment_fp32", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="moment_u", shape=lambda m, n, r: (r, r), dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="moment_s", shape=lambda m, n, r: (r,), dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="moment_vh", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="orthogonalised", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="low_rank_update", shape=moment_shape, dtype=Dtype.PARAM, role=Role.WORKSPACE),
    TensorSpec(name="full_update", shape=full_shape, dtype=Dtype.PARAM, role=Role.WORKSPACE),
)


def layout(options: Mapping[str, Any]) -> StateLayout:
    """One moment and Q. Refresh: the randomized (or exact) SVD and the carried moment. Step: the orthogonalisation
    and back-projection; Fira's residual adds an m×n tensor (the paper's needs none)."""
    refresh = (randomized_workspace(int(options["oversample"])) if choice("subspace", options["subspace"],
                                                                             ("randomized", "exact")) == "randomized"
               else SVD_WORKSPACE)
    fira = choice("residual", options["residual"], RESIDUALS) == "fira"
    return StateLayout(states=STATES, workspace=refresh + (ROTATED_MOMENT,),
                       step_workspace=STEP_WORKSPACE + (RECOVERY_WORKSPACE if fira else ()))


def _refresh_flops(m: int, n: int, r: int) -> float:
    """Randomized SVD with ℓ = r + 10 and 2 power iterations: (2 + 2·2)·m·n·ℓ for the products with G, plus the
    small SVD of the ℓ×N matrix (~4·N·ℓ²)."""
    ell = min(r + 10, min(m, n))
    return 6.0 * m * n * ell + 4.0 * max(m, n) * ell * ell


def comms(options: Mapping[str, Any]) -> tuple:
    """Per rank under FSDP: the refresh as GaLore's (gather G to its owner, the randomized or exact SVD there,
    broadcast P — an upper bound for the randomized one, which could instead all-reduce d×ℓ sketches); each step the
    r×r Gram of the long-side-sharded moment is summed in fp64 for its orthogonalisation (aligned; a crossed moment
    is whole); the paper's residual is local; Fira's norm limiter sums one value per step."""
    gram = CommSpec(name="moment_gram", op=Collective.ALL_REDUCE, shape=lambda m, n, r: (r, r), dtype=Dtype.FP64,
                    when=When.STEP, layout="aligned")
    fira = choice("residual", options["residual"], RESIDUALS) == "fira"
    return SVD_REFRESH_COMMS + (gram,) + ((RECOVERY_NORM,) if fira else ())


SPEC = MethodSpec(
    name="sumo",
    title="SUMO",
    summary="one low-rank moment orthogonalised by an exact SVD each step (Adam-sized by Moonlight's 0.2·√max(m, n)); "
            "randomized-SVD subspace every K steps",
    project=True,
    layout=layout,
    rule=SumoRule,
    variants={"exact-svd": {"subspace": "exact"}, "fira-residual": {"residual": "fira"},
              "no-residual": {"residual": None}, "raw-update": {"update_scale": None}},
    refresh_cost="gemm",  # the randomized SVD is products with G; the per-step SVD of the small moment is not counted
    default_update_gap=200,
    refresh_flops=_refresh_flops,
    default_lr=1e-2,
    lr_source="not published for pretraining (paper: GLUE 1e-5–3e-5 only); the GaLore recipe's 1e-2, which the "
              "Moonlight update scale makes comparable",
    comms=comms,
    traits=lambda o: QualityTraits(moment_transfer=True, recovery=o["residual"] is not None, orthogonalised=True,
                                   moment_decay=float(o["momentum"])),
    paper="arXiv 2505.24749",
)
