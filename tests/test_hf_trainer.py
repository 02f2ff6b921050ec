"""Hugging Face Trainer optimizer names (`subprof.plan.hf_trainer`, issue 24 item 6b): each low-rank name maps to the
method, state bits, per-layer updates and options transformers runs, and transformers' refusals become ours."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from subprof.catalog import load_model, parse_budget
from subprof.errors import SubprofError
from subprof.methods import parse_methods
from subprof.plan.hf_trainer import HF_OPTIMIZERS, hf_refusal, resolve_hf, split_methods
from subprof.plan.planner import PlanRequest, plan

# name → (method, state_bits, layerwise, options): what transformers 5.25's trainer_optimizer.py builds
EXPECTED = {
    "galore_adamw": ("galore", None, False, {}),
    "galore_adamw_8bit": ("galore", 8, False, {}),
    "galore_adamw_layerwise": ("galore", None, True, {}),
    "galore_adamw_8bit_layerwise": ("galore", 8, True, {}),
    "apollo_adamw": ("apollo", None, False, {"projector": "stored"}),
    "apollo_adamw_layerwise": ("apollo", None, True, {"projector": "stored"}),
    "galore_adafactor": ("galore", None, False, {"base": "adafactor"}),  # galore-torch GaLoreAdafactor
    "galore_adafactor_layerwise": ("galore", None, True, {"base": "adafactor"}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_runnable_name_maps_to_what_transformers_builds(name):
    e = resolve_hf(f"hf:{name}")
    assert (e.method, e.state_bits, e.layerwise, e.options) == EXPECTED[name]
    assert (e.rank, e.update_gap) == (128, 200)  # transformers' optim_args defaults


def test_the_table_covers_every_low_rank_trainer_name():
    transformers = pytest.importorskip("transformers")
    names = {o.value for o in transformers.training_args.OptimizerNames
             if o.value.startswith(("galore", "apollo"))}
    assert names == set(HF_OPTIMIZERS) == set(EXPECTED)


def test_galore_adafactor_plans_galore_on_the_adafactor_base():
    """hf:galore_adafactor is galore-torch's GaLoreAdafactor: subprof's GaLore on its Adafactor base (golden-tested
    against GaLoreAdafactor in tests/test_golden_bases.py)."""
    from subprof.cli import app

    res = CliRunner().invoke(app, ["estimate", "--model", "1b", "--method", "hf:galore_adafactor", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert (data["method"], data["base"]) == ("galore", "adafactor")


def test_an_unknown_name_suggests_the_close_ones():
    with pytest.raises(SubprofError, match="did you mean hf:galore_adamw"):
        resolve_hf("hf:galore_adam")


@pytest.mark.parametrize("name", ["galore_adamw_layerwise", "apollo_adamw_layerwise", "galore_adamw_8bit_layerwise"])
def test_layerwise_names_carry_transformers_refusals(name):
    e = resolve_hf(f"hf:{name}")
    assert "does not support gradient accumulation" in hf_refusal(e, accumulation=2)
    assert "does not support DDP" in hf_refusal(e, gpus=2)
    assert hf_refusal(e) is None


def test_non_layerwise_names_run_data_parallel_under_ddp_only():
    e = resolve_hf("hf:galore_adamw")
    assert hf_refusal(e, accumulation=8, gpus=4, strategy="ddp") is None
    assert "--strategy ddp" in hf_refusal(e, gpus=4, strategy="fsdp")


def test_split_methods_keeps_own_names_and_resolves_hf_ones():
    own, hf = split_methods("galore, hf:apollo_adamw ,adamw8bit")
    assert own == "galore,adamw8bit" and [e.name for e in hf] == ["apollo_adamw"]


# ------------------------------------------------------------------------------------------------------- plan


def _plan(methods: str, model: str = "1b", gpu_mem: str = "24GB", **kw):
    own, hf = split_methods(methods)
    return plan(PlanRequest(model=load_model(model), budget=parse_budget(gpu_mem),
                            methods=parse_methods(own) if own else [], hf=tuple(hf), **kw))


def test_plan_runs_a_layerwise_name_without_accumulation_only():
    result = _plan("hf:galore_adamw_layerwise")
    assert result.candidates
    assert all(c.config.layerwise and c.config.accumulation == 1 and c.entry == "hf:galore_adamw_layerwise"
               for c in result.candidates)


def test_plan_fixes_bits_and_options_by_the_name():
    result = _plan("hf:galore_adamw_8bit,hf:apollo_adamw")
    by_entry = {c.entry for c in result.candidates}
    assert by_entry == {"hf:galore_adamw_8bit", "hf:apollo_adamw"}
    for c in result.candidates:
        if c.entry == "hf:galore_adamw_8bit":
            assert c.config.state_bits == 8 and not c.config.layerwise
        else:
            assert c.config.method_options == {"projector": "stored"} and c.config.state_bits == 16
    d = result.best_per_method["hf:apollo_adamw"].to_dict()
    assert d["hf_optim"] == "apollo_adamw" and d["method_options"] == {"projector": "stored"}


def test_apollo_as_hf_runs_it_keeps_the_projector():
    """apollo-torch stores P between refreshes: the same configuration needs more memory than subprof's APOLLO,
    which regenerates it."""
    hf = _plan("hf:apollo_adamw", batch=4).candidates
    own = _plan("apollo", batch=4).candidates
    key = lambda c: (c.config.rank, c.config.state_bits, c.config.layerwise, c.config.checkpointing, c.config.batch)
    mine = {key(c): c for c in own}
    pairs = [(c, mine[key(c)]) for c in hf if key(c) in mine]
    assert pairs and all(a.estimate.components["projection_matrices"] > b.estimate.components["projection_matrices"]
                         for a, b in pairs)


def test_plan_rejects_a_layerwise_name_on_several_gpus_with_transformers_reason():
    result = _plan("hf:galore_adamw_layerwise,galore", gpus=2, strategy="ddp")
    assert "does not support DDP" in result.rejected["hf:galore_adamw_layerwise"]
    assert not any(c.entry for c in result.candidates)


def test_cli_plan_and_estimate_take_hf_names():
    from subprof.cli import app

    res = CliRunner().invoke(app, ["plan", "--model", "1b", "--gpu-mem", "24GB", "--methods",
                                   "hf:galore_adamw_layerwise", "--json"])
    assert res.exit_code == 0, res.output
    assert "hf:galore_adamw_layerwise" in json.loads(res.output)["best_per_method"]
    res = CliRunner().invoke(app, ["estimate", "--model", "1b", "--method", "hf:galore_adamw_8bit", "--json"])
    data = json.loads(res.output)
    assert (data["method"], data["state_bits"], data["rank"], data["update_gap"]) == ("galore", 8, 128, 200)
    assert data["hf"]["hf_optim"] == "galore_adamw_8bit"


@pytest.mark.parametrize("args, fragment", [
    (["--method", "hf:galore_adamw_layerwise", "--accumulation", "4"], "does not support gradient accumulation"),
    (["--method", "hf:galore_adamw_layerwise", "--gpus", "2"], "does not support DDP"),
    (["--method", "hf:galore_adamw_8bit", "--state-bits", "16"], "--state-bits is set by"),
    (["--method", "hf:nope"], "not a Trainer low-rank optimizer"),
])
def test_cli_estimate_hf_bad_input_is_one_line_exit_2(args, fragment):
    from subprof.cli import app

    res = CliRunner().invoke(app, ["estimate", "--model", "1b", *args])
    assert res.exit_code == 2 and fragment in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_plan_hf_bad_name_is_one_line_exit_2():
    from subprof.cli import app

    res = CliRunner().invoke(app, ["plan", "--model", "1b", "--gpu-mem", "24GB", "--methods", "hf:galore_adamv"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
