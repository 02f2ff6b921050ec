"""subprof.optim: GaLore against galore-torch, declared bytes against optimizer.state, resume, seeds, NaN handling,
per-layer updates with accumulation and clipping (CPU, fp32 unless stated)."""

from __future__ import annotations

import copy
import io
import json
import warnings
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from subprof.catalog import profiles_dir
from subprof.errors import SubprofError
from subprof.methods import REGISTRY
from subprof.methods.rule import ProjectionRule
from subprof.optim import (NonFiniteGradientError, SubspaceAdamW, build_optimizer, split_parameters,
                           state_tensor_bytes)
from subprof.methods.spec import Dtype, tensor_bytes

METHODS = list(REGISTRY)
LOWRANK = [m for m in METHODS if REGISTRY[m].project]


pytestmark = pytest.mark.usefixtures("one_thread")


class Block(torch.nn.Module):
    """Projected: attn (m×n = 40×24, tall) and mlp (24×40, wide); plain: embedding-like head and a norm weight."""

    def __init__(self, tall: tuple[int, int] = (40, 24)) -> None:
        super().__init__()
        m, n = tall
        self.attn = torch.nn.Linear(n, m, bias=False)
        self.mlp = torch.nn.Linear(m, n, bias=False)
        self.norm = torch.nn.Parameter(torch.ones(n))
        self.head = torch.nn.Linear(n, 3)

    def forward(self, x):
        return self.head(self.mlp(torch.tanh(self.attn(x))) * self.norm)


def batches(count: int, seed: int = 0, dim: int = 24):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, dim, generator=gen), torch.randn(16, 3, generator=gen)) for _ in range(count)]


