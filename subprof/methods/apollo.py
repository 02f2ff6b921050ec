"""APOLLO and APOLLO-Mini (Zhu et al. 2024, arXiv 2412.05270; code zhuhanqing/APOLLO@76b3472 = apollo-torch 1.0.3,
`apollo_torch/apollo.py` and `random_projector.py`): Adam in a random low-rank space, used only to scale the full-rank
gradient.

    every T steps (step 0 included): seed s_k (s_0 = the weight's 1-based position in the optimizer,
                                     s_k+1 = `next_seed`(s_k)); P = N(0, 1)/√r drawn from s_k      (d×r, d = min(m, n))
    R = G·P (or PᵀG);  Adam on R (moments kept across refreshes, as GaLore);  N = m/(√v + ε)
    s = ‖N‖/(‖R‖ + 1e-8) per channel (each row, or column, of G's long side: APOLLO) or of the tensor (APOLLO-Mini)
    E = G ⊙ s, norm-growth limited (γ = 1.01, `moving.limit_growth`);  W ← W − lr·f·α·E;  W ← W(1 − lr·λ)

Defaults are the authors' scripts (`scripts/pretrain_c4/llama_{60m,130m,350m,1b,7b}_apollo[_mini].sh`): T = 200,
lr 1e-2, weight decay 0; APOLLO channel-wise at rank hidden/4 (60m 128, 130m 192, 350m–7b 256: pass `--rank`, the
registry's default is 128 for every method) and `--apollo_scale 1`; APOLLO-Mini rank 1, tensor-wise,
`--apollo_scale 128` (130m: 192). Their code multiplies the update by √scale; our α (`scale`, linear in every
method) is that root: 1 for APOLLO, √128 ≈ 11.31 for APOLLO-Mini — apollo-torch's `scale=S` is our `scale=√S`.
Golden tests: bit for bit equal to `apollo_torch.APOLLOAdamW` (fp32, CPU, both scale types, refreshes included).
Deviations:
- P is not kept [`projector="regenerated"`]: drawn again from s_k at every step (a d×r Gaussian on G's device, the
  draw apollo-torch makes at a refresh), so the state is the two moments and a seed; apollo-torch keeps P in its
  projector object until the next refresh (`projector="stored"`, variant `stored-projector`: + d×r per weight).
- The rank is capped at min(m, n) as in every method here (apollo-torch would draw more columns than G has rows or
  columns); APOLLO-Mini's rule uses rank 1 whatever rank it is given.
- s_0 = seed·1 000 003 + position + 1 [`seed`]: with seed 0 apollo-torch's `params_idx`, counted over every group
  in the optimizer's order (`build_optimizer` puts the projected group first; their script puts it last).
- Their 60m/130m Mini scripts pass `--scale_front` (√scale applied before the limiter): the limiter's ratio is the
  same either way (both norms scale alike), only round-off differs; we scale after, their default.
- 8-bit states: bitsandbytes' kernel returns the bias-corrected direction (f = 1), so the limiter sees the corrected
  E; apollo-torch has no 8-bit APOLLO (its Q-APOLLO quantises weights, not states). [`growth_limit=None`]: no
  limiter (their `--disable_nl`), variant `no-limiter`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from subprof.methods.lazy import torch
from subprof.methods.moments import adam_correction
from subprof.methods.moving import choice, limit_growth
from subprof.methods.rule import ProjectionRule, right_side
from subprof.methods.spec import (CROSSED_PROJECTION, Collective, CommSpec, Dtype, MethodSpec, Role, StateLayout,
                                  TensorSpec, When, basis_shape, full_shape, moment_axes, moment_shape)

Tensor = Any

SCALE_TYPES = ("channel", "tensor")
PROJECTORS = ("regenerated", "stored")
SEED_ADVANCE = 0xF  # apollo-torch's ADV_DEFAULT: random integers drawn to reach the next seed
MINI_SCALE = math.sqrt(128.0)  # √ of the Mini scripts' --apollo_scale 128 (their code multiplies by its root)
LR_SOURCE = "APOLLO scripts/pretrain_c4/llama_{60m,130m,350m,1b,7b}_apollo{,_mini}.sh (--lr 0.01)"


def next_seed(seed: int, advance: int = SEED_ADVANCE) -> int:
    """apollo-torch's seed chain (`random_projector.next_seed`): the last of `advance` int64 draws of a CPU generator
    seeded with `seed`. A host tensor read (`tolist`), no device involved."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, torch.iinfo(torch.int64).max, (advance,), generator=gen).tolist()[-1]


