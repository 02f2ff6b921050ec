"""GaLore (Zhao et al. 2024, arXiv 2403.03507; reference package galore-torch 1.0).

Every `update_gap` steps (step 0 included) P is refreshed from `torch.linalg.svd(G.float(), full_matrices=False)`:
the top-r singular vectors of the projected side, cast back to G's dtype. Adam runs on R (moments not reset at a
refresh), the update is projected back and scaled by α (`scale`).

`GaLoreRule` (torch) with `subprof.optim.SubspaceAdamW` reproduces galore-torch 1.0's `GaLoreAdamW` (proj_type
"std") step by step: the projector is refreshed when `step % update_gap == 0` with the 0-based step count of the
weight, Adam runs on R with eps 1e-6 and GaLore's bias correction, the update is α·P N (or α·N Pᵀ), and decoupled
weight decay is applied after the update. Differences: P is stored as min(m, n)×r in both cases (galore-torch
keeps Vh[:r] as r×n on the right side — the same numbers, transposed), and 8-bit states go through the same
bitsandbytes blockwise kernel as `GaLoreAdamW8bit` but without its parameter swap (see `subprof.quant8`).

Step workspace (what an ordinary step allocates on top of the states, per weight, one weight at a time): R = G·P
(r×max(m, n), G's dtype) then U, Adam's direction of R's shape and dtype; R is freed before the back-projection,
whose m×n result (G's dtype) is scaled and added to W in place — so the peak is U + the m×n update.
"""

from typing import Any

from subprof.methods.spec import (Dtype, MethodSpec, Role, StateLayout, TensorSpec, basis_shape, full_shape,
                                  moment_shape, svd_flops)
from subprof.methods.rule import ProjectionRule, top_singular_basis
from subprof.methods.spec import SVD_REFRESH_COMMS

# Adam's two moments on R and the projector P: what GaLore-style methods keep per projected weight
ADAM_STATES = (
    TensorSpec(name="exp_avg", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
    TensorSpec(name="exp_avg_sq", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
    TensorSpec(name="projector", shape=basis_shape, dtype=Dtype.PARAM, role=Role.PROJECTION),
)
SVD_WORKSPACE = (
    # G.float(): the fp32 copy of the gradient handed to the SVD
    TensorSpec(name="svd_input", shape=full_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    # U (m×k), S (k), Vh (k×n), k = min(m, n), all fp32
    TensorSpec(name="svd_u", shape=lambda m, n, r: (m, min(m, n)), dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="svd_s", shape=lambda m, n, r: (min(m, n),), dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="svd_vh", shape=lambda m, n, r: (min(m, n), n), dtype=Dtype.FP32, role=Role.WORKSPACE),
)


class GaLoreRule(ProjectionRule):
    """GaLore's projector: the top-r singular vectors of G (`top_singular_basis`), refreshed every `update_gap`
    steps (step 0 included); moments stay where they are at a refresh (not rotated, not reset), as galore-torch."""

    def update_projection(self, state: dict, grad: Any, step: int) -> None:
        if "projector" in state and not self.due(step):
            return
        state["projector"] = top_singular_basis(grad, self.effective_rank(tuple(grad.shape)))


SPEC = MethodSpec(
    name="galore",
    title="GaLore",
    summary="SVD projection refreshed every T steps, Adam on the projected gradient",
    project=True,
    layout=StateLayout(
        states=ADAM_STATES,
        workspace=SVD_WORKSPACE,
        step_workspace=(
            # U = Adam's direction on R (R itself, same size, is freed before the back-projection)
            TensorSpec(name="low_rank_update", shape=moment_shape, dtype=Dtype.PARAM, role=Role.WORKSPACE),
            # back-projected update P·U or U·Pᵀ, scaled by α in place and added to W
            TensorSpec(name="full_update", shape=full_shape, dtype=Dtype.PARAM, role=Role.WORKSPACE),
        ),
    ),
    rule=GaLoreRule,
    refresh_cost="svd",
    default_update_gap=200,
    update_gaps=(50, 200, 500),
    refresh_flops=svd_flops,
    comms=SVD_REFRESH_COMMS,  # per rank under FSDP: gather G to its owner, SVD there, broadcast P
    paper="Zhao et al. 2024, arXiv 2403.03507",
)
