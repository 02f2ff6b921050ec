"""Optimizer offload (`subprof.plan.offload`, issue 24 item 3): FSDP2 `CPUOffloadPolicy` on one GPU.

The host side is checked against a real FSDP2 run with `CPUOffloadPolicy` (gloo, one CPU rank): the bytes of its
sharded parameters, gradients and AdamW states. The GPU side reuses the FSDP2 rank terms traced in
test_distributed_trace.py; its peak against a real CUDA run is the `gpu`-marked test (skipped without a GPU).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from subprof.catalog import gpu_by_name, gpu_catalog, load_model, parse_budget
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import parse_methods
from subprof.plan.memory import estimate
from subprof.plan.offload import (HOST_STEP_GBS, check_offload, host_step_seconds, offload_estimate,
                                  offload_throughput, parse_offload)
from subprof.plan.planner import PlanRequest, plan


def _cfg(model: str = "7b", **kw) -> TrainConfig:
    return TrainConfig(model=load_model(model), method=kw.pop("method", "adamw"), **kw)


def test_host_holds_parameters_gradients_and_both_moments():
    c = _cfg(batch=4)
    host = offload_estimate(c).host
    p = c.model.params
    assert host["weights"] == host["gradients"] == 2 * p
    assert host["optimizer_states"] == 2 * 2 * p  # two bf16 moments
    assert host["optimizer_temporaries"] == c.model.vocab * c.model.hidden * 2  # largest tensor: the embedding


def test_gpu_holds_no_weights_gradients_or_states():
    est = offload_estimate(_cfg(batch=4))
    fwd_bwd = est.phases["forward_backward"]
    assert not {"weights", "gradients", "optimizer_states"} & {k for k, v in fwd_bwd.items() if v}
    assert est.peak_phase == "forward_backward" and not est.phases["optimizer_step"]


def test_offload_frees_the_state_from_the_gpu():
    c = _cfg(batch=4)
    assert offload_estimate(c).peak_allocated_bytes < estimate(c).peak_allocated_bytes - 3 * 2 * c.model.params


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_gpu_side_grows_with_the_micro_batch_and_the_host_side_does_not(batch):
    small, big = offload_estimate(_cfg(batch=batch)), offload_estimate(_cfg(batch=2 * batch))
    assert big.peak_allocated_bytes > small.peak_allocated_bytes
    assert big.host_bytes == small.host_bytes


def test_pcie_traffic_per_micro_batch():
    """Every decoder layer is copied host→GPU for forward and again for backward, the root once; every gradient
    comes back once."""
    c = _cfg(batch=4)
    m = c.model
    est = offload_estimate(c)
    root = (1 if m.tied else 2) * m.vocab * m.hidden + m.hidden
    assert est.h2d_bytes == 2 * (2 * (m.params - root) + root)
    assert est.d2h_bytes == 2 * m.params


def test_step_time_is_compute_or_copies_then_the_cpu_step():
    c = _cfg(batch=1, accumulation=8)
    gpu = gpu_by_name("a10g", "--gpu")
    est = offload_estimate(c)
    t = offload_throughput(c, est, gpu)
    assert t.transfer_s == pytest.approx(8 * est.h2d_bytes / (gpu.host_link_gbs * 1e9))
    assert t.step_s == pytest.approx(max(t.compute_s, t.transfer_s) + host_step_seconds(c))
    assert host_step_seconds(c) == pytest.approx(c.model.params * (3 * 2 + 4 * 2) / (HOST_STEP_GBS * 1e9))
    assert t.slowdown > 1


def test_a_faster_link_never_slows_the_offloaded_step():
    c = _cfg(batch=1, accumulation=4)
    est = offload_estimate(c)
    gen4, gen5 = gpu_by_name("l40s", "--gpu"), gpu_by_name("h100-pcie", "--gpu")
    assert gen5.host_link_gbs > gen4.host_link_gbs
    assert offload_throughput(c, est, gen5).transfer_s < offload_throughput(c, est, gen4).transfer_s


@pytest.mark.parametrize("kw, fragment", [
    ({"method": "galore"}, "full-rank AdamW"),
    ({"state_bits": 8}, "8-bit"),
    ({"layerwise": True}, "--layerwise"),
])
def test_offload_refuses_what_it_does_not_model(kw, fragment):
    with pytest.raises(SubprofError, match=fragment):
        check_offload(_cfg(model="60m", **kw))


def test_offload_is_for_one_gpu():
    with pytest.raises(SubprofError, match="one GPU"):
        check_offload(_cfg(model="60m"), gpus=2)


def test_parse_offload_names_the_choices():
    assert parse_offload(" Optimizer ") == "optimizer"
    with pytest.raises(SubprofError, match="none or optimizer"):
        parse_offload("states")


def test_every_catalogue_gpu_has_a_host_link():
    for g in gpu_catalog().values():
        assert g.host_link_gbs in (16.0, 32.0, 64.0) and "PCIe" in g.host_link, g.key


# ------------------------------------------------------------------------------------------------------- plan


def _plan(methods: str, gpu_mem: str = "24GB", model: str = "7b"):
    return plan(PlanRequest(model=load_model(model), budget=parse_budget(gpu_mem), methods=parse_methods(methods)))


def test_plan_offers_offload_when_adamw_does_not_fit_on_the_gpu_alone():
    result = _plan("adamw")
    rec = result.recommendation
    assert rec is not None and rec.offloaded and rec.fits
    assert "adamw" not in result.rejected and "adamw" in result.gpu_alone
    d = rec.to_dict()
    assert d["offload"] == "optimizer" and d["host_bytes"] == rec.estimate.host_bytes > rec.estimate.peak_allocated_bytes
    assert d["offload_speed"]["slowdown"] > 1


def test_plan_does_not_offload_when_something_fits():
    result = _plan("adamw,galore")
    assert result.recommendation is not None
    assert not any(c.offloaded for c in result.candidates)


def test_plan_does_not_offload_low_rank_methods():
    result = _plan("galore", gpu_mem="8GB")
    assert not any(c.offloaded for c in result.candidates)


def test_cli_plan_7b_adamw_24gb_offers_offload_with_host_ram_and_slowdown():
    from subprof.cli import app

    res = CliRunner().invoke(app, ["plan", "--model", "7b", "--gpu-mem", "24GB", "--methods", "adamw"])
    assert res.exit_code == 0, res.output
    first = " ".join(res.output.split("\n")[:6])
    assert "optimizer offload" in first and "GiB of host RAM" in first and "slower than on the GPU" in first
    assert "rejected" not in res.output
    data = json.loads(CliRunner().invoke(app, ["plan", "--model", "7b", "--gpu-mem", "24GB", "--methods", "adamw",
                                               "--json"]).output)
    assert data["recommendation"]["host_bytes"] > 0 and data["rejected"] == {}


def test_cli_estimate_offload_prints_the_split_and_json_carries_host_bytes():
    from subprof.cli import app

    res = CliRunner().invoke(app, ["estimate", "--model", "60m", "--offload", "optimizer"])
    assert res.exit_code == 0 and "host (CPU) memory" in res.output
    data = json.loads(CliRunner().invoke(app, ["estimate", "--model", "60m", "--offload", "optimizer",
                                               "--json"]).output)
    assert data["offload"] == "optimizer" and data["host_bytes"] == sum(data["host"].values())


@pytest.mark.parametrize("args", [["--offload", "disk"], ["--method", "galore", "--offload", "optimizer"],
                                  ["--offload", "optimizer", "--gpus", "2"]])
def test_cli_estimate_offload_bad_input_is_one_line_exit_2(args):
    from subprof.cli import app

    res = CliRunner().invoke(app, ["estimate", "--model", "60m", *args])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


# ------------------------------------------------------------------------------------ against real FSDP2 offload


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_host_bytes_match_a_real_fsdp2_cpu_offload_run(dtype):
    """FSDP2 with `CPUOffloadPolicy` on one gloo rank: after one AdamW step, its sharded parameters, gradients and
    states hold exactly the host bytes the estimate declares (the step's temporary is transient)."""
    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    from subprof.measure.model import build_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        cfg = _cfg(model="tiny", batch=2, seq=32, dtype=dtype)
        model = build_model(cfg.model, dtype=dtype, device="cpu")
        policy = CPUOffloadPolicy(pin_memory=False)  # pinning needs a CUDA device
        for layer in model.model.layers:
            fully_shard(layer, offload_policy=policy)
        fully_shard(model, offload_policy=policy)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(0, cfg.model.vocab, (cfg.batch, cfg.seq))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

        def nbytes(tensors):
            return sum(t.to_local().numel() * t.to_local().element_size() for t in tensors)

        params = list(model.parameters())
        states = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
        host = offload_estimate(cfg).host
        assert nbytes(params) == host["weights"]
        assert nbytes([p.grad for p in params]) == host["gradients"]
        assert nbytes(states) == host["optimizer_states"]
        assert {t.to_local().device.type for t in params + states} == {"cpu"}
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
def test_gpu_peak_against_a_real_cuda_fsdp2_offload_run():
    """On a CUDA GPU: FSDP2 with `CPUOffloadPolicy` (pinned) on one NCCL rank, 1b at batch 4; the model-side peak
    allocated within 15% of the estimate's (CUDA runtime excluded: calibration)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import torch.distributed as dist
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    from subprof.measure.model import build_model

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        cfg = _cfg(model="1b", batch=4, seq=256)
        model = build_model(cfg.model, dtype="bf16", device="cpu")
        for layer in model.model.layers:
            fully_shard(layer, offload_policy=CPUOffloadPolicy())
        fully_shard(model, offload_policy=CPUOffloadPolicy())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            ids = torch.randint(0, cfg.model.vocab, (cfg.batch, cfg.seq), device="cuda")
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
        measured = torch.cuda.max_memory_allocated() - base
        est = offload_estimate(cfg)
        predicted = est.peak_allocated_bytes - est.components["cuda_runtime"]
        assert measured == pytest.approx(predicted, rel=0.15)
    finally:
        dist.destroy_process_group()
