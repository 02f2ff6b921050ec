"""GaLore (Zhao et al. 2024, arXiv 2403.03507; code jiaweizzhao/GaLore@2cc66f8 = galore-torch 1.0).

    every T steps (step 0 included): P = top-r singular vectors of G (`torch.linalg.svd(G.float())`, cast back)
    R = PᵀG (or G P);  Adam on R (moments kept across refreshes);  W ← W − lr·α·P N  (or N Pᵀ);  W ← W(1 − lr·λ)

Defaults, from the authors' scripts (`scripts/benchmark_c4/llama_{60m,130m,350m,1b}.sh`): T = 200, α = 0.25,
lr 1e-2 (7b: 5e-3, T 500); ε 1e-6 (`GaLoreAdamW`), 1e-8 at 8 bits (`GaLoreAdamW8bit`, bitsandbytes' default).
Golden tests: bit for bit equal to `GaLoreAdamW` (fp32, 20 steps, 3 refreshes); at 8 bits the same quantised
moments as `GaLoreAdamW8bit` and weights equal to round-off (the learning rate is applied after the kernel, not in it).
Deviations:
- P is stored min(m, n)×r on both sides (galore-torch keeps Vh[:r] as r×n on the right side: the same numbers).
- [`svd_signs`] "lapack" (default, galore-torch's) keeps LAPACK's column signs; "canonical" (variant
  `canonical-signs`) fixes each column's largest entry positive, so runs whose gradients differ by round-off (a
  sharded or data-parallel run against one process) keep the same basis (`rule.canonical_signs`).
- 8 bits: no full-weight clone per step (`GaLoreAdamW8bit`'s `p.saved_data`, marked "suboptimal" there), and
  projected tensors under 4096 values do take bitsandbytes' fp32 path; galore-torch 1.0 with bitsandbytes ≥ 0.45
  freezes them (its positional arguments land in `max_unorm`, see tests/test_golden_8bit.py).

Step workspace (one weight at a time): U, Adam's direction of R's shape, then the m×n back-projection scaled and
added in place. Refresh workspace: the fp32 copy of G, the SVD's internal copy of it, and U, S, Vh.
"""

from typing import Any

from subprof.methods.spec import (Dtype, MethodSpec, Role, StateLayout, TensorSpec, basis_shape, full_shape,
                                  moment_shape, svd_flops)
from subprof.methods.rule import ProjectionRule
from subprof.methods.spec import SVD_REFRESH_COMMS
from subprof.methods.bases import BASES, base_moments

SVD_SIGNS = ("lapack", "canonical")

# the base optimizer's moments on R (Adam's two by default, `subprof.methods.bases`) and the projector P: what
# GaLore-style methods keep per projected weight
ADAM_STATES = (
    base_moments(moment_shape),
    TensorSpec(name="projector", shape=basis_shape, dtype=Dtype.PARAM, role=Role.PROJECTION),
)
SVD_WORKSPACE = (
    # G.float(): the fp32 copy of the gradient handed to the SVD
    TensorSpec(name="svd_input", shape=full_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    # torch.linalg.svd clones its input (LAPACK gesdd / cuSOLVER overwrite it): one more m×n fp32 inside the call,
    # which a trace of torch's dispatched ops does not see
    TensorSpec(name="svd_input_clone", shape=full_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    # U (m×k), S (k), Vh (k×n), k = min(m, n), all fp32
    TensorSpec(name="svd_u", shape=lambda m, n, r: (m, min(m, n)), dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="svd_s", shape=lambda m, n, r: (min(m, n),), dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="svd_vh", shape=lambda m, n, r: (min(m, n), n), dtype=Dtype.FP32, role=Role.WORKSPACE),
)


class GaLoreRule(ProjectionRule):
    """GaLore's projector: the top-r singular vectors of G (`top_singular_basis`), refreshed every `update_gap`
    steps (step 0 included); moments stay where they are at a refresh (not rotated, not reset), as galore-torch.
    Option svd_signs ("lapack" | "canonical")."""

    defaults = {"svd_signs": "lapack"}

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        check_signs(self.options["svd_signs"])

    def update_projection(self, state: dict, grad: Any, step: int) -> None:
        if "projector" in state and not self.due(step):
            return
        state["projector"] = self.svd_basis(grad, self.effective_rank(self.weight_shape(grad)))


def check_signs(value: Any) -> str:
    if value not in SVD_SIGNS:
        raise ValueError(f"svd_signs must be one of {', '.join(map(repr, SVD_SIGNS))}; got {value!r}")
    return value


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
    variants={"canonical-signs": {"svd_signs": "canonical"}},
    bases=tuple(BASES),  # GaLoreAdamW, GaLoreAdafactor (galore-torch), GaLoreLion (OSD's repository)
    refresh_cost="svd",
    default_update_gap=200,
    update_gaps=(50, 100, 200, 500, 1000),
    refresh_flops=svd_flops,
    default_lr=1e-2,
    lr_source="GaLore scripts/benchmark_c4/llama_60m–1b.sh (--lr 0.01, scale 0.25)",
    comms=SVD_REFRESH_COMMS,  # per rank under FSDP: gather G to its owner, SVD there, broadcast P
    paper="Zhao et al. 2024, arXiv 2403.03507",
)
