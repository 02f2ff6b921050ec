"""plan --burst: the top candidates are trained for real and the recommendation follows the measured evidence."""

import json
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
from subprof.plan.planner import PlanRequest, plan

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
                      methods=parse_methods("adamw,galore,ori"), seq=32, batch=2)
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
