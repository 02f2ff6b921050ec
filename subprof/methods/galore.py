"""GaLore (Zhao et al. 2024, arXiv 2403.03507; reference package galore-torch 1.0).

Every `update_gap` steps (step 0 included) P is refreshed from `torch.linalg.svd(G.float(), full_matrices=False)`:
the top-r singular vectors of the projected side, cast back to G's dtype. Adam runs on R (moments not reset at a
refresh), the update is projected back and scaled by α (`scale`).
"""

from subprof.methods.base import (Dtype, MethodSpec, Role, TensorSpec, basis_shape, full_shape, moment_shape,
                                  svd_flops)

SVD_WORKSPACE = (
    # G.float(): the fp32 copy of the gradient handed to the SVD
    TensorSpec(name="svd_input", shape=full_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    # U (m×k), S (k), Vh (k×n), k = min(m, n), all fp32
    TensorSpec(name="svd_u", shape=lambda m, n, r: (m, min(m, n)), dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="svd_s", shape=lambda m, n, r: (min(m, n),), dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="svd_vh", shape=lambda m, n, r: (min(m, n), n), dtype=Dtype.FP32, role=Role.WORKSPACE),
)

SPEC = MethodSpec(
    name="galore",
    title="GaLore",
    summary="SVD projection refreshed every T steps, Adam on the projected gradient",
    project=True,
    states=(
        TensorSpec(name="exp_avg", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="exp_avg_sq", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="projector", shape=basis_shape, dtype=Dtype.PARAM, role=Role.PROJECTION),
    ),
    workspace=SVD_WORKSPACE,
    default_update_gap=200,
    update_gaps=(50, 200, 500),
    refresh_flops=svd_flops,
    paper="Zhao et al. 2024, arXiv 2403.03507",
)
