"""The per-rank model against the committed traced sweep (`profiles/measured/rank_trace_*.jsonl`, written by
`profiles/measured/rank_trace.sh`): the analytic per-rank peak within 3% of every traced rank's peak, and the
parameter, gradient and state bytes rank 0 holds equal to the sharding arithmetic byte for byte."""

import json
from pathlib import Path

import pytest

from subprof.catalog import load_model
from subprof.config import TrainConfig
from subprof.plan import calibration as cal
from subprof.plan.distributed import estimate_rank, shard_bytes
from subprof.plan.parallel import Parallel

MEASURED = Path(__file__).resolve().parent.parent / "profiles" / "measured"
ROWS = [json.loads(line) for path in sorted(MEASURED.glob("rank_trace_*.jsonl"))
        for line in path.read_text().splitlines() if line.strip()]
OK_ROWS = [r for r in ROWS if r.get("status") == "ok"]


def _id(r: dict) -> str:
    flags = [f"b{r['batch']}", f"bits{r['state_bits']}", r["dtype"]] + (["lw"] if r["layerwise"] else []) + \
        (["ckpt"] if r["checkpointing"] else [])
    return "-".join([r["model"], r["method"], str(r.get("rank") or "full"), f"{r['strategy']}{r['world_size']}",
                     *flags])


def _config(r: dict) -> tuple[TrainConfig, Parallel]:
    c = TrainConfig(model=load_model(r["model"]), method=r["method"], rank=r.get("rank"),
                    update_gap=r.get("update_gap"), state_bits=r["state_bits"], layerwise=r["layerwise"],
                    checkpointing=r["checkpointing"], dtype=r["dtype"], batch=r["batch"], seq=r["seq"])
    return c, Parallel(gpus=r["world_size"], nodes=r["nodes"], strategy=r["strategy"])


def test_the_sweep_covers_three_models_three_world_sizes_and_both_adamw_precisions():
    got = {(r["model"], r["world_size"], r["state_bits"]) for r in OK_ROWS
           if r["method"] == "adamw" and r["strategy"] == "fsdp"}
    assert {(m, w, b) for m in ("60m", "1b", "7b") for w in (2, 8, 64) for b in (16, 8)} <= got


def test_the_sweep_covers_every_strategy():
    assert {r["strategy"] for r in OK_ROWS} == {"fsdp", "fsdp-no-reshard", "ddp", "hsdp"}


@pytest.mark.parametrize("row", OK_ROWS, ids=_id)
def test_per_rank_estimate_within_3_percent_of_the_traced_rank(row):
    c, par = _config(row)
    model_side = estimate_rank(c, par).peak_allocated_bytes - cal.DEFAULT.cuda_runtime_allocated_bytes
    assert abs(model_side / row["peak_allocated_bytes"] - 1) <= 0.03


@pytest.mark.parametrize("row", OK_ROWS, ids=_id)
def test_traced_shards_equal_the_sharding_arithmetic(row):
    c, par = _config(row)
    want = shard_bytes(c, par)
    got = dict(row["shard_bytes"])
    if c.layerwise:  # per-layer updates free every gradient in its hook: none is left after backward
        want.pop("gradients"), got.pop("gradients")
    assert got == want
