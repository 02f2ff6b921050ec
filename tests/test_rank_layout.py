"""How each method's state lives per rank and what it sends (methods/spec.py), as pure arithmetic: the declaration the
per-rank memory model, the communication model, the trace and the distributed optimizer share."""

from __future__ import annotations

import math

import pytest

from subprof.methods import REGISTRY, get_method
from subprof.methods.spec import When, weight_sharding

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (1024, 4096), (171, 64)]
R = 128


@pytest.mark.parametrize("name", list(REGISTRY))
@pytest.mark.parametrize("m,n", SHAPES)
def test_one_rank_holds_exactly_the_single_gpu_declaration(name, m, n):
    spec = get_method(name)
    r = min(R, m, n)
    kw = dict(state_bits=16, param_bytes=2)
    assert spec.rank_state_bytes(m, n, r, ranks=1, **kw) == spec.state_bytes(m, n, r, **kw)
    assert spec.rank_workspace_bytes(m, n, r, ranks=1, **kw) == spec.workspace_bytes(m, n, r, **kw)
    assert spec.rank_step_workspace_bytes(m, n, r, ranks=1, **kw) == spec.step_workspace_bytes(m, n, r, **kw)
    assert spec.comm_bytes(m, n, r, ranks=1, when=When.STEP, param_bytes=2) == {}


def test_projected_weights_shard_on_their_long_side():
    assert weight_sharding(4096, 11008, 8, long_side=True).dim == 1  # down_proj: m < n, 8 | 11008
    assert weight_sharding(11008, 4096, 8, long_side=True).dim == 0
    assert weight_sharding(512, 1376, 64, long_side=True).dim == 0  # 64 ∤ 1376: FSDP2 refuses uneven Shard(1)
    assert weight_sharding(4096, 11008, 8, long_side=False).dim == 0  # full-rank AdamW keeps FSDP2's default


@pytest.mark.parametrize("m,n", [(11008, 4096), (4096, 11008)])
def test_galore_moments_shard_with_the_weight_and_its_projector_is_replicated(m, n):
    spec = get_method("galore")
    got = spec.rank_state_bytes(m, n, R, ranks=8, state_bits=16, param_bytes=2)
    assert got["optimizer_states"] == 2 * 2 * R * max(m, n) // 8  # exp_avg, exp_avg_sq on R, long side cut in 8
    assert got["projection_matrices"] == 2 * min(m, n) * R  # P whole on every rank


def test_a_crossed_weight_keeps_whole_moments_and_all_reduces_r_every_step():
    spec = get_method("galore")
    m, n, ranks = 512, 1376, 64  # stays on Shard(0) with m < n
    got = spec.rank_state_bytes(m, n, R, ranks=ranks, state_bits=16, param_bytes=2)
    assert got["optimizer_states"] == 2 * 2 * R * n
    assert spec.comm_bytes(m, n, R, ranks=ranks, when=When.STEP, param_bytes=2) == {"all_reduce": 2 * R * n}


def test_an_svd_refresh_gathers_the_gradient_to_its_owner_and_broadcasts_p():
    spec = get_method("galore")
    m, n = 11008, 4096
    assert spec.comm_bytes(m, n, R, ranks=8, when=When.REFRESH, param_bytes=2) == \
        {"gather": 2 * m * n, "broadcast": 2 * n * R}
    assert spec.comm_bytes(m, n, R, ranks=8, when=When.STEP, param_bytes=2) == {}
    # the owner holds the gathered bf16 gradient and the whole SVD workspace
    whole = spec.workspace_bytes(m, n, R, state_bits=16, param_bytes=2)
    assert spec.rank_workspace_bytes(m, n, R, ranks=8, state_bits=16, param_bytes=2) == whole + 2 * m * n


@pytest.mark.parametrize("name", ["osd", "ori"])
def test_streaming_updates_all_reduce_one_small_matrix_per_step(name):
    m, n = 11008, 4096
    got = get_method(name).comm_bytes(m, n, R, ranks=8, when=When.STEP, param_bytes=2)
    assert got == {"all_reduce": 4 * (min(m, n) * R + 1)}  # A·P = g(gᵀP) and ‖G‖², fp32, never the gradient


@pytest.mark.parametrize("name", ["grasswalk", "grassjump"])
def test_random_bases_send_nothing_at_a_refresh(name):
    assert get_method(name).comm_bytes(4096, 11008, R, ranks=8, when=When.REFRESH, param_bytes=2) == {}


def test_adamw_states_shard_like_the_padded_weight_rows():
    spec = get_method("adamw")
    got = spec.rank_state_bytes(1376, 512, 0, ranks=3, state_bits=16, param_bytes=2)
    assert got == {"optimizer_states": 2 * 2 * math.ceil(1376 / 3) * 512}


def test_8bit_states_quantise_the_local_shard():
    spec = get_method("adamw")
    local = math.ceil(11008 / 8) * 4096
    got = spec.rank_state_bytes(11008, 4096, 0, ranks=8, state_bits=8, param_bytes=2)
    assert got == {"optimizer_states": 2 * (local + 4 * math.ceil(local / 256))}
