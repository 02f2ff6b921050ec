"""The analytic estimate lies within 3% of every committed traced peak (fix the model, not the tolerance)."""

import json
from pathlib import Path

import pytest

from subprof.plan.calibration import DEFAULT
from subprof.catalog import load_model
from subprof.config import TrainConfig
from subprof.plan.memory import Estimate, estimate

MEASURED = Path(__file__).resolve().parent.parent / "profiles" / "measured"
ROWS = [json.loads(line) for path in sorted(MEASURED.glob("trace_*.jsonl"))
        for line in path.read_text().splitlines() if line.strip()]
OK_ROWS = [r for r in ROWS if r.get("status") == "ok"]


def _id(r: dict) -> str:
    base = (r.get("method_options") or {}).get("base")
    flags = ([base] if base else []) + [f"b{r['batch']}", f"bits{r.get('state_bits')}"]
    flags += (["lw"] if r.get("layerwise") else []) + \
        (["ckpt"] if r.get("checkpointing") else [])
    return "-".join([r["model"], r["method"], str(r.get("rank") or "full"), *flags])


def test_there_are_committed_traced_rows_from_60m_to_7b():
    models = {r["model"] for r in OK_ROWS}
    assert {"60m", "350m", "1b", "7b"} <= models


def row_estimate(row: dict, model=None) -> Estimate:
    """The estimate of a traced row's configuration (its method options: the base optimizer, a variant; `model`:
    the row's model when not a catalogue name)."""
    method = "galore" if row["method"] == "galore-ref" else row["method"]
    return estimate(TrainConfig(model=model or load_model(row["model"]), method=method, rank=row.get("rank"),
                                update_gap=row.get("update_gap"), state_bits=row.get("state_bits"),
                                layerwise=row.get("layerwise", False), checkpointing=row.get("checkpointing", False),
                                loss=row.get("loss", "full"), dtype=row.get("dtype", "bf16"), batch=row["batch"],
                                seq=row["seq"], method_options=dict(row.get("method_options") or {})))


def _model_side_estimate(row: dict) -> int:
    """`row_estimate` without the GPU-side runtime allocations calibrated on real H100 rows — a trace sees tensors
    only."""
    est = row_estimate(row)
    return est.peak_allocated_bytes - DEFAULT.cuda_runtime_allocated_bytes


@pytest.mark.parametrize("row", OK_ROWS, ids=_id)
def test_estimate_within_3_percent_of_traced_peak(row):
    assert abs(_model_side_estimate(row) / row["peak_allocated_bytes"] - 1) <= 0.03


BASE_ROWS = [r for r in OK_ROWS if (r.get("method_options") or {}).get("base")]


def test_every_base_optimizer_has_traced_rows_on_60m_and_1b():
    """issue 25: GaLore and full rank with Lion and Adafactor (Lion at 8 bits too), 60m and 1b."""
    seen = {(r["model"], r["method"], r["method_options"]["base"]) for r in BASE_ROWS}
    assert {(m, meth, b) for m in ("60m", "1b") for meth in ("galore", "adamw") for b in ("lion", "adafactor")} <= seen


@pytest.mark.parametrize("row", BASE_ROWS, ids=_id)
def test_a_base_optimizers_estimate_is_within_2_percent_of_its_trace(row):
    """The peak and the optimizer states the trace found in `optimizer.state` (after the lazy first step)."""
    assert abs(_model_side_estimate(row) / row["peak_allocated_bytes"] - 1) <= 0.02
