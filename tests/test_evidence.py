"""Quality from evidence: the published results are data with citations, the prior fitted to them reproduces
them, a probe's curves order candidates the way the captured-energy model says, and every plan names its
evidence."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from subprof.catalog import load_model
from subprof.cli import app
from subprof.config import TrainConfig
from subprof.methods import REGISTRY
from subprof.errors import SubprofError
from subprof.plan import evidence
from subprof.plan.evidence import ProbeQuality, calibrate_tracker_lag, prior_fit_path, published_prior
from subprof.plan.prior_fit import COMMAND, fit_published_prior, prior_fit_data
from subprof.plan.probe_curves import ProbeRun
from subprof.plan.published import load_published

TYPES = {"q": (128, 128), "k": (128, 128), "v": (128, 128), "o": (128, 128), "gate": (352, 128), "up": (352, 128),
         "down": (128, 352)}


def fake_probe_rows(energy: dict[int, float], staleness: dict[int, float], *, method: str = "adamw",
                    tracking: float | None = None, rank: int | None = None, gap: int | None = None) -> list[dict]:
    """Rows of a probe on `tiny` whose every weight has the same energy curve and staleness curve (at every
    rank)."""
    head = {"kind": "probe_run", "run_id": "r", "model": "tiny", "target_model": "tiny", "method": method,
            "rank": rank, "update_gap": gap, "steps": 200, "corpus": "test", "device": "cpu", "date": "2026-12-01",
            "params": 2_901_120}
    rows = [head]
    for t, (m, n) in TYPES.items():
        where = {"run_id": "r", "name": f"layers.0.{t}", "layer": 0, "type": t, "m": m, "n": n, "side": min(m, n)}
        rows.append({"kind": "probe_energy", "step": 0, **where, "energy": {str(r): e for r, e in energy.items()},
                     "knee": 8, "svd": "exact"})
        for k, s in staleness.items():
            rows.append({"kind": "probe_stale", "step": k, "anchor": 0, "gap": k, **where,
                         "staleness": {str(r): s for r in energy}, "drift": {str(r): s for r in energy}})
        if tracking is not None:
            rows.append({"kind": "probe_tracking", "step": 0, **where, "rank": rank, "tracking": tracking})
    rows.append({"kind": "probe_end", "run_id": "r", "status": "ok", "steps_done": 200})
    return rows


ENERGY = {8: 0.5, 16: 0.7, 32: 0.85, 64: 0.95}
STALE = {1: 0.95, 10: 0.8, 50: 0.6}


@pytest.fixture
def quality() -> ProbeQuality:
    return ProbeQuality.from_run(ProbeRun.from_rows(fake_probe_rows(ENERGY, STALE)), "test")


def cfg(method: str, rank: int | None = None, gap: int | None = None, model: str = "tiny") -> TrainConfig:
    return TrainConfig(model=load_model(model), method=method, rank=rank, update_gap=gap)


def test_every_evidence_file_cites_a_source_and_names_registered_methods():
    files = load_published()
    assert {f.method for f in files} >= {"galore", "osd", "ori", "subtrack", "sumo", "grasswalk"}
    for f in files:
        assert f.url.startswith("https://") and f.citation and f.how_found
        assert all(m in REGISTRY for m in f.methods)
    galore = next(f for f in files if f.method == "galore")
    assert [r.model for r in galore.results if r.full_rank_ppl] == ["60m", "130m", "350m", "1b"]


def test_full_rank_keeps_everything_and_rank_only_helps(quality):
    assert quality.quality(cfg("adamw")) == 1.0
    scores = [quality.quality(cfg("galore", r, 200)) for r in (8, 16, 32, 64)]
    assert scores == sorted(scores) and scores[0] < scores[-1]


def test_a_staler_refresh_keeps_less(quality):
    scores = [quality.quality(cfg("galore", 16, g)) for g in (1, 10, 50, 200, 500)]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    # a refresh every step keeps the fresh top-r share: E(16)
    assert scores[0] == pytest.approx(0.7, abs=1e-9)


def test_svd_refresh_keeps_the_interval_mean_of_staleness(quality):
    # S̄(10) = mean of s(0..9): s(0) = 1, linear to s(1) = 0.95, then log-interpolated towards s(10) = 0.8
    mean = quality.mean_staleness("q", 16, 10)
    assert 0.8 < mean < 0.95
    assert quality.quality(cfg("galore", 16, 10)) == pytest.approx(0.7 * mean, rel=1e-6)


def test_a_random_subspace_keeps_r_over_d(quality):
    assert quality.quality(cfg("grassjump", 16, 200)) == pytest.approx(16 / 128)


def test_a_tracker_every_step_keeps_more_than_a_stale_svd(quality):
    assert quality.quality(cfg("ori", 16, 1)) > quality.quality(cfg("galore", 16, 200))


@pytest.mark.parametrize("method", ["osd", "ori"])
def test_a_streaming_methods_update_gap_costs_staleness(quality, method):
    """OSD/Ori search gaps 1, 2, 5, 10: each is scored as a refresh every g·L steps, so a longer gap keeps less —
    under a probe and under the published prior (which the planner then weighs against the time it saves)."""
    gaps = REGISTRY[method].update_gaps
    assert gaps == (1, 2, 5, 10)
    probed = [quality.quality(cfg(method, 16, g)) for g in gaps]
    prior = published_prior()
    published = [prior.quality(cfg(method, 64, g, model="60m")) for g in gaps]
    for scores in (probed, published):
        assert all(a > b for a, b in zip(scores, scores[1:])), scores


def test_a_measured_tracking_ratio_sets_the_trackers_lag():
    good = ProbeQuality.from_run(ProbeRun.from_rows(fake_probe_rows(ENERGY, STALE, method="ori", tracking=0.9,
                                                                    rank=16, gap=1)), "t")
    poor = ProbeQuality.from_run(ProbeRun.from_rows(fake_probe_rows(ENERGY, STALE, method="ori", tracking=0.6,
                                                                    rank=16, gap=1)), "t")
    assert good.quality(cfg("ori", 16, 1)) > poor.quality(cfg("ori", 16, 1))
    # the measured ratio is reproduced: E(16) × S̄(L) = E(16) × tracking
    assert good.quality(cfg("ori", 16, 1)) == pytest.approx(0.7 * 0.9, rel=1e-3)
    assert any("measured tracking" in n for n in good.notes)


def test_oris_published_closure_sets_a_lag_that_reproduces_it():
    quality = ProbeQuality.from_run(ProbeRun.from_rows(fake_probe_rows({8: 0.9, 16: 0.95, 32: 0.98, 64: 0.99},
                                                                       STALE)), "t")
    note = calibrate_tracker_lag(quality, load_published())
    assert note and "69.3%" in note and quality.tracker_lag > 0
    model = load_model("1b")
    rank = 128  # r/d = 1/16, where the closure is matched
    lost_ori = 1 - quality.captured(TrainConfig(model=model, method="ori", rank=rank, update_gap=1))
    lost_galore = 1 - quality.captured(TrainConfig(model=model, method="galore", rank=rank, update_gap=200))
    assert 1 - lost_ori / lost_galore == pytest.approx(0.693, abs=0.005)


def test_a_closure_the_energy_model_cannot_reach_leaves_trackers_fresh(quality):
    # E(8) = 0.5: even a fresh basis every step loses half, more than 30.7% of what GaLore at T200 loses
    note = calibrate_tracker_lag(quality, load_published())
    assert quality.tracker_lag == 0.0 and "cannot reach" in note


def test_the_published_prior_reproduces_galores_table_2_gaps():
    prior = published_prior()
    galore = next(f for f in load_published() if f.method == "galore")
    for res in galore.results:
        published = math.log(res.ppl / res.full_rank_ppl)
        predicted = prior.gap_nats(cfg("galore", res.rank, res.update_gap, model=res.model))
        assert predicted == pytest.approx(published, rel=0.5), res.model  # 2 fitted numbers for 4 points
    assert prior.quality(cfg("adamw", model="7b")) == 0.0
    assert prior.quality(cfg("galore", 128, 200, model="7b")) < prior.quality(cfg("galore", 1024, 200, model="7b"))


def test_the_committed_prior_fit_is_what_refitting_gives():
    """`plan` reads profiles/evidence/prior_fit.json instead of fitting at every call; rewriting it with
    `python -m subprof.plan.prior_fit` from the committed inputs gives the same numbers (and input hashes)."""
    committed = json.loads(prior_fit_path().read_text(encoding="utf-8"))
    assert committed["written_by"] == COMMAND
    assert json.loads(json.dumps(prior_fit_data(), ensure_ascii=False)) == committed


def test_the_read_prior_scores_as_the_fitted_one():
    read, fitted = published_prior(), fit_published_prior()
    assert (read.a, read.b, read.reference.tracker_lag, read.notes) == (fitted.a, fitted.b,
                                                                       fitted.reference.tracker_lag, fitted.notes)
    for c in (cfg("galore", 512, 200, model="1b"), cfg("ori", 64, 5, model="7b"), cfg("subtrack", 128, 50, "60m"),
              cfg("sumo", 256, 500, model="350m"), cfg("grasswalk", 16, 200)):
        assert read.gap_nats(c) == fitted.gap_nats(c), c.label()


def test_a_missing_prior_fit_is_one_line_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence, "prior_fit_path", lambda: tmp_path / "prior_fit.json")
    published_prior.cache_clear()
    try:
        with pytest.raises(SubprofError, match="python -m subprof.plan.prior_fit"):
            published_prior()
    finally:
        published_prior.cache_clear()


def test_the_prior_says_what_it_rests_on():
    notes = " ".join(published_prior().notes)
    assert "2403.03507" in notes and "jKLvOzsMH7" in notes and "no usable published numbers" in notes


def test_plan_names_its_evidence_with_and_without_a_probe(tmp_path):
    path = tmp_path / "probe.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in fake_probe_rows(ENERGY, STALE)))
    plain = CliRunner().invoke(app, ["plan", "--model", "tiny", "--gpu-mem", "8GB", "--json"])
    probed = CliRunner().invoke(app, ["plan", "--model", "tiny", "--gpu-mem", "8GB", "--probe", str(path), "--json"])
    assert plain.exit_code == 0 and probed.exit_code == 0, plain.output + probed.output
    assert json.loads(plain.output)["evidence"]["source"].startswith("published results")
    assert json.loads(probed.output)["evidence"]["source"].startswith(f"probe {path}")
    table = CliRunner().invoke(app, ["plan", "--model", "7b", "--gpu-mem", "24GB", "--probe", str(path)])
    assert "evidence: probe" in table.output and "rank-to-side ratio" in table.output


@pytest.mark.parametrize("content, message", [(None, "no such file"), ('{"kind": "burst"}\n', "no `subprof probe`")])
def test_plan_probe_bad_file_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(app, ["plan", "--model", "7b", "--gpu-mem", "24GB", "--probe", str(path)])
    assert result.exit_code == 2 and message in result.output


def test_no_method_carries_a_hand_set_quality_score():
    for spec in REGISTRY.values():
        assert not hasattr(spec, "quality_prior"), spec.name
