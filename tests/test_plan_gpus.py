"""`plan --gpus N`: the per-rank memory model, the communication model and the strategy search (pure Python)."""

from __future__ import annotations

import pytest

from subprof.catalog import gpu_by_name, load_model, model_names, parse_budget
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import parse_methods
from subprof.plan.comm import job_throughput, step_comm
from subprof.plan.distributed import estimate_rank, shard_terms
from subprof.plan.memory import estimate
from subprof.plan.parallel import Parallel
from subprof.plan.planner import PlanRequest, plan

H100 = gpu_by_name("h100-sxm")


def _request(model: str = "7b", **kw) -> PlanRequest:
    kw.setdefault("budget", parse_budget("h100-sxm"))
    return PlanRequest(model=load_model(model), methods=parse_methods(kw.pop("methods", "all")), **kw)


def _terms(c: TrainConfig, ranks: int):
    return shard_terms(c.model, c.method, c.rank, c.state_bits, c.layerwise, c.dtype, (), ranks)


@pytest.mark.parametrize("model", model_names())
def test_one_gpu_plans_exactly_as_before(model):
    one = plan(_request(model, budget=parse_budget("24GB"), gpus=1, nodes=1, strategy="auto"))
    before = plan(_request(model, budget=parse_budget("24GB")))
    assert [c.to_dict() for c in one.candidates] == [c.to_dict() for c in before.candidates]
    assert one.rejected == before.rejected and one.suggestions == before.suggestions


@pytest.mark.parametrize("model", model_names())
def test_one_rank_is_the_single_gpu_estimate(model):
    c = TrainConfig(model=load_model(model), method="galore", batch=2)
    assert estimate_rank(c, Parallel(gpus=1)).to_dict() == estimate(c).to_dict()


def test_ddp_is_one_gpu_plus_a_second_copy_of_the_gradients():
    c = TrainConfig(model=load_model("1b"), batch=4)
    one, ddp = estimate(c), estimate_rank(c, Parallel(gpus=8, strategy="ddp"))
    assert ddp.peak_allocated_bytes - one.peak_allocated_bytes == c.model.params * 2


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp-no-reshard"])
def test_sharding_over_more_gpus_never_needs_more_memory_per_rank(strategy):
    c = TrainConfig(model=load_model("7b"), batch=2)
    peaks = [estimate_rank(c, Parallel(gpus=n, strategy=strategy)).peak_allocated_bytes for n in (2, 8, 64)]
    assert peaks[0] > peaks[1] > peaks[2]


def test_no_reshard_holds_the_whole_model_gathered():
    c = TrainConfig(model=load_model("7b"), batch=1)
    fsdp = estimate_rank(c, Parallel(gpus=8, strategy="fsdp"))
    kept = estimate_rank(c, Parallel(gpus=8, strategy="fsdp-no-reshard"))
    assert kept.components["unsharded_parameters"] == 2 * c.model.params  # bf16, every unit
    assert kept.peak_allocated_bytes > fsdp.peak_allocated_bytes


# --- DeepSpeed's published ZeRO model-state figures as a sanity check of the AdamW baseline -----------------------
# DeepSpeed "Memory Requirements" docs, t5-3b (2851M params), 1 node × 8 GPUs, no offload; their "GB" is GiB:
#   ZeRO-2: 4·P + 16·P/N = 15.93 per GPU;  ZeRO-3: 4·largest_layer + 18·P/N = 6.10 per GPU (largest layer: the
#   32128 × 1024 shared embedding). 16 B/param = fp32 master + fp32 grad + Adam's two fp32 moments; ZeRO-3's 18 adds
#   the fp16 parameter shard; ZeRO-2's 4P is the replicated fp16 parameters and fp16 gradient buffer.


def zero2(p: float, n: int) -> float:
    return 4 * p + 16 * p / n


def zero3(p: float, n: int, largest: float) -> float:
    return 4 * largest + 18 * p / n


def test_the_deepspeed_formulas_give_their_published_t5_3b_figures():
    assert round(zero2(2851e6, 8) / 2**30, 2) == 15.93
    assert round(zero3(2851e6, 8, 32128 * 1024) / 2**30, 2) == 6.10


def test_fsdp_mixed_precision_keeps_zero3_model_states_less_the_fp16_shard():
    c = TrainConfig(model=load_model("7b"), dtype="mixed")  # 8 divides every 7b dim: no padding
    p, n, t = c.model.params, 8, _terms(c, 8)
    assert t.params + t.grads + t.states == 16 * p / n
    # DeepSpeed's 4·largest layer: that layer's fp16 parameters and gradients, gathered — ours for a decoder layer
    layer = t.layer_unsharded // 2
    ours = t.params + t.grads + t.states + t.layer_unsharded + t.layer_unsharded  # + bf16 params and grads
    # FSDP2 keeps no fp16 shard (it casts while gathering): DeepSpeed's 18·P/N is our 16·P/N + 2·P/N
    assert ours + 2 * p / n == zero3(p, n, layer)


