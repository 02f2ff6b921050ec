"""The GPU-side constants in subprof/calibration.py are what the committed H100 rows give, refitted here."""

import json
from pathlib import Path

import pytest

from subprof.plan import calibration as cal
from subprof.catalog import load_model
from subprof.config import TrainConfig
from subprof.plan.memory import estimate

ROWS = [json.loads(line) for line in
        (Path(__file__).resolve().parent.parent / "profiles" / "measured" / "h100_reference.jsonl").read_text()
        .splitlines() if line.strip()]


def _config(row):
    return TrainConfig(model=load_model(row["model"]), method=row["method"], rank=row["rank"], update_gap=200,
                       batch=row["batch"], seq=row["seq"])


def test_cuda_runtime_constant_is_the_mean_residual(monkeypatch):
    monkeypatch.setattr(cal, "CUDA_RUNTIME_ALLOCATED_BYTES", 0)
    residuals = [r["peak_allocated_gib"] * 2**30 - estimate(_config(r)).peak_allocated_bytes for r in ROWS]
    fitted = sum(residuals) / len(residuals)
    assert abs(fitted - 109 * 2**20) < 2 * 2**20


def test_cuda_context_is_the_mean_gap_between_nvml_and_reserved():
    gaps = [r["nvml_used_gib"] - r["peak_reserved_gib"] for r in ROWS]
    assert cal.CUDA_CONTEXT_BYTES == pytest.approx(sum(gaps) / len(gaps) * 2**30, rel=1e-3)


def test_reserve_slope_is_the_least_squares_fit(monkeypatch):
    xs, ys = [], []
    for r in ROWS:
        est = estimate(_config(r))
        xs.append(est.components["logits_loss"])
        ys.append((r["peak_reserved_gib"] - r["peak_allocated_gib"]) * 2**30)
    slope = sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
    assert cal.RESERVE_PER_LOGITS_BYTE == pytest.approx(slope, abs=0.01)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['model']}-{r['method']}")
def test_device_used_within_10_percent_of_nvml(row):
    est = estimate(_config(row))
    assert abs(est.device_used_bytes / (row["nvml_used_gib"] * 2**30) - 1) < 0.10
