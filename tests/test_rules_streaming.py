"""Streaming projection rules (OSD, Ori, SubTrack) on CPU: fast forms equal their reference forms, OSD follows
Algorithm 1 (and the authors' code variant) step for step against torch's own Adam/AdamW, and every rule tracks a
slowly rotating planted subspace in a stream of noisy gradients, on tall and wide weights.

The tracking stream: G_t = U_t diag(s) C_t + ν N_t (from the side P projects), U_t = cos(ωt) U_0 + sin(ωt) V_0 (an
orthonormal rank-r basis rotating at ω rad/step, 1.2 rad over the run), C_t and N_t Gaussian. Threshold: over the
last 100 steps, a tracker's mean largest principal angle to U_t must be below that of a fresh SVD of each step's own
gradient (what GaLore would get by refreshing every step, measured on the same stream, ≈ 0.26 rad here) — a
tracker that averages over steps should find the subspace at least as well as one noisy sample does — while the
step-0 basis held fixed ends more than 1 rad away (so passing needs real tracking)."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch

from subprof.methods.spec import basis_shape
from subprof.methods.ori import OriRule, activation_epoch, active_columns, cholesky_qr, oja_step, oja_step_reference
from subprof.methods.osd import (OSDRule, online_pca_grad, online_pca_grad_autograd, online_pca_loss, oriented)
from subprof.methods.rule import orthonormal_columns, top_singular_basis
from subprof.methods.subtrack import SubTrackRule, tangent, tangent_lstsq

SHAPES = [(64, 96), (96, 64)]  # wide (P on the left, m×r) and tall (P on the right, n×r)
RANK, STEPS, OMEGA, NOISE = 4, 400, 0.003, 0.3


pytestmark = pytest.mark.usefixtures("one_thread")


def max_angle(p, u):
    """Largest principal angle (rad) between span(p) (orthonormalised) and the orthonormal u."""
    q = torch.linalg.qr(p.double())[0]
    return float(torch.arccos(torch.linalg.svdvals(q.T @ u.double()).clamp(max=1.0).min()))


def planted_stream(shape, *, rank=RANK, steps=STEPS, omega=OMEGA, noise=NOISE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    m, n = shape
    right = m >= n
    d, k = (n, m) if right else (m, n)
    basis = torch.linalg.qr(torch.randn(d, 2 * rank, generator=gen))[0]
    u0, v0 = basis[:, :rank], basis[:, rank:]
    s = torch.linspace(2.0, 1.0, rank)
    for t in range(steps):
        u = math.cos(omega * t) * u0 + math.sin(omega * t) * v0
        g = u @ (s[:, None] * torch.randn(rank, k, generator=gen)) / math.sqrt(k)
        g += noise * torch.randn(d, k, generator=gen) / math.sqrt(k)
        yield (g.T if right else g).contiguous(), u


def random_grads(shape, count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for _ in range(count)]


def near_orthonormal(d, r, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, r, generator=gen))[0]
    return q + 0.05 * torch.randn(d, r, generator=gen)


# --- fast forms equal reference forms (fp32, 1e-5) ------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ortho_weight", [0.1, 0.0])
def test_osd_analytic_gradient_equals_autograd(shape, ortho_weight):
    g = random_grads(shape, 1)[0]
    p = near_orthonormal(min(shape), 6)
    fast = online_pca_grad(p, oriented(g), ortho_weight=ortho_weight)
    ref = online_pca_grad_autograd(p, oriented(g), ortho_weight=ortho_weight)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def run_side_by_side(rules, grads) -> list[dict]:
    """Each rule's state after updating its projector on the same gradient stream."""
    states = [{} for _ in rules]
    for step, g in enumerate(grads):
        for rule, state in zip(rules, states):
            rule.update_projection(state, g, step)
    return states