def random_projection(seed: int, m: int, n: int, rank: int, *, dtype: Any, device: Any) -> Tensor:
    """P (d×r) as apollo-torch draws it (`get_orthogonal_matrix`, "std"): fp32 N(0, 1)/√r from a generator on
    `device` seeded with `seed`, in its storage layout — r×n on the right side (m ≥ n; returned as its transposed
    view, so R = G·P is their `G @ ortho.t()`), m×r on the left — then cast to `dtype`."""
    right = m >= n
    gen = torch.Generator(device=device).manual_seed(seed)
    draw = torch.randn((rank, n) if right else (m, rank), generator=gen, device=device, dtype=torch.float32)
    draw = draw.div_(math.sqrt(rank)).to(dtype)  # in place: their `/ math.sqrt(rank)`, the same arithmetic
    return draw.T if right else draw


class ApolloRule(ProjectionRule):
    """APOLLO's rule. Options: scale_type ("channel" | "tensor"), growth_limit (1.01; None: off), projector
    ("regenerated" | "stored"), seed (0).

    Where it meets the optimizer's loop (`subprof.methods.rule`): `project` gives R; `low_rank_update`
    runs Adam on R and returns the scaling factor s (m×1, 1×n or 0-d) instead of a low-rank direction; the
    optimizer hands s to `project_back`, which returns E = G ⊙ s limited — so the optimizer's W ← W − lr·f·α·E is
    APOLLO's step with no back-projection. G is held from `project` to `project_back` of the same
    weight (released when the optimizer's `acting_on` block ends)."""

    defaults = {"scale_type": "channel", "growth_limit": 1.01, "projector": "regenerated", "seed": 0}
    update_methods = ("update_projection", "draw")

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        o = self.options
        self.scale_type = choice("scale_type", o["scale_type"], SCALE_TYPES)
        self.projector = choice("projector", o["projector"], PROJECTORS)
        self.growth_limit = None if o["growth_limit"] is None else float(o["growth_limit"])
        if self.growth_limit is not None and self.growth_limit < 1.0:
            raise ValueError(f"growth_limit must be ≥ 1 (or None: off), got {self.growth_limit}")
        self.seed = int(o["seed"])
        self._streams = 0  # weights seen outside an optimizer (no state["stream"]), e.g. by `proj`
        self._grad: Tensor | None = None

    @contextmanager
    def acting_on(self, ctx: Any) -> Iterator[None]:
        try:
            with super().acting_on(ctx):
                yield
        finally:
            self._grad = None

    # --- the projection: a seed, and P drawn from it -------------------------------------------------------------
    def first_seed(self, state: dict) -> int:
        stream = state.get("stream")
        if stream is None:
            stream, self._streams = self._streams, self._streams + 1
        return self.seed * 1_000_003 + int(stream) + 1

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        """At a due step: the next seed (the first from the weight's position), and with `projector="stored"` the
        new P in `state["projector"]`."""
        if "projector_seed" in state and not self.due(step):
            return
        seed = state.get("projector_seed")
        state["projector_seed"] = self.first_seed(state) if seed is None else next_seed(seed)
        if self.projector == "stored":
            state["projector"] = self._projection(state, grad).contiguous()

    def draw(self, state: dict, grad: Tensor) -> Tensor:
        """P drawn again at an ordinary step (timed by `burst` as projection work, as `update_projection`)."""
        return self._projection(state, grad)

    def _projection(self, state: dict, grad: Tensor) -> Tensor:
        """P of the current seed (`random_projection`) for the whole weight, in G's dtype on G's device: every rank
        of a sharded weight draws the same P (nothing sent)."""
        m, n = self.weight_shape(grad)
        return random_projection(state["projector_seed"], m, n, self.effective_rank((m, n)), dtype=grad.dtype,
                                 device=grad.device)

    def project(self, state: dict, grad: Tensor) -> Tensor:
        """R = G·P (or PᵀG) with P drawn again (or the stored one); G is held for `project_back`."""
        p = state["projector"] if self.projector == "stored" else self.draw(state, grad)
        self._grad = grad
        return self.ctx.project(grad, p)

    # --- Adam on R → the scaling factor → the scaled full gradient -----------------------------------------------
    def low_rank_update(self, state: dict, r_grad: Tensor, group: dict, step: int) -> Tensor:
        """Adam on R (moments `exp_avg`, `exp_avg_sq`, as GaLoreAdamW), reduced to the scaling factor s."""
        direction = super().low_rank_update(state, r_grad, group, step)
        return self.scaling_factor(direction, r_grad)

    def step_factor(self, state: dict, group: dict, step: int) -> float:
        """Adam's bias correction (1 at 8 bits: the kernel corrects), as the built-in Adam update."""
        return 1.0 if state["exp_avg"].dtype == torch.uint8 else adam_correction(group["betas"], step + 1)

    def scaling_factor(self, direction: Tensor, r_grad: Tensor) -> Tensor:
        """s = ‖N‖/(‖R‖ + 1e-8) along R's rank axis (channel: one per row of G when m ≥ n, per column otherwise;
        local on a sharded weight, as R's rank axis is never cut) or over the whole tensor (0-d; an aligned sharded
        weight sums ‖N‖², ‖R‖² over the ranks: one all-reduce of 2 values)."""
        def norm(t: Tensor, dim: int | None = None) -> Tensor:  # fp32 accumulation, no fp32 copy of t
            return torch.linalg.vector_norm(t, dim=dim, dtype=torch.float32)

        if self.scale_type == "channel":
            right = right_side(self.weight_shape(r_grad))
            axis = 1 if right else 0
            s = norm(direction, axis) / (norm(r_grad, axis) + 1e-8)
            return s[:, None] if right else s[None, :]
        if self.ctx.sharded and not self.ctx.crossed:  # N and R cut along the long side: their norms are sums
            norms = self.ctx.sum_(torch.stack([norm(direction).square(), norm(r_grad).square()])).sqrt()
            return norms[0] / (norms[1] + 1e-8)
        return norm(direction) / (norm(r_grad) + 1e-8)

    def project_back(self, state: dict, low_rank: Tensor, shape: tuple[int, ...]) -> Tensor:
        """E = G ⊙ s (a new m×n tensor: this rank's shard), norm-growth limited (‖E‖ summed over the ranks)."""
        grad, self._grad = self._grad, None
        if grad is None:
            raise RuntimeError("APOLLO scales the gradient given to `project`: call it first, for this weight")
        scaled = grad * low_rank
        if self.growth_limit is None:
            return scaled
        return limit_growth(state, "scaled_norm", scaled, self.ctx.norm(scaled), self.growth_limit)