def test_fsdp_no_reshard_keeps_zero2_model_states_less_the_full_gradient_buffer():
    c = TrainConfig(model=load_model("7b"), dtype="mixed")
    p, n, t = c.model.params, 8, _terms(c, 8)
    est = estimate_rank(TrainConfig(model=c.model, dtype="mixed", batch=1), Parallel(gpus=8,
                                                                                      strategy="fsdp-no-reshard"))
    gathered = est.components["unsharded_parameters"]
    assert gathered == 2 * p  # ZeRO-2's replicated fp16 parameters
    # ZeRO-2 keeps a full fp16 gradient buffer (2·P); FSDP2 reduce-scatters one unit at a time instead
    assert t.params + t.grads + t.states + gathered + 2 * p == zero2(p, n)


# --- communication -------------------------------------------------------------------------------------------------


def test_fsdp_moves_three_times_the_parameters_per_micro_batch():
    c = TrainConfig(model=load_model("7b"), batch=2, accumulation=4)
    layers = sum(s.m * s.n * s.count for s in c.model.linear_shapes()) + 2 * c.model.hidden * c.model.layers
    got = step_comm(c, Parallel(gpus=8, strategy="fsdp")).bytes_by_op()
    assert got["all_gather"] == 4 * 2 * (c.model.params + layers)  # forward, and the layers again in backward
    assert got["reduce_scatter"] == 4 * 2 * c.model.params
    assert step_comm(c, Parallel(gpus=8, strategy="ddp")).bytes_by_op() == {"all_reduce": 2 * c.model.params}


def test_slower_links_mean_a_larger_communication_share():
    c = TrainConfig(model=load_model("7b"), batch=1, accumulation=64)
    par = Parallel(gpus=8, strategy="fsdp")
    fast = job_throughput(c, par, H100, utilization=0.4, states=0)
    slow = job_throughput(c, par, gpu_by_name("l40s"), utilization=0.4, states=0)
    assert slow.comm_share > fast.comm_share > 0
    across = job_throughput(c, Parallel(gpus=16, nodes=2, strategy="fsdp"), H100, utilization=0.4, states=0)
    assert across.comm_share > fast.comm_share


def test_hsdp_all_reduces_shards_across_nodes():
    c = TrainConfig(model=load_model("1b"), batch=4)
    got = {t.name: t for t in step_comm(c, Parallel(gpus=16, nodes=2, strategy="hsdp")).transfers}
    across = got["gradient all-reduce across nodes"]
    assert across.spans_nodes and across.group == 2
    assert not got["parameter all-gather"].spans_nodes and got["parameter all-gather"].group == 8


# --- the search ----------------------------------------------------------------------------------------------------


def test_eight_gpus_fit_full_rank_adamw_where_one_does_not():
    # AdamW itself (full rank with Adafactor's factors fits one 24 GB GPU per-layer: pinned to Adam)
    one = plan(_request(budget=parse_budget("24GB"), methods="adamw", bases=("adamw",)))
    eight = plan(_request(budget=parse_budget("24GB"), methods="adamw", gpus=8, bases=("adamw",)))
    # one GPU alone holds no AdamW configuration: plan offers it only with the optimizer offloaded to the host
    assert all(c.offloaded for c in one.candidates) and "adamw" in one.gpu_alone
    assert eight.recommendation is not None and not eight.recommendation.offloaded
    rec = eight.recommendation
    assert rec.estimate.parallel.strategy in ("fsdp", "fsdp-no-reshard", "hsdp")
    assert rec.estimate.device_used_bytes <= eight.request.usable_bytes


def test_the_job_runs_the_global_batch_split_over_ranks():
    got = plan(_request(gpus=8, tokens_per_step=512 * 256, methods="adamw")).recommendation
    assert got.config.batch * got.config.accumulation * 8 == 512


def test_an_explicit_strategy_is_kept():
    got = plan(_request(gpus=8, strategy="ddp", methods="galore"))
    assert {c.estimate.parallel.strategy for c in got.candidates} == {"ddp"}


def test_auto_takes_the_fastest_strategy_that_fits():
    req = _request(gpus=8, methods="adamw", batch=2)
    rec = plan(req).recommendation
    for name in ("fsdp", "fsdp-no-reshard", "ddp"):
        other = plan(_request(gpus=8, methods="adamw", batch=2, strategy=name)).recommendation
        if other is not None and other.config.label() == rec.config.label():
            assert rec.throughput.tokens_per_s >= other.throughput.tokens_per_s * (1 - 1e-9)


@pytest.mark.parametrize("kw,message", [
    (dict(gpus=0), "--gpus must be at least 1"),
    (dict(gpus=8, nodes=3), "does not divide"),
    (dict(gpus=8, strategy="zero3"), "--strategy 'zero3' unknown"),
    (dict(gpus=8, strategy="hsdp"), "--nodes 2 or more"),
    (dict(gpus=8192, strategy="fsdp", tokens_per_step=8192 * 256), "has only 4096"),
    (dict(gpus=1024), "more ranks than the 512 sequences"),
])
def test_bad_job_layouts_are_one_line(kw, message):
    with pytest.raises(SubprofError, match=message):
        _request(**kw)
