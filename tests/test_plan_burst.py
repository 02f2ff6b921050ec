"""plan --burst: the top candidates are trained for real and the recommendation follows the measured evidence."""

import json
from dataclasses import replace
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from subprof.catalog import load_model, parse_budget
from subprof.config import TrainConfig
from subprof.cli import app
from subprof.train.corpus import load_corpus
from subprof.methods import parse_methods
from subprof.train.confirm import BURST_NOISE, burst_gap, confirm_with_bursts, gap_scale, training_groups
from subprof.plan.evidence import BurstRun, burst_weight, with_bursts
from subprof.plan.planner import PlanRequest, plan, rank_candidates
from subprof.plan.quality import fitted_quality

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    for name in ("textwrap.py", "string.py", "bisect.py", "fnmatch.py"):
        (folder / name).write_text((STDLIB / name).read_text(encoding="utf-8"), encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBPROF_CACHE_DIR", str(tmp_path / "cache"))


def tiny_plan():
    req = PlanRequest(model=load_model("tiny"), budget=parse_budget("2GB"),
                      methods=parse_methods("adamw,galore,ori"), seq=32, batch=2, bases=("adamw",))
    return plan(req)


def test_training_groups_are_distinct_method_rank_gap():
    groups = training_groups(tiny_plan(), top=3)
    keys = [(c.config.method, c.config.rank, c.config.update_gap) for c in groups]
    assert len(keys) == len(set(keys)) == 3


def test_bursts_score_every_group_and_overturn_the_pick_only_beyond_the_seed_spread(texts):
    result = tiny_plan()
    corpus = load_corpus(texts, vocab_size=320)
    evidence = confirm_with_bursts(result, top=2, steps=3, device="cpu", batch=2, seq=32, corpus=corpus,
                                   eval_every=3, val_windows=4, threads=1)
    assert len(evidence) == 2
    assert all(e.row["status"] == "ok" and e.efficiency is not None for e in evidence)
    assert all(e.row["model"] == "tiny" for e in evidence)  # tiny fits the CPU: no proxy
    plan_pick = next(e for e in evidence if e.candidate is result.candidates[0])
    other = next(e for e in evidence if e is not plan_pick)
    if other.row["val_loss"] < plan_pick.row["val_loss"] - BURST_NOISE:
        assert evidence[0] is other and "beyond" in other.verdict
    else:
        assert evidence[0] is plan_pick and "cannot separate" in plan_pick.verdict
    assert other.deltas["measured_delta_nats"] == pytest.approx(other.row["val_loss"] - plan_pick.row["val_loss"])
    # the bursts moved the method terms by 3 steps' worth (3 / 2000) and the plan is ranked by the moved model
    assert all(e.row["burst_weight"] == pytest.approx(3 / 2000) for e in evidence)
    assert result.request.evidence.notes[0].startswith("bursts (3 steps)")
    assert [c.quality for c in result.candidates] != [] and all(
        c.quality == pytest.approx(result.request.evidence.quality(c.config, c.tokens_per_step))
        for c in result.candidates)
    assert result.candidates == rank_candidates(list(result.candidates), result.request.band)


def _run(method: str, loss: float, *, steps: int, proxy: bool, gap: int = 200) -> BurstRun:
    return BurstRun(config=TrainConfig(model=load_model("60m"), method=method, rank=128, update_gap=gap),
                    tokens_per_step=8 * 256, val_loss=loss, steps=steps, proxy=proxy)


@pytest.mark.parametrize("steps,proxy,weight", [(100, True, 100 / 2000 / 2), (4000, False, 1.0)])
def test_bursts_move_each_methods_term_by_what_they_can_show(steps, proxy, weight):
    """Issue 22: a burst's measured difference between methods moves their offsets by its weight; a run long
    enough on the target model moves them all the way — the moved model then predicts what was measured."""
    base = fitted_quality()
    runs = [_run("galore", 3.50, steps=steps, proxy=proxy), _run("sumo", 3.40, steps=steps, proxy=proxy),
            _run("osd", 3.60, steps=steps, proxy=proxy, gap=1)]
    moved, raw = with_bursts(base, runs)
    assert burst_weight(runs) == pytest.approx(weight)
    s = base.scale(runs[0].config.model)
    for r in runs[1:]:
        m = "method:" + r.config.method
        measured = (r.val_loss - runs[0].val_loss) / s
        predicted = base.g(r.config, r.tokens_per_step) - base.g(runs[0].config, runs[0].tokens_per_step)
        assert raw[m] == pytest.approx(measured - predicted)
        moved_pred = moved.g(r.config, r.tokens_per_step) - moved.g(runs[0].config, runs[0].tokens_per_step)
        assert moved_pred == pytest.approx(predicted + weight * (measured - predicted))
    assert "method:galore" not in raw  # the anchor: the first run's method (no full-rank run among them)
    # the same method on another base moves the base's offset; a run differing in method and base moves nothing
    ada = replace(runs[0], config=replace(runs[0].config, method_options={"base": "adafactor"}), val_loss=3.45)
    lion_osd = replace(runs[2], config=replace(runs[2].config, method_options={"base": "lion"}))
    _, raw2 = with_bursts(base, [runs[0], ada, lion_osd])
    assert set(raw2) == {"base:adafactor"}
    unmoved, raw3 = with_bursts(base, [runs[0], lion_osd])
    assert raw3 == {} and unmoved.values == base.values and unmoved.notes[0].startswith("bursts: no offset moved")
    assert with_bursts(base, runs[:1]) == (base, {})  # one method: nothing to compare


class _Cand:
    def __init__(self, method: str, gap: int):
        self.config = TrainConfig(model=load_model("tiny"), method=method, rank=16, update_gap=gap)


def test_plan_burst_scales_long_gaps_so_each_run_holds_three_refreshes():
    groups = [_Cand("galore", 500), _Cand("galore", 200), _Cand("ori", 1)]
    scale = gap_scale(groups, 100)
    assert scale == pytest.approx(99 / 1500)
    assert [burst_gap(c, scale) for c in groups] == [33, 13, 1]  # ratios kept; a tracker's every-step move kept
    assert gap_scale([_Cand("galore", 20)], 100) == 1.0
    assert burst_gap(_Cand("subtrack", 500), scale) == 33  # a tracker that moves every T steps is periodic


def test_plan_burst_json_reports_the_evidence(texts, tmp_path, one_thread):
    out = tmp_path / "burst.jsonl"
    r = CliRunner().invoke(app, ["plan", "--model", "tiny", "--gpu-mem", "2GB", "--methods", "galore,ori",
                                 "--seq", "32", "--batch", "2", "--burst", "--burst-steps", "2", "--burst-top", "2",
                                 "--data", str(texts), "--burst-out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["ranking"].startswith("burst")
    assert len(data["burst"]) == 2
    assert data["recommendation"]["method"] == data["burst"][0]["method"]
    assert len(out.read_text().splitlines()) == 2