class ApolloMiniRule(ApolloRule):
    """APOLLO-Mini: APOLLO at rank 1 (whatever rank is asked) with tensor-wise scaling."""

    defaults = {**ApolloRule.defaults, "scale_type": "tensor"}

    def effective_rank(self, shape: tuple[int, ...]) -> int:
        return 1


# --- declarations ---------------------------------------------------------------------------------------------------


def rank_one(rule: Any) -> Any:
    """A shape rule at r = 1 (APOLLO-Mini's tensors, whatever rank the configuration names)."""
    return lambda m, n, r: rule(m, n, 1)


def layout_for(mini: bool) -> Any:
    moment = rank_one(moment_shape) if mini else moment_shape
    basis = rank_one(basis_shape) if mini else basis_shape
    states = (TensorSpec(name="exp_avg", shape=moment, dtype=Dtype.STATE, role=Role.MOMENT, axes=moment_axes),
              TensorSpec(name="exp_avg_sq", shape=moment, dtype=Dtype.STATE, role=Role.MOMENT, axes=moment_axes))
    # one weight's step, an upper bound (the phases are not alive together): the fp32 draw of P (regenerated each
    # step), R then Adam's direction N (R's shape; R is freed before E exists), then E = G ⊙ s (m×n)
    direction = TensorSpec(name="low_rank_update", shape=moment, dtype=Dtype.PARAM, role=Role.WORKSPACE,
                           axes=moment_axes)
    scaled = TensorSpec(name="scaled_gradient", shape=full_shape, dtype=Dtype.PARAM, role=Role.WORKSPACE)
    draw = TensorSpec(name="projector_draw", shape=basis, dtype=Dtype.FP32, role=Role.WORKSPACE)
    # a refresh: the seed chain's SEED_ADVANCE int64 draws (on the host, 8 bytes each: 120 bytes, declared so that
    # a traced refresh stays within its declaration), and when P is kept the new one beside the old
    seeds = TensorSpec(name="seed_draws", shape=lambda m, n, r: (SEED_ADVANCE,), dtype=Dtype.FP64,
                       role=Role.WORKSPACE)
    new = TensorSpec(name="new_projector", shape=basis, dtype=Dtype.PARAM, role=Role.WORKSPACE)

    def layout(options: Mapping[str, Any]) -> StateLayout:
        """Moments on R and a seed; `projector="stored"` keeps P too (drawn at a refresh, not at each step)."""
        if choice("projector", options["projector"], PROJECTORS) == "stored":
            kept = TensorSpec(name="projector", shape=basis, dtype=Dtype.PARAM, role=Role.PROJECTION)
            return StateLayout(states=states + (kept,), workspace=(seeds, draw, new),
                               step_workspace=(direction, scaled))
        return StateLayout(states=states, workspace=(seeds,), step_workspace=(draw, direction, scaled))

    return layout


