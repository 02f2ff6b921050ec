"""One method registry: a method defined and registered inside this test (one spec, one rule, one `register` line) is
found by estimate, plan, proj, the optimizer and the trace without editing any other file; the torch-free plan path
stays torch-free; the package layering (no import cycles) holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from subprof.catalog import gpu_by_name, load_model, parse_budget
from subprof.config import TrainConfig
from subprof.methods import REGISTRY, get_method, register, unregister
from subprof.methods.galore import ADAM_STATES
from subprof.methods.rule import ProjectionRule, orthonormal_columns
from subprof.methods.spec import Dtype, MethodSpec, Role, StateLayout, TensorSpec, basis_shape, two_gemm_flops

ROOT = Path(__file__).resolve().parent.parent


class FixedRandomRule(ProjectionRule):
    """A toy method: P is a seeded random orthonormal basis drawn once and never moved; Adam runs on R."""

    defaults = {"seed": 0}

    def update_projection(self, state: dict, grad, step: int) -> None:
        if "projector" in state:
            return
        from subprof.methods.spec import basis_shape as shape

        d, r = shape(grad.shape[0], grad.shape[1], self.effective_rank(tuple(grad.shape)))
        gen = torch.Generator().manual_seed(self.options["seed"])
        state["projector"] = orthonormal_columns(torch.randn(d, r, generator=gen)).to(grad.dtype)


TOY = MethodSpec(
    name="toyfixed",
    title="Fixed random projection (test only)",
    summary="a seeded random basis, never refreshed",
    project=True,
    layout=StateLayout(states=ADAM_STATES, workspace=(
        TensorSpec(name="draw", shape=basis_shape, dtype=Dtype.FP32, role=Role.WORKSPACE),)),
    rule=FixedRandomRule,
    refresh_cost="gemm",
    refresh_flops=two_gemm_flops,
    default_update_gap=1000,
    update_gaps=(1000,),
)


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister(TOY.name)


def test_the_registry_finds_it(toy):
    assert get_method("toyfixed") is toy and "toyfixed" in REGISTRY


def test_estimate_counts_its_declared_states(toy):
    from subprof.plan.memory import estimate

    galore = estimate(TrainConfig(model=load_model("60m"), method="galore", rank=64))
    mine = estimate(TrainConfig(model=load_model("60m"), method="toyfixed", rank=64))
    assert mine.config.update_gap == 1000  # its own default gap
    assert mine.components["optimizer_states"] == galore.components["optimizer_states"]  # the same Adam moments
    assert 0 < mine.components["projection_workspace"] < galore.components["projection_workspace"]  # no SVD


def test_plan_searches_it(toy):
    from subprof.plan.planner import PlanRequest, plan

    result = plan(PlanRequest(model=load_model("60m"), budget=parse_budget("24GB"), methods=[(toy, None)],
                              gpu=gpu_by_name("4090")))
    assert result.recommendation is not None and result.recommendation.config.method == "toyfixed"


def test_proj_times_it():
    register(TOY)
    try:
        from subprof.measure.timing import make_update, method_names

        assert "toyfixed" in method_names()
        make_update("toyfixed", torch.randn(24, 16), 4)()
    finally:
        unregister(TOY.name)


def test_the_optimizer_runs_it(toy):
    from subprof.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("mlp", torch.nn.Linear(16, 24, bias=False))
    opt = build_optimizer(model, "toyfixed", rank=4, lr=1e-2, seed=3)
    x = torch.randn(8, 16)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    state = opt.state[model.mlp.weight]
    assert state["projector"].shape == (16, 4) and state["exp_avg"].shape == (24, 4) and state["step"] == 3


def test_the_trace_runs_it(toy):
    from subprof.measure.case import Case
    from subprof.measure.trace import trace_case

    res = trace_case(Case(config=TrainConfig(model=load_model("tiny"), method="toyfixed", rank=8, batch=1, seq=16),
                          steps=2))
    assert res.optimizer_state_bytes > 0 and res.peak_allocated_bytes > res.param_bytes


def test_an_unknown_option_is_refused_by_the_spec_and_the_rule(toy):
    from subprof.errors import SubprofError

    with pytest.raises(SubprofError, match="unknown option"):
        TrainConfig(model=load_model("tiny"), method="toyfixed", method_options={"sede": 1})
    with pytest.raises(ValueError, match="unknown option"):
        FixedRandomRule(rank=4, update_gap=1, sede=1)


def test_the_plan_path_imports_no_torch_transformers_pandas_or_plotly():
    code = ("import sys, subprof.cli.core, subprof.plan.planner, subprof.plan.memory, subprof.plan.throughput, "
            "subprof.plan.evidence, subprof.plan.quality_fit; subprof.plan.evidence.default_quality(); "
            "heavy = [m for m in ('torch', 'transformers', 'pandas', 'plotly') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_package_layers_hold_and_there_are_no_import_cycles():
    """import-linter's contracts in pyproject.toml: cli > report | train > measure > optim | plan > config >
    methods > leaves."""
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
