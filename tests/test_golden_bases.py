"""Base optimizers against their references, step by step on identical gradients (CPU, fp32): GaLore + Adafactor
against galore-torch 1.0's `GaLoreAdafactor`, full-rank Adafactor against transformers' `Adafactor` (both in their
own defaults — relative step, parameter scale — and in OSD's external-lr setting), GaLore + Lion against OSD's
`GaLoreLion` and full-rank Lion against lion-pytorch (`reference_steps`). A tall, a wide and a square projected
weight and plain tensors (a norm, a head with bias), refreshes at steps 0, 4 and 8."""

from __future__ import annotations

import warnings

import pytest
import torch

from subprof.optim import build_optimizer, split_parameters
from reference_steps import GaLoreLionReference, lion_pytorch_step
from test_golden_apollo_fira import Model  # the same small model: projected tall/wide/square, a norm, a head

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, GAP, RANK, SCALE = 10, 4, 6, 0.25
# transformers' defaults (ρ = min(1e-2, 1/√t)·max(1e-3, RMS(W))), and OSD's runs (torchrun_main.py, lr given)
ADAFACTOR_SETTINGS = {
    "transformers-defaults": ({"relative_step": True, "scale_parameter": True}, None, 0.0),
    "osd-external-lr": ({}, 3e-3, 0.1),
}


def gradients(model: Model, step: int) -> list[torch.Tensor]:
    fixed, fresh = torch.Generator().manual_seed(99), torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=fixed) + 0.5 * torch.randn(p.shape, generator=fresh)
            for p in model.parameters()]


def train_both(ours: Model, opt, ref_model: Model, ref, *, exact: bool) -> None:
    for step in range(STEPS):
        for model, o in ((ours, opt), (ref_model, ref)):
            for p, g in zip(model.parameters(), gradients(model, step)):
                p.grad = g.clone()
            o.step()
        for (name, p), q in zip(ref_model.named_parameters(), ours.parameters()):
            if exact:
                assert torch.equal(q, p), f"step {step} {name}: not bit-identical"
            else:
                torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=f"step {step} {name}")


def reference_groups(model: Model, low_rank: dict) -> list[dict]:
    projected, plain = split_parameters(model)
    return [{"params": list(projected.values()), **low_rank}, {"params": list(plain.values())}]


@pytest.mark.parametrize("setting", ADAFACTOR_SETTINGS)
def test_galore_adafactor_equals_galore_torch_bit_for_bit(setting):
    import galore_torch

    options, lr, decay = ADAFACTOR_SETTINGS[setting]
    ours, ref_model = Model(), Model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = galore_torch.GaLoreAdafactor(
            reference_groups(ref_model, {"rank": RANK, "update_proj_gap": GAP, "scale": SCALE, "proj_type": "std"}),
            lr=lr, weight_decay=decay, **{"relative_step": False, "scale_parameter": False, **options})
    opt = build_optimizer(ours, "galore", rank=RANK, update_gap=GAP, scale=SCALE, lr=lr or 0.0, weight_decay=decay,
                          base="adafactor", base_options=options)
    train_both(ours, opt, ref_model, ref, exact=True)
    state = opt.state[ours.mlp.weight]  # 24×48, wide: R is 6×48 → row 6, column 48
    assert state["exp_avg_sq_row"].shape == (6,) and state["exp_avg_sq_col"].shape == (48,)
    assert "exp_avg" not in state and "exp_avg_sq" not in state


@pytest.mark.parametrize("setting", ADAFACTOR_SETTINGS)
def test_full_rank_adafactor_equals_transformers_bit_for_bit(setting):
    from transformers.optimization import Adafactor

    options, lr, decay = ADAFACTOR_SETTINGS[setting]
    ours, ref_model = Model(), Model()
    ref = Adafactor(ref_model.parameters(), lr=lr, weight_decay=decay,
                    **{"relative_step": False, "scale_parameter": False, **options})
    opt = build_optimizer(ours, "adamw", lr=lr or 0.0, weight_decay=decay, base="adafactor", base_options=options)
    train_both(ours, opt, ref_model, ref, exact=True)


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_galore_lion_follows_osds_galore_lion(decay):
    """Bit for bit without decay; with it our W ← W − lr·λ·W rounds differently from W·(1 − lr·λ) (1e-7)."""
    ours, ref_model = Model(), Model()
    ref = GaLoreLionReference(reference_groups(ref_model, {"rank": RANK, "update_proj_gap": GAP, "scale": SCALE}),
                              lr=1e-3, weight_decay=decay)
    opt = build_optimizer(ours, "galore", rank=RANK, update_gap=GAP, scale=SCALE, lr=1e-3, weight_decay=decay,
                          base="lion")
    train_both(ours, opt, ref_model, ref, exact=decay == 0.0)
    assert opt.state[ours.attn.weight]["exp_avg"].shape == (48, RANK)  # one moment, on R (48×6: tall)