def comms_for(mini: bool) -> Any:
    crossed = (CommSpec(name="projected_gradient", op=Collective.ALL_REDUCE, shape=rank_one(moment_shape),
                        dtype=Dtype.PARAM, when=When.STEP, layout="crossed") if mini else CROSSED_PROJECTION)
    norms = CommSpec(name="scaling_norms", op=Collective.ALL_REDUCE, shape=lambda m, n, r: (2,), dtype=Dtype.FP32,
                     when=When.STEP, layout="aligned")
    limiter = CommSpec(name="scaled_norm", op=Collective.ALL_REDUCE, shape=lambda m, n, r: (1,), dtype=Dtype.FP32,
                       when=When.STEP)

    def comms(options: Mapping[str, Any]) -> tuple:
        """Per rank under FSDP: no P is sent (every rank draws it from the same seed); channel factors are local;
        the limiter sums ‖E‖² (one value per step), tensor-wise scaling ‖N‖² and ‖R‖² (two, aligned weights; a
        crossed weight's R and N are whole after R's all-reduce, as GaLore's)."""
        tensor = choice("scale_type", options["scale_type"], SCALE_TYPES) == "tensor"
        return (crossed,) + ((norms,) if tensor else ()) + ((limiter,) if options["growth_limit"] is not None
                                                             else ())

    return comms


VARIANTS = {"stored-projector": {"projector": "stored"}, "no-limiter": {"growth_limit": None}}

SPEC = MethodSpec(
    name="apollo",
    title="APOLLO",
    summary="random projection regenerated from a seed every T steps; Adam there only scales the full gradient "
            "per channel (norm-growth limited)",
    project=True,
    layout=layout_for(mini=False),
    rule=ApolloRule,
    subspace="scaled",
    refresh_cost="none",  # a refresh advances a seed; the per-step d×r draw is ≪ the step's m×n passes
    timing_options={"projector": "stored"},  # `proj` times the draw (made at each step when P is not kept)
    default_update_gap=200,
    default_scale=1.0,
    default_lr=1e-2,
    lr_source=LR_SOURCE,
    variants={**VARIANTS, "tensor-wise": {"scale_type": "tensor"}},
    comms=comms_for(mini=False),
    paper="Zhu et al. 2024, arXiv 2412.05270",
)

MINI = MethodSpec(
    name="apollo-mini",
    title="APOLLO-Mini",
    fixed_rank=1,
    summary="APOLLO at rank 1 with one tensor-wise scale (SGD-like memory: two moments of max(m, n) values)",
    project=True,
    layout=layout_for(mini=True),
    rule=ApolloMiniRule,
    subspace="scaled",
    refresh_cost="none",
    timing_options={"projector": "stored"},
    default_update_gap=200,
    default_scale=MINI_SCALE,
    default_lr=1e-2,
    lr_source=LR_SOURCE,
    variants={**VARIANTS, "channel-wise": {"scale_type": "channel"}},
    comms=comms_for(mini=True),
    paper="Zhu et al. 2024, arXiv 2412.05270",
)
