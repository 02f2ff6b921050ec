"""Checkpointing modes and loss kinds: the vocabulary, the memory and FLOP terms, the trace agreement (committed rows
of profiles/measured/trace_checkpointing.sh within 2%), the CLI and plan."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from subprof.catalog import load_model
from subprof.cli import app
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.modes import checkpointed_layers, is_checkpointed_layer, parse_checkpointing
from subprof.plan.calibration import DEFAULT
from subprof.plan.checkpointing import recompute_flops_per_token
from subprof.plan.loss import fused_chunk_tokens
from subprof.plan.memory import activation_bytes, estimate, logits_bytes
from subprof.plan.throughput import train_flops_per_token

ROWS_FILE = Path(__file__).resolve().parent.parent / "profiles" / "measured" / "trace_checkpointing.jsonl"
ROWS = [json.loads(line) for line in ROWS_FILE.read_text().splitlines() if line.strip()]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"model": load_model("60m"), "batch": 8, "seq": 256, **kw})


@pytest.mark.parametrize("value,mode", [(None, "none"), (False, "none"), (True, "full"), ("full", "full"),
                                        ("Selective", "selective"), ("every:1", "full"), ("every:03", "every:3")])
def test_checkpointing_values_read_as_their_mode_and_old_bools_as_none_or_full(value, mode):
    assert parse_checkpointing(value) == mode


@pytest.mark.parametrize("value", ["some", "every:0", "every:x", "every"])
def test_unknown_checkpointing_mode_is_one_error(value):
    with pytest.raises(SubprofError, match="--checkpointing"):
        parse_checkpointing(value)


def test_every_k_checkpoints_layers_counted_from_one_as_torchtitan():
    assert [i for i in range(8) if is_checkpointed_layer("every:3", i)] == [2, 5]
    assert checkpointed_layers("every:3", 8) == 2 and checkpointed_layers("selective", 8) == 0


def test_old_result_rows_with_a_bool_read_as_full():
    row = _cfg(checkpointing=True).to_dict()
    assert TrainConfig.from_dict({**row, "model": "60m", "checkpointing": True}).checkpointing == "full"
    assert TrainConfig.from_dict({k: v for k, v in row.items() if k != "loss"} | {"model": "60m"}).loss == "full"


def test_activations_order_none_above_every2_above_selective_above_full():
    sizes = [activation_bytes(_cfg(checkpointing=m)) for m in ("none", "every:2", "selective", "full")]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


def test_recompute_flops_order_full_above_selective_above_every4_above_none():
    flops = [recompute_flops_per_token(_cfg(checkpointing=m)) for m in ("full", "selective", "every:4", "none")]
    assert flops == sorted(flops, reverse=True) and flops[-1] == 0
    full = _cfg(checkpointing="full")
    lm_head = 2 * full.model.vocab * full.model.hidden
    assert train_flops_per_token(full) == pytest.approx(4 * full.model.forward_flops_per_token(256) - lm_head)


@pytest.mark.parametrize("loss", ["chunked", "fused"])
def test_chunked_and_fused_losses_need_at_most_half_the_full_logits_at_a_128k_vocabulary(loss):
    c = TrainConfig(model=load_model(str(Path(__file__).parent / "data" / "hf" / "llama-3-8b.json")), batch=2,
                    seq=8192, dtype="mixed")  # pure bf16: Liger's weight-gradient update copies V·h twice
    assert logits_bytes(replace(c, loss=loss)) < 0.55 * logits_bytes(c)


def test_fused_chunk_follows_liger_next_power_of_two_of_tokens_over_vocab_per_hidden():
    c = TrainConfig(model=load_model("7b"), batch=4, seq=4096, loss="fused")  # Liger's own example: 2048
    assert fused_chunk_tokens(c) == 2048


def test_committed_rows_cover_every_mode_and_traced_loss_on_60m_and_1b():
    ok = {(r["model"], r["checkpointing"], r["loss"]) for r in ROWS if r["status"] == "ok"}
    assert {(m, ck, loss) for m in ("60m", "1b") for ck in ("none", "full", "selective", "every:2")
            for loss in ("full", "chunked")} <= ok


@pytest.mark.parametrize("row", [r for r in ROWS if r["status"] == "ok"],
                         ids=lambda r: f"{r['model']}-{r['checkpointing']}-{r['loss']}")
def test_estimate_within_2_percent_of_traced_peak_for_each_mode_and_loss(row):
    from test_trace_agreement import row_estimate

    est = row_estimate(row)
    model_side = est.peak_allocated_bytes - DEFAULT.cuda_runtime_allocated_bytes
    assert abs(model_side / row["peak_allocated_bytes"] - 1) <= 0.02
    # where the optimizer step is the overall peak, the forward/backward phase still tells the modes apart
    fwbw = sum(est.phases["forward_backward"].values()) - DEFAULT.cuda_runtime_allocated_bytes
    assert abs(fwbw / row["phases"]["forward_backward"] - 1) <= 0.02


def test_trace_refuses_the_fused_loss_with_one_line():
    result = CliRunner().invoke(app, ["bench", "--backend", "trace", "--model", "tiny", "--methods", "adamw",
                                      "--loss", "fused", "--out", "/dev/null"])
    assert result.exit_code == 2 and "modelled from the kernel's source" in result.output


@pytest.mark.parametrize("args,needle", [(["--checkpointing", "sometimes"], "--checkpointing"),
                                         (["--loss", "tiled"], "--loss")])
def test_estimate_names_a_bad_mode_or_loss_in_one_line(args, needle):
    result = CliRunner().invoke(app, ["estimate", "--model", "60m", *args])
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output


def test_a_bare_checkpointing_flag_still_means_full():
    result = CliRunner().invoke(app, ["estimate", "--model", "60m", "--checkpointing", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["checkpointing"] == "full"


def test_estimate_json_carries_mode_and_loss():
    result = CliRunner().invoke(app, ["estimate", "--model", "60m", "--checkpointing", "every:2", "--loss",
                                      "chunked", "--json"])
    out = json.loads(result.output)
    assert (out["checkpointing"], out["loss"]) == ("every:2", "chunked")


def test_plan_uses_the_chunked_loss_only_where_the_full_logits_do_not_fit():
    from subprof.catalog import parse_budget
    from subprof.methods import parse_methods
    from subprof.plan.planner import PlanRequest, plan

    req = PlanRequest(model=load_model("1b"), budget=parse_budget("12GB"), methods=parse_methods("adamw,galore"),
                      seq=2048, tokens_per_step=2048 * 64)
    cands = plan(req).candidates
    assert any(c.config.loss == "chunked" for c in cands) and all(c.config.loss == "full" or estimate(replace(c.config, loss="full"), req.calibration)
                         .device_used_bytes > req.usable_bytes for c in cands)
