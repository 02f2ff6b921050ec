"""Calibration: the default GPU-side constants are what the committed H100 rows give (refitted here by the same code
`subprof calibrate` uses), a row left out is predicted by the others, records are found by GPU and named in every
output."""

import json
from pathlib import Path

import pytest

from subprof.catalog import load_model
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.plan import calibration as cal
from subprof.plan.fit import errors, fit, leave_one_out, usable_rows
from subprof.plan.memory import estimate

ROWS = [json.loads(line) for line in
        (Path(__file__).resolve().parent.parent / "profiles" / "measured" / "h100_reference.jsonl").read_text()
        .splitlines() if line.strip()]


@pytest.fixture(scope="module")
def refit():
    return fit(ROWS, source="refit", base=cal.DEFAULT)


def test_the_default_is_the_fit_on_the_h100_rows(refit):
    assert abs(refit.cuda_runtime_allocated_bytes - cal.DEFAULT.cuda_runtime_allocated_bytes) < 2 * 2**20
    assert refit.cuda_context_bytes == pytest.approx(cal.DEFAULT.cuda_context_bytes, rel=1e-3)
    assert refit.reserve_per_logits_byte == pytest.approx(cal.DEFAULT.reserve_per_logits_byte, abs=0.01)
    assert refit.rows == 4


def test_a_row_left_out_is_predicted_by_the_others(refit):
    pairs = usable_rows(ROWS)
    worst = leave_one_out(pairs, refit)
    assert worst == refit.leave_one_out_error_pct
    assert worst < 3.0  # README reports the value


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['model']}-{r['method']}")
def test_device_used_within_10_percent_of_nvml(row):
    est = estimate(TrainConfig(model=load_model(row["model"]), method=row["method"], rank=row["rank"],
                               batch=row["batch"], seq=row["seq"]))
    assert abs(est.device_used_bytes / (row["nvml_used_gib"] * 2**30) - 1) < 0.10


def test_per_row_errors_under_the_default_stay_within_2_percent():
    assert all(abs(e["error_pct"]) <= 2.0 for e in errors(ROWS, cal.DEFAULT))


def test_rows_without_measurements_cannot_be_fitted():
    with pytest.raises(SubprofError, match="no measured GPU rows"):
        fit([{"model": "60m", "method": "adamw", "status": "oom"}], source="x", base=cal.DEFAULT)


def test_a_record_for_the_target_gpu_is_found_and_named(tmp_path, monkeypatch):
    record = {**cal.DEFAULT.to_dict(), "kind": "calibration", "gpu": "rtx-4090", "device_name": "NVIDIA GeForce RTX "
              "4090", "torch": "2.x", "date": "2026-12-01T00:00:00+00:00", "cuda_context_bytes": 600 * 2**20}
    (tmp_path / "calibration_rtx-4090_2026-12-01.json").write_text(json.dumps(record))
    monkeypatch.setattr(cal, "record_dirs", lambda: [tmp_path])
    cal._records.cache_clear()
    try:
        found = cal.calibration_for("rtx-4090")
        assert found.cuda_context_bytes == 600 * 2**20 and "RTX 4090" in found.source
        other = cal.calibration_for("h100-sxm")
        assert other.cuda_context_bytes == cal.DEFAULT.cuda_context_bytes and "no calibration record" in other.source
        config = TrainConfig(model=load_model("1b"), method="galore", rank=256)
        assert estimate(config, found).device_used_bytes < estimate(config).device_used_bytes
        assert "RTX 4090" in estimate(config, found).calibration
    finally:
        cal._records.cache_clear()


def test_a_file_that_is_not_a_record_is_one_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(SubprofError, match="not a calibration record"):
        cal.load(path)


def test_report_applies_a_given_record_to_the_gpu_it_was_measured_on(tmp_path, monkeypatch):
    """`report --calibration FILE`: that GPU's plans and breakdowns use the record and the summary names it; the other
    GPUs keep what `calibration_for` finds (here nothing: the default); a record for a GPU not in the report is one
    line."""
    from subprof.catalog import gpu_by_name
    from subprof.methods import parse_methods
    from subprof.report.summary import calibration_sentence
    from subprof.report.tables import ReportRequest, plan_cells

    monkeypatch.setattr(cal, "record_dirs", lambda: [])
    cal._records.cache_clear()
    record = {**cal.DEFAULT.to_dict(), "kind": "calibration", "gpu": "rtx-4090", "device_name": "NVIDIA GeForce RTX "
              "4090", "torch": "2.x", "date": "2026-12-01T00:00:00+00:00", "cuda_context_bytes": 600 * 2**20}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(record))
    try:
        gpus = [gpu_by_name("4090"), gpu_by_name("h100-sxm")]
        req = ReportRequest(models=[load_model("1b")], gpus=gpus, methods=parse_methods("adamw,galore"),
                            calibrations=[cal.load(path)])
        used = {cell.gpu.key: cell.plan.request.calibration for cell in plan_cells(req)}
        assert used["rtx-4090"].cuda_context_bytes == 600 * 2**20 and str(path) in used["rtx-4090"].source
        assert used["h100-sxm"].cuda_context_bytes == cal.DEFAULT.cuda_context_bytes
        assert str(path) in calibration_sentence(req)
        with pytest.raises(SubprofError, match="not among --gpus"):
            ReportRequest(models=[load_model("1b")], gpus=gpus[1:], methods=parse_methods("adamw"),
                          calibrations=[cal.load(path)])
    finally:
        cal._records.cache_clear()
