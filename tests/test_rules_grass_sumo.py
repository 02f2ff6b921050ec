"""GrassWalk, GrassJump and SUMO projection rules (CPU, fp32): orthonormality, schedule, seeding, resume, geometry of
the moves, SUMO's orthogonalisation and the moment transfer; then a few real optimizer steps on a small model."""

from __future__ import annotations

import io
import math

import pytest
import torch

from subprof.methods import REGISTRY
from subprof.methods.grass import GrassJumpRule, GrassWalkRule, randomized_rank_k, walk_angles
from subprof.methods.moving import rotate_moments
from subprof.methods.rule import orthonormal_columns, top_singular_basis
from subprof.methods.sumo import SumoRule, orthogonalise, randomized_basis

SHAPES = [(48, 32), (24, 40)]  # tall (P right, n×r) and wide (P left, m×r)
RANDOM_RULES = [GrassJumpRule, GrassWalkRule]


pytestmark = pytest.mark.usefixtures("one_thread")

def grads(shape, count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for _ in range(count)]


def max_principal_angle(a, b):
    """Largest principal angle (rad) between the column spans of orthonormal a and b."""
    cos = torch.linalg.svdvals(a.T.double() @ b.double()).clamp(max=1.0)
    return float(torch.arccos(cos.min()))


def run(rule, shape, steps, seed=0):
    state, history = {}, []
    for step, g in enumerate(grads(shape, steps, seed)):
        rule.update_projection(state, g, step)
        history.append(state["projector"].clone())
    return state, history


