"""Bursts: identical initialisation and data order across configurations, every method learns, NaN → a diverged
row while the sweep goes on, resume skips finished cases, case expansion and the proxy model for plan --burst."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from subprof.train import burst
from subprof.train.burst import BurstCase, BurstSettings, expand_cases, proxy_case, run_bursts, train_offsets
from subprof.train.lrgrid import best_rows, lr_grid
from subprof.catalog import load_model
from subprof.train.corpus import load_corpus
from subprof.errors import SubprofError
from subprof.config import TrainConfig
from subprof.methods import REGISTRY

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SETTINGS = dict(eval_every=3, val_windows=4, device="cpu", threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    for name in ("textwrap.py", "string.py", "bisect.py", "fnmatch.py"):
        (folder / name).write_text((STDLIB / name).read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUBPROF_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return load_corpus(folder, vocab_size=320)


def case(method: str, model: str = "tiny", lr: float | None = None, **config) -> BurstCase:
    spec = REGISTRY[method]
    config = {"batch": 2, "seq": 32, "dtype": "fp32", "rank": 8 if spec.project else None, **config}
    return BurstCase(config=TrainConfig(model=load_model(model), method=method, **config), lr=lr)


def bursts(cases: list[BurstCase], steps: int, corpus, **kw) -> list[dict]:
    return run_bursts(cases, BurstSettings(steps=steps, **SETTINGS), corpus, **kw)


def test_data_order_depends_only_on_seed_and_corpus_length():
    c = case("adamw", batch=3, seq=16).config
    s = BurstSettings(steps=5, device="cpu")
    np.testing.assert_array_equal(train_offsets(1000, c, s), train_offsets(1000, c, s))
    assert not np.array_equal(train_offsets(1000, c, s), train_offsets(1000, c, BurstSettings(
        steps=5, device="cpu", data_seed=1)))


def test_every_configuration_starts_from_the_same_weights_and_batches(corpus):
    rows = bursts([case("adamw"), case("galore", update_gap=2), case("ori")], 3, corpus)
    assert len({r["data_order"] for r in rows}) == 1
    assert len({r["initial_loss"] for r in rows}) == 1  # bit-identical loss before any update
    assert len({r["train_loss"][2] for r in rows}) == 3  # ... and the optimizers then differ (step 0 has lr 0)


@pytest.fixture(scope="module")
def untrained_val_loss(corpus):
    """The validation loss of the shared initial weights: the same burst at lr 0 (nothing moves)."""
    (row,) = bursts([case("adamw", lr=0.0)], 2, corpus)
    return row["val_loss"]


@pytest.fixture(scope="module")
def short_bursts(corpus):
    """Every method for 8 steps at update gap 3, so every periodic method refreshes its projection (steps 0, 3, 6)."""
    return {m: bursts([case(m, lr=3e-3, update_gap=None if not REGISTRY[m].project else
                            (1 if REGISTRY[m].update_gaps == (1,) else 3))], 8, corpus)[0]
            for m in sorted(REGISTRY)}


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_a_short_burst_lowers_the_loss_for_every_method(short_bursts, untrained_val_loss, method):
    row = short_bursts[method]
    assert row["status"] == "ok" and row["steps_done"] == 8
    assert row["val_loss"] < untrained_val_loss - 0.3  # margins measured here: 0.52 (sumo) to 0.89
    assert row["optimizer_state_bytes"] > 0 and row["peak_tracked_bytes"] > row["optimizer_state_bytes"]
    assert 0 <= row["projection_share"] < 1
    assert (row["projection_s"] > 0) == REGISTRY[method].project


@pytest.mark.parametrize("a, b", [("galore", "subtrack"), ("grasswalk", "grassjump")])
def test_methods_that_share_a_start_part_ways_once_they_refresh(short_bursts, a, b):
    """They start from the same basis; the refresh at step 3 differs (SVD vs geodesic step, walk vs jump)."""
    assert short_bursts[a]["train_loss"][4:] != short_bursts[b]["train_loss"][4:]


def test_non_finite_loss_gives_a_diverged_row_and_the_sweep_goes_on(corpus, tmp_path, monkeypatch):
    real = burst.loss_of
    calls = {"n": 0}

    def poisoned(model, x, y):
        loss = real(model, x, y)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 3:  # the third training step of the first case
                return loss * float("nan")
        return loss

    monkeypatch.setattr(burst, "loss_of", poisoned)
    out = tmp_path / "b.jsonl"
    rows = bursts([case("galore"), case("adamw")], 4, corpus, out=str(out))
    assert [r["status"] for r in rows] == ["diverged", "ok"]
    assert rows[0]["steps_done"] < 4 and "training loss nan" in rows[0]["diverged"] and rows[0]["val_loss"] is None
    assert [json.loads(line)["status"] for line in out.read_text().splitlines()] == ["diverged", "ok"]


def test_non_finite_gradient_refused_by_the_optimizer_gives_a_diverged_row(corpus, monkeypatch):
    real = burst.build_model

    def with_inf_gradient(*args, **kwargs):
        model = real(*args, **kwargs)
        seen = {"n": 0}

        def poison(grad):
            seen["n"] += 1
            return grad * float("inf") if seen["n"] == 2 else grad

        model.model.layers[0].mlp.up_proj.weight.register_hook(poison)
        return model

    monkeypatch.setattr(burst, "build_model", with_inf_gradient)
    (row,) = bursts([case("galore")], 4, corpus)
    assert row["status"] == "diverged" and row["diverged"].startswith("optimizer at step 1")
    assert row["steps_done"] == 1


def test_resume_skips_finished_cases_and_runs_the_rest(corpus, tmp_path, monkeypatch):
    out = str(tmp_path / "b.jsonl")
    first = bursts([case("adamw")], 2, corpus, out=out)
    ran = []
    real = burst.run_burst
    monkeypatch.setattr(burst, "run_burst", lambda c, *a, **k: ran.append(c.label) or real(c, *a, **k))
    rows = bursts([case("adamw"), case("galore")], 2, corpus, out=out, resume=True)
    assert ran == ["galore r8 T200"]
    assert rows[0]["resumed"] and rows[0]["val_loss"] == first[0]["val_loss"]
    assert len(Path(out).read_text().splitlines()) == 2


def test_streaming_methods_run_only_the_gaps_they_search_and_say_so():
    cases, notes = expand_cases(["tiny"], ["adamw", "galore", "osd"], [16, 64], [1, 50, 200])
    labels = [c.label for c in cases]
    assert labels.count("adamw") == 1
    assert sum(lab.startswith("galore") for lab in labels) == 6
    assert [lab for lab in labels if lab.startswith("osd")] == ["osd r16 T1", "osd r64 T1"]
    assert any("osd" in n and "skipped 50, 200" in n for n in notes)
    only_long, _ = expand_cases(["tiny"], ["osd"], [16], [200])  # none it searches: its default gap
    assert [c.label for c in only_long] == ["osd r16 T1"]
    assert [c.label for c in expand_cases(["tiny"], ["ori"], [16], [1, 5, 50])[0]] == ["ori r16 T1", "ori r16 T5"]


def test_without_an_lr_every_method_trains_at_its_published_default():
    cases, _ = expand_cases(["tiny"], sorted(REGISTRY), [16], [50])
    for c in cases:
        spec = REGISTRY[c.config.method]
        assert c.effective_lr() == spec.default_lr and c.lr_source == "default" and spec.lr_source
    lrs = {c.config.method: c.effective_lr() for c in cases}
    assert lrs["adamw"] == 1e-3 and lrs["galore"] == 1e-2 and lrs["subtrack"] == 1e-3


def test_lr_grid_is_half_decades_around_the_default_or_the_given_lr():
    assert lr_grid(1e-2, 3) == [0.00316, 0.01, 0.0316]
    assert lr_grid(1e-3, 1) == [1e-3] and lr_grid(1e-3, 2) == [1e-3, 0.00316]
    assert lr_grid(0.0316, 3) == [0.01, 0.0316, 0.1]  # a grid around a grid point shares its lattice
    cases, _ = expand_cases(["tiny"], ["adamw", "galore"], [16], [50], lr_grid=3)
    assert [(c.config.method, c.effective_lr(), c.lr_source) for c in cases] == [
        ("adamw", 0.000316, "grid"), ("adamw", 0.001, "grid"), ("adamw", 0.00316, "grid"),
        ("galore", 0.00316, "grid"), ("galore", 0.01, "grid"), ("galore", 0.0316, "grid")]
    given, _ = expand_cases(["tiny"], ["galore"], [16], [50], lr=2e-3, lr_grid=3)
    assert [c.effective_lr() for c in given] == [0.000632, 0.002, 0.00632]


def test_best_rows_keep_the_lowest_validation_loss_per_configuration_and_flag_the_grid_edge():
    def row(method, lr, val, status="ok"):
        return {"model": "tiny", "method": method, "rank": 16, "update_gap": 50, "lr": lr, "val_loss": val,
                "status": status}

    rows = [row("galore", 1e-3, 5.2), row("galore", 1e-2, 5.0), row("galore", 3e-2, None, "diverged"),
            row("sumo", 1e-3, 5.5), row("sumo", 1e-2, 5.3), row("sumo", 3e-2, 5.1)]
    best = {r["method"]: r for r in best_rows(rows)}
    assert best["galore"]["lr"] == 1e-2 and not best["galore"]["lr_at_edge"]
    assert best["galore"]["lr_tried"] == [[1e-3, 5.2], [1e-2, 5.0], [3e-2, None]]
    assert best["sumo"]["lr"] == 3e-2 and best["sumo"]["lr_at_edge"]  # the optimum may lie beyond the grid


def test_rank_beyond_the_smallest_weight_dimension_is_skipped_with_a_note():
    cases, notes = expand_cases(["tiny"], ["galore"], [16, 4096], [50])
    assert [c.config.rank for c in cases] == [16]
    assert any("4096" in n for n in notes)


def test_proxy_keeps_method_gap_and_rank_to_width_ratio():
    settings = BurstSettings(device="cpu")
    target = case("galore", model="7b", rank=1024, update_gap=500)
    proxy, note = proxy_case(target, settings, fits=lambda c, s: c.config.model.params <= 25_000_000)
    p = proxy.config
    assert (p.model.name, p.method, p.update_gap) == ("20m", "galore", 500)
    assert p.rank / load_model("20m").hidden == 1024 / load_model("7b").hidden
    assert "7b" in note and "20m" in note
    same, none = proxy_case(case("adamw"), settings)
    assert same.config.model.name == "tiny" and none is None


def test_cli_burst_json_appends_rows(corpus, tmp_path, monkeypatch):
    from subprof.cli import app

    monkeypatch.setattr("subprof.train.corpus.load_corpus", lambda *a, **k: corpus)
    out = tmp_path / "b.jsonl"
    res = CliRunner().invoke(app, ["burst", "--methods", "adamw,ori", "--ranks", "8", "--update-gaps", "1,50",
                                   "--steps", "2", "--batch", "2", "--seq", "32", "--device", "cpu", "--threads", "1",
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert [r["method"] for r in payload["rows"]] == ["adamw", "ori"]
    assert [(r["lr"], r["lr_source"]) for r in payload["rows"]] == [(1e-3, "default"), (1e-2, "default")]
    assert payload["corpus"]["corpus_tokens"] == corpus.tokens
    assert len(out.read_text().splitlines()) == 2


def test_cli_burst_lr_grid_reports_every_lr_and_the_best_per_method(corpus, tmp_path, monkeypatch):
    from subprof.cli import app

    monkeypatch.setattr("subprof.train.corpus.load_corpus", lambda *a, **k: corpus)
    args = ["burst", "--methods", "adamw", "--lr-grid", "2", "--steps", "2", "--batch", "2", "--seq", "32",
            "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "b.jsonl")]
    payload = json.loads(CliRunner().invoke(app, args + ["--json"]).stdout)
    assert [(r["lr"], r["lr_source"], r["lr_grid"]) for r in payload["rows"]] == [
        (1e-3, "grid", [1e-3, 0.00316]), (0.00316, "grid", [1e-3, 0.00316])]
    (best,) = payload["best"]
    assert best["lr"] == min(payload["rows"], key=lambda r: r["val_loss"])["lr"] and len(best["lr_tried"]) == 2
    text = CliRunner().invoke(app, args + ["--resume"]).output  # the table, from the finished rows
    assert "learning rates tried" in text and "0.00316: " in text


@pytest.mark.parametrize("args, message", [
    (["--methods", "nope"], "unknown method"),
    (["--ranks", "x"], "not an integer"),
    (["--data", "/nonexistent/corpus"], "does not exist"),
    (["--device", "tpu"], "unknown"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    from subprof.cli import app

    res = CliRunner().invoke(app, ["burst", "--steps", "1", "--out", str(tmp_path / "b.jsonl"), *args])
    assert res.exit_code == 2 and message in res.output


def test_seq_beyond_the_models_positions_is_refused(corpus):
    with pytest.raises(SubprofError, match="max_position_embeddings"):
        burst.build_model(case("adamw", seq=4096).config, corpus.vocab_size, BurstSettings(device="cpu"))



def test_a_rule_that_schedules_over_the_run_is_told_the_bursts_length():
    import torch

    model = torch.nn.Module()
    model.attn = torch.nn.Linear(32, 64, bias=False)
    opt = burst.build_case_optimizer(model, case("ori"), BurstSettings(steps=7, device="cpu"))
    assert opt.rule(opt.param_groups[0]).total_steps == 7  # Ori's Oja++ activation ends at 10% of 7 steps
    opt = burst.build_case_optimizer(model, case("galore"), BurstSettings(steps=7, device="cpu"))
    assert "total_steps" not in opt.param_groups[0]["method_options"]


def test_a_run_too_short_for_its_gap_says_so():
    """A burst compares refresh intervals only over runs that hold several refreshes: a shorter one is named."""
    from subprof.train.burst import MIN_REFRESHES, refresh_notes, refreshes

    cases, _ = expand_cases(["tiny"], ["galore", "ori"], [16], [10, 250], batch=2, seq=32)
    notes = refresh_notes(cases, 200)
    assert refreshes(10, 200) == 19 and refreshes(250, 200) == 0
    assert len(notes) == 1 and "galore r16 T250" in notes[0] and f"≥ {MIN_REFRESHES * 250 + 1}" in notes[0]


def test_subtrack_moves_every_gap_steps_so_a_short_run_is_noted_too():
    """SubTrack++ is a tracker that moves once every T steps (T₀ = 200), unlike OSD and Ori: its gap counts."""
    from subprof.train.burst import refresh_notes

    cases, _ = expand_cases(["tiny"], ["subtrack", "osd"], [16], [200], batch=2, seq=32)
    notes = refresh_notes(cases, 200)
    assert len(notes) == 1 and notes[0].startswith("subtrack r16 T200")


def test_base_applies_to_the_methods_that_run_it_and_the_others_say_so():
    """`burst --base lion`: GaLore and full rank train on Lion (at Lion's lr), SUMO keeps Adam with a note; an
    unknown base is one line and exit 2 before any corpus work."""
    cases, notes = expand_cases(["tiny"], ["adamw", "galore", "sumo"], [8], [50], base="lion")
    bases = {c.config.method: c.config.base for c in cases}
    assert bases == {"adamw": "lion", "galore": "lion", "sumo": "adamw"}
    assert any("sumo runs adamw" in n for n in notes)
    lion_full = next(c for c in cases if c.config.method == "adamw")
    assert lion_full.effective_lr() < expand_cases(["tiny"], ["adamw"], [8], [50])[0][0].effective_lr()

    from subprof.cli import app

    res = CliRunner().invoke(app, ["burst", "--base", "sgd", "--steps", "1"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "sgd" in res.output
