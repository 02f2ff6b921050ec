"""One rank of a data-parallel job traced on a fake process group (`bench --backend trace --world-size N`): the
bytes it holds equal the sharding arithmetic exactly, its peak agrees with the per-rank model, its collectives with
the communication model. Two small live traces; the committed sweep covers the rest (test_rank_trace_agreement)."""

from __future__ import annotations

import functools

import pytest
import torch

from subprof.catalog import load_model
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.measure.case import Case
from subprof.plan import calibration as cal
from subprof.plan.comm import step_comm
from subprof.plan.distributed import estimate_rank, shard_bytes


def _case(world: int, strategy: str, **config) -> Case:
    return Case(config=TrainConfig(model=load_model("tiny"), batch=2, seq=64, **config), steps=2,
                world_size=world, strategy=strategy)


@functools.lru_cache(maxsize=None)
def _trace(world: int, strategy: str):
    """One trace per layout for the whole module (each takes a few seconds)."""
    from subprof.measure.distributed_trace import trace_rank

    before = torch.get_num_threads()
    case = _case(world, strategy)
    try:
        return case, trace_rank(case)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(params=[(3, "fsdp"), (2, "ddp")], ids=["fsdp-3-ranks", "ddp-2-ranks"])
def traced(request):
    return _trace(*request.param)


def test_rank_zero_holds_exactly_the_sharding_arithmetic(traced):
    case, res = traced
    assert res.shard_bytes == shard_bytes(case.config, case.parallel)  # 3 ranks: uneven, padded shards


def test_the_categories_add_up_to_the_peak(traced):
    _, res = traced
    assert sum(res.categories.values()) == res.peak_allocated_bytes


def test_the_per_rank_model_is_within_3_percent(traced):
    case, res = traced
    est = estimate_rank(case.config, case.parallel).peak_allocated_bytes - cal.DEFAULT.cuda_runtime_allocated_bytes
    assert abs(est / res.peak_allocated_bytes - 1) <= 0.03


def test_the_collectives_are_what_the_communication_model_moves(traced):
    case, res = traced
    traced_bytes: dict[str, int] = {}
    for ops in res.comms.values():
        for name, rec in ops.items():
            op = {"allgather_base": "all_gather", "reduce_scatter_base": "reduce_scatter",
                  "allreduce": "all_reduce"}[name.split("[")[0]]
            traced_bytes[op] = traced_bytes.get(op, 0) + rec["bytes"]
    assert traced_bytes == step_comm(case.config, case.parallel).bytes_by_op()


def test_ddp_keeps_a_bucket_copy_of_every_gradient():
    case, res = _trace(2, "ddp")
    assert res.categories["ddp_buckets"] >= case.config.model.params * 2


def test_a_projected_method_says_it_waits_for_the_distributed_optimizer(one_thread):
    from subprof.measure.distributed_trace import trace_rank

    with pytest.raises(SubprofError, match="distributed optimizer"):
        trace_rank(_case(2, "fsdp", method="galore", rank=16))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 local CUDA GPUs")
def test_cuda_job_records_every_ranks_peak(tmp_path):
    from subprof.measure.runner import build_cases, sweep

    cases = build_cases(model="tiny", methods=["adamw"], ranks=None, base={"batch": 2, "seq": 64}, steps=2,
                        backend="cuda", world_size=2, strategy="fsdp")
    row = sweep(cases, out=str(tmp_path / "rows.jsonl"), resume=False, timeout=600)[0]
    assert row["status"] == "ok", row.get("error")
    assert [r["rank"] for r in row["rank_peaks"]] == [0, 1]
    assert row["peak_allocated_bytes"] == max(r["peak_allocated_bytes"] for r in row["rank_peaks"])
    assert row["job_tokens_per_s"] > 0
