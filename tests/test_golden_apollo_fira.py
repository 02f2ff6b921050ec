"""APOLLO, APOLLO-Mini and Fira against their authors' packages (apollo-torch 1.0.3, fira 1.0.2), step by step on
identical gradients (CPU, fp32): a tall weight (P on the right), a wide one (P on the left), a square one and plain
Adam tensors, with refreshes at steps 0, 4 and 8 and a steady gradient direction, so that the norm-growth limiter
acts. Then what each declares: no stored P for APOLLO, rank 1 for Mini, and the collectives
a sharded weight needs (its norms)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from subprof.methods import get_method
from subprof.methods.apollo import next_seed, random_projection
from subprof.methods.spec import When
from subprof.optim import build_optimizer, split_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, GAP, RANK, LR, DECAY = 10, 4, 6, 3e-3, 0.1


class Model(torch.nn.Module):
    """Projected (names with attn/mlp): 48×24 (tall), 24×48 (wide), 24×24; plain: a norm weight, a head with bias."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = torch.nn.Linear(24, 48, bias=False)
        self.mlp = torch.nn.Linear(48, 24, bias=False)
        self.attn_out = torch.nn.Linear(24, 24, bias=False)
        self.norm = torch.nn.Parameter(torch.ones(24))
        self.head = torch.nn.Linear(24, 3)


def gradients(model: Model, step: int) -> list[torch.Tensor]:
    """A fixed direction plus 30% fresh noise, growing 1.5× per step: Adam's direction of a steady gradient grows
    over the first steps (m/√v: 3.2, 4.3, 5.0, …), so the scaled updates grow and the limiter (γ 1.01) acts."""
    fixed, fresh = torch.Generator().manual_seed(99), torch.Generator().manual_seed(100 + step)
    return [(torch.randn(p.shape, generator=fixed) + 0.3 * torch.randn(p.shape, generator=fresh)) * 1.5**step
            for p in model.parameters()]


def groups(model: Model, low_rank: dict) -> list[dict]:
    """The reference's param groups in our optimizer's order (projected first), so that apollo-torch's seeds (the
    1-based position of each parameter) are the positions ours counts."""
    projected, plain = split_parameters(model)
    return [{"params": list(projected.values()), **low_rank}, {"params": list(plain.values())}]


def train_both(ours: Model, opt, ref_model: Model, ref, check) -> None:
    for step in range(STEPS):
        for model, o in ((ours, opt), (ref_model, ref)):
            for p, g in zip(model.parameters(), gradients(model, step)):
                p.grad = g.clone()
            o.step()
        check(step)


# --- APOLLO and APOLLO-Mini -------------------------------------------------------------------------------------------


def test_the_seed_chain_is_apollo_torchs():
    reference = pytest.importorskip("apollo_torch.random_projector").next_seed

    for seed in (1, 2, 7, 123456789, reference(3)):
        assert next_seed(seed) == reference(seed)


@pytest.mark.parametrize("shape", [(48, 24), (24, 48)], ids=["tall", "wide"])
def test_the_projection_is_apollo_torchs_draw(shape):
    proj = pytest.importorskip("apollo_torch.random_projector").GradientProjector(RANK, seed=5)
    proj.project(torch.randn(*shape), 0)
    ours = random_projection(5, *shape, RANK, dtype=torch.float32, device="cpu")
    stored = ours.T if shape[0] >= shape[1] else ours  # theirs: r×n on the right side
    assert torch.equal(stored, proj.ortho_matrix)


@pytest.mark.parametrize("method,scale_type,rank,scale", [("apollo", "channel", RANK, 1.0),
                                                          ("apollo-mini", "tensor", 1, 128.0)])
