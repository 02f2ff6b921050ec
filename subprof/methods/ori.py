"""Ori: streaming k-PCA tracking of the gradient subspace (Oja-style step + thin QR), ICLR 2026 submission 21959,
after Allen-Zhu & Li 2017 (Oja++, arXiv 1607.07837)."""

from subprof.methods.base import Dtype, MethodSpec, Role, TensorSpec, basis_shape, moment_shape, two_gemm_flops

SPEC = MethodSpec(
    name="ori",
    title="Ori (streaming k-PCA, Oja++)",
    summary="P tracked every step by an Oja step and a thin QR",
    project=True,
    states=(
        TensorSpec(name="exp_avg", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="exp_avg_sq", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="projector", shape=basis_shape, dtype=Dtype.PARAM, role=Role.PROJECTION),
    ),
    workspace=(
        # G̃ᵀP / G̃(G̃ᵀP) and the thin QR's Q: d×r fp32 each
        TensorSpec(name="oja_step", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
        TensorSpec(name="qr_q", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    ),
    refresh_every_step=True,
    default_update_gap=1,
    refresh_flops=lambda m, n, r: two_gemm_flops(m, n, r) + 4.0 * min(m, n) * r * r,
    quality_prior=1.0,
    paper="ICLR 2026 submission 21959; Allen-Zhu & Li 2017, arXiv 1607.07837",
)
