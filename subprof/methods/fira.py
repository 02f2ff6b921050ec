"""Fira (Chen et al. 2024, arXiv 2410.01623; code xichen-fy/Fira@5c28b13 = fira 1.0.2, `fira_adamw.py` and
`gradient_projection.py`): GaLore plus the gradient outside the subspace, scaled like the Adam update.

    every T steps (step 0 included): P = top-r singular vectors of G (GaLore's SVD; moments kept, not rotated)
    R = PᵀG (or G P);  Adam on R → N;  E = (G − α·P PᵀG) ⊙ ‖N‖/‖R‖ per row (m ≥ n) or column, growth-limited
    W ← W − lr·f·(α·P N + E);  W ← W(1 − lr·λ)                      (E: `subprof.methods.moving.recovery_term`)

Defaults from the authors' scripts (`pre_training_c4/scripts/llama_{60m,130m,350m,1b,7b}.sh`): T = 200, α = 0.25,
lr 1e-2, weight decay 0, γ = 1.01 (hard-coded); ranks 128 (60m), 256 (130m, 350m), 512 (1b), 64 (7b) — pass `--rank`
(the registry's default is 128) — and at 1b/7b α = 0.0625 (7b: T 500, lr 5e-3). The residual is the code's
G − α·PPᵀG (`project_back` includes α), not the exact complement [`recovery="reference"`].
Golden tests: equal to `fira.FiraAdamW` step by step (fp32, CPU, refreshes included) to round-off: Fira adds
α·PN + E in one update, our optimizer adds E and then α·PN (two additions, the same terms).
Variants: `exact-recovery` (E from G − PPᵀG, the paper's equation), `no-recovery` (GaLore), `canonical-signs`
(GaLore's option: SVD column signs fixed so sharded and one-process runs keep one basis). Option `moment_transfer`
(None: Fira's, moments stay at a refresh) takes SubTrack++'s rotation (`subprof.methods.moving`) when set.
"""

from __future__ import annotations

from typing import Any, Mapping

from subprof.methods.galore import ADAM_STATES, SVD_WORKSPACE, GaLoreRule
from subprof.methods.moving import RECOVERIES, MovingSubspaceRule, choice
from subprof.methods.spec import (RECOVERY_NORM, SVD_REFRESH_COMMS, Dtype, MethodSpec, Role, StateLayout, TensorSpec,
                                  full_shape, moment_shape, svd_flops)

Tensor = Any


class FiraRule(MovingSubspaceRule, GaLoreRule):
    """GaLore's SVD projector with Fira's recovery term. Options: svd_signs ("lapack" | "canonical"), recovery
    ("reference" | "exact" | None), growth_limit (γ, 1.01), moment_transfer (None | "reference" | "unscaled")."""

    defaults = {"svd_signs": "lapack", "recovery": "reference", "growth_limit": 1.01, "moment_transfer": None}

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        if "projector" in state and not self.due(step):
            return
        p_new = self.svd_basis(grad, self.effective_rank(self.weight_shape(grad)))
        if "projector" in state:
            self.transfer(state, state["projector"].float(), p_new.float(), self.weight_shape(grad))
        state["projector"] = p_new


def layout(options: Mapping[str, Any]) -> StateLayout:
    """GaLore's states and SVD workspace. A step holds Adam's direction N and one m×n tensor at a time: with
    recovery first the residual, while R (N's shape) and the fp32 norms of N and R along the rank axis and their
    ratio (3·max(m, n) values) are alive, then the back-projected update (GaLore's step)."""
    recovery = choice("recovery", options["recovery"], RECOVERIES) is not None
    step = (TensorSpec(name="low_rank_update", shape=moment_shape, dtype=Dtype.PARAM, role=Role.WORKSPACE),
            TensorSpec(name="full_update", shape=full_shape, dtype=Dtype.PARAM, role=Role.WORKSPACE))
    if recovery:
        step += (TensorSpec(name="low_rank_gradient", shape=moment_shape, dtype=Dtype.PARAM, role=Role.WORKSPACE),
                 TensorSpec(name="scaling_factors", shape=lambda m, n, r: (3 * max(m, n),), dtype=Dtype.FP32,
                            role=Role.WORKSPACE, axes=lambda m, n, r: ("m",) if m >= n else ("n",)))
    return StateLayout(states=ADAM_STATES, workspace=SVD_WORKSPACE, step_workspace=step)


def comms(options: Mapping[str, Any]) -> tuple:
    """Per rank under FSDP: GaLore's (gather G to its owner, SVD there, broadcast P); the recovery factors run along
    R's rank axis (local) and its norm limiter sums one value per step."""
    return SVD_REFRESH_COMMS + ((RECOVERY_NORM,) if options["recovery"] is not None else ())


SPEC = MethodSpec(
    name="fira",
    title="Fira",
    summary="GaLore plus the residual G − α·PPᵀG scaled by ‖Adam update‖/‖projected gradient‖ per channel, "
            "norm-growth limited",
    project=True,
    layout=layout,
    rule=FiraRule,
    subspace="svd",
    refresh_cost="svd",
    refresh_flops=svd_flops,
    default_update_gap=200,
    default_scale=0.25,
    default_lr=1e-2,
    lr_source="Fira pre_training_c4/scripts/llama_60m–350m.sh (--lr 0.01, --alpha 0.25; 1b: α 0.0625; 7b: lr 5e-3)",
    variants={"exact-recovery": {"recovery": "exact"}, "no-recovery": {"recovery": None},
              "canonical-signs": {"svd_signs": "canonical"}},
    comms=comms,
    paper="Chen et al. 2024, arXiv 2410.01623",
)