def test_apollo_equals_apollo_torch_bit_for_bit(method, scale_type, rank, scale):
    """`APOLLOAdamW` with the authors' settings (channel at rank r with scale 1; tensor at rank 1 with scale 128, our
    α = √128): every weight bit for bit at every step, the moments too, and the limiter's norm."""
    apollo_torch = pytest.importorskip("apollo_torch")
    ours, ref_model = Model(), Model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = apollo_torch.APOLLOAdamW(groups(ref_model, {"rank": rank, "update_proj_gap": GAP, "scale": scale,
                                                          "proj_type": "std", "proj": "random",
                                                          "scale_type": scale_type}), lr=LR, weight_decay=DECAY)
    opt = build_optimizer(ours, method, rank=RANK, update_gap=GAP, scale=math.sqrt(scale), lr=LR,
                          weight_decay=DECAY)

    def check(step):
        for (name, p), q in zip(ours.named_parameters(), ref_model.parameters()):
            assert torch.equal(p, q), f"step {step} {name}"

    train_both(ours, opt, ref_model, ref, check)
    for p, q in zip(ours.parameters(), ref_model.parameters()):
        mine, theirs = opt.state[p], ref.state[q]
        assert torch.equal(mine["exp_avg"], theirs["exp_avg"]) and torch.equal(mine["exp_avg_sq"], theirs["exp_avg_sq"])
        if "scaled_norm" in mine:
            assert torch.equal(mine["scaled_norm"], theirs["scaled_grad"])
            assert next_seed(mine["projector_seed"]) == theirs["projector"].seed  # theirs: already the next one


def test_the_limiter_acts_in_the_golden_run():
    """The golden runs' gradients make the limiter bind: without it the third step is larger (it is exercised)."""
    sizes = {}
    for limit in (1.01, None):
        model = Model()
        opt = build_optimizer(model, "apollo", rank=RANK, update_gap=GAP, lr=LR, growth_limit=limit)
        for step in range(3):
            before = model.attn.weight.detach().clone()
            for p, g in zip(model.parameters(), gradients(model, step)):
                p.grad = g
            opt.step()
        sizes[limit] = float((model.attn.weight.detach() - before).norm())
    assert sizes[1.01] < 0.8 * sizes[None]


def test_the_stored_projector_variant_keeps_p_and_trains_alike():
    """`projector="stored"` (apollo-torch's memory: P kept between refreshes) draws the same P: the same run up to
    the GEMM's order on a contiguous P (measured: equal to 1e-6 relative)."""
    a, b = Model(), Model()
    opt_a = build_optimizer(a, "apollo", rank=RANK, update_gap=GAP, lr=LR)
    opt_b = build_optimizer(b, "apollo", rank=RANK, update_gap=GAP, lr=LR, projector="stored")
    for step in range(6):
        for model, o in ((a, opt_a), (b, opt_b)):
            for p, g in zip(model.parameters(), gradients(model, step)):
                p.grad = g
            o.step()
    assert "projector" not in opt_a.state[a.attn.weight]
    p = opt_b.state[b.attn.weight]["projector"]
    assert p.shape == (24, RANK) and p.is_contiguous()
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_apollo_keeps_no_projection_and_mini_is_rank_one_whatever_rank_is_asked():
    model = Model()
    opt = build_optimizer(model, "apollo-mini", rank=16, update_gap=GAP, lr=LR)
    for p, g in zip(model.parameters(), gradients(model, 0)):
        p.grad = g
    opt.step()
    tall, wide = opt.state[model.attn.weight], opt.state[model.mlp.weight]
    assert tall["exp_avg"].shape == (48, 1) and wide["exp_avg"].shape == (1, 48)
    assert "projector" not in tall and isinstance(tall["projector_seed"], int)
    spec = get_method("apollo-mini")
    assert spec.state_bytes(4096, 11008, 1024, state_bits=32, param_bytes=2) == {"optimizer_states": 2 * 4 * 11008}