@pytest.mark.parametrize("cls", RANDOM_RULES)
@pytest.mark.parametrize("shape", SHAPES)
def test_projector_is_orthonormal_after_every_update(cls, shape):
    rule = cls(rank=6, update_gap=1)
    state = {}
    for step, g in enumerate(grads(shape, 30)):
        rule.update_projection(state, g, step)
        p = state["projector"]
        assert p.shape == (min(shape), 6) and p.dtype == torch.float32
        torch.testing.assert_close(p.T @ p, torch.eye(6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", RANDOM_RULES)
def test_projector_changes_only_when_due(cls):
    _, history = run(cls(rank=4, update_gap=5), (40, 30), 16)
    changed = [step for step in range(1, 16) if not torch.equal(history[step], history[step - 1])]
    assert changed == [5, 10, 15]


@pytest.mark.parametrize("cls", RANDOM_RULES)
def test_same_seed_same_projector_and_different_seeds_differ(cls):
    _, a = run(cls(rank=4, update_gap=2, seed=7), (40, 30), 7)
    _, b = run(cls(rank=4, update_gap=2, seed=7), (40, 30), 7)
    _, c = run(cls(rank=4, update_gap=2, seed=8), (40, 30), 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.allclose(a[-1], c[-1])


def test_weights_get_different_streams():
    rule = GrassJumpRule(rank=4, update_gap=1)
    s1, s2 = {}, {}
    g = torch.randn(40, 30)
    rule.update_projection(s1, g, 0)
    rule.update_projection(s2, g, 0)
    assert max_principal_angle(s1["projector"], s2["projector"]) > 0.5


@pytest.mark.parametrize("cls", RANDOM_RULES)
def test_rng_state_round_trips_through_a_saved_state(cls):
    shape, gs = (40, 30), grads((40, 30), 6)
    rule = cls(rank=4, update_gap=1, seed=3)
    state = {}
    for step in range(3):
        rule.update_projection(state, gs[step], step)
    assert state["rng_state"].dtype == torch.uint8
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = torch.load(buffer)
    # a fresh rule whose own stream counter differs: only the saved generator state can make the draws agree
    fresh = cls(rank=4, update_gap=1, seed=3)
    fresh.update_projection({}, gs[0], 0)
    for step in range(3, 6):
        rule.update_projection(state, gs[step], step)
        fresh.update_projection(resumed, gs[step], step)
        torch.testing.assert_close(resumed["projector"], state["projector"], atol=0, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_grasswalk_with_the_normalised_angle_moves_by_exactly_walk_step(shape):
    rule = GrassWalkRule(rank=6, update_gap=1, walk_step=0.3, angle="normalised")
    _, history = run(rule, shape, 8)
    for old, new in zip(history, history[1:]):
        angle = max_principal_angle(old, new)
        assert 0.3 - 1e-3 < angle < 0.3 + 1e-3  # rank-1 move: exactly one principal angle, equal to walk_step


@pytest.mark.parametrize("shape", SHAPES)
def test_grassjump_jumps_far(shape):
    _, history = run(GrassJumpRule(rank=6, update_gap=1), shape, 6)
    for old, new in zip(history, history[1:]):
        assert max_principal_angle(old, new) > 1.0  # a fresh 6-dim subspace of R^24..32: nearly orthogonal


def test_grasswalk_rank_k_geodesic_length():
    rule = GrassWalkRule(rank=6, update_gap=1, walk_step=0.4, walk_rank=3, angle="normalised")
    _, history = run(rule, (60, 50), 4)
    for old, new in zip(history, history[1:]):
        cos = torch.linalg.svdvals(old.T.double() @ new.double()).clamp(max=1.0)
        assert math.isclose(float(torch.arccos(cos).norm()), 0.4, abs_tol=2e-3)


def test_randomized_rank_k_recovers_a_dominant_direction():
    gen = torch.Generator().manual_seed(0)
    u, v = orthonormal_columns(torch.randn(50, 1)), orthonormal_columns(torch.randn(8, 1))
    a = 10 * u @ v.T + 0.01 * torch.randn(50, 8)
    uk, s, vk = randomized_rank_k(a, 1, gen)
    assert abs(float(uk.T @ u)) > 0.999 and abs(float(vk.T @ v)) > 0.999 and abs(float(s[0]) - 10) < 0.1


def test_walk_step_keeps_every_catalogue_shape_below_a_right_angle():
    """The measurement behind GrassWalk's default η = 0.02 (grass.py): θ = η·σ at the papers' ranks."""
    rows = walk_angles([("tiny", 128, 16), ("60m", 512, 128), ("1b", 2048, 512), ("7b", 4096, 1024)])
    thetas = [row["theta"] for row in rows]
    assert thetas == sorted(thetas) and 0.2 < thetas[0] and thetas[-1] < math.pi / 2
    assert [round(t, 2) for t in thetas] == [0.26, 0.49, 0.94, 1.33]  # as the docstring states


def test_grasswalk_starts_from_the_svd_and_grassjump_from_a_draw():
    g = grads((40, 30), 1)[0]
    walk, jump = {}, {}
    GrassWalkRule(rank=4, update_gap=5).update_projection(walk, g, 0)
    GrassJumpRule(rank=4, update_gap=5).update_projection(jump, g, 0)
    torch.testing.assert_close(walk["projector"], top_singular_basis(g, 4))
    assert max_principal_angle(jump["projector"], top_singular_basis(g, 4)) > 0.5
    random_walk = {}
    GrassWalkRule(rank=4, update_gap=5, init="random").update_projection(random_walk, g, 0)
    assert max_principal_angle(random_walk["projector"], top_singular_basis(g, 4)) > 0.5


@pytest.mark.parametrize("shape", SHAPES)
def test_sumo_randomized_basis_finds_a_dominant_subspace(shape):
    gen = torch.Generator().manual_seed(0)
    d, big = min(shape), max(shape)
    u = orthonormal_columns(torch.randn(d, 4, generator=gen))
    g = u @ (torch.tensor([8.0, 6.0, 5.0, 4.0])[:, None] * torch.randn(4, big, generator=gen)) / math.sqrt(big)
    g = g + 0.05 * torch.randn(d, big, generator=gen) / math.sqrt(big)
    g = g.T.contiguous() if shape[0] >= shape[1] else g
    basis = randomized_basis(g, 4, torch.Generator().manual_seed(1), oversample=10, power_iters=2)
    assert basis.shape == (d, 4) and max_principal_angle(basis, u) < 0.05


@pytest.mark.parametrize("shape", [(5, 40), (40, 5)])
def test_sumo_orthogonalised_moment_is_orthogonal_on_the_small_side(shape):
    o = orthogonalise(torch.randn(*shape))
    small = o @ o.T if shape[0] < shape[1] else o.T @ o
    torch.testing.assert_close(small, torch.eye(5), atol=1e-5, rtol=0)


def test_sumo_orthogonalise_of_zero_is_zero():
    assert torch.count_nonzero(orthogonalise(torch.zeros(4, 30))) == 0


# --- moment transfer -------------------------------------------------------------------------------------------


def signed_permutation(r, seed=0):
    gen = torch.Generator().manual_seed(seed)
    perm = torch.eye(r)[torch.randperm(r, generator=gen)]
    return perm * torch.where(torch.rand(r, generator=gen) < 0.5, -1.0, 1.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_moment_transfer_is_exact_when_the_subspace_is_unchanged(shape):
    """A new basis of the same subspace (P_new = P_old·S, S a signed permutation): the moments in the full space,
    and v up to the same permutation, are unchanged."""
    rule = GrassWalkRule(rank=5, update_gap=1)
    d, big = min(shape), max(shape)
    p_old = orthonormal_columns(torch.randn(d, 5))
    s = signed_permutation(5)
    p_new = p_old @ s
    right = shape[0] >= shape[1]
    m = torch.randn(big, 5) if right else torch.randn(5, big)
    v = m.square() + torch.rand_like(m)
    state = {"projector": p_old.clone(), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    rotate_moments(rule, state, p_old, p_new, shape, second=True)
    m_new, v_new = rule.read_moment(state, "exp_avg"), rule.read_moment(state, "exp_avg_sq")
    if right:  # full-space moment: m Pᵀ
        torch.testing.assert_close(m_new @ p_new.T, m @ p_old.T, atol=1e-5, rtol=0)
        torch.testing.assert_close(v_new, v @ s.abs(), atol=1e-5, rtol=1e-5)
    else:  # P m
        torch.testing.assert_close(p_new @ m_new, p_old @ m, atol=1e-5, rtol=0)
        torch.testing.assert_close(v_new, s.abs().T @ v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_sumo_refresh_keeps_the_moment_when_the_subspace_is_unchanged(shape):
    rule = SumoRule(rank=4, update_gap=2, subspace="exact")
    g = torch.randn(*shape)
    state = {}
    rule.update_projection(state, g, 0)
    rule.low_rank_update(state, rule.project(state, g), {}, 0)
    before = rule.read_moment(state, "exp_avg").clone()
    rule.update_projection(state, g, 2)  # same gradient → same top-r basis → C = I
    torch.testing.assert_close(rule.read_moment(state, "exp_avg"), before, atol=1e-5, rtol=0)


def test_sumo_step_accumulates_momentum_and_returns_orthogonal_update():
    rule = SumoRule(rank=4, update_gap=10, momentum=0.5, update_scale=None, residual=None)
    g1, g2 = torch.randn(20, 30), torch.randn(20, 30)
    state = {}
    rule.update_projection(state, g1, 0)
    r1 = rule.project(state, g1)
    rule.low_rank_update(state, r1, {}, 0)
    rule.update_projection(state, g2, 1)
    r2 = rule.project(state, g2)
    o = rule.low_rank_update(state, r2, {}, 1)
    torch.testing.assert_close(rule.read_moment(state, "exp_avg"), 0.5 * r1 + r2, atol=1e-5, rtol=0)
    torch.testing.assert_close(o, orthogonalise(0.5 * r1 + r2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_recovery_term_lies_outside_the_subspace_and_its_growth_is_limited(shape):
    rule = GrassJumpRule(rank=4, update_gap=1)
    state = {}
    g = torch.randn(*shape)
    rule.update_projection(state, g, 0)
    p, r = state["projector"], rule.project(state, g)
    first = rule.recovery_term(state, g, r, 2 * r)
    inside = first @ p if shape[0] >= shape[1] else p.T @ first
    assert float(inside.abs().max()) < 1e-5
    # N = 2R scales every row/column of the residual by 2
    residual = g - rule.project_back(state, r, shape)
    torch.testing.assert_close(first, 2 * residual, atol=1e-5, rtol=1e-5)
    second = rule.recovery_term(state, 10 * g, 10 * r, 20 * r)
    assert math.isclose(float(second.norm()), 1.01 * float(first.norm()), rel_tol=1e-5)


def test_recovery_is_off_when_asked():
    rule = GrassWalkRule(rank=4, update_gap=1, recovery=False)
    state = {}
    g = torch.randn(30, 20)
    rule.update_projection(state, g, 0)
    assert rule.recovery_term(state, g, rule.project(state, g), rule.project(state, g)) is None
    assert SumoRule(rank=4, update_gap=1, residual=None).recovery_term(state, g, None, None) is None


# --- through the optimizer core ----------------------------------------------------------------------------------

class TinyBlock(torch.nn.Module):
    """Two projected linears (names contain attn / mlp), one tall and one wide, and an unprojected head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.Linear(24, 40, bias=False)  # weight 40×24 (tall)
        self.mlp = torch.nn.Linear(40, 24, bias=False)  # weight 24×40 (wide)
        self.head = torch.nn.Linear(24, 1)

    def forward(self, x):
        return self.head(self.mlp(torch.tanh(self.attn(x))))


LRS = {"grasswalk": 1e-2, "grassjump": 1e-2, "sumo": 5e-2}  # SUMO: RMS 0.2 per step where Adam takes ~1 here


def regression(seed=0):
    torch.manual_seed(seed)
    model = TinyBlock()
    model.head.requires_grad_(False)  # only the projected weights learn: the loss can only fall through the rules
    x = torch.randn(256, 24)
    return model, x, torch.sin(x[:, :3].sum(dim=1, keepdim=True))


def train(model, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


@pytest.mark.parametrize("method", list(LRS))
@pytest.mark.parametrize("state_bits", [32, 16])
def test_a_few_steps_through_build_optimizer_lower_the_loss(method, state_bits):
    from subprof import optim

    model, x, y = regression()
    seed = {"seed": 1} if "seed" in REGISTRY[method].option_defaults else {}
    opt = optim.build_optimizer(model, method, rank=4, update_gap=5, lr=LRS[method], state_bits=state_bits, **seed)
    losses = train(model, opt, x, y, 30)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]
    for weight in (model.attn.weight, model.mlp.weight):
        state = opt.state[weight]
        p = state["projector"].float()
        torch.testing.assert_close(p.T @ p, torch.eye(4), atol=1e-5, rtol=0)
        assert ("exp_avg_sq" in state) == (method != "sumo")


@pytest.mark.parametrize("method", list(LRS))
def test_save_load_continue_equals_an_uninterrupted_run(method):
    from subprof import optim

    def build(model):
        seed = {"seed": 5} if "seed" in REGISTRY[method].option_defaults else {}
        extra = {"residual": "fira"} if method == "sumo" else {"recovery": "reference"}
        return optim.build_optimizer(model, method, rank=4, update_gap=3, lr=LRS[method], **extra, **seed)

    model, x, y = regression()
    opt = build(model)
    train(model, opt, x, y, 4)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    straight = train(model, opt, x, y, 7)  # crosses refreshes at steps 6 and 9

    resumed_model, _, _ = regression(seed=1)  # different init: everything must come from the checkpoint
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_model.load_state_dict(saved["model"])
    resumed_opt = build(resumed_model)
    resumed_opt.load_state_dict(saved["opt"])
    assert train(resumed_model, resumed_opt, x, y, 7) == straight
    torch.testing.assert_close(resumed_model.attn.weight, model.attn.weight, atol=0, rtol=0)
