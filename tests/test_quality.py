"""The quality model: published tables as data, a model whose terms follow the mechanisms, fitted and validated
leave-one-table-out by a script whose figures are the committed ones, and a plan that ranks by it and says so."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from subprof.catalog import load_model
from subprof.cli import app
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import REGISTRY
from subprof.plan import quality
from subprof.plan.evidence import probe_weight, rank_exponent, with_probe
from subprof.plan.probe_curves import ProbeRun
from subprof.plan.published import load_papers, load_recipes, load_tables
from subprof.plan.quality import EVIDENCE_ONLY, FULL_RANK, FULL_RANK_BASES, fitted_quality, setting_of_row
from subprof.plan.quality_fit import COMMAND, fit_all, main

TYPES = {"q": (128, 128), "k": (128, 128), "v": (128, 128), "o": (128, 128), "gate": (352, 128), "up": (352, 128),
         "down": (128, 352)}


def cfg(method: str, rank: int | None = None, gap: int | None = None, model: str = "7b", batch: int = 8,
        accumulation: int = 64) -> TrainConfig:
    return TrainConfig(model=load_model(model), method=method, rank=rank, update_gap=gap, batch=batch,
                       accumulation=accumulation)


def fake_probe_rows(energy: dict[int, float], steps: int = 200, model: str = "tiny",
                    target: str = "tiny") -> list[dict]:
    head = {"kind": "probe_run", "run_id": "r", "model": model, "target_model": target, "method": "adamw",
            "rank": None, "update_gap": None, "steps": steps, "corpus": "test", "device": "cpu",
            "date": "2026-12-06", "params": 2_901_120}
    rows = [head]
    for t, (m, n) in TYPES.items():
        rows.append({"kind": "probe_energy", "step": 0, "run_id": "r", "name": f"layers.0.{t}", "layer": 0,
                     "type": t, "m": m, "n": n, "side": min(m, n), "energy": {str(r): e for r, e in energy.items()},
                     "knee": 8, "svd": "exact"})
    rows.append({"kind": "probe_end", "run_id": "r", "status": "ok", "steps_done": steps})
    return rows


# ------------------------------------------------------------------------------------------------ the evidence
def test_every_paper_cites_its_source_and_every_table_is_comparable_with_itself():
    papers = load_papers()
    assert len(papers) >= 8
    for p in papers:
        assert p.url.startswith("https://") and p.read.startswith("2026-") and p.how_found
        for t in p.tables:
            assert t.rows, t.id
            assert all(r.table == t.id for r in t.rows)


def test_the_model_places_rows_of_every_method_it_plans_that_a_table_reports():
    placed = {setting_of_row(r).method for t in load_tables() for r in t.rows if setting_of_row(r)}
    assert {"adamw", "galore", "osd", "subtrack", "sumo", "fira", "apollo"} <= placed
    for name in placed:
        assert name in REGISTRY or name in EVIDENCE_ONLY or name in FULL_RANK


def test_base_optimizer_rows_are_placed_with_their_own_terms():
    """Issue 25: OSD's Table 6 (Lion, Adafactor on the moments and on P) enters the fit — each base an offset
    against Adam, full-rank Lion/Adafactor their own; a row of an unknown optimizer stays out."""
    rows = {(r.method, r.base, r.p_optimizer): r for t in load_tables() if t.id == "osd-t6" for r in t.rows}
    full_lion = setting_of_row(rows[("lion", "", "")])
    assert (full_lion.kind, full_lion.base, full_lion.parameters) == ("full", "lion", ("full:lion",))
    galore_ada = setting_of_row(rows[("galore", "adafactor", "")])
    assert galore_ada.base == "adafactor" and "base:adafactor" in galore_ada.parameters
    osd_ll = setting_of_row(rows[("osd", "lion", "lion")])
    assert {"base:lion", "popt:lion"} <= set(osd_ll.parameters)
    assert setting_of_row(rows[("sgd", "", "")]) is None
    v = {**{k: d for k, (_, d) in quality.SHAPE.items()}, "base:lion": 0.3, "popt:lion": -0.1, "full:lion": 0.7}
    terms = quality.terms(osd_ll, v)
    assert terms["base"] == pytest.approx(0.2)
    assert quality.terms(full_lion, v) == {"base": 0.7}
    plain = setting_of_row(rows[("galore", "adamw8bit", "")])
    assert "base" not in quality.terms(plain, v)


def test_a_copied_baseline_counts_as_its_own_papers_tuned_result():
    """GaLore's rows reprinted by APOLLO carry GaLore's authors' tuning (own), APOLLO's re-runs of nothing else do
    not; a paper's own method is own."""
    apollo = next(t for t in load_tables() if t.id == "apollo-t2")
    galore = [r for r in apollo.rows if r.method == "galore"]
    assert galore and all(r.copied and r.own for r in galore)
    assert all(r.own for r in apollo.rows if r.method == "apollo")
    assert not any(r.own for r in apollo.rows if r.method == "adamw")