def test_sharded_apollo_declares_only_norms_and_no_projection():
    """2 ranks, aligned 11008×4096: channel scaling sums the limiter's ‖E‖² (one fp32); tensor-wise adds ‖N‖², ‖R‖²;
    nothing at a refresh (the seed is the same on every rank)."""
    apollo, mini = get_method("apollo"), get_method("apollo-mini")
    kw = dict(ranks=2, param_bytes=2)
    assert apollo.comm_bytes(11008, 4096, 256, when=When.STEP, **kw) == {"all_reduce": 4}
    assert mini.comm_bytes(11008, 4096, 256, when=When.STEP, **kw) == {"all_reduce": 4 + 8}
    assert apollo.comm_bytes(11008, 4096, 256, when=When.REFRESH, **kw) == {}
    assert apollo.comm_bytes(11008, 4096, 256, when=When.STEP, options={"growth_limit": None}, **kw) == {}
    # crossed (FSDP2's Shard(0) kept for m < n when the ranks do not divide n): R all-reduced, as GaLore's
    assert mini.comm_bytes(512, 1376, 128, ranks=64, when=When.STEP, param_bytes=2) == {"all_reduce": 2 * 1376 + 4}


# --- Fira -------------------------------------------------------------------------------------------------------------


def test_fira_equals_fira_step_by_step():
    """`FiraAdamW` (α 0.25): the same SVD basis bit for bit at every refresh, weights and moments to round-off (Fira
    adds α·PN + E in one update, we add E and then α·PN)."""
    fira = pytest.importorskip("fira")
    ours, ref_model = Model(), Model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fira.FiraAdamW(groups(ref_model, {"rank": RANK, "update_proj_gap": GAP, "alpha": 0.25,
                                                "proj_type": "std"}), lr=LR, weight_decay=DECAY)
    opt = build_optimizer(ours, "fira", rank=RANK, update_gap=GAP, scale=0.25, lr=LR, weight_decay=DECAY)
    projected = {id(p) for p in split_parameters(ours)[0].values()}

    def check(step):
        for (name, p), q in zip(ours.named_parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=f"step {step} {name}")
            if id(p) in projected:
                mine, theirs = opt.state[p]["projector"], ref.state[q]["projector"].ortho_matrix
                assert torch.equal(mine.T if p.shape[0] >= p.shape[1] else mine, theirs), f"step {step} {name}"

    train_both(ours, opt, ref_model, ref, check)
    for p, q in zip(ours.parameters(), ref_model.parameters()):
        torch.testing.assert_close(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"], atol=1e-6, rtol=1e-5)
        if id(p) in projected:
            torch.testing.assert_close(opt.state[p]["recovery_norm"], ref.state[q]["scaling_grad"], rtol=1e-5, atol=0)


def test_fira_reports_recovery_to_the_quality_model():
    from subprof.methods.spec import QualityTraits

    assert get_method("fira").quality_traits() == QualityTraits(recovery=True)
    assert get_method("fira").quality_traits({"recovery": None}) == QualityTraits()
    assert get_method("apollo").subspace == get_method("apollo-mini").subspace == "scaled"


# --- what a step allocates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(512, 128), (128, 512)], ids=["tall", "wide"])
@pytest.mark.parametrize("bits,dtype", [(32, torch.float32), (16, torch.bfloat16)])
@pytest.mark.parametrize("method,options", [("apollo", {}), ("apollo", {"projector": "stored"}), ("apollo-mini", {}),
                                            ("fira", {}), ("fira", {"recovery": None})])
def test_an_ordinary_step_allocates_within_its_declared_step_workspace(method, options, bits, dtype, shape):
    """Traced at the dispatch level (`test_optim_core.TransientPeak`). Fira exactly: N, then R, the residual and
    the fp32 norms along the rank axis alive at once. APOLLO within its bound (its phases — the draw and R, Adam's
    direction, then E = G ⊙ s — are declared together; E dominates)."""
    from test_optim_core import ordinary_step_peak

    m, n = shape
    # the first step creates the moments; the second starts the limiter's history
    peak, declared = ordinary_step_peak(method, shape, bits, dtype, warmup=2, **options)
    if method == "fira":
        assert peak == declared
    else:
        assert m * n * dtype.itemsize < peak <= declared