def loss_of(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def run(model, opt, data):
    for batch in data:
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()


def make(method: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = Block()
    kw.setdefault("rank", 4)
    kw.setdefault("update_gap", 3)
    kw.setdefault("lr", 1e-2)
    return model, build_optimizer(model, method, **kw)


def assert_state_dicts_equal(a, b) -> None:
    """Equal structure, equal numbers, and tensors equal bit for bit."""
    flat_a, spec_a = tree_flatten(a)
    flat_b, spec_b = tree_flatten(b)
    assert spec_a == spec_b
    for x, y in zip(flat_a, flat_b):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def params_equal(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# --- GaLore against the reference ----------------------------------------------------------------------------------


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = json.loads((profiles_dir() / "models" / "tiny.json").read_text())
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**raw)).float()


def test_galore_equals_galore_torch_step_by_step():
    import galore_torch

    ref_model, model = tiny_llama(), tiny_llama()
    projected, plain = split_parameters(ref_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = galore_torch.GaLoreAdamW(
            [{"params": list(plain.values())},
             {"params": list(projected.values()), "rank": 16, "update_proj_gap": 8, "scale": 0.25,
              "proj_type": "std"}], lr=3e-3, weight_decay=0.1)
    opt = build_optimizer(model, "galore", rank=16, update_gap=8, scale=0.25, lr=3e-3, weight_decay=0.1)
    assert isinstance(opt, SubspaceAdamW)
    assert len(projected) == 4 * 7  # q, k, v, o, gate, up, down in each of the 4 layers
    gen = torch.Generator().manual_seed(0)
    for step in range(20):  # refreshes at steps 0, 8 and 16
        x = torch.randint(0, 8192, (2, 16), generator=gen)
        for m, o in ((ref_model, ref), (model, opt)):
            o.zero_grad()
            m(input_ids=x, labels=x).loss.backward()
            o.step()
        for (name, p), q in zip(ref_model.named_parameters(), model.parameters()):
            assert torch.equal(q, p), f"step {step} {name}: not bit-identical to galore-torch"
    state = opt.state[model.model.layers[0].mlp.down_proj.weight]  # 128×352, wide: P is 128×16
    assert state["projector"].shape == (128, 16) and state["exp_avg"].shape == (16, 352) and state["step"] == 20


# --- declared bytes == bytes in optimizer.state --------------------------------------------------------------------


VARIANTS = [(m, v) for m in METHODS for v in ("default", *REGISTRY[m].variants)]


@pytest.mark.parametrize("shape", [(320, 96), (96, 320)], ids=["tall", "wide"])
@pytest.mark.parametrize("bits", [32, 16, 8])
@pytest.mark.parametrize("method,variant", VARIANTS)
def test_declared_state_bytes_equal_the_bytes_in_optimizer_state(method, variant, bits, shape):
    """Every method in every named variant. Moments r×max(m, n) = 5120 values (8-bit) and P = 96×16 (< 4096: fp32
    at 8 bits) exercise both regimes."""
    spec, (m, n), r = REGISTRY[method], shape, 16
    options = dict(spec.variants.get(variant, {}))
    dtype = torch.bfloat16 if bits == 16 else torch.float32
    torch.manual_seed(0)
    model = Block(tall=shape).to(dtype)
    opt = build_optimizer(model, method, rank=r, update_gap=1, state_bits=bits, lr=1e-3, **options)
    data = batches(2, dim=n)
    for batch in data:
        opt.zero_grad()
        loss_of(model, (batch[0].to(dtype), batch[1].to(dtype))).backward()
        opt.step()
    pb = 2 if dtype == torch.bfloat16 else 4
    for weight, (wm, wn) in ((model.attn.weight, (m, n)), (model.mlp.weight, (n, m))):
        declared = sum(spec.state_bytes(wm, wn, r, state_bits=bits, param_bytes=pb, options=options).values())
        assert state_tensor_bytes(opt.state[weight]) == declared, sorted(opt.state[weight])
    for p in (model.norm, model.head.weight, model.head.bias):  # plain AdamW tensors, as memory.state_bytes counts
        assert state_tensor_bytes(opt.state[p]) == 2 * tensor_bytes(p.numel(), Dtype.STATE, state_bits=bits,
                                                                    param_bytes=pb)


# --- resume, seeds, non-finite gradients ---------------------------------------------------------------------------


RESUME_CASES = [(m, 32) for m in METHODS] + [("galore", 16), ("galore", 8), ("grasswalk", 8), ("adamw", 8)]


@pytest.mark.parametrize("method,bits", RESUME_CASES)
def test_save_load_continue_equals_an_uninterrupted_run(method, bits):
    data = batches(10)
    model, opt = make(method, state_bits=bits, seed=1)
    run(model, opt, data)
    first, first_opt = make(method, state_bits=bits, seed=1)
    run(first, first_opt, data[:5])
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # tensors and primitives only
    resumed, resumed_opt = make(method, state_bits=bits, seed=99)  # different init: everything must come from saved
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optim"])
    run(resumed, resumed_opt, data[5:])
    assert params_equal(model, resumed)


@pytest.mark.parametrize("method", METHODS)
def test_identical_seeds_give_identical_results(method):
    data = batches(7)
    a, opt_a = make(method)
    b, opt_b = make(method)
    run(a, opt_a, data)
    run(b, opt_b, data)
    assert params_equal(a, b)
    c, opt_c = make(method)
    run(c, opt_c, batches(7, seed=1))
    assert not params_equal(a, c)


def poison(model, value=float("nan")):
    model.mlp.weight.grad[3, 5] = value


@pytest.mark.parametrize("method", ["adamw", "galore", "grasswalk"])
def test_nonfinite_gradient_raises_and_changes_nothing(method):
    model, opt = make(method)
    run(model, opt, batches(2))
    before_model, before_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    loss_of(model, batches(1, seed=5)[0]).backward()
    poison(model)
    with pytest.raises(NonFiniteGradientError, match="mlp.weight"):
        opt.step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_model.items())
    assert_state_dicts_equal(opt.state_dict(), before_state)


@pytest.mark.parametrize("method", ["adamw", "galore", "sumo"])
def test_nonfinite_gradient_skips_the_step_when_asked(method):
    data = batches(4)
    model, opt = make(method, nonfinite="skip")
    reference, ref_opt = make(method)
    run(model, opt, data[:2])
    run(reference, ref_opt, data[:2])
    opt.zero_grad()
    loss_of(model, data[2]).backward()
    poison(model, float("inf"))
    opt.step()
    assert opt.skipped_steps == 1 and params_equal(model, reference)
    run(model, opt, data[3:])
    run(reference, ref_opt, data[3:])
    assert params_equal(model, reference)  # the skipped step left no trace in moments or step counters


# --- per-layer updates ---------------------------------------------------------------------------------------------


def accumulate(model, opt, data, micro: int, *, check_hooks: bool = False):
    for i in range(0, len(data), micro):
        for j, batch in enumerate(data[i:i + micro]):
            before = [p.detach().clone() for p in model.parameters()]
            (loss_of(model, batch) / micro).backward()
            if check_hooks and j < micro - 1:  # not the last micro-batch: nothing stepped, gradients kept
                assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
                assert all(p.grad is not None for p in model.parameters())
            if check_hooks and j == micro - 1:  # last micro-batch: every weight stepped in its hook, grads freed
                assert all(p.grad is None for p in model.parameters())
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("method,bits", [("galore", 32), ("adamw", 32), ("adamw", 8), ("sumo", 16)])
def test_layerwise_with_accumulation_equals_the_global_optimizer(method, bits):
    data = batches(9)
    model, opt = make(method, state_bits=bits)
    accumulate(model, opt, data, 3)
    lw_model, lw = make(method, state_bits=bits, layerwise=True, accumulation_steps=3)
    accumulate(lw_model, lw, data, 3, check_hooks=True)
    assert params_equal(model, lw_model)


def test_layerwise_clips_with_the_previous_steps_global_norm():
    data = batches(2)
    model, opt = make("galore")
    lw_model, lw = make("galore", layerwise=True, max_grad_norm=0.05)
    norms = []
    for k, batch in enumerate(data):
        opt.zero_grad()
        loss_of(model, batch).backward()
        norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
        if k == 1:  # step 2 is clipped with step 1's norm
            for p in model.parameters():
                p.grad.mul_(min(1.0, 0.05 / (norms[0] + 1e-6)))
        opt.step()
        lw.zero_grad()
        loss_of(lw_model, batch).backward()
        lw.step()
        assert lw.last_grad_norm == pytest.approx(norms[k], rel=1e-5)
        torch.testing.assert_close(list(lw_model.parameters()), list(model.parameters()), atol=1e-6, rtol=0)
    assert norms[0] > 0.05  # so the second step was really clipped


def test_layerwise_state_dict_round_trips():
    data = batches(6)
    model, opt = make("grassjump", layerwise=True)
    run(model, opt, data)
    first, first_opt = make("grassjump", layerwise=True)
    run(first, first_opt, data[:3])
    resumed, resumed_opt = make("grassjump", layerwise=True, seed=7)
    resumed.load_state_dict(first.state_dict())
    resumed_opt.load_state_dict(copy.deepcopy(first_opt.state_dict()))
    run(resumed, resumed_opt, data[3:])
    assert params_equal(model, resumed)


def test_layerwise_raises_on_a_nonfinite_gradient():
    model, opt = make("galore", layerwise=True)
    model.mlp.weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    with pytest.raises(NonFiniteGradientError, match="mlp.weight"):
        loss_of(model, batches(1)[0]).backward()


# --- selection and arguments ---------------------------------------------------------------------------------------


def test_projected_weights_are_attention_and_mlp_linears_only():
    model = tiny_llama()
    projected, plain = split_parameters(model)
    assert all(".self_attn." in n or ".mlp." in n for n in projected)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(plain)
    assert len(projected) + len(plain) == len(list(model.parameters()))


def test_adamw_is_torchs_adamw_and_8bit_is_bitsandbytes():
    model, opt = make("adamw")
    assert type(opt) is torch.optim.AdamW and opt.defaults["foreach"] is None  # torch picks foreach on CUDA
    model, opt8 = make("adamw8bit")
    assert type(opt8).__name__ == "AdamW8bit" and type(opt8).__module__.startswith("bitsandbytes")


@pytest.mark.parametrize("kwargs,match", [
    ({"rank": 0}, "rank"), ({"update_gap": 0}, "update_gap"), ({"state_bits": 4}, "state_bits"),
    ({"nonfinite": "ignore"}, "nonfinite"), ({"accumulation_steps": 2}, "layerwise"), ({"lr": -1.0}, "lr")])
def test_bad_arguments_raise_one_clear_error(kwargs, match):
    with pytest.raises(SubprofError, match=match):
        make("galore", **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_without_an_lr_the_optimizer_takes_the_methods_published_one(method):
    opt = build_optimizer(Block(), method, rank=4)
    assert {g["lr"] for g in opt.param_groups} == {REGISTRY[method].default_lr}


def test_adamw_state_bits_must_match_the_parameter_dtype():
    with pytest.raises(SubprofError, match="parameter dtype"):
        make("adamw", state_bits=16)


# --- the declared step workspace -----------------------------------------------------------------------------------


class TransientPeak(TorchDispatchMode):
    """Peak bytes of storages created (and still alive) while the mode is active; pre-existing ones ignored."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.old = {t.untyped_storage().data_ptr() for t in existing}
        self.live, self.peak, self.seen = 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if key in self.seen or key in self.old or size == 0:
                    continue
                self.seen.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key, size)
        return out

    def _free(self, key, size):
        self.seen.discard(key)
        self.live -= size


@pytest.mark.parametrize("shape", [(512, 128), (128, 512)], ids=["tall", "wide"])
@pytest.mark.parametrize("bits,dtype", [(32, torch.float32), (16, torch.bfloat16), (8, torch.float32)])
def test_galore_step_allocates_exactly_its_declared_step_workspace(shape, bits, dtype):
    """An ordinary (non-refresh) step: U (r×max) + the m×n back-projected update, nothing else alive at once.
    (At 8 bits the bitsandbytes kernel is one opaque op; on CUDA it is fused and allocates nothing.)"""
    peak, declared = ordinary_step_peak("galore", shape, bits, dtype)
    assert peak == declared


def ordinary_step_peak(method: str, shape: tuple[int, int], bits: int, dtype: torch.dtype, warmup: int = 1,
                       **options) -> tuple[int, int]:
    """(traced transient peak, declared step workspace) of an ordinary rank-16 step of `method` on one m×n weight,
    after `warmup` steps (the first allocates the states; a limiter needs a second for its history); `options` go to
    the optimizer and the declaration (`base`, a variant's options)."""
    m, n = shape
    model = torch.nn.Module()
    model.attn = torch.nn.Linear(n, m, bias=False).to(dtype)
    opt = build_optimizer(model, method, rank=16, update_gap=100, state_bits=bits, **options)
    for _ in range(warmup):
        model.attn(torch.randn(4, n, dtype=dtype)).sum().backward()
        opt.step()
        opt.zero_grad()
    model.attn(torch.randn(4, n, dtype=dtype)).sum().backward()
    weight = model.attn.weight
    existing = [weight, weight.grad] + [v for v in opt.state[weight].values() if torch.is_tensor(v)]
    with TransientPeak(existing) as trace:
        opt.step()
    declared = REGISTRY[method].step_workspace_bytes(m, n, 16, state_bits=bits, param_bytes=dtype.itemsize,
                                                     options=options or None)
    return trace.peak, declared


@pytest.mark.parametrize("shape", [(320, 96), (96, 320)], ids=["tall", "wide"])
@pytest.mark.parametrize("method,variant", [(m, v) for m, v in VARIANTS if REGISTRY[m].project])
def test_a_refresh_allocates_no_more_than_its_declared_workspace(method, variant, shape):
    """Every projection update (step 0's start, then a move) of every variant, traced at the dispatch
    level (so `torch.linalg.svd`'s internal copy, declared, is not seen): the peak stays within the declaration.
    fp32 weights and states (at 16/8 bits the moment rotation reads fp32 copies, which are not declared)."""
    spec, (m, n), r = REGISTRY[method], shape, 16
    options = dict(spec.variants.get(variant, {}))
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(m, n))
    opt = SubspaceAdamW([{"params": [weight], "method": method, "rank": r, "update_gap": 1,
                          "method_options": options}], lr=1e-3)
    rule = opt.rule(opt.param_groups[0])
    peaks = []
    # the refresh: `update_projection`, or all of `refresh_and_project` where a rule shares R with it (OSD: R is
    # the GᵀP its ∇L needs, declared as its `gtp`)
    entry = "refresh_and_project" if type(rule).refresh_and_project is not ProjectionRule.refresh_and_project \
        else "update_projection"
    real = getattr(rule, entry)

    def traced(state, grad, step):
        existing = [weight, grad] + [v for v in state.values() if torch.is_tensor(v)]
        with TransientPeak(existing) as trace:
            out = real(state, grad, step)
        peaks.append(trace.peak)
        return out

    setattr(rule, entry, traced)
    for _ in range(2):  # the start, then a move
        weight.grad = torch.randn(m, n)
        opt.step()
    declared = spec.workspace_bytes(m, n, r, state_bits=32, param_bytes=4, options=options)
    assert max(peaks) <= declared, (peaks, declared)
