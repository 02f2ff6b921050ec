"""Online Subspace Descent (Liang et al. 2024, arXiv 2408.12857, Algorithm 1).

P is updated every step by one optimizer step (Adam by default) on the online-PCA loss
L(P) = ‖P Pᵀ G̃ − G̃‖² + λ‖PᵀP − I‖², G̃ = G/‖G‖, with α = 5 (ε_P = α·ε_W) and λ = 0.1.
"""

from subprof.methods.base import Dtype, MethodSpec, Role, TensorSpec, basis_shape, moment_shape, two_gemm_flops

SPEC = MethodSpec(
    name="osd",
    title="Online Subspace Descent",
    summary="P updated every step by one Adam step on the online-PCA loss",
    project=True,
    states=(
        TensorSpec(name="exp_avg", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="exp_avg_sq", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="projector", shape=basis_shape, dtype=Dtype.PARAM, role=Role.PROJECTION),
        TensorSpec(name="projector_exp_avg", shape=basis_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="projector_exp_avg_sq", shape=basis_shape, dtype=Dtype.STATE, role=Role.MOMENT),
    ),
    workspace=(
        # AP = G̃(G̃ᵀP), the gradient of P and its Adam denominator: three d×r tensors
        TensorSpec(name="ap", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
        TensorSpec(name="grad_p", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
        TensorSpec(name="denom_p", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    ),
    refresh_every_step=True,
    default_update_gap=1,
    refresh_flops=lambda m, n, r: two_gemm_flops(m, n, r) + 8.0 * min(m, n) * r * r,
    quality_prior=1.0,
    paper="Liang et al. 2024, arXiv 2408.12857",
)