# ------------------------------------------------------------------------------------------------ the model
def test_full_rank_adamw_is_the_reference():
    q = fitted_quality()
    assert q.gap_nats(cfg("adamw")) == 0.0


@pytest.mark.parametrize("method", ["galore", "osd", "ori", "subtrack", "sumo", "grasswalk"])
def test_a_higher_rank_never_predicts_a_larger_gap(method):
    q = fitted_quality()
    gaps = [q.gap_nats(cfg(method, r)) for r in (16, 64, 256, 1024)]
    assert gaps == sorted(gaps, reverse=True)


def test_the_rank_term_is_the_tail_of_one_spectrum_so_it_follows_the_rank_more_than_the_width():
    """Rank term Σ share·((r/r₀)^−p − (d/r₀)^−p): the spectrum's tail from r to d — a wider matrix has a longer one,
    but what a rank leaves out depends on the rank far more than on the width, so the same r/d leaves out much less
    of a wider model (GaLore's 7B at r1024 against its 60M at r128, both d/4); full rank leaves nothing out."""
    v = fitted_quality().values

    def rank_term(model: str, rank: int) -> float:
        return quality.terms(quality.setting_of_config(cfg("galore", rank, 200, model=model)), v)["rank"]

    # 1.7× from d = 768 to 4096 at the fitted p; (r/d)^−p − 1, the form before, put it at 4.5×
    assert rank_term("130m", 256) < rank_term("1b", 256) < rank_term("7b", 256) < 2 * rank_term("130m", 256)
    assert rank_term("7b", 1024) < 0.5 * rank_term("60m", 128)
    assert rank_term("60m", 512) == pytest.approx(0.0, abs=1e-12)  # 60M: every projected side is 512
    shares = quality.rank_shares(load_model("1b"), 512)
    assert sum(w for w, _, _ in shares) == pytest.approx(1.0) and {(r, d) for _, r, d in shares} == {(512, 2048)}


def test_rows_the_model_cannot_place_stay_out():
    """An ablation variant is out for full-rank Lion/Adafactor rows too (a 4-bit Lion is not Lion), and so is any
    row on a model the catalog lacks (S(N) reads its size)."""
    row = next(r for t in load_tables() if t.id == "sgg-ta2" for r in t.rows if r.method == "lion")
    assert setting_of_row(row).base == "lion"
    assert setting_of_row(replace(row, variant="int4")) is None
    assert setting_of_row(replace(row, model="124m-x")) is None
    assert setting_of_row(replace(row, method="adamw", model="124m-x")) is None


def test_galore_refreshing_rarer_trains_better_over_the_published_range():
    """The refresh-cost mechanism: GaLore keeps Adam's moments in the old basis, so each refresh costs; in the
    published grid GaLore improves at every rank all the way to T = 1000."""
    q = fitted_quality()
    for rank in (128, 256, 512):
        gaps = [q.gap_nats(cfg("galore", rank, t, model="130m")) for t in (100, 250, 500, 1000)]
        assert gaps == sorted(gaps, reverse=True), (rank, gaps)


