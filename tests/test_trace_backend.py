"""The trace backend: the real step on fake tensors reproduces CUDA's memory-relevant choices and accounts for
every byte (categories sum to the peak, states and temporaries have the sizes torch's algorithms imply)."""

from __future__ import annotations

import math

import pytest

from subprof.catalog import load_model
from subprof.config import TrainConfig
from subprof.measure.case import Case
from subprof.measure.trace import CUDA_MIN_ALLOCATION, trace_case


def case(model: str = "tiny", steps: int = 1, implementation: str = "subprof", **config) -> Case:
    return Case(config=TrainConfig(model=load_model(model), **config), steps=steps, implementation=implementation)


def rounded(nbytes: int) -> int:
    return math.ceil(nbytes / CUDA_MIN_ALLOCATION) * CUDA_MIN_ALLOCATION


def param_bytes(name: str, elem: int = 2) -> int:
    """Parameter bytes computed without torch from the catalogue's shapes, each tensor rounded like CUDA's."""
    cfg = load_model(name)
    sizes = [s.m * s.n for s in cfg.linear_shapes() for _ in range(s.count)] + cfg.unprojected_tensors()
    return sum(rounded(n * elem) for n in sizes)


@pytest.fixture(scope="module")
def tiny_adamw():
    return trace_case(case(method="adamw", batch=2, seq=32, steps=2))


def test_categories_add_up_to_the_peak(tiny_adamw):
    assert sum(tiny_adamw.categories.values()) == tiny_adamw.peak_allocated_bytes


def test_peak_is_the_largest_phase(tiny_adamw):
    phases = [v for v in tiny_adamw.phases.values() if v is not None]
    assert tiny_adamw.peak_allocated_bytes == max(phases)


def test_parameters_are_the_catalogue_weights_in_bf16(tiny_adamw):
    assert tiny_adamw.param_bytes == param_bytes("tiny")
    assert tiny_adamw.phases["model_built"] - tiny_adamw.param_bytes < 4096  # plus the rotary buffer


def test_adamw_keeps_two_bf16_moments(tiny_adamw):
    # torch AdamW (foreach or not) keeps exp_avg and exp_avg_sq in the parameter dtype; the scalar `step` counters
    # (on the CPU under CUDA too) add one 512-B block each in the trace
    n_params = len(list(load_model("tiny").unprojected_tensors())) + sum(s.count for s in load_model("tiny")
                                                                          .linear_shapes())
    assert tiny_adamw.optimizer_state_bytes == 2 * tiny_adamw.param_bytes + n_params * CUDA_MIN_ALLOCATION


def test_foreach_adamw_holds_one_parameter_sized_temporary(tiny_adamw):
    """CUDA's default foreach AdamW materialises sqrt(v) for the whole parameter list at once (the per-tensor CPU
    default would hold one tensor's worth): the step peak is params + grads + states + one more param size."""
    step = tiny_adamw.phase_categories["optimizer_step"]
    assert step["optimizer"] - tiny_adamw.optimizer_state_bytes == tiny_adamw.param_bytes
    assert step["gradients"] == tiny_adamw.param_bytes


def test_attention_runs_the_flash_kernel(tiny_adamw):
    # saves output + fp32 logsumexp for backward, as CUDA's flash kernel does
    assert "_scaled_dot_product_flash_attention_for_cpu" in tiny_adamw.sdpa_kernel


def test_galore_reference_refreshes_on_the_first_step_only():
    res = trace_case(case(method="galore", implementation="galore-torch", rank=16, batch=1, seq=16, steps=2))
    assert [s["refresh"] for s in res.steps] == [True, False]
    assert res.phases["projection_refresh"] is not None
    adamw_states = 2 * param_bytes("tiny")
    assert res.optimizer_state_bytes < adamw_states


def test_8bit_states_are_smaller_than_bf16():
    bf16 = trace_case(case(method="adamw", batch=1, seq=16)).optimizer_state_bytes
    int8 = trace_case(case(method="adamw", state_bits=8, batch=1, seq=16)).optimizer_state_bytes
    assert int8 < 0.6 * bf16


def test_60m_traces_with_its_exact_parameter_bytes():
    res = trace_case(case(model="60m", method="adamw", batch=1, seq=16))
    assert res.param_bytes == param_bytes("60m")
    assert res.phase_categories["optimizer_step"]["gradients"] == res.param_bytes
