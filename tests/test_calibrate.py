"""`subprof calibrate`'s sweep without a GPU: the case list, the time budget and resume, run through the real runner
with the cuda worker replaced by the trace worker at the process boundary; the record written from rows; and the
one-line answer where no GPU exists. The fitting itself is tested on the H100 rows (tests/test_calibration.py)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from subprof.cli import app
from subprof.measure import calibrate as lib
from subprof.results import read_rows

ONE_CONFIG = (("galore", 256, 16, False, False),)


def sweep(tmp_path, **kw) -> lib.Sweep:
    kw = {"backend": "trace", "models": ("tiny",), "configs": ONE_CONFIG, "proj_device": "cpu", "budget_s": 600.0,
          **kw}
    return lib.Sweep(out=tmp_path, **kw)


def test_quick_covers_60m_and_350m_full_adds_1b_each_at_two_micro_batches(tmp_path):
    quick = lib.cases(lib.Sweep(out=tmp_path, quick=True))
    full = lib.cases(lib.Sweep(out=tmp_path))
    assert {c.config.model.name for c in quick} == {"60m", "350m"}
    assert {c.config.model.name for c in full} == {"60m", "350m", "1b"}
    assert len(full) == 3 * len(lib.CONFIGS) * 2
    methods = {(c.config.method, c.config.state_bits, c.config.layerwise) for c in full}
    assert {("adamw", 16, False), ("adamw", 8, False), ("galore", 8, True), ("ori", 16, False)} <= methods


def test_configurations_that_cannot_fit_the_device_are_left_out(tmp_path):
    from subprof.plan.memory import estimate

    memory = 12 * 10**9
    small = lib.cases(lib.Sweep(out=tmp_path, device_memory=memory))
    assert small and all(estimate(c.config).device_used_bytes <= lib.FIT_LIMIT * memory for c in small)
    assert len(small) < len(lib.cases(lib.Sweep(out=tmp_path)))


def test_the_sweep_writes_every_row_as_it_comes_and_resume_runs_nothing_twice(tmp_path):
    first = lib.run(sweep(tmp_path))
    log = tmp_path / "calibrate_device.jsonl"
    rows = read_rows(log)
    training = [r for r in rows if r.get("backend") == "trace"]
    assert [r["batch"] for r in training] == [1, 2] and all(r["status"] == "ok" for r in training)
    assert any(r.get("kind") == "device" for r in rows) and any(r.get("kind") == "proj" for r in rows)
    assert first["record"] is None  # a trace is not a GPU: nothing to fit
    again = lib.run(sweep(tmp_path), resume=True)
    assert len([r for r in read_rows(log) if r.get("backend") == "trace"]) == 2  # no new training rows
    assert [r.get("batch") for r in again["rows"] if r.get("backend") == "trace"] == [1, 2]


def test_cases_past_the_time_budget_are_skipped_rows_that_resume_runs_later(tmp_path):
    result = lib.run(sweep(tmp_path, budget_s=0.0))
    skipped = [r for r in result["rows"] if r.get("status") == "skipped"]
    assert len(skipped) == 2 and all(r["error"] == "time budget" for r in skipped)
    resumed = lib.run(sweep(tmp_path), resume=True)
    assert [r["status"] for r in resumed["rows"] if r.get("backend") == "trace"] == ["ok", "ok"]


def test_a_record_is_fitted_from_gpu_rows_measured_elsewhere(tmp_path):
    rows = tmp_path / "bench.jsonl"
    ref = [json.loads(line) for line in open("profiles/measured/h100_reference.jsonl") if line.strip()]
    rows.write_text("".join(json.dumps({**r, "device": "NVIDIA H100 80GB HBM3"}) + "\n" for r in ref))
    res = CliRunner().invoke(app, ["calibrate", "--from", str(rows), "--out", str(tmp_path / "cal"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    record = json.loads(open(data["record_path"]).read())
    assert record["kind"] == "calibration" and record["gpu"] == "h100-sxm" and record["rows"] == 4
    assert record["leave_one_out_error_pct"] is not None and len(data["errors"]) == 4


def test_without_a_gpu_calibrate_says_what_it_needs_and_what_estimates_use(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = CliRunner().invoke(app, ["calibrate", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "CUDA GPU" in res.output and "H100 reference rows" in res.output and "--from" in res.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_calibrate_quick_on_this_gpu_writes_a_record_within_its_budget(tmp_path):
    result = lib.run(lib.Sweep(out=tmp_path, quick=True, budget_s=240.0))
    assert result["record"] is not None and result["record"]["rows"] >= 2
    assert all(abs(e["error_pct"]) < 10 for e in result["errors"])
