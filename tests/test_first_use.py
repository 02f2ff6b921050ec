"""What a new user hit (issue 12), as specifications: recommendations that read right, ordinary mistakes answered
with one line and exit code 2 before any work (nothing lost, nothing half-written), and real Hugging Face configs.
CLI behaviour through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from subprof.catalog import load_model, parse_budget
from subprof.cli import app
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import parse_methods
from subprof.plan.memory import estimate
from subprof.plan.planner import SPEED_TOLERANCE, PlanRequest, plan

HF = Path(__file__).resolve().parent / "data" / "hf"
cli = CliRunner()


def invoke(*args: str):
    return cli.invoke(app, list(args))


def one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and not any("╭" in ln or "Usage:" in ln or "Traceback" in ln for ln in lines), res.output
    for needle in needles:
        assert needle in errors[0], errors[0]


def request(model: str, budget: str = "24GB", **kw) -> PlanRequest:
    return PlanRequest(model=load_model(model), budget=parse_budget(budget), methods=parse_methods("all"), **kw)


# --- the plan reads right ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["1b", "7b", "13b", str(HF / "tinyllama.json")])
def test_low_rank_candidates_compress_and_save_memory(model):
    result = plan(request(model, "a100-80gb" if model == "13b" else "24GB"))
    cfg = load_model(model)
    for c in result.candidates:
        if not c.config.spec.project:
            continue
        assert c.config.rank <= cfg.rank_limit() // 4  # 1b never at r2048 = hidden, 13b never at r4096
        adamw = TrainConfig(model=cfg, method="adamw", state_bits=c.config.state_bits, layerwise=c.config.layerwise,
                            batch=c.config.batch, checkpointing=c.config.checkpointing,
                            accumulation=c.config.accumulation)
        assert c.estimate.device_used_bytes < estimate(adamw).device_used_bytes


def test_candidates_within_the_evidence_band_go_by_speed():
    """The pick is as fast as any candidate of its batch class within the quality band, up to the planner's speed
    tolerance (within it the better quality wins: `rank_candidates`)."""
    result = plan(request("7b", "4090"))
    rec = result.recommendation
    same_class = [c for c in result.candidates if c.keeps_requested_batch == rec.keeps_requested_batch]
    best = max(c.quality for c in result.candidates)
    close = [c for c in same_class if best - c.quality < result.request.band]
    assert rec.throughput.tokens_per_s * (1 + SPEED_TOLERANCE) >= max(c.throughput.tokens_per_s for c in close)


def test_every_candidate_states_its_optimizer_batch_and_whether_it_is_the_requested_one():
    res = invoke("plan", "--model", "7b", "--gpu-mem", "24GB", "--json")
    data = json.loads(res.stdout)
    assert data["sequences_per_step"] == 512
    for c in data["candidates"] + [data["recommendation"]]:
        assert c["sequences_per_step"] == c["batch"] * c["accumulation"]
        assert c["keeps_requested_batch"] == (c["sequences_per_step"] == 512)


def test_micro_batch_and_step_size_can_be_fixed_together():
    result = plan(request("1b", batch=8, tokens_per_step=131072))
    keep = [c for c in result.candidates if c.keeps_requested_batch]
    assert keep and {(c.config.batch, c.config.accumulation) for c in keep} == {(8, 64)}


def test_gqa_models_cap_the_rank_per_weight():
    tiny_llama = load_model(str(HF / "tinyllama.json"))  # k/v are 256 × 2048
    est = estimate(TrainConfig(model=tiny_llama, method="galore", rank=512))
    assert est.config.rank == 512
    assert max(c.config.rank or 0 for c in plan(request(str(HF / "tinyllama.json"))).candidates) == 512
    llama3 = load_model(str(HF / "llama-3-8b.json"))
    assert TrainConfig(model=llama3, method="galore", rank=2048).rank == 2048


def test_a_budget_without_a_unit_is_refused_and_the_assumed_card_is_named():
    one_line_error(invoke("plan", "--model", "1b", "--gpu-mem", "24"), "no unit", "24GB")
    data = json.loads(invoke("plan", "--model", "1b", "--gpu-mem", "24GB", "--json").stdout)
    assert "choose with --gpu" in data["throughput_gpu_reason"]
    res = invoke("plan", "--model", "1b", "--gpu-mem", "24GB", "--top", "1")
    assert "--gpu NAME" in res.stdout


def test_bench_and_plan_use_one_budget_rule(tmp_path):
    """A traced peak that fits the raw budget but not the device memory plan computes from it (CUDA runtime,
    allocator reserve, context, margin) is an `oom` row, as plan would reject it."""
    from subprof.measure.case import Case
    from subprof.measure.runner import BudgetRule
    from subprof.measure.worker import measure
    from subprof.plan.calibration import DEFAULT

    config = TrainConfig(model=load_model("tiny"), method="adamw", batch=1, seq=16)
    case = Case(config=config, steps=1)
    row = measure(case)
    budget = int(row["peak_allocated_bytes"] * 1.5)  # the raw traced peak fits comfortably...
    BudgetRule(budget_bytes=budget, margin=0.05, calibration=DEFAULT).apply(row, case)
    assert row["status"] == "oom" and "usable" in row["error"]  # ...the device memory does not
    assert estimate(config).device_used_bytes > budget * 0.95  # and plan agrees


def test_report_words_match_what_the_numbers_are(tmp_path):
    from subprof.report.build import build_report
    from subprof.report.summary import assumptions
    from subprof.report.tables import ReportRequest

    from subprof.catalog import gpu_by_name

    req = ReportRequest(models=[load_model("1b")], gpus=[gpu_by_name("4090"), gpu_by_name("h100-sxm")],
                        methods=parse_methods("all"))
    assert any("in proportion to memory bandwidth" in line for line in assumptions(req))
    assert not any("TFLOP/s. No data" in line for line in assumptions(req))
    summary = build_report(req).summary[0]
    assert "fits every selected GPU" in summary and "leanest configuration" in summary and "GiB up" not in summary


def test_cpu_and_trace_rows_are_compared_with_the_model_side_estimate():
    from subprof.results import error_pct

    row = {"status": "ok", "backend": "cpu", "peak_allocated_bytes": 100, "estimated_peak_allocated_bytes": 150,
           "estimated_cuda_runtime_bytes": 50}
    assert error_pct(row) == 0.0
    assert error_pct(dict(row, backend="cuda")) == 50.0


def test_proj_flags_degenerate_ranks_and_gives_them_no_ratio(tmp_path):
    from subprof.measure.timing import run_proj

    rows = run_proj(load_model("tiny"), [128], ["subtrack"], repeats=1, warmup=0)["rows"]
    assert rows and all(r["degenerate"] and r["svd_over_method"] is None and r["method_over_floor"] is None
                        for r in rows)


# --- ordinary mistakes: one line, exit 2, before any work -------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["bench", "--model", "tiny", "--methods", "adamw", "--backend", "trace"],
    ["proj", "--model", "tiny", "--methods", "ori", "--repeats", "1"],
    ["burst", "--model", "tiny", "--methods", "adamw", "--steps", "1", "--device", "cpu"],
    ["probe", "--model", "tiny", "--steps", "2", "--every", "1", "--gaps", "1", "--device", "cpu"],
])
def test_an_output_folder_is_refused_before_anything_runs(tmp_path, command):
    folder = tmp_path / "out"
    folder.mkdir()
    one_line_error(invoke(*command, "--out", str(folder)), "is a folder")
    assert list(folder.iterdir()) == []


def test_an_output_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(invoke("proj", "--model", "tiny", "--out", str(blocker / "p.jsonl")), "cannot create its folder")


def test_token_ids_read_with_the_wrong_width_are_refused(tmp_path):
    path = tmp_path / "tok.bin"
    np.arange(5000, dtype=np.uint16).tofile(path)
    one_line_error(invoke("burst", "--data", str(path), "--data-dtype", "uint32", "--steps", "1", "--out",
                          str(tmp_path / "b.jsonl")), "larger than any vocabulary", "--data-dtype uint16")


def test_a_cpu_burst_that_does_not_fit_this_machine_is_refused_with_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr("subprof.measure.model.available_host_memory", lambda: 8 * 2**30)
    res = invoke("burst", "--model", "1b", "--methods", "adamw", "--device", "cpu", "--steps", "1", "--out",
                 str(tmp_path / "b.jsonl"))
    one_line_error(res, "needs ≈", "8.0 GiB available")
    assert not (tmp_path / "b.jsonl").exists() or (tmp_path / "b.jsonl").read_text() == ""


def test_bench_cuda_without_a_gpu_is_an_error_not_a_row(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "b.jsonl"
    one_line_error(invoke("bench", "--model", "tiny", "--backend", "cuda", "--out", str(out)), "needs a CUDA GPU")
    assert not out.exists() or out.read_text() == ""


@pytest.mark.parametrize("args, needle", [
    (["plan", "--model", "7b", "--gpu-mem", "24GB", "--seq", "0"], "--seq"),
    (["estimate", "--model", "7b", "--batch", "0"], "--batch"),
    (["estimate", "--model", "7b", "--method", "galore", "--rank", "abc"], "--rank"),
    (["estimate", "--model", "7b", "--method", "galore", "--layerwise", "true"], "--layerwise is an on/off flag"),
    (["estimate", "--model", "7b", "--bogus", "3"], "--bogus"),
    (["plan", "--model", "7b"], "--gpu-mem"),
])
def test_usage_errors_are_one_line(args, needle):
    one_line_error(invoke(*args), needle)


@pytest.mark.parametrize("command, target", [
    (["proj", "--model", "tiny", "--methods", "ori"], "subprof.measure.timing.run_proj"),
    (["burst", "--model", "tiny", "--methods", "adamw", "--steps", "1", "--device", "cpu"],
     "subprof.train.burst.run_bursts"),
])
def test_ctrl_c_before_anything_finished_says_nothing_was_written(tmp_path, monkeypatch, command, target):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    out = tmp_path / "rows.jsonl"
    res = invoke(*command, "--out", str(out))
    assert res.exit_code == 130
    assert "before any" in res.output and "nothing was" in res.output and "kept in" not in res.output


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.startswith("subprof ")


def test_every_command_that_runs_torch_takes_threads():
    for command in ("bench", "proj", "burst", "plan"):
        assert "--threads" in invoke(command, "--help").stdout, command


def test_the_default_thread_count_is_half_the_cores(monkeypatch):
    import os

    from subprof.config import default_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_threads() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert default_threads() == 8


def test_estimate_refuses_a_rank_above_every_weight_side():
    with pytest.raises(SubprofError, match="widest is 2048"):
        TrainConfig(model=load_model(str(HF / "tinyllama.json")), method="galore", rank=4096)


def test_plan_takes_the_budget_from_gpu_when_no_gpu_mem_is_given():
    data = json.loads(invoke("plan", "--model", "1b", "--gpu", "4090", "--json").stdout)
    assert data["budget_bytes"] == parse_budget("4090").bytes and data["throughput_gpu"] == "rtx-4090"
    one_line_error(invoke("plan", "--model", "1b"), "--gpu-mem", "--gpu NAME")
