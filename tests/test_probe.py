"""The gradient-subspace probe: a planted signal is recovered (rank knee, rotation rate), bases are kept only while
needed, the decompositions agree with their definitions, a real run resumes without repeating rows, and bad input
is one line with exit code 2."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from subprof.catalog import load_model
from subprof.cli import app
from subprof.plan.probe_curves import ProbeRun, StalenessModel, rotation_rate
from subprof.results import read_rows
from subprof.train.corpus import load_corpus
from subprof.train.probe import ProbeSettings, run_probe
from subprof.train.subspace import (ProbeSchedule, SubspaceProbe, WeightInfo, captured_by_columns, decompose,
                                    row_key)

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def planted_stream(steps: int, *, m: int = 256, n: int = 128, k: int = 12, omega: float = 0.01,
                   signal: float = 0.85, seed: int = 0):
    """G_t = (rank-k signal whose right subspace turns at ω rad/step) + isotropic Gaussian noise, scaled so the
    signal holds `signal` of ‖G‖². The right side (n = 128) is the projected side since m ≥ n. Rotating each
    direction a_i towards an orthogonal b_i makes every principal angle between the subspaces at t and t + Δ
    equal ωΔ."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, 2 * k, generator=gen))
    a, b = q[:, :k], q[:, k:]
    for t in range(steps):
        right = a * math.cos(omega * t) + b * math.sin(omega * t)
        left, _ = torch.linalg.qr(torch.randn(m, k, generator=gen))
        s = left @ right.T
        noise = torch.randn(m, n, generator=gen)
        yield t, s / s.norm() * math.sqrt(signal) + noise / noise.norm() * math.sqrt(1 - signal)


def synthetic_run(steps: int = 200, **stream) -> ProbeRun:
    schedule = ProbeSchedule(steps=steps, every=5, gaps=(1, 5, 10, 20, 40, 80))
    probe = SubspaceProbe(schedule=schedule, ranks=(4, 8, 12, 16, 32, 64))
    info = WeightInfo(name="layers.0.self_attn.q_proj.weight", layer=0, type="q", shape=(256, 128))
    rows = [{"kind": "probe_run", "run_id": "syn", "model": "planted", "target_model": "planted"}]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is several times faster on a shared 2-core machine
    try:
        for t, g in planted_stream(steps, **stream):
            rows += [dict(r, run_id="syn") for r in probe.observe(t, [(info, g)])]
    finally:
        torch.set_num_threads(threads)
    rows.append({"kind": "probe_end", "run_id": "syn", "status": "ok"})
    return ProbeRun.from_rows(rows)


@pytest.fixture(scope="module")
def planted():
    return synthetic_run()


def test_planted_rank_is_recovered_as_the_energy_knee(planted):
    assert planted.knee() == pytest.approx(12, rel=0.10)
    curve = planted.energy_curve()
    # the energy curve bends at k: most of the signal by r = 12, little more per direction after it
    assert curve[12] - curve[8] > 4 * (curve[16] - curve[12])


def test_planted_rotation_rate_is_recovered_from_the_staleness_curve(planted):
    rank, side = 12, 128
    omega = rotation_rate(planted.staleness_curve(rank), rank, side, planted.energy_curve()[rank])
    assert omega == pytest.approx(0.01, rel=0.10)


def test_a_faster_rotation_reads_as_a_faster_rate():
    fast = synthetic_run(omega=0.02)
    omega = rotation_rate(fast.staleness_curve(12), 12, 128, fast.energy_curve()[12])
    assert omega == pytest.approx(0.02, rel=0.10)


def test_a_basis_is_kept_only_while_a_pair_needs_it(one_thread):
    schedule = ProbeSchedule(steps=1000, every=10, gaps=(1, 10, 50, 200, 500))
    # about two anchors per gap are alive at once, however long the gap
    assert schedule.max_live_bases() <= 3 * len(schedule.gaps)
    probe = SubspaceProbe(schedule=schedule, ranks=(4,))
    info = WeightInfo(name="w", layer=0, type="q", shape=(16, 8))
    most = 0
    for step in range(1000):
        probe.observe(step, [(info, torch.randn(16, 8))])
        most = max(most, len(probe._bases))
    assert most <= schedule.max_live_bases()
    assert not probe._bases  # nothing left once every pair is done


def test_every_pair_ends_on_a_decomposed_step_and_starts_on_a_kept_basis():
    schedule = ProbeSchedule(steps=200, every=10, gaps=(1, 10, 50, 100))
    for step in range(200):
        for anchor, gap in schedule.pairs_ending(step):
            assert schedule.decomposed(step) and gap in schedule.anchor_gaps(anchor)
            assert schedule.keep_until(anchor) >= step
    assert schedule.pair_count(100) == 2 and schedule.pair_count(1) == 20


