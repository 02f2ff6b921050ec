"""Base optimizers as a dimension of the projected methods (`subprof.methods.bases`): one declaration per base that
the optimizer allocates exactly, that the memory model and the per-rank model read, and the command line's `--base`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from subprof.catalog import load_model
from subprof.cli import app
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import REGISTRY
from subprof.methods.bases import BASES, base_moments, expand
from subprof.methods.spec import full_shape
from subprof.optim import build_optimizer, state_tensor_bytes
from subprof.plan.memory import estimate

pytestmark = pytest.mark.usefixtures("one_thread")
BASED = [name for name, spec in REGISTRY.items() if len(spec.bases) > 1]
CASES = [(method, base, bits) for method in BASED for base in ("lion", "adafactor")
         for bits in BASES[base].state_bits_supported]


def test_galore_osd_ori_and_full_rank_take_every_base_and_the_others_keep_adamw():
    assert set(BASED) == {"adamw", "galore", "osd", "ori"}
    assert all(REGISTRY[m].bases == ("adamw",) for m in REGISTRY if m not in BASED)


class Block(torch.nn.Module):
    """A tall (320×96) and a wide (96×320) projected weight; a norm and a head with bias stay unprojected."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.Linear(96, 320, bias=False)
        self.mlp = torch.nn.Linear(320, 96, bias=False)
        self.norm = torch.nn.Parameter(torch.ones(96))
        self.head = torch.nn.Linear(96, 64)


@pytest.mark.parametrize("method,base,bits", CASES)
def test_declared_state_bytes_equal_the_bytes_in_optimizer_state(method, base, bits):
    """Moments of R (r×max = 5120 values: 8-bit) and the plain tensors, as the memory model counts them."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if bits == 16 else torch.float32
    model = Block().to(dtype)
    opt = build_optimizer(model, method, rank=16, update_gap=1, state_bits=bits, lr=1e-3, base=base)
    for step in range(2):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    spec, pb = REGISTRY[method], dtype.itemsize
    for weight in (model.attn.weight, model.mlp.weight):
        m, n = weight.shape
        declared = sum(spec.state_bytes(m, n, 16 if spec.project else 0, state_bits=bits, param_bytes=pb,
                                        options={"base": base}).values())
        assert state_tensor_bytes(opt.state[weight]) == declared, sorted(opt.state[weight])
    vector = expand((base_moments(lambda a, b, r: (a,)),), base)
    matrix = expand((base_moments(full_shape),), base)
    for p in (model.norm, model.head.bias, model.head.weight):
        rule, shape = (vector, (p.numel(), 1)) if p.dim() == 1 else (matrix, tuple(p.shape))
        assert state_tensor_bytes(opt.state[p]) == sum(t.nbytes(*shape, 0, state_bits=bits, param_bytes=pb)
                                                       for t in rule)


def test_lion_keeps_one_of_adams_two_moments_and_adafactor_two_factors_on_7b():
    """7b GaLore r1024, bf16: AdamW − Lion = one bf16 moment of every R and every unprojected tensor, exactly;
    Adafactor keeps under 1% of AdamW's states."""
    model = load_model("7b")
    states = {b: estimate(TrainConfig(model=model, method="galore", rank=1024,
                                      method_options={"base": b})).components["optimizer_states"] for b in BASES}
    one_moment = 2 * (sum(s.count * min(1024, s.m, s.n) * max(s.m, s.n) for s in model.linear_shapes())
                      + sum(model.unprojected_tensors()))
    assert states["adamw"] - states["lion"] == one_moment
    assert states["adafactor"] < 0.01 * states["adamw"]


def test_adafactor_factors_follow_the_weights_shard():
    """Per rank (FSDP2, the weight cut on its long side): the factor along the cut side is cut, the r-long one
    whole; Lion's moment is cut like Adam's."""
    galore = REGISTRY["galore"]
    whole = galore.rank_state_bytes(4096, 1024, 128, ranks=1, state_bits=16, param_bytes=2,
                                    options={"base": "adafactor"})["optimizer_states"]
    cut = galore.rank_state_bytes(4096, 1024, 128, ranks=4, state_bits=16, param_bytes=2,
                                  options={"base": "adafactor"})["optimizer_states"]
    assert whole == 4 * (4096 + 128) and cut == 4 * (4096 // 4 + 128)
    comms = {c.name for c in galore.comms_for({"base": "adafactor"})}
    assert "adafactor_factor_sums" in comms and "adafactor_factor_sums" not in {
        c.name for c in galore.comms_for({"base": "lion"})}


def test_a_config_keeps_the_base_only_when_it_is_not_adamw():
    model = load_model("60m")
    assert TrainConfig(model=model, method="galore", method_options={"base": "adamw"}).method_options == {}
    lion = TrainConfig(model=model, method="galore", method_options={"base": "lion"})
    assert lion.base == "lion" and lion.label().startswith("galore+lion")
    assert TrainConfig.from_dict(lion.to_dict()).base == "lion"


@pytest.mark.parametrize("options,needle", [
    ({"base": "sgd"}, "unknown base optimizer 'sgd'"),
    ({"base": "adafactor", "state_bits": 8}, "no 8-bit state"),
])
def test_a_bad_base_is_one_line_naming_the_fix(options, needle):
    bits = options.pop("state_bits", None)
    with pytest.raises(SubprofError, match=needle):
        TrainConfig(model=load_model("60m"), method="galore", state_bits=bits, method_options=options)


def test_a_method_that_does_not_run_a_base_says_which_it_runs():
    with pytest.raises(SubprofError, match="sumo runs adamw"):
        TrainConfig(model=load_model("60m"), method="sumo", method_options={"base": "lion"})


cli = CliRunner()


def test_estimate_prints_the_breakdown_with_a_base():
    out = cli.invoke(app, ["estimate", "--model", "7b", "--method", "galore", "--base", "adafactor", "--rank",
                           "1024", "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.output)
    assert row["base"] == "adafactor" and row["components"]["optimizer_states"] < 2**27


@pytest.mark.parametrize("args", [["--base", "sgd"], ["--method", "sumo", "--base", "lion"],
                                  ["--base", "adafactor", "--state-bits", "8"]])
def test_estimate_refuses_a_bad_base_in_one_line(args):
    out = cli.invoke(app, ["estimate", "--model", "60m", "--method", "galore", *args])
    assert out.exit_code == 2 and "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1


@pytest.mark.parametrize("shape", [(512, 128), (128, 512)], ids=["tall", "wide"])
@pytest.mark.parametrize("base,bits,dtype", [("lion", 32, torch.float32), ("lion", 16, torch.bfloat16),
                                             ("adafactor", 32, torch.float32), ("adafactor", 16, torch.bfloat16)])
def test_a_projected_step_allocates_within_its_declared_step_workspace(base, bits, dtype, shape):
    """An ordinary GaLore step with each base, traced at the dispatch level: no more than the method's step
    workspace plus the base's (`BaseSpec.step_workspace`), and — so the declaration is not loose — at least the
    m×n back-projection."""
    from test_optim_core import ordinary_step_peak

    m, n = shape
    peak, declared = ordinary_step_peak("galore", shape, bits, dtype, base=base)
    assert m * n * dtype.itemsize <= peak <= declared
