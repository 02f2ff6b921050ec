"""Issue 23's command-line findings, as a user meets them through typer's CliRunner: GPU names (`--gpu` errors name
`--gpu`, shared names are refused with the choices), options that do not apply are refused, "nothing fits" exits 1,
`estimate` reproduces `plan` rows, checks run before the corpus loads, Ctrl-C says what was kept, and known
third-party noise is filtered unless `-v`."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from subprof.cli import app

cli = CliRunner()


def run(*args: str):
    return cli.invoke(app, list(args))


def one_line_error(res, code: int = 2) -> str:
    """The refusal: exit `code`, one line on stderr, no traceback; returns that line."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.stderr
    return lines[0]


# --------------------------------------------------------------------------------------------------- GPU names


def test_an_unknown_gpu_is_reported_against_gpu_not_gpu_mem():
    line = one_line_error(run("plan", "--model", "7b", "--gpu", "4070"))
    assert line.startswith("error: --gpu '4070'") and "--gpu-mem" not in line
    assert "rtx-4070-ti-super" in line  # the card whose name it starts


def test_a_size_given_to_gpu_points_to_gpu_mem():
    line = one_line_error(run("plan", "--model", "7b", "--gpu", "24GB"))
    assert "--gpu '24GB' is a memory size" in line and "--gpu-mem 24GB" in line


@pytest.mark.parametrize("args, flag", [
    (["plan", "--model", "7b", "--gpu", "{}"], "--gpu"),
    (["plan", "--model", "7b", "--gpu-mem", "{}"], "--gpu-mem"),
    (["estimate", "--model", "7b", "--gpu", "{}"], "--gpu"),
    (["report", "--models", "7b", "--gpus", "{}"], "--gpus"),
])
@pytest.mark.parametrize("name, keys", [("a100", ("a100-40gb", "a100-80gb")), ("h100", ("h100-pcie", "h100-sxm")),
                                        ("v100", ("v100-16gb", "v100-32gb"))])
def test_a_name_several_cards_share_is_refused_with_the_choices(args, flag, name, keys):
    line = one_line_error(run(*(a.format(name) for a in args)))
    assert f"{flag} '{name}'" in line and all(k in line for k in keys)


@pytest.mark.parametrize("name, key", [("4080", "rtx-4080"), ("NVIDIA GeForce RTX 4070 Ti SUPER", "rtx-4070-ti-super"),
                                       ("A40", "a40"), ("L40", "l40"), ("Tesla V100-SXM2-16GB", "v100-16gb"),
                                       ("v100-32gb", "v100-32gb"), ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
                                       ("H800", "h800"), ("NVIDIA H20", "h20")])
def test_the_added_cards_plan_by_name(name, key):
    res = run("plan", "--model", "1b", "--gpu", name, "--methods", "adamw", "--top", "1", "--json")
    assert res.exit_code in (0, 1), res.output  # V100 16GB may fit nothing for 1b
    assert json.loads(res.stdout)["throughput_gpu"] == key


# ------------------------------------------------------------------------------------- options that don't apply


@pytest.mark.parametrize("args, flag", [
    (["plan", "--model", "7b", "--gpu-mem", "24GB", "--strategy", "ddp"], "--strategy ddp"),
    (["plan", "--model", "7b", "--gpu-mem", "24GB", "--burst-steps", "5"], "--burst-steps"),
    (["plan", "--model", "7b", "--gpu-mem", "24GB", "--data", "x.txt"], "--data"),
    (["plan", "--model", "7b", "--gpu-mem", "24GB", "-v"], "--verbose"),
    (["estimate", "--model", "7b", "--rank", "64"], "--rank"),
    (["estimate", "--model", "7b", "--method", "adamw8bit", "--update-gap", "50"], "--update-gap"),
    (["estimate", "--model", "7b", "--strategy", "ddp"], "--strategy ddp"),
    (["burst", "--methods", "adamw", "--ranks", "16"], "--ranks"),
    (["burst", "--methods", "galore", "--strategy", "ddp"], "--strategy ddp"),
    (["bench", "--model", "tiny", "--margin", "0.1"], "--margin"),
])
def test_an_option_that_does_not_apply_is_refused_not_ignored(args, flag, tmp_path):
    extra = ["--out", str(tmp_path / "b.jsonl")] if args[0] in ("burst", "bench") else []
    line = one_line_error(run(*args, *extra))
    assert line.startswith(f"error: {flag}"), line


@pytest.mark.parametrize("flag, value, hint", [("--margin", "5", "0.05"), ("--utilization", "40", "0.4")])
def test_a_percentage_given_for_a_fraction_suggests_the_fraction(flag, value, hint):
    line = one_line_error(run("plan", "--model", "7b", "--gpu-mem", "24GB", flag, value))
    assert f"{flag} {value} " in line and f"did you mean {hint}?" in line