def test_randomized_energies_agree_with_exact_ones(one_thread):
    (_, g), = [x for x in planted_stream(1, m=96, n=64)]
    exact = decompose(g, 16)
    randomized = decompose(g, 16, exact_max_side=32)
    assert (exact.method, randomized.method) == ("exact", "randomized")
    for r in (4, 12, 16):
        assert randomized.energy(r) == pytest.approx(exact.energy(r), abs=0.01)


def test_captured_share_is_the_projection_onto_the_basis(one_thread):
    g = torch.randn(40, 24, dtype=torch.float64).float()
    dec = decompose(g, 6)
    p = dec.basis
    explicit = [float((g @ p[:, :r]).square().sum()) for r in range(1, 7)]
    torch.testing.assert_close(captured_by_columns(p, g), torch.tensor(explicit), rtol=1e-4, atol=1e-4)
    # the fresh top-r basis captures exactly the top-r energy
    assert float(captured_by_columns(p, g)[5]) / dec.total == pytest.approx(dec.energy(6), rel=1e-4)


def test_staleness_model_continues_the_measured_curve_towards_the_random_floor():
    model = StalenessModel.fit({1: 0.95, 10: 0.8, 50: 0.55}, floor=0.2)
    assert model.at(0) == 1.0 and model.at(10) == pytest.approx(0.8)
    assert 0.2 <= model.at(500) < model.at(100) < 0.55
    assert model.mean_over(1) == 1.0 and model.mean_over(50) > model.at(50)


# ------------------------------------------------------------------------------------------------ a real run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    for name in ("textwrap.py", "string.py", "bisect.py"):
        (folder / name).write_text((STDLIB / name).read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUBPROF_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return load_corpus(folder, vocab_size=320)


SMALL = dict(steps=12, every=4, gaps=(1, 4), batch=2, seq=32, device="cpu", threads=1, ranks=(4, 16))


def test_a_real_probe_writes_rows_for_every_weight_and_resumes_without_repeating(corpus, tmp_path, one_thread):
    out = tmp_path / "probe.jsonl"
    rows = run_probe(load_model("tiny"), ProbeSettings(**SMALL), corpus, out=str(out))
    run = ProbeRun.from_rows(rows)
    assert run.finished and run.end["status"] == "ok"
    assert {r["type"] for r in run.energy} == {"q", "k", "v", "o", "gate", "up", "down"}
    assert len({r["name"] for r in run.energy}) == 28  # 7 weights × 4 layers
    assert all(r["svd"] == "exact" for r in run.energy)
    assert run.gaps == [1, 4]
    # interrupted: drop the end row and the later half of the rows, then resume
    written = read_rows(out)
    cut = len(written) // 2
    out.write_text("".join(__import__("json").dumps(r) + "\n" for r in written[:cut]))
    run_probe(load_model("tiny"), ProbeSettings(**SMALL), corpus, out=str(out), resume=True)
    again = read_rows(out)
    assert sorted(map(row_key, again)) == sorted(map(row_key, written))  # nothing missing, nothing twice
    # finished: a further --resume trains nothing and appends nothing
    run_probe(load_model("tiny"), ProbeSettings(**SMALL), corpus, out=str(out), resume=True)
    assert len(read_rows(out)) == len(again)


def test_a_probe_with_a_projected_method_measures_its_own_basis(corpus, one_thread):
    rows = run_probe(load_model("tiny"), ProbeSettings(**SMALL, method="galore", rank=16, update_gap=8), corpus)
    tracking = [r for r in rows if r["kind"] == "probe_tracking"]
    assert tracking
    refresh = [r["tracking"] for r in tracking if r["step"] % 8 == 0]
    stale = [r["tracking"] for r in tracking if r["step"] % 8 != 0]
    assert all(t == pytest.approx(1.0, abs=1e-3) for t in refresh)  # a refresh step projects with the fresh basis
    assert max(stale) < 1.0


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny", "--ranks", "512"], "exceeds the widest weight"),
    (["--model", "tiny", "--steps", "50", "--gaps", "1,50"], "less than --steps"),
    (["--model", "nosuchmodel"], "unknown model"),
    (["--model", "tiny", "--data", "/no/such/folder"], "does not exist"),
])
def test_bad_probe_input_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(app, ["probe", *args, "--json"])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one message (rich may wrap a long line)
