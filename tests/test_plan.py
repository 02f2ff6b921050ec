"""The planner: its choice fits the budget, the search space is the one promised, and nothing-fits says what would."""

from dataclasses import replace

import pytest

from subprof.catalog import load_model, parse_budget
from subprof.errors import SubprofError
from subprof.plan.memory import estimate
from subprof.methods import parse_methods
from subprof.methods.bases import BASES
from subprof.plan.planner import SPEED_TOLERANCE, PlanRequest, plan, ranks_for


def request(model="7b", budget="24GB", methods="all", **kw) -> PlanRequest:
    return PlanRequest(model=load_model(model), budget=parse_budget(budget), methods=parse_methods(methods), **kw)


@pytest.mark.parametrize("model, budget", [("7b", "24GB"), ("1b", "16GB"), ("350m", "4090"), ("7b", "h100-sxm"),
                                           ("60m", "8GiB"), ("13b", "a100-80gb")])
def test_recommendation_fits_the_budget(model, budget):
    req = request(model, budget)
    rec = plan(req).recommendation
    assert rec is not None
    assert rec.estimate.device_used_bytes <= req.usable_bytes
    # re-estimating the recommended configuration from scratch gives the same numbers
    assert estimate(rec.config).device_used_bytes == rec.estimate.device_used_bytes


def test_every_listed_candidate_fits():
    req = request("7b", "24GB")
    result = plan(req)
    assert result.candidates
    assert all(c.fits and c.estimate.device_used_bytes <= req.usable_bytes for c in result.candidates)


def test_adamw_7b_rejected_on_24gb_with_reason():
    result = plan(replace(request("7b", "24GB"), bases=("adamw",)))
    assert "adamw" not in result.best_per_method
    assert result.rejected["adamw"].startswith("adamw: ")
    assert "GiB >" in result.rejected["adamw"]


def test_plan_searches_the_base_optimizer_and_full_rank_adafactor_fits_7b_on_24gb():
    """Full rank with Adafactor keeps a row and a column factor per matrix instead of AdamW's two moments (26 GB at
    bf16 for 7b): per-layer, it fits 24 GB where AdamW does not; `bases` limits the search, and full rank is AdamW
    alone unless `bases` names others (`--methods adamw` asks for AdamW: offered offloaded here)."""
    assert {c.config.base for c in plan(request("7b", "24GB", methods="galore")).candidates} == set(BASES)
    full = plan(request("7b", "24GB", methods="adamw", bases=tuple(BASES))).candidates
    assert full and {c.config.base for c in full} == {"adafactor"} and all(c.config.layerwise for c in full)
    assert all(c.offloaded and c.config.base == "adamw" for c in plan(request("7b", "24GB", methods="adamw")).candidates)


def test_7b_on_24gb_needs_a_low_rank_method():
    rec = plan(request("7b", "24GB")).recommendation
    assert rec.config.spec.project


def test_when_full_rank_adamw_fits_the_pick_is_predicted_no_worse_beyond_the_band():
    """AdamW is in the search when it fits; a low-rank pick must then be predicted at least as good as AdamW up
    to the band (the evidence has low-rank methods — SubTrack++, Fira, APOLLO — at or below AdamW's loss)."""
    result = plan(request("60m", "h100-sxm"))
    assert any(c.config.method == "adamw" for c in result.candidates)
    assert result.recommendation.gap_nats < result.request.band


def test_ranks_are_powers_of_two_up_to_a_quarter_of_the_widest_weight_side():
    assert ranks_for(load_model("60m")) == [16, 32, 64, 128]  # widest smaller side 512
    assert ranks_for(load_model("7b"))[-1] == 1024


def test_fixed_batch_is_respected():
    result = plan(request("1b", "24GB", batch=4))
    assert {c.config.batch for c in result.candidates} == {4}


def test_tokens_per_step_uses_accumulation_and_says_when_a_candidate_does_not():
    result = plan(request("1b", "24GB", tokens_per_step=256 * 64))
    keep = [c for c in result.candidates if c.keeps_requested_batch]
    assert keep and all(c.config.batch * c.config.accumulation == 64 for c in keep)
    other = [c for c in result.candidates if not c.keeps_requested_batch]
    assert all(c.config.layerwise and c.config.accumulation == 1 for c in other)  # per-layer, every micro-batch
    assert result.candidates[:len(keep)] == keep  # the requested optimizer batch ranks first