@pytest.mark.parametrize("json_out", [False, True])
def test_nothing_fits_exits_1_with_its_suggestions(json_out):
    res = run("plan", "--model", "7b", "--gpu-mem", "0.5GB", *(["--json"] if json_out else []))
    assert res.exit_code == 1, res.output
    if json_out:
        data = json.loads(res.stdout)
        assert data["recommendation"] is None and data["suggestions"]
    else:
        assert "nothing fits" in res.stdout and "What would fit" in res.stdout


# ------------------------------------------------------------------------------------- estimate reproduces plan


def plan_rows(*args: str) -> list[dict]:
    res = run("plan", *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["candidates"]


def estimate_of(row: dict, model: str, *extra: str) -> dict:
    args = ["estimate", "--model", model, "--method", row["method"], "--state-bits", str(row["state_bits"]),
            "--batch", str(row["batch"]), "--accumulation", str(row["accumulation"]), "--seq", str(row["seq"]),
            "--dtype", row["dtype"], "--base", row["base"], *extra, "--json"]
    if row["rank"] is not None:
        args += ["--rank", str(row["rank"]), "--update-gap", str(row["update_gap"])]
    args += ["--layerwise"] * row["layerwise"] + ["--checkpointing", row["checkpointing"], "--loss", row["loss"]]
    res = run(*args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_estimate_reproduces_every_plan_row():
    rows = plan_rows("--model", "1b", "--gpu", "4090", "--top", "50")
    assert any(r["accumulation"] > 1 for r in rows)
    for row in rows:
        est = estimate_of(row, "1b", "--gpu", "4090")
        assert est["peak_allocated_bytes"] == row["estimated_peak_allocated_bytes"], row
        assert est["device_used_bytes"] == row["device_used_bytes"], row


def test_plans_1b_adamw_8bit_16x32_row_is_17_67_gib_in_estimate_too():
    """The issue's row: estimate said 15.17 GiB without accumulation; the 32 micro-batches keep the earlier ones'
    gradients (2.49 GiB) alive through forward/backward. (17.66 GiB when the issue was filed; the logsumexp and 1/rms
    terms read off the backward graph, 4H + 8 per token and layer instead of the fitted 2H + 16, add 5 MiB.)"""
    (row,) = [r for r in plan_rows("--model", "1b", "--gpu", "4090", "--methods", "adamw8bit", "--top", "50")
              if (r["batch"], r["accumulation"], r["checkpointing"], r["layerwise"], r["base"]) ==
              (16, 32, "none", False, "adamw")]
    est = estimate_of(row, "1b", "--gpu", "4090")
    assert f"{est['peak_allocated_bytes'] / 2**30:.2f}" == "17.67" == f"{row['estimated_peak_allocated_bytes'] / 2**30:.2f}"


def test_tokens_per_step_sets_the_accumulation():
    res = run("estimate", "--model", "1b", "--method", "adamw8bit", "--batch", "16", "--tokens-per-step", "131072",
              "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["accumulation"] == 32  # 131072 / (16 × 256)


@pytest.mark.parametrize("args, message", [
    (["--accumulation", "2", "--tokens-per-step", "4096"], "not both"),
    (["--tokens-per-step", "1000"], "not a whole number of micro-batches of 2048 tokens"),
])
def test_estimate_accumulation_inputs_are_checked(args, message):
    assert message in one_line_error(run("estimate", "--model", "1b", *args))


def test_estimate_table_explains_its_phase_columns():
    res = run("estimate", "--model", "1b", "--method", "galore", "--rank", "256", "--accumulation", "4")
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "× 4 accumulation" in text
    for column in ("built =", "fwd/bwd =", "opt step =", "P refresh ="):
        assert column in text


# ------------------------------------------------------------------------------- checks before the corpus loads


@pytest.fixture
def no_corpus(monkeypatch):
    """Fail the test if the corpus is read: these refusals must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was loaded before the refusal")

    monkeypatch.setattr("subprof.train.corpus.load_corpus", refuse)


def test_burst_out_folder_is_refused_before_the_corpus_loads(tmp_path, no_corpus):
    line = one_line_error(run("burst", "--methods", "adamw", "--out", str(tmp_path)))
    assert "is a folder" in line and "corpus" not in line


def test_a_cpu_burst_too_big_for_host_memory_is_refused_before_the_corpus_loads(tmp_path, no_corpus, monkeypatch):
    monkeypatch.setattr("subprof.measure.model.available_host_memory", lambda: 8 * 2**30)
    line = one_line_error(run("burst", "--model", "7b", "--methods", "adamw", "--device", "cpu",
                              "--out", str(tmp_path / "b.jsonl")))
    assert "on the CPU needs" in line and "8.0 GiB available" in line


@pytest.fixture
def small_corpus(monkeypatch):
    from subprof.train.corpus import Corpus

    corpus = Corpus(name="synthetic", description="synthetic ids", train=np.arange(4096) % 300,
                    val=np.arange(1024) % 300, vocab_size=320, key="synthetic")
    monkeypatch.setattr("subprof.train.corpus.load_corpus", lambda *a, **k: corpus)
    return corpus


def interrupted_line(res) -> str:
    """Ctrl-C: exit 130, no traceback; the last line on stderr (after the corpus line and the progress bar)."""
    assert res.exit_code == 130 and "Traceback" not in res.output, res.output
    return res.stderr.strip().splitlines()[-1]


BURST = ["burst", "--methods", "adamw", "--steps", "1", "--batch", "2", "--seq", "32", "--device", "cpu"]


def test_ctrl_c_before_any_case_finished_claims_no_file(tmp_path, small_corpus, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("subprof.train.burst.run_bursts", interrupt)
    out = tmp_path / "b.jsonl"
    line = interrupted_line(run(*BURST, "--out", str(out)))
    assert "before any case finished" in line and "was not created" in line and "kept in" not in line
    assert not out.exists()


def test_ctrl_c_after_a_case_says_how_many_rows_were_kept(tmp_path, small_corpus, monkeypatch):
    out = tmp_path / "b.jsonl"
    out.write_text('{"kind": "burst"}\n')  # an earlier run's row: not this run's

    def one_then_interrupt(*args, out, **kwargs):
        with open(out, "a") as f:
            f.write('{"kind": "burst"}\n')
        raise KeyboardInterrupt

    monkeypatch.setattr("subprof.train.burst.run_bursts", one_then_interrupt)
    line = interrupted_line(run(*BURST, "--out", str(out)))
    assert f"1 finished case kept in {out}" in line and "--resume" in line


def test_burst_of_an_8bit_alias_trains_8bit_states():
    from subprof.train.burst import expand_cases

    cases, _ = expand_cases(["tiny"], ["adamw8bit", "adamw"], [16], [1])
    assert [(c.config.method, c.config.state_bits) for c in cases] == [("adamw", 8), ("adamw", 32)]


# ------------------------------------------------------------------------------------ known third-party noise

MOD_TRACKER = "The module hierarchy tracking maybe be messed up. Please file a bug to PyTorch, if it is the case."
BNB = ("Failed to load CPU gemm_4bit_forward from kernels-community: Kernel repository 'kernels-community/"
       "quantization-bitsandbytes' could not verify publisher trust status. Set trust_remote_code=True …")


def emit_known_noise() -> None:
    warnings.warn(MOD_TRACKER, UserWarning)
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning(BNB)


def test_known_noise_is_filtered_only_inside_the_library_call(monkeypatch, caplog):
    from subprof.quiet import known_noise_filtered

    monkeypatch.delenv("SUBPROF_VERBOSE", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with known_noise_filtered():
            emit_known_noise()
        assert not seen and not caplog.records
        emit_known_noise()  # outside: untouched, the filters were scoped
        assert len(seen) == 1 and len(caplog.records) == 1
    assert not logging.getLogger("bitsandbytes.backends.cpu.ops").filters


def test_verbose_shows_the_known_noise(monkeypatch, caplog):
    from subprof.quiet import known_noise_filtered

    monkeypatch.setenv("SUBPROF_VERBOSE", "1")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with known_noise_filtered():
            emit_known_noise()
    assert len(seen) == 1 and len(caplog.records) == 1


def test_other_warnings_pass_through_the_filter(monkeypatch):
    from subprof.quiet import known_noise_filtered

    monkeypatch.delenv("SUBPROF_VERBOSE", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with known_noise_filtered():
            warnings.warn("something else", UserWarning)
    assert [str(w.message) for w in seen] == ["something else"]


def test_the_cpu_trace_of_a_burst_emits_no_mod_tracker_warning(small_corpus, monkeypatch, one_thread):
    from subprof.catalog import load_model
    from subprof.config import TrainConfig
    from subprof.train import burst

    monkeypatch.delenv("SUBPROF_VERBOSE", raising=False)
    case = burst.BurstCase(config=TrainConfig(model=load_model("tiny"), method="adamw", batch=2, seq=32,
                                              dtype="fp32"))
    settings = burst.BurstSettings(steps=2, device="cpu")
    offsets = burst.train_offsets(small_corpus.train.size, case.config, settings)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert burst.traced_first_step_peak(case, settings, small_corpus, offsets) > 0
    assert not [w for w in seen if "module hierarchy" in str(w.message)]


def test_bitsandbytes_is_imported_with_its_noise_filtered(monkeypatch):
    """8-bit optimizers import bitsandbytes inside `known_noise_filtered` (its import logs the trust_remote_code
    message on CPUs with AVX512-BF16)."""
    import contextlib

    import torch

    import subprof.optim.build as build

    entered = []

    @contextlib.contextmanager
    def spy():
        entered.append(True)
        yield

    monkeypatch.setattr(build, "known_noise_filtered", spy)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    build.build_optimizer(model, "adamw8bit")
    assert entered
