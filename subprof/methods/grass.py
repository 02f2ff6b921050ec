"""GrassWalk and GrassJump (arXiv 2510.01878): random subspaces instead of SVD, every T steps.

GrassJump draws a fresh random orthonormal P (Gaussian + QR); GrassWalk moves P along a Grassmannian geodesic in a
random tangent direction (rank-k randomized SVD of (I − PPᵀ)Z, k = 1).
"""

from subprof.methods.base import Dtype, MethodSpec, Role, TensorSpec, basis_shape, moment_shape

STATES = (
    TensorSpec(name="exp_avg", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
    TensorSpec(name="exp_avg_sq", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
    TensorSpec(name="projector", shape=basis_shape, dtype=Dtype.PARAM, role=Role.PROJECTION),
)
WORKSPACE = (
    # the random draw Z and the new P (d×r), fp32
    TensorSpec(name="random_draw", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    TensorSpec(name="new_projector", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
)


def _qr_flops(m: int, n: int, r: int) -> float:
    return 4.0 * min(m, n) * r * r


GRASSWALK = MethodSpec(
    name="grasswalk",
    title="GrassWalk",
    summary="random geodesic walk of P on the Grassmannian every T steps (no SVD)",
    project=True,
    states=STATES,
    workspace=WORKSPACE,
    default_update_gap=200,
    refresh_flops=_qr_flops,
    paper="arXiv 2510.01878",
)

GRASSJUMP = MethodSpec(
    name="grassjump",
    title="GrassJump",
    summary="fresh random orthonormal P every T steps (no SVD)",
    project=True,
    states=STATES,
    workspace=WORKSPACE,
    default_update_gap=200,
    refresh_flops=_qr_flops,
    paper="arXiv 2510.01878",
)