@pytest.mark.parametrize("model, budget", [("60m", "4090"), ("1b", "24GB"), ("7b", "24GB")])
def test_speed_never_outranks_a_quality_difference_the_evidence_can_tell(model, budget):
    """Issue 12's order with the evidence's cross-validated band as the width: within one optimizer-batch class, no
    candidate ranks ahead of one whose quality is better by the band or more (an OSD/Ori gap of 10 is chosen
    for speed over gap 1 only where the evidence scores them within it); within a band, faster first (speeds within
    SPEED_TOLERANCE of each other count as equal, and the better predicted quality goes first among them)."""
    result = plan(request(model, budget))
    tol = result.request.band
    best = max(c.quality for c in result.candidates)
    for keeps in (True, False):
        ranked = [c for c in result.candidates if c.keeps_requested_batch == keeps]
        below = -float("inf")  # the best quality ranked after the current candidate
        for c in reversed(ranked):
            assert below - c.quality < tol, c.describe()
            below = max(below, c.quality)
        for a, b in zip(ranked, ranked[1:]):  # within a quality band: clearly faster first, then better quality
            if int((best - a.quality) / tol + 1e-9) == int((best - b.quality) / tol + 1e-9):
                assert a.throughput.tokens_per_s * (1 + SPEED_TOLERANCE) ** 2 >= b.throughput.tokens_per_s


def test_nothing_fits_suggests_what_would():
    # 3GB: below even optimizer offload's GPU side (at 8GB, 13b AdamW fits offloaded: tests/test_offload.py)
    result = plan(request("13b", "3GB", methods="adamw"))
    assert result.recommendation is None
    assert result.suggestions
    assert any("GPU" in s or "--seq" in s for s in result.suggestions)


class _Forgetful(dict):
    """A search memo that keeps nothing: every rank searched from scratch."""

    def __setitem__(self, key, value) -> None:
        pass


@pytest.mark.parametrize("model, budget, kw", [("7b", "24GB", {}), ("1b", "8GB", {"dtype": "mixed"}),
                                               ("1b", "2GB", {}), ("1b", "40GB", {"gpus": 4})])
def test_the_lower_rank_bound_changes_no_candidate_and_no_rejection(model, budget, kw):
    """The search starts each rank from the micro-batch the lower rank found, and skips configurations that fit at
    no micro-batch there (memory grows with the rank): the same plan as searching every rank from scratch."""
    bounded = plan(request(model, budget, **kw))
    unbounded_req = request(model, budget, **kw)
    unbounded_req._floors = _Forgetful()
    unbounded = plan(unbounded_req)
    assert [c.to_dict() for c in bounded.candidates] == [c.to_dict() for c in unbounded.candidates]
    assert bounded.rejected == unbounded.rejected and bounded.suggestions == unbounded.suggestions


def test_more_memory_never_lowers_quality_beyond_the_band():
    """A bigger budget keeps every candidate of the smaller one: its pick is predicted no worse beyond the band
    within which the evidence cannot order candidates (inside it, speed decides)."""
    small = plan(request("7b", "24GB"))
    large = plan(request("7b", "48GB"))
    assert large.recommendation.quality > small.recommendation.quality - large.request.band


@pytest.mark.parametrize("kw, message", [
    (dict(margin=1.5), "margin"),
    (dict(batch=0), "batch"),
    (dict(batch=3, tokens_per_step=4096), "not a multiple of --batch 3"),
    (dict(tokens_per_step=300), "whole number of sequences"),
    (dict(seq=0), "seq"),
])
def test_bad_plan_requests(kw, message):
    with pytest.raises(SubprofError, match=message):
        request("7b", "24GB", **kw)


def test_measured_projection_rows_replace_the_scaled_rates():
    """`plan --proj`: where `subprof proj` rows cover every weight shape at a rank, their times are used."""
    model = load_model("60m")
    rows = [{"kind": "proj", "status": "ok", "method": "ori", "shape": [m, n], "rank": 64, "median_ms": 1000.0}
            for m, n in model.distinct_shapes()]
    req = request("60m", "h100-sxm", methods="ori", proj_rows=rows)
    cands = [c for c in plan(req).candidates if c.config.rank == 64]
    assert cands and all(c.projection_source.startswith("measured") for c in cands)
    # 7 weights × 8 layers, one second each, every `update_gap` steps (ori's gaps: 1, 2, 5, 10)
    assert {c.config.update_gap for c in cands} == {1, 2, 5, 10}
    assert all(c.throughput.projection_s >= 56.0 / c.config.update_gap for c in cands)
    others = [c for c in plan(req).candidates if c.config.rank != 64]
    assert others and all(c.projection_source.startswith("scaled") for c in others)
