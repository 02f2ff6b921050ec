"""`subprof proj` and the timing library on small CPU shapes: every method's update returns a valid P, ratios come
from the same run's medians, rows reach the JSONL as produced, the per-step sum follows its formula, and the CLI's
`--json` schema and one-line errors. No timing value is asserted (timings never decide pass/fail)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from subprof.catalog import load_model
from subprof.cli import app
from subprof.errors import SubprofError
from subprof.measure.timing import (FLOOR, make_update, method_names, parse_methods, run_proj, timed_updates,
                                    update_gap_for)
from subprof.plan.throughput import projection_seconds_per_step, timings_from_rows
from subprof.results import ResultLog, read_rows

METHODS = method_names()
NOT_ORTHONORMAL = {"osd", "osd-autograd"}  # OSD keeps PᵀP ≈ I only through its λ term
GAUSSIAN = {"apollo": 8, "apollo-mini": 1}  # APOLLO's P is N(0, 1/r) at its rank (Mini: 1), not orthonormal


pytestmark = pytest.mark.usefixtures("one_thread")


def projector_after_update(method, grad, rank):
    """Run the update and return the basis it leaves (rule state, or the returned factor)."""
    if method == "svd":
        return make_update(method, grad, rank)()
    if method == "rsvd":
        u, _, v = make_update(method, grad, rank)()
        return v if grad.shape[0] >= grad.shape[1] else u
    spec, options = timed_updates()[method]
    rule = spec.rule(rank=rank, update_gap=spec.default_update_gap, **options)
    state: dict = {}
    rule.update_projection(state, grad, 0)
    rule.update_projection(state, grad, spec.default_update_gap)
    return state["projector"]


@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_leaves_a_valid_projector(method, shape):
    grad = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    p = projector_after_update(method, grad, 8)
    r = GAUSSIAN.get(method, 8)
    assert tuple(p.shape) == (min(shape), r) and torch.isfinite(p).all()
    gram = p.T.float() @ p.float()
    if method in GAUSSIAN:  # E[PᵀP] = (d/r)·I; the diagonal's mean within ±50% (its spread at d = 32: ±25%/√r)
        assert 0.5 < float(torch.diagonal(gram).mean()) * r / min(shape) < 1.5
        return
    tol = 0.05 if method in NOT_ORTHONORMAL else 1e-4
    torch.testing.assert_close(gram, torch.eye(8), atol=tol, rtol=0)


def test_floor_is_the_two_gemm_product():
    grad = torch.randn(40, 24)
    out = make_update(FLOOR, grad, 4)()
    assert out.shape == (24, 4)  # tall: P is n×r, G(GᵀP) seen from P's side is n×r


def test_rows_carry_ratios_from_the_same_run_and_reach_the_log(tmp_path):
    log = ResultLog(tmp_path / "proj.jsonl")
    result = run_proj(load_model("tiny"), [8], ["ori", "svd", "osd", "grassjump"], repeats=2, warmup=0, log=log)
    rows = result["rows"]
    assert [r["method"] for r in rows[:5]] == [FLOOR, "svd", "ori", "osd", "grassjump"]
    assert len(rows) == 3 * 5  # three distinct shapes × (four methods + the floor)
    assert {tuple(r["shape"]) for r in rows} == set(load_model("tiny").distinct_shapes())
    for r in rows:
        assert r["status"] == "ok" and {"method", "shape", "rank", "median_ms", "spread_ms", "device",
                                        "dtype"} <= set(r)
        group = {g["method"]: g for g in rows if g["shape"] == r["shape"] and g["rank"] == r["rank"]}
        assert r["method_over_floor"] == pytest.approx(r["median_ms"] / group[FLOOR]["median_ms"])
        assert r["svd_over_method"] == pytest.approx(group["svd"]["median_ms"] / r["median_ms"])
        assert r["spread_ms"] == pytest.approx(max(r["samples_ms"]) - min(r["samples_ms"]))
    logged = read_rows(tmp_path / "proj.jsonl")
    assert [r for r in logged if r["kind"] == "proj"] == json.loads(json.dumps(rows))
    assert len([r for r in logged if r["kind"] == "proj_per_step"]) == 4


def test_projection_seconds_per_step_sums_layers_and_amortises_refreshes():
    model = load_model("tiny")
    timings = {(m, n, 8): 1e-3 * (i + 1) for i, (m, n) in enumerate(model.distinct_shapes())}
    expected = sum(s.count * timings[(s.m, s.n, 8)] for s in model.linear_shapes())
    assert projection_seconds_per_step(model, 8, timings, update_gap=1) == pytest.approx(expected)
    assert projection_seconds_per_step(model, 8, timings, update_gap=50) == pytest.approx(expected / 50)
    assert update_gap_for("svd") == 200 and update_gap_for("osd-autograd") == 1 and update_gap_for("ori", 5) == 5
    assert projection_seconds_per_step(model, 16, timings, update_gap=1) is None  # a missing shape: no guess


def test_timings_from_rows_reads_ok_rows_of_one_method():
    rows = [{"kind": "proj", "status": "ok", "method": "ori", "shape": [4, 8], "rank": 2, "median_ms": 3.0,
             "device": "cuda:0", "dtype": "fp32"},
            {"kind": "proj", "status": "error", "method": "ori", "shape": [8, 8], "rank": 2, "median_ms": None},
            {"kind": "proj", "status": "ok", "method": "svd", "shape": [4, 8], "rank": 2, "median_ms": 9.0}]
    assert timings_from_rows(rows, "ori", device="cuda") == {(4, 8, 2): 3e-3}
    assert timings_from_rows(rows, "ori", device="cpu") == {}


def test_parse_methods_rejects_unknown_names():
    assert parse_methods("all") == METHODS
    with pytest.raises(SubprofError, match="unknown projection method"):
        parse_methods("svd,bogus")


def test_cli_json_schema(tmp_path):
    out = tmp_path / "p.jsonl"
    res = CliRunner().invoke(app, ["proj", "--model", "tiny", "--ranks", "4", "--methods", "ori,grassjump",
                                   "--repeats", "1", "--warmup", "0", "--device", "cpu", "--out", str(out),
                                   "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {"model", "device", "dtype", "rows", "per_step", "out"} <= set(data)
    assert {r["method"] for r in data["rows"]} == {FLOOR, "ori", "grassjump"}
    for r in data["rows"]:
        assert {"method", "shape", "rank", "median_ms", "spread_ms", "device", "dtype", "svd_over_method",
                "method_over_floor"} <= set(r)
        assert r["svd_over_method"] is None  # svd was not timed in this run
    assert {(r["method"], r["update_gap"]) for r in data["per_step"]} == {("ori", 1), ("grassjump", 200)}
    assert out.exists()


def test_cli_shapes_filter_times_only_those_shapes(tmp_path):
    res = CliRunner().invoke(app, ["proj", "--model", "tiny", "--ranks", "4", "--methods", "ori", "--shapes",
                                   "352x128", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--out",
                                   str(tmp_path / "p.jsonl"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {tuple(r["shape"]) for r in data["rows"]} == {(352, 128)}
    assert data["per_step"][0]["seconds_per_step"] is None  # other shapes were not timed: no per-step guess


@pytest.mark.parametrize("args, message", [
    (["--methods", "svd,nope"], "unknown projection method"),
    (["--ranks", "8,x"], "not an integer"),
    (["--dtype", "fp8"], "--dtype"),
    (["--model", "no-such-model"], "unknown model"),
    (["--shapes", "7x7"], "not a weight shape"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    base = ["proj", "--model", "tiny", "--ranks", "4", "--repeats", "1", "--out", str(tmp_path / "p.jsonl")]
    res = CliRunner().invoke(app, base + args)
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_cuda_without_gpu_is_an_error(tmp_path):
    res = CliRunner().invoke(app, ["proj", "--model", "tiny", "--device", "cuda", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "no CUDA GPU" in res.output


def test_timings_that_swing_are_flagged_and_the_table_warns(tmp_path, monkeypatch):
    """A timing whose max − min exceeds half its median is `noisy` in its row, marked in the table and warned about
    with the rerun hint; a steady one is not (the timings are given, not measured: the rule is what is tested)."""
    import subprof.measure.timing as timing

    def given(method, grad, rank, *, repeats, warmup, device):
        samples = [1.0, 1.0, 1.6] if method == "ori" else [1.0, 1.1, 1.2]
        return timing.Timing(method=method, shape=tuple(grad.shape), rank=rank, samples=samples)

    monkeypatch.setattr(timing, "time_update", given)
    out = tmp_path / "p.jsonl"
    res = CliRunner().invoke(app, ["proj", "--model", "tiny", "--ranks", "4", "--methods", "ori,grassjump",
                                   "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "vary by more than half their median" in res.output and "--repeats" in res.output
    noisy = {(r["method"], r["noisy"]) for r in read_rows(out) if "noisy" in r and r["method"] != FLOOR}
    assert noisy == {("ori", True), ("grassjump", False)}