def test_moment_transfer_scales_the_refresh_term_and_trackers_pay_none():
    """κ multiplies the misaligned share M_β(T) of a method that carries its moments into the new basis; OSD and
    Ori move every step (T₀ = 1) and pay only staleness."""
    from dataclasses import replace

    from subprof.methods.spec import QualityTraits
    from subprof.plan.quality import setting_of_config, terms

    q = fitted_quality()
    plain = setting_of_config(cfg("galore", 256, 500))
    carried = replace(plain, traits=QualityTraits(moment_transfer=True))
    t0 = setting_of_config(cfg("galore", 256, 200))
    base = terms(t0, q.values)["refresh"]
    assert base == 0.0  # zero at the published gap
    a, b = terms(plain, q.values)["refresh"], terms(carried, q.values)["refresh"]
    v = q.values
    m = lambda t: (1 - 0.999 ** t) / (t * 0.001)  # noqa: E731  Adam's β₂
    assert a == pytest.approx(v["refresh"] * (m(500) - m(200)))
    assert b == pytest.approx(v["refresh"] * (m(500) * v["transfer"] - m(200)))
    assert "refresh" not in terms(setting_of_config(cfg("osd", 256, 5)), v)


def test_the_refresh_cost_follows_the_decay_of_the_moment_left_behind():
    """M_β(T) = (1 − β^T)/(T(1 − β)): Adam's β₂ = 0.999 keeps a refreshed moment misaligned for ~1,000 steps, so
    GaLore still gains from T = 500 to 1,000; SUMO's one momentum (μ = 0.95) realigns within ~20 steps, so its
    refresh cost is nearly spent by T = 100; Lion's base moment (β₂ = 0.99) sits between."""
    from subprof.plan.quality import misaligned, setting_of_config

    assert misaligned(1, 0.999) == pytest.approx(1.0)
    assert misaligned(1000, 0.999) == pytest.approx((1 - 0.999 ** 1000) / 1.0)
    assert [misaligned(t, 0.999) for t in (10, 100, 1000)] == sorted([misaligned(t, 0.999) for t in (10, 100, 1000)],
                                                                     reverse=True)
    assert setting_of_config(cfg("galore", 256, 500)).moment_decay == 0.999
    assert setting_of_config(cfg("sumo", 256, 500)).moment_decay == 0.95
    lion = TrainConfig(model=load_model("1b"), method="galore", rank=256, update_gap=500, method_options={"base": "lion"})
    assert setting_of_config(lion).moment_decay == 0.99
    q = fitted_quality()
    v = q.values
    galore_gain = q.g(cfg("galore", 256, 500)) - q.g(cfg("galore", 256, 1000))
    sumo_gain = (q.values["refresh"] * v["transfer"] * (misaligned(500, 0.95) - misaligned(1000, 0.95)))
    assert galore_gain > 0 and 0 < sumo_gain < galore_gain


def test_a_configurations_setting_is_built_from_every_field_it_reads():
    """`setting_of_config` caches what does not depend on the gap and the optimizer batch: each configuration's
    own rank, options and base still reach its setting, and the gap and tokens are its own."""
    from subprof.plan.quality import setting_of_config

    a = setting_of_config(cfg("galore", 256, 500), tokens_per_step=4096)
    b = setting_of_config(cfg("galore", 512, 100), tokens_per_step=131072)
    assert (a.rank, a.update_gap, a.tokens_per_step) == (256, 500, 4096)
    assert (b.rank, b.update_gap, b.tokens_per_step) == (512, 100, 131072) and a.shares != b.shares
    lion = TrainConfig(model=load_model("1b"), method="galore", rank=256, update_gap=500,
                       method_options={"base": "lion"})
    assert setting_of_config(lion).base == "lion" and setting_of_config(cfg("galore", 256, 500)).base == "adamw"
    sumo = TrainConfig(model=load_model("1b"), method="sumo", rank=256, update_gap=500,
                       method_options={"momentum": 0.9})
    assert setting_of_config(sumo).moment_decay == 0.9 and setting_of_config(cfg("sumo", 256, 500)).moment_decay == 0.95


