"""SubTrack-Grad (arXiv 2502.01586; code criticalml-uw/SubTrack): P initialised by SVD, then moved every T steps
along a Grassmannian geodesic by the rank-1 SVD of the tangent of the least-squares residual."""

from subprof.methods.base import (Dtype, MethodSpec, Role, TensorSpec, basis_shape, full_shape, moment_shape,
                                  svd_flops)
from subprof.methods.galore import SVD_WORKSPACE

SPEC = MethodSpec(
    name="subtrack",
    title="SubTrack-Grad",
    summary="Grassmannian subspace tracking: rank-1 geodesic step of P every T steps",
    project=True,
    states=(
        TensorSpec(name="exp_avg", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="exp_avg_sq", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="projector", shape=basis_shape, dtype=Dtype.PARAM, role=Role.PROJECTION),
    ),
    # step 0 runs a full SVD (as GaLore); later updates hold the residual G − P W (m×n, fp32)
    workspace=SVD_WORKSPACE,
    step_workspace=(TensorSpec(name="residual", shape=full_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),),
    default_update_gap=200,
    refresh_flops=lambda m, n, r: 6.0 * m * n * r,
    quality_prior=0.5,
    paper="Rajabi et al. 2025, arXiv 2502.01586",
)
# the first refresh is a full SVD; later ones cost ~3 m×n×r GEMMs
FIRST_REFRESH_FLOPS = svd_flops