@pytest.mark.parametrize("shape", SHAPES)
def test_osd_rule_analytic_and_autograd_forms_give_the_same_projector(shape):
    fast, reference = run_side_by_side([OSDRule(rank=RANK, form=f, lr=1e-3) for f in ("analytic", "autograd")],
                                       random_grads(shape, 20))
    torch.testing.assert_close(fast["projector"], reference["projector"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_ori_fast_step_equals_reference_step(shape):
    g = random_grads(shape, 1)[0]
    p = torch.linalg.qr(torch.randn(min(shape), 6))[0]
    torch.testing.assert_close(oja_step(p, oriented(g), 24.0), oja_step_reference(p, oriented(g), 24.0),
                               atol=1e-5, rtol=1e-5)
    fast, reference = run_side_by_side([OriRule(rank=RANK, form=f) for f in ("fast", "reference")],
                                       random_grads(shape, 30))
    torch.testing.assert_close(fast["projector"], reference["projector"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_subtrack_fast_tangent_equals_least_squares_residual_form(shape):
    g = random_grads(shape, 1)[0]
    p = torch.linalg.qr(torch.randn(min(shape), 6))[0]
    for scale in (6.0, None):  # scale-free and raw
        torch.testing.assert_close(tangent(p, oriented(g), scale=scale), tangent_lstsq(p, oriented(g), scale=scale),
                                   atol=1e-4, rtol=1e-4)
    rules = [SubTrackRule(rank=RANK, update_gap=2, form=f, step_rule="scale_free") for f in ("fast", "lstsq")]
    states = [{}, {}]
    for step, gi in enumerate(random_grads(shape, 12)):
        for rule, state in zip(rules, states):
            rule.update_projection(state, gi, step)
    torch.testing.assert_close(states[0]["projector"], states[1]["projector"], atol=1e-5, rtol=0)


# --- OSD follows Algorithm 1 and the authors' code, step for step ----------------------------------------------------


def osd_loss(p, g, ortho_weight):
    gt = g / torch.linalg.vector_norm(g)
    loss = (p @ (p.T @ gt) - gt).square().sum()
    return loss + ortho_weight * (p.T @ p - torch.eye(p.shape[1])).square().sum()


@pytest.mark.parametrize("shape", SHAPES)
def test_osd_paper_variant_is_adam_on_the_online_pca_loss_with_lr_alpha_times_lr(shape):
    rule, state = OSDRule(rank=RANK, lr=2e-3), {}
    reference, opt = None, None
    for step, g in enumerate(random_grads(shape, 8)):
        rule.update_projection(state, g, step)
        if reference is None:  # P_0 is the SVD of the first gradient, as the authors' code starts; no step at 0
            torch.testing.assert_close(state["projector"], top_singular_basis(g, RANK))
            reference = state["projector"].clone().requires_grad_(True)
            opt = torch.optim.Adam([reference], lr=5 * 2e-3, betas=(0.9, 0.999), eps=1e-8)
            continue
        torch.testing.assert_close(state["projector"], reference.detach(), atol=1e-5, rtol=0)
        opt.zero_grad()
        osd_loss(reference, oriented(g), 0.1).backward()
        opt.step()  # P_{t+1} from G_t: the rule applies it at the start of step t+1


def test_osd_code_variant_is_adamw_without_the_orthogonality_term_from_an_svd_start():
    shape, rule, state = (64, 96), OSDRule(rank=RANK, variant="code", lr=1e-3), {}
    reference, opt = None, None
    for step, g in enumerate(random_grads(shape, 8)):
        rule.update_projection(state, g, step)
        if step == 0:
            torch.testing.assert_close(state["projector"], top_singular_basis(g, RANK))
            reference = state["projector"].clone().requires_grad_(True)
            opt = torch.optim.AdamW([reference], lr=1 / 200, weight_decay=0.01, eps=1e-8)
            continue
        torch.testing.assert_close(state["projector"], reference.detach(), atol=1e-5, rtol=0)
        opt.zero_grad()
        osd_loss(reference, oriented(g), 0.0).backward()
        opt.step()


def test_osd_takes_the_learning_rate_from_the_optimizer_group():
    from subprof.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("mlp", torch.nn.Linear(48, 32, bias=False))
    opt = build_optimizer(model, "osd", rank=RANK, lr=4e-4)
    x = torch.randn(8, 48)
    for step, lr in enumerate((4e-4, 4e-4, 1e-4)):
        for group in opt.param_groups:
            group["lr"] = lr
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        state = opt.state[model.mlp.weight]
        if step:  # no P step at step 0 (P_0 is the SVD of G_0)
            assert state["projector_pending_lr"] == pytest.approx(5 * lr)  # η_P = α·η_W of this very step


def test_osd_code_variant_scales_its_step_by_the_lr_ratio_to_the_first_lr():
    from subprof.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("mlp", torch.nn.Linear(48, 32, bias=False))
    opt = build_optimizer(model, "osd", rank=RANK, lr=2e-3, variant="code")
    x = torch.randn(8, 48)
    for lr, expected in ((2e-3, None), (2e-3, 1 / 200), (1e-3, 0.5 / 200)):
        for group in opt.param_groups:
            group["lr"] = lr
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        assert opt.state[model.mlp.weight].get("projector_pending_lr") == (expected and pytest.approx(expected))


def test_osd_keeps_adams_bias_correction_for_the_weight_step():
    state = {"exp_avg": torch.zeros(4), "projector_pending_lr": 0.0}
    factor = OSDRule(rank=2).step_factor(state, {"lr": 1e-3, "betas": (0.9, 0.999)}, 0)
    assert factor == pytest.approx(math.sqrt(1 - 0.999) / (1 - 0.9))


def test_osd_step_lowers_the_online_pca_loss():
    g = random_grads((64, 96), 1)[0]
    p = near_orthonormal(64, RANK)
    grad = online_pca_grad(p, g, ortho_weight=0.1)
    before = online_pca_loss(p, g, ortho_weight=0.1)
    assert online_pca_loss(p - 1e-2 * grad, g, ortho_weight=0.1) < before


def test_osd_with_sgd_keeps_only_the_pending_gradient():
    rule, state = OSDRule(rank=RANK, projector_optimizer="sgd", lr=1e-2), {}
    for step, g in enumerate(random_grads((64, 96), 4)):
        before = state["projector"].clone() if "projector" in state else None
        rule.update_projection(state, g, step)
        if step >= 2:  # the first P step is taken on G_1 and applied at step 2
            assert not torch.equal(before, state["projector"])
    assert "projector_exp_avg" in state and "projector_exp_avg_sq" not in state


# --- resume, dtypes, degenerate input --------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: OSDRule(rank=RANK, lr=1e-3), lambda: OriRule(rank=RANK),
                                  lambda: SubTrackRule(rank=RANK, update_gap=2)])
def test_a_copied_state_continues_identically_in_a_fresh_rule(make):
    grads = random_grads((96, 64), 10)
    rule, state = make(), {}
    for step, g in enumerate(grads[:5]):
        rule.update_projection(state, g, step)
    saved = copy.deepcopy(state)
    resumed = make()
    for step, g in enumerate(grads[5:], start=5):
        rule.update_projection(state, g, step)
        resumed.update_projection(saved, g, step)
    torch.testing.assert_close(state["projector"], saved["projector"], atol=0, rtol=0)


@pytest.mark.parametrize("make", [lambda: OSDRule(rank=RANK), lambda: OriRule(rank=RANK),
                                  lambda: SubTrackRule(rank=RANK, update_gap=1)])
@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_gradients_keep_a_bf16_projector_of_the_declared_shape(make, shape):
    rule, state = make(), {}
    for step, g in enumerate(random_grads(shape, 4)):
        rule.update_projection(state, g.bfloat16(), step)
    p = state["projector"]
    assert p.dtype == torch.bfloat16 and tuple(p.shape) == basis_shape(*shape, RANK)
    assert torch.isfinite(p.float()).all()


@pytest.mark.parametrize("make", [lambda: OSDRule(rank=RANK), lambda: OriRule(rank=RANK),
                                  lambda: SubTrackRule(rank=RANK, update_gap=1)])
def test_a_zero_gradient_leaves_a_finite_projector(make):
    rule, state = make(), {}
    rule.update_projection(state, torch.randn(64, 96), 0)
    for step in (1, 2):
        rule.update_projection(state, torch.zeros(64, 96), step)
    assert torch.isfinite(state["projector"]).all()


def test_cholesky_qr_matches_householder_and_falls_back_when_rank_deficient():
    y = torch.randn(200, 16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(cholesky_qr(y), orthonormal_columns(y), atol=1e-5, rtol=0)
    y[:, 5] = y[:, 4]
    q = cholesky_qr(y)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.T @ q, torch.eye(16), atol=1e-5, rtol=0)


def test_oja_pp_activates_half_then_three_quarters_then_all_columns():
    assert [active_columns(8, step, 10) for step in (0, 9, 10, 20, 30, 1000)] == [4, 4, 6, 7, 8, 8]
    assert active_columns(1, 0, 10) == 1


@pytest.mark.parametrize("rank,total,share", [(8, 200, 0.1), (128, 10_000, 0.1), (16, 1000, 0.5)])
def test_oja_pp_activation_ends_at_the_stated_share_of_training(rank, total, share):
    epoch = activation_epoch(rank, total, share)
    full = next(step for step in range(total) if active_columns(rank, step, epoch) == rank)
    assert share * total - int(math.log2(rank)) < full <= share * total  # all active just before the share is reached
    assert active_columns(rank, full - 1, epoch) < rank


def test_ori_keeps_inactive_columns_out_of_the_projection():
    """Oja++ from a random start at rank 8 over 200 steps: 4 active columns at step 0, the other 4 zero in P, so the
    projected gradient and Adam's moments are zero there until they join (all 8 from step 20 = 10% of 200)."""
    from subprof.optim import SubspaceAdamW

    weight = torch.nn.Parameter(torch.randn(64, 96))
    opt = SubspaceAdamW([{"params": [weight], "method": "ori", "rank": 8, "update_gap": 1,
                          "method_options": {"total_steps": 200}}], lr=1e-3)
    for step, g in enumerate(random_grads((64, 96), 25)):
        weight.grad = g
        opt.step()
        state = opt.state[weight]
        k = active_columns(8, step, activation_epoch(8, 200, 0.1))
        p = state["projector"]
        assert state["active_columns"] == k
        assert torch.count_nonzero(p[:, k:]) == 0 and torch.count_nonzero(state["exp_avg"][k:]) == 0
        torch.testing.assert_close(p[:, :k].T @ p[:, :k], torch.eye(k), atol=1e-5, rtol=0)
    assert k == 8


@pytest.mark.parametrize("make", [lambda gap: OSDRule(rank=RANK, lr=1e-3, update_gap=gap),
                                  lambda gap: OriRule(rank=RANK, update_gap=gap, oja_pp=False)])
def test_streaming_rules_move_their_projector_only_around_due_steps(make):
    """Every `update_gap` steps: Ori moves P at a due step, OSD the step after it (P_{t+1} from G_t; none at step 0,
    where P is the SVD of G_0)."""
    rule, state, history = make(3), {}, []
    for step, g in enumerate(random_grads((64, 96), 10)):
        rule.update_projection(state, g, step)
        history.append(state["projector"].clone())
    changed = [step for step in range(1, 10) if not torch.equal(history[step], history[step - 1])]
    assert changed == ([4, 7] if isinstance(rule, OSDRule) else [3, 6, 9])


def test_subtrack_moves_the_right_side_subspace():
    """Tall weight (m ≥ n): P is n×r; a gradient whose row space lies outside span(P) must rotate P towards it."""
    gen = torch.Generator().manual_seed(0)
    rule, state = SubTrackRule(rank=2, update_gap=1, step_rule="scale_free"), {}
    basis = torch.linalg.qr(torch.randn(32, 4, generator=gen))[0]
    rule.update_projection(state, torch.randn(80, 2, generator=gen) @ basis[:, :2].T, 0)
    target = math.cos(1.0) * basis[:, :2] + math.sin(1.0) * basis[:, 2:]  # 1 rad away from span(P)
    before = max_angle(state["projector"], target)
    for step in range(1, 9):
        rule.update_projection(state, torch.randn(80, 2, generator=gen) @ target.T, step)
    assert before > 0.9 and max_angle(state["projector"], target) < 0.2 * before


# --- tracking a rotating planted subspace ----------------------------------------------------------------------------

TRACKERS = {  # random starts where the rule offers one: passing must come from tracking, not from the step-0 SVD
    "osd": (lambda: OSDRule(rank=RANK, lr=1e-3, init="random"), 5e-2),  # λ keeps PᵀP ≈ I only approximately
    "osd-sgd": (lambda: OSDRule(rank=RANK, projector_optimizer="sgd", lr=0.1, init="random"), 5e-2),
    "ori": (lambda: OriRule(rank=RANK, oja_pp=False), 1e-3),
    "subtrack": (lambda: SubTrackRule(rank=RANK, update_gap=1, step_rule="scale_free"), 1e-3),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(TRACKERS))
def test_tracks_a_slowly_rotating_planted_subspace(name, shape):
    make, orth_tol = TRACKERS[name]
    rule, state = make(), {}
    errors, svd_errors, worst_orth, first = [], [], 0.0, None
    for step, (g, u) in enumerate(planted_stream(shape)):
        rule.update_projection(state, g, step)
        p = state["projector"]
        first = p.clone() if first is None else first
        errors.append(max_angle(p, u))
        if step >= STEPS - 100:
            svd_errors.append(max_angle(top_singular_basis(g, RANK), u))
            worst_orth = max(worst_orth, float((p.T @ p - torch.eye(RANK)).abs().max()))
    threshold = statistics.mean(svd_errors)
    assert statistics.mean(errors[-100:]) < threshold, (statistics.mean(errors[-100:]), threshold)
    assert max_angle(first, u) > 1.0  # a frozen P would have lost the subspace
    assert worst_orth < orth_tol