def test_quality_counts_the_refresh_interval_in_tokens_trained():
    """A refresh every 200 steps of 8 sequences is not one every 200 steps of 512: staleness follows the tokens."""
    q = fitted_quality()
    small = q.gap_nats(cfg("galore", 512, 200), tokens_per_step=4096)
    large = q.gap_nats(cfg("galore", 512, 200), tokens_per_step=131072)
    assert small != large


def test_the_band_is_the_cross_validated_error_on_the_models_scale():
    q = fitted_quality()
    model = load_model("7b")
    assert q.band(model) == pytest.approx(q.sigma_g * q.scale(model))
    assert 0 < q.band(model) < q.gap_nats(cfg("galore", 16, 200))


def test_a_missing_fit_is_one_line_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "fit_path", lambda: tmp_path / "quality_fit.json")
    fitted_quality.cache_clear()
    try:
        with pytest.raises(SubprofError, match="python -m subprof.plan.quality_fit"):
            fitted_quality()
    finally:
        fitted_quality.cache_clear()


# ------------------------------------------------------------------------------------------------ fit + validation
@pytest.fixture(scope="module")
def refit() -> dict:
    """The fit without leave-one-table-out (seconds; the validation reruns in the slow test below)."""
    return fit_all(loto=False)


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads(quality.fit_path().read_text(encoding="utf-8"))


def test_the_committed_fit_is_what_refitting_gives(refit, committed):
    """`plan` reads profiles/evidence/quality_fit.json; `python -m subprof.plan.quality_fit` rewrites it from the
    committed tables and runs, and gives the same numbers — a changed input without a rewritten fit fails here."""
    assert committed["written_by"] == COMMAND
    validation = {"validation", "sigma_g"}
    assert json.loads(json.dumps(refit, ensure_ascii=False)) == {k: v for k, v in committed.items()
                                                                 if k not in validation}


@pytest.mark.slow
def test_leave_one_table_out_reproduces_the_committed_figures(committed):
    """Minutes: every fold refitted (`pytest -m slow`)."""
    data = fit_all()
    assert data["validation"] == committed["validation"] and data["sigma_g"] == committed["sigma_g"]


def test_leave_one_table_out_orders_most_published_pairs_as_published(committed):
    """The committed validation (rerun by the slow test above): issue 22 asks ≥ 85% of within-table pair orderings
    and ≥ 75% of the update-gap pairs; the gap bar is met, the overall one is not (docs/quality.md gives the
    figures) — this holds what was reached so a change that loses it fails. The base-optimizer pairs (mostly OSD
    Table 6, the only table with Lion/Adafactor on the moments or on P: held out, those terms are unknown) are
    counted apart."""
    val = committed["validation"]
    assert val["gap"]["agree_share"] >= 0.75, val["gap"]
    assert val["rank"]["agree_share"] >= 0.9, val["rank"]
    others = (val["all"]["agree"] - val["base"]["agree"]) / (val["all"]["pairs"] - val["base"]["pairs"])
    # 2026-12-07 (third session), the rank term in absolute rank, with the third-party tables: 83.1% without the
    # base pairs, 81.0% with them (docs/quality.md has the history)
    assert others >= 0.83, others
    assert val["all"]["agree_share"] >= 0.80, val["all"]


