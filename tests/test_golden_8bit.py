"""8-bit states against the references that install here, step by step on the CPU (bitsandbytes 0.50 runs its
blockwise kernels on the CPU): our plain 8-bit Adam path against `bnb.optim.AdamW8bit`, and GaLore at 8 bits against
galore-torch's `GaLoreAdamW8bit` — the same quantised moments bit for bit, the same weights to round-off.

Hazard (galore-torch 1.0 `adamw8bit.py` with bitsandbytes ≥ 0.45): `GaLoreAdamW8bit.__init__` passes
`percentile_clipping, block_wise` positionally into what is now `max_unorm, skip_zeros`, so `max_unorm = 100`; for a
projected tensor under 4096 values (bitsandbytes' fp32 path) the update is then limited by 100 × the norm of the
zeroed stand-in weight, i.e. to nothing. Every tensor below the 4096-value line in these tests is therefore an
unprojected one (where the limit, 100 × its own norm, never binds); the projected R's hold exactly 4096 values."""

from __future__ import annotations

import warnings

import pytest
import torch

from subprof.optim import SubspaceAdamW, build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, LR, WD = 8, 1e-2, 0.1


class Model(torch.nn.Module):
    """attn: 256×64 (tall, R = 256×16), mlp: 64×256 (wide, R = 16×256) — 4096 values each at rank 16;
    unprojected: an 80×64 table (8-bit) and a 64-value norm weight (fp32 moments)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = torch.nn.Linear(64, 256, bias=False)
        self.mlp = torch.nn.Linear(256, 64, bias=False)
        self.table = torch.nn.Parameter(torch.randn(80, 64) * 0.02)
        self.norm = torch.nn.Parameter(torch.ones(64))


def gradients(model: torch.nn.Module, steps: int) -> list[list[torch.Tensor]]:
    """Seeded synthetic gradients (the same for both optimizers, independent of the weights)."""
    gen = torch.Generator().manual_seed(1)
    return [[torch.randn(p.shape, generator=gen) * 0.1 for p in model.parameters()] for _ in range(steps)]


def step_both(models, optimizers, grads) -> None:
    for model, opt in zip(models, optimizers):
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        opt.step()


def test_8bit_plain_adam_equals_bitsandbytes_adamw8bit_bit_for_bit():
    import bitsandbytes as bnb

    ref_model, model = Model(), Model()
    ref = bnb.optim.AdamW8bit(ref_model.parameters(), lr=LR, weight_decay=WD)
    ours = SubspaceAdamW(model.parameters(), lr=LR, weight_decay=WD, state_bits=8)
    assert ours.param_groups[0]["eps"] == 1e-8  # bitsandbytes' and GaLoreAdamW8bit's eps at 8 bits
    for step, grads in enumerate(gradients(model, STEPS)):
        step_both((ref_model, model), (ref, ours), grads)
        for (name, p), q in zip(ref_model.named_parameters(), model.parameters()):
            assert torch.equal(p, q), f"step {step} {name}"
    for p, q in zip(ref_model.parameters(), model.parameters()):
        r, s = ref.state[p], ours.state[q]
        if p.numel() >= 4096:
            assert s["exp_avg"].dtype == torch.uint8
            assert torch.equal(r["state1"], s["exp_avg"]) and torch.equal(r["absmax2"], s["exp_avg_sq_absmax"])
        else:
            assert torch.equal(r["state1"], s["exp_avg"]) and torch.equal(r["state2"], s["exp_avg_sq"])


def test_galore_8bit_equals_galore_torch_galoreadamw8bit_step_by_step(monkeypatch):
    import galore_torch

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)  # GaLoreAdamW8bit syncs after each tensor
    ref_model, model = Model(), Model()
    projected = [ref_model.attn.weight, ref_model.mlp.weight]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = galore_torch.GaLoreAdamW8bit(
            [{"params": [ref_model.table, ref_model.norm]},
             {"params": projected, "rank": 16, "update_proj_gap": 3, "scale": 0.25, "proj_type": "std"}],
            lr=LR, weight_decay=WD)
    ours = build_optimizer(model, "galore", rank=16, update_gap=3, scale=0.25, lr=LR, weight_decay=WD, state_bits=8)
    names = [n for n, _ in ref_model.named_parameters()]
    for step, grads in enumerate(gradients(model, STEPS)):  # refreshes at steps 0, 3 and 6
        step_both((ref_model, model), (ref, ours), grads)
        for name, p, q in zip(names, ref_model.parameters(), model.parameters()):
            torch.testing.assert_close(q, p, atol=2e-7, rtol=1e-6, msg=f"step {step} {name}")
            r, s = ref.state[p], ours.state[q]
            assert torch.equal(r["state1"], s["exp_avg"]) and torch.equal(r["state2"], s["exp_avg_sq"]), name
    for name, p, q in zip(names, ref_model.parameters(), model.parameters()):
        if name in ("table", "norm"):  # unprojected: the same kernel call, bit for bit
            assert torch.equal(p, q), name
    assert ours.state[model.attn.weight]["exp_avg"].dtype == torch.uint8  # R = 256×16: really 8-bit
