"""SUMO (arXiv 2505.24749, NeurIPS 2025): one moment in a low-rank subspace refreshed every K steps; each step the
moment is orthogonalised exactly by the SVD of the small r × max(m, n) matrix (instead of Muon's Newton–Schulz)."""

from subprof.methods.base import (Dtype, MethodSpec, Role, TensorSpec, basis_shape, moment_shape, svd_flops)
from subprof.methods.galore import SVD_WORKSPACE

SPEC = MethodSpec(
    name="sumo",
    title="SUMO",
    summary="one low-rank moment orthogonalised by an exact SVD each step; subspace refreshed every K steps",
    project=True,
    states=(
        TensorSpec(name="exp_avg", shape=moment_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="projector", shape=basis_shape, dtype=Dtype.PARAM, role=Role.PROJECTION),
    ),
    workspace=SVD_WORKSPACE,
    step_workspace=(
        # SVD of the r × max(m, n) moment in fp32: its copy, U (r×r), S (r), Vh (r×max)
        TensorSpec(name="moment_fp32", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
        TensorSpec(name="moment_vh", shape=moment_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),
    ),
    default_update_gap=200,
    refresh_flops=lambda m, n, r: svd_flops(m, n, r) + 0.0,
    quality_prior=0.5,
    paper="arXiv 2505.24749",
)