def test_the_fit_reports_how_far_the_tables_contradict_each_other():
    """A pair of configurations printed by two tables in opposite orders costs any model one side: the fit records
    those conflicts and the ceiling they set."""
    from subprof.plan.quality_fit import recurring_pairs

    tables = {t.id: t for t in load_tables()}
    everything = recurring_pairs(list(tables.values()))
    assert 0 < everything["opposed"] <= everything["pairs"] and 0.5 <= everything["best_possible_share"] < 1
    assert recurring_pairs([tables["fira-t3"]])["pairs"] == 0  # one table: nothing recurs
    # Fira's own Table 3 has Fira ahead of AdamW at 60M–1B; SubTrack++'s re-run (Table 1) has it behind at each
    both = recurring_pairs([tables["fira-t3"], tables["subtrack-t1"]])
    assert both["opposed"] >= 8 and both["best_possible_share"] < 1


def test_the_long_cpu_runs_best_gap_is_the_models_within_one_grid_step(committed):
    checks = committed["measured_best_gaps"]
    assert checks, "no committed long CPU grid (profiles/measured/gap_grid_*.jsonl)"
    assert all(c["grid_steps_apart"] <= 1 for c in checks), checks


def test_the_fit_script_prints_the_validation_figures(capsys, monkeypatch, committed):
    monkeypatch.setattr("subprof.plan.quality_fit.fit_all", lambda loto=True: committed)
    main(["--check"])
    out = capsys.readouterr().out
    assert "leave-one-table-out all" in out and "leave-one-table-out gap" in out


# ------------------------------------------------------------------------------------------------ probe
def test_a_probe_moves_the_rank_exponent_by_what_it_can_show():
    base = fitted_quality()
    energy = {8: 0.5, 16: 0.7, 32: 0.85, 64: 0.95}
    short = ProbeRun.from_rows(fake_probe_rows(energy, steps=30))
    long = ProbeRun.from_rows(fake_probe_rows(energy, steps=4000))
    proxy = ProbeRun.from_rows(fake_probe_rows(energy, steps=4000, target="7b"))
    assert probe_weight(short) == pytest.approx(30 / 2000)
    assert probe_weight(long) == 1.0 and probe_weight(proxy) == 0.5
    p_probe = rank_exponent(long.energy_curve(None), long.side(None))
    assert with_probe(base, long, "x").values["p"] == pytest.approx(p_probe)
    moved = with_probe(base, short, "x").values["p"]
    assert abs(math.log(moved / base.values["p"])) <= 0.016 * abs(math.log(p_probe / base.values["p"])) + 1e-12
    assert "weighted 0.01" in with_probe(base, short, "x").notes[0]


def test_rank_exponent_recovers_a_power_law():
    side = 512
    energy = {r: 1 - 0.01 * ((r / side) ** -1.5 - 1) for r in (8, 16, 32, 64, 128)}
    assert rank_exponent(energy, side) == pytest.approx(1.5, rel=1e-3)


@pytest.mark.parametrize("content, message", [(None, "no such file"), ('{"kind": "burst"}\n', "no `subprof probe`")])
def test_plan_probe_bad_file_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(app, ["plan", "--model", "7b", "--gpu-mem", "24GB", "--probe", str(path)])
    assert result.exit_code == 2 and message in result.output