def test_full_rank_lion_equals_lion_pytorch_without_decay():
    """Step by step against the installed lion-pytorch `Lion` on identical gradients."""
    from lion_pytorch import Lion

    ours, ref_model = Model(), Model()
    opt = build_optimizer(ours, "adamw", lr=1e-3, base="lion")
    ref = Lion(ref_model.parameters(), lr=1e-3, weight_decay=0.0)
    for step in range(STEPS):
        for model in (ours, ref_model):
            for p, g in zip(model.parameters(), gradients(model, step)):
                p.grad = g.clone()
        opt.step()
        ref.step()
        for p, q in zip(ref_model.parameters(), ours.parameters()):
            assert torch.equal(q, p), f"step {step}"
    assert all(set(opt.state[p]) == {"exp_avg", "step"} for p in ours.parameters())


def test_lion_at_8_bits_keeps_one_blockwise_moment_close_to_fp32():
    """8-bit Lion (bitsandbytes' Lion8bit layout: uint8 codes + fp32 absmax per 256 values) stays within the sign
    flips its quantised moment causes: most entries of W move exactly as the fp32 run's."""
    torch.manual_seed(0)
    big = torch.nn.Module()
    big.attn = torch.nn.Linear(96, 320, bias=False)
    runs = {}
    for bits in (32, 8):
        model = torch.nn.Module()
        model.attn = torch.nn.Linear(96, 320, bias=False)
        model.load_state_dict(big.state_dict())
        opt = build_optimizer(model, "galore", rank=16, update_gap=100, lr=1e-3, state_bits=bits, base="lion")
        for step in range(5):
            model.attn.weight.grad = torch.randn(320, 96, generator=torch.Generator().manual_seed(step))
            opt.step()
        runs[bits] = (model.attn.weight.detach().clone(), opt.state[model.attn.weight])
    state = runs[8][1]
    assert state["exp_avg"].dtype == torch.uint8 and state["exp_avg_absmax"].numel() == 320 * 16 // 256
    same = (runs[8][0] == runs[32][0]).float().mean().item()
    assert same > 0.95


@pytest.mark.parametrize("optimizer", ["lion", "adafactor"])
def test_osds_p_optimizer_is_the_base_reference_on_the_online_pca_gradient(optimizer):
    """OSD with P stepped by Lion or Adafactor (the paper's Table 2 P optimizers): P_{t+1} = the reference's step
    (lion-pytorch `update_fn`; transformers' `Adafactor`, relative step and parameter scale off, as OSD's code
    builds it) on ∇L at P_t on G_t with lr η_P = α·η_W, applied before step t+1 projects."""
    from transformers.optimization import Adafactor

    from subprof.methods.osd import OSDRule, oriented

    torch.manual_seed(0)
    lr_w, alpha = 1e-3, 5.0
    rule = OSDRule(rank=6, update_gap=1, projector_optimizer=optimizer)
    state: dict = {}
    ref_p = moment = ref_opt = None
    for t in range(6):
        g = torch.randn(48, 24)
        rule.update_projection(state, g, t, lr=lr_w)
        if t == 0:
            ref_p = torch.nn.Parameter(state["projector"].clone())
            moment = torch.zeros_like(ref_p)
            ref_opt = Adafactor([ref_p], lr=alpha * lr_w, relative_step=False, scale_parameter=False,
                                warmup_init=False)
            continue
        if optimizer == "lion":
            assert torch.equal(state["projector"], ref_p)
        else:
            torch.testing.assert_close(state["projector"], ref_p.detach(), rtol=1e-6, atol=1e-8)
        grad_p = rule.loss_grad(ref_p.detach().float(), oriented(g))
        with torch.no_grad():
            if optimizer == "lion":
                lion_pytorch_step(ref_p, grad_p, moment, lr=alpha * lr_w, wd=0.0)
            else:
                ref_p.grad = grad_p
                ref_opt.step()
    assert "projector_pending" in state
