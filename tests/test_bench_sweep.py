"""`subprof bench`: cases, backends, oom emulation, resume (after a kill: a half-written last line), Ctrl-C."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from subprof.catalog import load_model
from subprof.cli import app
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.measure import runner as bench_runner
from subprof.measure.case import Case
from subprof.measure.runner import build_cases, run_case
from subprof.measure.worker import measure

cli = CliRunner()
BASE = dict(batch=2, seq=16, dtype="bf16", state_bits=None, layerwise=False, checkpointing=False, update_gap=None)


def case(model: str = "tiny", backend: str = "trace", steps: int = 3, **config) -> Case:
    config = {"batch": 1, "seq": 16, **config}
    return Case(config=TrainConfig(model=load_model(model), **config), backend=backend, steps=steps)


def fake_row(case: Case, *, timeout: float) -> dict:
    return {**case.row_fields(), "status": "ok", "peak_allocated_bytes": 1000}


def test_cases_are_methods_times_ranks_and_adamw_once():
    cases = build_cases(model="tiny", methods=["adamw", "galore", "galore-ref"], ranks=[16, 32], base=BASE, steps=3,
                        backend="trace")
    assert [(c.method_label, c.config.rank) for c in cases] == [("adamw", None), ("galore", 16), ("galore", 32),
                                                                ("galore-ref", 16), ("galore-ref", 32)]
    assert [c.implementation for c in cases] == ["subprof"] * 3 + ["galore-torch"] * 2
    assert {c.config.state_bits for c in cases} == {16} and cases[1].config.update_gap == 200


def test_a_rank_above_the_smallest_weight_side_is_refused():
    with pytest.raises(SubprofError, match="rank"):
        build_cases(model="tiny", methods=["galore"], ranks=[4096], base=BASE, steps=3, backend="trace")


def test_galore_ref_without_galore_torch_installed_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "galore_torch" else real(name, *a))
    with pytest.raises(SubprofError, match=r"subprof\[reference\]"):
        build_cases(model="tiny", methods=["galore-ref"], ranks=[16], base=BASE, steps=1, backend="trace")


def test_a_case_travels_to_the_worker_as_json_unchanged():
    original = case(method="grasswalk", rank=8, update_gap=5, layerwise=True, method_options={"recovery": False})
    assert Case.from_json(original.to_json()) == original


def test_cpu_backend_runs_real_steps_with_finite_losses():
    row = measure(case(method="galore", rank=8, backend="cpu", steps=2))
    assert row["status"] == "ok"
    assert len(row["losses"]) == 4 and all(math.isfinite(x) for x in row["losses"])
    assert abs(row["losses"][0] - math.log(load_vocab())) < 1.0  # random init: loss ≈ ln V
    assert row["peak_allocated_bytes"] >= row["phases"]["optimizer_step"] > row["phases"]["model_built"] > 0
    assert row["tokens_per_s"] > 0 and len(row["step_times_s"]) == 2


def test_cpu_backend_on_60m():
    row = measure(case(model="60m", method="adamw", batch=1, seq=8, steps=1, backend="cpu"))
    assert row["status"] == "ok" and math.isfinite(row["losses"][0])
    assert row["categories"]["parameters"] == 2 * 58_073_600


def load_vocab() -> int:
    return load_model("tiny").vocab


def test_a_nan_gradient_is_a_diverged_row_not_an_error(monkeypatch):
    from subprof.measure import model as model_builder

    build = model_builder.build_model

    def poisoned(*args, **kwargs):
        model = build(*args, **kwargs)
        with torch.no_grad():
            model.model.norm.weight.fill_(float("nan"))
        return model

    monkeypatch.setattr(model_builder, "build_model", poisoned)
    row = measure(case(method="galore", rank=8, backend="cpu", steps=1))
    assert row["status"] == "diverged", row.get("error")
    assert "non-finite" in row["error"] or "NaN" in row["error"]


def test_trace_over_budget_is_an_oom_row_at_the_crossing_phase():
    from subprof.measure.runner import BudgetRule
    from subprof.plan.calibration import Calibration

    bare = Calibration(source="test: no GPU-side terms", cuda_runtime_allocated_bytes=0, cuda_context_bytes=0,
                       reserve_per_logits_byte=0.0)
    c = case(method="adamw", steps=1)
    row = measure(c)
    BudgetRule(budget_bytes=10**6, margin=0.0, calibration=bare).apply(row, c)
    assert row["status"] == "oom" and row["oom_phase"] == "model_built"  # the weights alone exceed 1 MB
    ok = measure(c)
    BudgetRule(budget_bytes=10**12, margin=0.0, calibration=bare).apply(ok, c)
    assert ok["status"] == "ok"


def test_a_case_past_its_timeout_is_a_timeout_row():
    row = run_case(case(method="adamw"), timeout=1)
    assert row["status"] == "timeout" and row["model"] == "tiny"


def test_resume_after_a_killed_run_skips_finished_cases_and_the_half_line(tmp_path, monkeypatch):
    out = tmp_path / "bench.jsonl"
    done = fake_row(case(method="galore", rank=16, update_gap=200, state_bits=16, batch=2), timeout=1)
    out.write_text(json.dumps(done) + "\n" + '{"model": "tiny", "method": "galore", "ra')  # killed mid-write
    calls = []
    monkeypatch.setattr(bench_runner, "run_case", lambda case, timeout: calls.append(case) or fake_row(
        case, timeout=timeout))
    res = cli.invoke(app, ["bench", "--model", "tiny", "--methods", "galore", "--ranks", "16,32", "--batch", "2",
                              "--seq", "16", "--backend", "trace", "--out", str(out), "--resume", "--json"])
    assert res.exit_code == 0, res.output
    assert [c.config.rank for c in calls] == [32]
    lines = out.read_text().splitlines()
    assert lines[1] == '{"model": "tiny", "method": "galore", "ra'  # the torn line is ended, not glued to
    rows = [json.loads(ln) for ln in lines[:1] + lines[2:]]
    assert [r["rank"] for r in rows] == [16, 32]
    assert [r["rank"] for r in json.loads(res.stdout)] == [16, 32]
    assert rows[1]["estimated_peak_allocated_bytes"] > 0


def test_sigint_to_a_running_sweep_keeps_a_valid_jsonl(tmp_path):
    out = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "-m", "subprof", "bench", "--model", "tiny", "--methods", "adamw,galore",
           "--ranks", "8,16,32", "--batch", "1", "--seq", "16", "--steps", "1", "--backend", "trace",
           "--out", str(out)]
    # SIGINT at its default disposition in the child whatever this process inherited (a harness that ignores SIGINT
    # would make Python in the child ignore Ctrl-C too)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and out.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]  # every line is complete JSON
    assert 1 <= len(rows) < 4 and all(r["status"] == "ok" for r in rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_backend_reports_allocator_and_nvml_memory():
    row = measure(case(model="60m", method="galore", rank=128, batch=4, seq=256, steps=3, backend="cuda"))
    assert row["status"] == "ok"
    assert row["peak_reserved_bytes"] >= row["peak_allocated_bytes"] > row["phases"]["model_built"] > 0
    assert row["device_used_bytes"] > row["peak_reserved_bytes"]  # NVML (nvidia-ml-py) is a dependency
    assert row["tokens_per_s"] > 0 and row["first_step_s"] > 0


def test_cpu_rows_time_the_optimizer_step_apart_and_its_floor_in_the_same_run():
    row = measure(case(method="ori", rank=8, backend="cpu", steps=3, dtype="fp32"))
    assert row["optimizer_step_s"] > 0 and row["step_floor_s"] > 0
    assert row["step_over_floor"] == pytest.approx(row["optimizer_step_s"] / row["step_floor_s"], rel=1e-2)
    per_layer = measure(case(method="galore", rank=8, backend="cpu", steps=2, layerwise=True))
    assert per_layer["optimizer_step_s"] is None  # inside backward: not separable