# ------------------------------------------------------------------------------------------------ plan
def plan_json(*args: str) -> dict:
    res = CliRunner().invoke(app, ["plan", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_plan_shows_the_predicted_gap_its_band_and_the_recipe():
    data = plan_json("--model", "7b", "--gpu-mem", "24GB")
    rec = data["recommendation"]
    assert rec["predicted_gap_nats"] == pytest.approx(-rec["quality"], abs=1e-6)
    assert rec["predicted_ppl_increase"] == pytest.approx(math.expm1(rec["predicted_gap_nats"]), abs=1e-5)
    assert data["band_nats"] > 0 and data["indistinguishable"] >= 1
    recipe = next(r for r in data["recipes"] if r["recipe"].startswith("galore r1024 T500"))
    assert "2403.03507" in recipe["source"]


def test_a_method_whose_rows_are_all_its_authors_is_marked_in_the_plan():
    """Issue 22: a method with no independent row (another paper's re-run or our own run) rests on claims its
    authors tuned; `plan` says so in the row's marker, in JSON and, when it is the pick, in a sentence."""
    rows = [r for t in load_tables() for r in t.rows if setting_of_row(r) is not None]
    fit = fitted_quality()
    for method in {r.method for r in rows} - set(FULL_RANK) - set(FULL_RANK_BASES) - set(EVIDENCE_ONLY):
        independent = [r for r in rows if r.method == method and not r.own]
        expected = "independent" if independent else "own paper"
        assert fit.evidence_kind(method) == expected, method
        if expected == "own paper":  # every row is in a paper that proposes the method (or a copy of one)
            assert all(r.own for r in rows if r.method == method)
    assert any(fit.evidence_kind(m) == "own paper" for m in REGISTRY if REGISTRY[m].project)
    data = plan_json("--model", "7b", "--gpu-mem", "24GB")
    for c in data["candidates"]:
        assert c["quality_evidence"] == fit.evidence_kind(c["method"], c["base"])
    res = CliRunner().invoke(app, ["plan", "--model", "7b", "--gpu-mem", "24GB"], env={"COLUMNS": "100"})
    for line in res.output.splitlines():
        cells = line.split()
        if cells and cells[0] in REGISTRY and cells[-1].endswith(("†", "?", "0")) and "%±" in cells[-1]:
            mark = {"own paper": "†", "none": "?"}.get(fit.evidence_kind(cells[0]), "")
            assert cells[-1].endswith(mark) and (mark or cells[-1][-1].isdigit()), line
    rec = data["recommendation"]
    if rec["quality_evidence"] == "own paper":
        assert "its authors' own tables only" in res.output


@pytest.mark.parametrize("gpu", ["24GB", "4090"])
def test_every_plan_row_is_the_models_optimum_or_a_faster_candidate_within_the_band(gpu):
    """Issue 22: for each (method, rank, bits, per-layer, batch) the row's gap is the model's best gap, or a
    candidate whose predicted gap lies within the band of that best and is faster."""
    from subprof.catalog import parse_budget
    from subprof.methods import parse_methods
    from subprof.plan.planner import PlanRequest, plan

    res = plan(PlanRequest(model=load_model("7b"), budget=parse_budget(gpu), methods=parse_methods("all")))
    band = res.request.band
    same: dict[tuple, list] = {}
    for c in res.candidates:
        k = c.config
        same.setdefault((k.method, k.rank, k.state_bits, k.layerwise, k.batch, k.accumulation, k.checkpointing),
                        []).append(c)
    for c in res.best_per_method.values():
        k = c.config
        peers = same[(k.method, k.rank, k.state_bits, k.layerwise, k.batch, k.accumulation, k.checkpointing)]
        best = max(p.quality for p in peers)
        assert c.quality == best or (best - c.quality < band and all(
            c.throughput.tokens_per_s >= p.throughput.tokens_per_s for p in peers if p.quality > c.quality))


def test_plan_answers_first_in_100_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    res = CliRunner().invoke(app, ["plan", "--model", "7b", "--gpu-mem", "24GB"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("recommended:")
    assert max(len(line) for line in lines) <= 100
    assert "Δppl" in res.output and "--explain" in res.output
    explained = CliRunner().invoke(app, ["plan", "--model", "7b", "--gpu-mem", "24GB", "--explain"],
                                   env={"COLUMNS": "100"})
    assert "leave-one-table-out" in explained.output


def test_the_fit_script_prints_the_committed_figures_as_markdown(capsys, committed):
    main(["--markdown"])
    out = capsys.readouterr().out
    assert f"| all | {committed['validation']['all']['agree']:g} of {committed['validation']['all']['pairs']} |" in out
    assert "| CPU grid |" in out
