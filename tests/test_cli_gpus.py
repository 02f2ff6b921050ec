"""`plan --gpus`, `bench --world-size` and `report --gpus-per-node` as a user meets them: real subprocesses, JSON
shapes, one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "subprof", *args], capture_output=True, text=True, timeout=300)


def test_plan_on_eight_gpus_reports_strategy_per_rank_memory_and_job_throughput():
    out = run("plan", "--model", "7b", "--gpu", "h100-sxm", "--gpu-mem", "80GB", "--gpus", "8", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    rec = data["recommendation"]
    assert rec["parallel"]["gpus"] == 8 and rec["parallel"]["strategy"] in ("ddp", "fsdp", "fsdp-no-reshard")
    assert rec["device_used_bytes"] <= data["usable_bytes"]
    assert rec["job"]["tokens_per_s"] == rec["tokens_per_s"] > 0 and 0 <= rec["job"]["comm_share"] < 1
    assert "overlap" in data["job"] and data["job"]["links"]["intra_node_gbs"] > 0


def test_plan_table_states_the_communication_assumptions():
    out = run("plan", "--model", "7b", "--gpu", "h100-sxm", "--gpu-mem", "h100-sxm", "--gpus", "16", "--nodes", "2",
              "--strategy", "hsdp", "--top", "2")
    assert out.returncode == 0, out.stderr
    assert "hsdp" in out.stdout and "communication" in out.stdout and "overlap" in out.stdout
    assert "between nodes" in out.stdout


@pytest.mark.parametrize("args,message", [
    (["--gpus", "0"], "--gpus must be at least 1"),
    (["--gpus", "8", "--nodes", "3"], "does not divide"),
    (["--gpus", "8", "--strategy", "zero3"], "unknown"),
    (["--model", "tiny", "--gpus", "256", "--strategy", "fsdp", "--tokens-per-step", "65536"], "has only 128"),
])
def test_plan_bad_job_layout_is_one_line_and_exit_2(args, message):
    base = ["plan", "--model", "7b", "--gpu-mem", "80GB"]
    if "--model" in args:
        base = ["plan", "--gpu-mem", "80GB"]
    out = run(*base, *args)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--world-size", "2", "--backend", "cuda"], "needs a CUDA GPU"),
    (["--strategy", "fsdp"], "give --world-size 2 or more"),
    (["--world-size", "256", "--backend", "trace"], "has only 128"),
])
def test_bench_bad_world_is_one_line_and_exit_2(args, message, tmp_path):
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU: the one-line refusal is for machines without")
    out = run("bench", "--model", "tiny", "--methods", "adamw", "--out", str(tmp_path / "b.jsonl"), *args)
    assert out.returncode == 2, out.stdout
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_estimate_on_eight_gpus_is_rank_zeros_breakdown():
    one = json.loads(run("estimate", "--model", "7b", "--batch", "2", "--json").stdout)
    out = run("estimate", "--model", "7b", "--batch", "2", "--gpus", "8", "--json")
    assert out.returncode == 0, out.stderr
    rank = json.loads(out.stdout)
    assert rank["parallel"] == {"gpus": 8, "nodes": 1, "strategy": "fsdp", "shard_ranks": 8, "replicas": 1}
    assert rank["components"]["weights"] * 8 == one["components"]["weights"]  # 7b's dims divide by 8: no padding
    assert rank["peak_allocated_bytes"] < one["peak_allocated_bytes"]


def test_a_job_plan_table_fits_100_columns_without_cutting_a_cell():
    from typer.testing import CliRunner

    from subprof.cli import app

    res = CliRunner().invoke(app, ["plan", "--model", "7b", "--gpu-mem", "80GB", "--gpu", "h100-sxm", "--gpus", "8"],
                             env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    table = res.output.split("best configuration per method")[1].split("top ")[0]
    assert "…" not in table and all(len(line) <= 100 for line in res.output.splitlines())
