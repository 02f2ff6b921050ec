"""Golden one-step references, re-stated in plain torch from the authors' code (not copied from it), for the tests
in test_golden_references.py. Each function names the repository, commit, file and lines it follows; where the code
has a quirk, the function reproduces the quirk and says so. (First written for issue 13 from the notes in
notes/issue13_references.md; a function here is evidence of what the code computes, not a recommendation.)

Repositories (HEAD commits read):
  Fira                     xichen-fy/Fira                         5c28b13408282b3ee65386b110318659412ddad9
  SubTrack(++)             criticalml-uw/SubTrack                 94f2b654e8e52351eb26166dc2c047027aa01143
  GrassWalk/Jump projector saharsamr/StructuredVSRandomizedDP     aee0363b7698cbf23c7749049e2852c0110172fa
  SUMO: no code reachable (github.com/guy120494/SUMO); `sumo_paper_step` follows Algorithm 1 of arXiv 2505.24749.

Storage layouts (all reference projectors, proj_type "std"):
  side "right" (m >= n): p is r x n with orthonormal ROWS; R = G p^T (m x r); back: N p
  side "left"  (m <  n): p is m x r with orthonormal COLUMNS; R = p^T G (r x n); back: p N
`to_columns(p, side)` gives our d x r column-orthonormal convention (d = min(m, n)).
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def side_of(shape) -> str:
    """GaLore/Fira/SubTrack "std" rule: right projection when rows >= cols."""
    return "right" if shape[0] >= shape[1] else "left"


def to_columns(p: torch.Tensor, side: str) -> torch.Tensor:
    """Reference storage -> our d x r column-orthonormal basis."""
    return p.T if side == "right" else p


def ref_project(grad: torch.Tensor, p: torch.Tensor, side: str) -> torch.Tensor:
    return grad @ p.T if side == "right" else p.T @ grad


def ref_project_back(low: torch.Tensor, p: torch.Tensor, side: str, scale: float = 1.0) -> torch.Tensor:
    """`project_back` of the reference projectors: includes the multiplication by scale (alpha)."""
    full = low @ p if side == "right" else p @ low
    return full * scale


def fira_recovery(grad: torch.Tensor, p: torch.Tensor, low_rank_grad: torch.Tensor, low_rank_update: torch.Tensor,
                  alpha: float, prev_norm: Optional[torch.Tensor], gamma: float = 1.01, side: Optional[str] = None):
    """One recovery-scaling evaluation exactly as Fira / SubTrack++ code does it.

    Sources: xichen-fy/Fira@5c28b13 optimizer_torch/fira_adamw.py L123-149 (+ gradient_projection.py L67-90:
    project_back multiplies by alpha); criticalml-uw/SubTrack@94f2b65 low_rank_torch/adamw.py L216-242 (identical
    arithmetic, limit read from group "norm_growth_limit", default 1.01; `--norm_growth_limiter_off` skips it).

    Arguments
      grad            the full m x n gradient G (p.grad, before projection; after clipping if any)
      p               projector in reference storage (right: r x n rows, left: m x r columns)
      low_rank_grad   R = projected gradient (NOT scaled by alpha)
      low_rank_update N = exp_avg / (sqrt(exp_avg_sq) + eps)  -- WITHOUT bias correction (that sits in step_size)
      alpha           the projector's scale (Fira --alpha, SubTrack --low_rank_scale)
      prev_norm       state["scaling_grad"] (a 0-dim tensor) or None on the first step
    Returns (direction, term, new_prev_norm):
      subgrad   = alpha * project_back(R)                      <- NOTE: includes alpha, so the residual below is
      term      = (G - subgrad) * s                               G - alpha P P^T G, not the exact complement
      s         = ||N||_axis / (||R||_axis + 1e-8), axis = 0 if N.shape[0] < N.shape[1] else 1 (chosen from N's
                  shape; it is the rank axis, so s has one entry per row (right side) / per column (left side))
      limiter   : if prev_norm is None -> new_prev = ||term||_F (no limiting on the first step);
                  else lim = max(||term||_F / (prev + 1e-8), gamma) / gamma; term /= lim; new_prev = ||term||_F/lim
                  (the stored value is the norm AFTER limiting)
      direction = alpha * project_back(N) + term
    The caller then does  W <- W - step_size * direction,  step_size = lr * sqrt(1 - b2^t) / (1 - b1^t),
    i.e. the recovery term is multiplied by lr and by Adam's bias-correction factor but NOT again by alpha, and
    decoupled weight decay comes AFTER, on the updated weights: W <- W - lr * wd * W (group lr, no bias factor).
    """
    side = side or side_of(grad.shape)
    n_upd = low_rank_update
    subgrad = ref_project_back(low_rank_grad, p, side, alpha)
    norm_dim = 0 if n_upd.shape[0] < n_upd.shape[1] else 1
    factor = torch.norm(n_upd, dim=norm_dim) / (torch.norm(low_rank_grad, dim=norm_dim) + 1e-8)
    if norm_dim == 1:
        factor = factor.unsqueeze(1)
    term = (grad - subgrad) * factor
    if prev_norm is None:
        new_prev = torch.norm(term)
    else:
        term_norm = torch.norm(term)
        limiter = max(term_norm / (prev_norm + 1e-8), gamma) / gamma
        term = term / limiter
        new_prev = term_norm / limiter
    direction = ref_project_back(n_upd, p, side, alpha) + term
    return direction, term, new_prev


def fira_adamw_step(weight: torch.Tensor, grad: torch.Tensor, p: torch.Tensor, state: dict, *, lr: float,
                    alpha: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                    gamma: float = 1.01, recovery: bool = True, side: Optional[str] = None) -> torch.Tensor:
    """A whole Fira/SubTrack++ AdamW step for one projected weight with a FIXED projector p (no refresh).

    Order (Fira fira_adamw.py L94-164; SubTrack adamw.py L128-257 without the moment rotation):
      R = project(G); state.step += 1; m = b1 m + (1-b1) R; v = b2 v + (1-b2) R^2; N = m / (sqrt(v) + eps)
      step_size = lr sqrt(1-b2^t)/(1-b1^t); direction = fira_recovery(...) (or alpha*project_back(N));
      W <- W - step_size * direction;  then  W <- W - lr*wd*W  (on the updated W).
    `state` keys: step, exp_avg, exp_avg_sq, scaling_grad. Returns the new weight (the input is not modified).
    """
    side = side or side_of(grad.shape)
    b1, b2 = betas
    r = ref_project(grad, p, side)
    if "exp_avg" not in state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(r)
        state["exp_avg_sq"] = torch.zeros_like(r)
    state["step"] += 1
    state["exp_avg"] = state["exp_avg"] * b1 + (1 - b1) * r
    state["exp_avg_sq"] = state["exp_avg_sq"] * b2 + (1 - b2) * r * r
    n_upd = state["exp_avg"] / (state["exp_avg_sq"].sqrt() + eps)
    t = state["step"]
    step_size = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    if recovery:
        direction, _, state["scaling_grad"] = fira_recovery(grad, p, r, n_upd, alpha, state.get("scaling_grad"),
                                                            gamma, side)
    else:
        direction = ref_project_back(n_upd, p, side, alpha)
    new = weight - step_size * direction
    if weight_decay > 0:
        new = new - lr * weight_decay * new
    return new


def subtrackpp_rotate_moments(m: torch.Tensor, v: torch.Tensor, p_old: torch.Tensor, p_new: torch.Tensor,
                              beta2: float, side: str):
    """SubTrack++'s moment rotation exactly as coded (criticalml-uw/SubTrack@94f2b65 low_rank_torch/adamw.py
    L181-214; same arithmetic in adamw8bit.py L66-98, which is otherwise broken).

      left  (R = P^T G, m r x n):  C = P_new^T P_old            (r x r);  m' = C m
                                   v' = (1 - b2) * | (C∘C)(v - m∘m) + (C m)∘(C m) |
      right (R = G P^T, m m x r):  C = P_old P_new^T  (P stored r x n);  m' = m C
                                   v' = (1 - b2) * | (v - m∘m)(C∘C) + (m C)∘(m C) |
    C∘C is ELEMENTWISE (C.square()), |.| elementwise; (1 - b2) multiplies the whole bracket (so with C = I,
    v' = (1 - b2) v: a 1000x shrink of v at b2 = 0.999). No bias correction in the centring v - m^2.
    The code picks the side by `exp_avg.shape[0] == rank` (True -> left). The rotated tensors REPLACE
    state["exp_avg"/"exp_avg_sq"] after this step's Adam update and update direction were already computed,
    so they take effect from the next step (see `subtrackpp_event_schedule`).
    """
    if side == "left":
        c = p_new.T @ p_old
        cm = c @ m
        v_new = (1.0 - beta2) * ((c.square() @ (v - m.square())) + cm.square()).abs()
        return cm, v_new
    c = p_old @ p_new.T
    mc = m @ c
    v_new = (1.0 - beta2) * (((v - m.square()) @ c.square()) + mc.square()).abs()
    return mc, v_new


def subtrack_reference_tangent(grad: torch.Tensor, p: torch.Tensor, side: Optional[str] = None):
    """The SubTrack@94f2b65 tangent (low_rank_torch/low_rank_projector.py L140-165), in the projector's storage.

      right (m >= n, p = B r x n):  W = lstsq(B^T, G^T)^T (m x r), Rs = G - W B, d = -2 W^T Rs (r x n),
                                    tangent = (I_r - B B^T) d          <- B B^T = I_r for orthonormal rows, so the
                                                                          tangent is round-off (~1e-7 of d in fp32)
      left  (m <  n, p = A m x r):  W = lstsq(A, G) (r x n), Rs = G - A W, d = -2 Rs W^T (m x r),
                                    tangent = (I_m - A A^T) d  = -2 (I - A A^T) G G^T A   (correct)
    Returns (tangent, partial_derivative). (The code also upcasts P and G to fp32 first, L141-145.)
    """
    side = side or side_of(grad.shape)
    if side == "right":
        w = torch.linalg.lstsq(p.T, grad.T).solution.T
        residual = grad - w @ p
        d = -2 * (w.T @ residual)
        eye = torch.eye(p.shape[0], dtype=p.dtype)
        return (eye - p @ p.T) @ d, d
    w = torch.linalg.lstsq(p, grad).solution
    residual = grad - p @ w
    d = -2 * (residual @ w.T)
    eye = torch.eye(p.shape[0], dtype=p.dtype)
    return (eye - p @ p.T) @ d, d


def subtrack_fixed_tangent(grad: torch.Tensor, p: torch.Tensor, side: Optional[str] = None) -> torch.Tensor:
    """The later version vendored in saharsamr/StructuredVSRandomizedDP@aee0363
    dpgrape/dpgrape/low_rank_torch/low_rank_projector.py L200-223: right side uses d (I_n - B^T B) (correct);
    left side as SubTrack."""
    side = side or side_of(grad.shape)
    if side == "right":
        _, d = subtrack_reference_tangent(grad, p, "right")
        eye = torch.eye(p.shape[1], dtype=p.dtype)
        return d @ (eye - p.T @ p)
    return subtrack_reference_tangent(grad, p, "left")[0]


def subtrack_reference_geodesic(p: torch.Tensor, tangent: torch.Tensor, step_size: float) -> torch.Tensor:
    """SubTrack@94f2b65 low_rank_projector.py L167-176 (sign as fixed in 94f2b65), applied to p in storage layout on
    BOTH sides: u, s, v = rank-1 SVD of the tangent (U[:, :1], S[:1], Vt^T[:, :1]),
        p_new = (p v cos(eta s) - u sin(eta s)) v^T + p (I - v v^T).
    For the left side (p m x r) this is the Edelman-Arias-Smith geodesic against the tangent. For the right side it
    is applied to the r x n row-basis as if it were a d x r column basis (dimensionally valid, geometrically not the
    Grassmann geodesic of the row space) -- moot in practice because that tangent is ~0.
    `st_step_size_scheduler="iterative_decrease"` would use eta = eta0 / iter (L120-121); default "constant".
    """
    u_all, s_all, vt_all = torch.linalg.svd(tangent, full_matrices=False)
    u, s, v = u_all[:, :1], s_all[:1], vt_all.T[:, :1]
    coeff = torch.cat([torch.cos(step_size * s), torch.sin(-1 * step_size * s)], 0)
    head = (torch.cat([p @ v, u], 1) @ coeff).reshape(p.shape[0], s.shape[0]) @ v.T
    eye = torch.eye(v.shape[0], dtype=p.dtype)
    return head + p @ (eye - v @ v.T)


def structured_dp_geodesic(p: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, step_size: float,
                           side: str) -> torch.Tensor:
    """The geodesic of StructuredVSRandomizedDP@aee0363 low_rank_projector.py L247-264 (rank-1, k = 1 only; the
    file's own adapter notes that k > 1 is shape-buggy). (u, s, v) is the rank-1 SVD of the tangent in storage
    layout (u: rows x 1, v: cols x 1).
      right (p = B r x n, tangent r x n): B' = u (cos(eta s) u^T B - sin(eta s) v^T) + (I_r - u u^T) B
                                          == transpose of the column geodesic for P = B^T with roles of u, v swapped
      left  (p = A m x r):                A' = (A v cos(eta s) - u sin(eta s)) v^T + A (I_r - v v^T)
    """
    c = torch.cat([torch.cos(step_size * s), torch.sin(-1 * step_size * s)], 0)
    if side == "right":
        stacked = torch.cat([u.T @ p, v.T], 0)  # 2 x n
        head = u @ (c @ stacked).reshape(s.shape[0], p.shape[1])
        eye = torch.eye(u.shape[0], dtype=p.dtype)
        return head + (eye - u @ u.T) @ p
    head = (torch.cat([p @ v, u], 1) @ c).reshape(p.shape[0], s.shape[0]) @ v.T
    eye = torch.eye(v.shape[0], dtype=p.dtype)
    return head + p @ (eye - v @ v.T)


def randomized_rank_k_reference(a: torch.Tensor, gen: Optional[torch.Generator], k: int = 1, oversample: int = 8,
                                n_power_iter: int = 0):
    """StructuredVSRandomizedDP@aee0363 low_rank_projector.py L386-415 (Halko-Martinsson-Tropp, no re-orth. in the
    power loop): l = min(k + oversample, min(a.shape)); Omega ~ N(0,1) of (cols x l); Y = A Omega; n_power_iter
    times Y = A (A^T Y); Q = qr(Y); B = Q^T A; Ub, S, Vt = svd(B); U = Q Ub; V = Vt^T. Returns U[:, :k], S[:k],
    V[:, :k] (S a vector of length k for k = 1; the code returns diag(S) for k > 1)."""
    rows, cols = a.shape
    ell = min(k + oversample, min(rows, cols))
    omega = torch.randn(cols, ell, dtype=a.dtype, generator=gen)
    y = a @ omega
    for _ in range(max(0, n_power_iter)):
        y = a @ (a.T @ y)
    q, _ = torch.linalg.qr(y, mode="reduced")
    ub, s, vt = torch.linalg.svd(q.T @ a, full_matrices=False)
    return (q @ ub)[:, :k], s[:k], vt.T[:, :k]


def grasswalk_reference_step(p: torch.Tensor, gen: Optional[torch.Generator], step_size: float,
                             oversample: int = 8, *, side: str, n_power_iter: int = 0,
                             energy_thresh: Optional[float] = None, step_size_tuning: bool = False):
    """One GrassWalk move (random_rank_r=True, update_rank=1) as in StructuredVSRandomizedDP@aee0363
    dpgrape/dpgrape/low_rank_torch/low_rank_projector.py L191-267:
      Z ~ N(0,1) of p's (storage) shape            (code: torch.randn_like(p), i.e. the GLOBAL torch RNG, filled
                                                    in p's MEMORY order -- an SVD output is often column-major, so
                                                    randn_like(p) != randn(p.shape); we use empty_like(p).normal_,
                                                    which is what randn_like does. A generator seeded s reproduces
                                                    torch.manual_seed(s) on the CPU)
      right: Z <- Z - (Z B^T) B      left: Z <- Z - A (A^T Z)          (tangent: remove the in-subspace part)
      optional energy_thresh: Z <- Z / (||Z||_F + 1e-10) * energy_thresh
      u, s, v = randomized rank-1 SVD of Z (oversample 8, 0 power iterations; Omega drawn AFTER Z)
      optional step_size_tuning: s <- s / ||s||_F  (=1 for k = 1: the angle becomes exactly step_size)
      theta = step_size * s; geodesic `structured_dp_geodesic` (P moves by angle theta along -u direction).
    Returns (p_new, theta).
    """
    z = torch.empty_like(p).normal_(generator=gen)  # == torch.randn_like(p) (memory order, keeps p's strides)
    if side == "right":
        z = z - (z @ p.T) @ p
    else:
        z = z - p @ (p.T @ z)
    if energy_thresh is not None:
        z = z / (torch.norm(z, p="fro") + 1e-10) * energy_thresh
    u, s, v = randomized_rank_k_reference(z, gen, 1, oversample, n_power_iter)
    if step_size_tuning:
        s = s / torch.norm(s, p="fro")
    return structured_dp_geodesic(p, u, s, v, step_size, side), step_size * s


def grassjump_reference_draw(d: int, r: int, n_other: int, gen: Optional[torch.Generator], side: str,
                             dtype=torch.float32) -> torch.Tensor:
    """GrassJump's draw (get_random_orthogonal_matrix, L355-365; no_qr=False): Q of a reduced QR (no sign fix).
      right: Z = randn(r, n_cols), Qt = qr(Z^T).Q (n_cols x r), returns Qt^T (r x n_cols)   [n_other = n_cols]
      left : Z = randn(m_rows, r), returns qr(Z).Q (m_rows x r)                              [d = m_rows]
    (In the code the draw is on the CPU and is moved to the weight's device only for non-fp32 gradients.)"""
    if side == "right":
        z = torch.randn(r, n_other, dtype=dtype, generator=gen)
        qt, _ = torch.linalg.qr(z.T, mode="reduced")
        return qt.T
    z = torch.randn(d, r, dtype=dtype, generator=gen)
    q, _ = torch.linalg.qr(z, mode="reduced")
    return q


def sumo_paper_step(weight: torch.Tensor, grad: torch.Tensor, q: torch.Tensor, m: torch.Tensor, *, lr: float,
                    mu: float, weight_decay: float = 0.0, prev_o_norm: Optional[float] = None,
                    gamma: float = 1.1, limiter: bool = False, side: Optional[str] = None):
    """Algorithm 1 Blocks 2-4 of the SUMO paper (read in paper; no code): with Q (d x r columns) fixed,
      G_hat = Q^T G;  M <- mu M + G_hat  (no (1 - mu));  O = U V^T from the SVD of M;
      [Block 3, optional] if ||O|| / ||O_prev|| > gamma: O <- O / ||O|| * gamma ||O_prev||   (gamma = 1.1 in paper)
      W <- W - lr (G - Q (G_hat - O)) - lr * wd * W_old
    i.e. the update is the RAW out-of-subspace gradient G - Q Q^T G (not Fira-scaled) plus Q O; no alpha appears in
    Algorithm 1 (the GLUE tables list a "projection back scale" 4 (r=4) / 2 (r=8)), and the text says updates are
    scaled by sqrt(max(m, n)) following Moonlight -- where exactly is not stated (not applied here).
    Right side: G_hat = G Q, update G - (G_hat - O) Q^T. Returns (new_weight, new_m, ||O||_F)."""
    side = side or ("left" if q.shape[0] == grad.shape[0] and grad.shape[0] < grad.shape[1] else "right")
    g_hat = q.T @ grad if side == "left" else grad @ q
    m = mu * m + g_hat
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    o = u @ vh
    o_norm = float(torch.norm(o))
    if limiter and prev_o_norm is not None and o_norm / prev_o_norm > gamma:
        o = o / o_norm * gamma * prev_o_norm
        o_norm = gamma * prev_o_norm
    inner = q @ (g_hat - o) if side == "left" else (g_hat - o) @ q.T
    new = weight - lr * (grad - inner) - lr * weight_decay * weight
    return new, m, o_norm


def sumo_paper_refresh_moment(m: torch.Tensor, q_old: torch.Tensor, q_new: torch.Tensor, side: str) -> torch.Tensor:
    """Algorithm 1, Block 1.1 (arXiv 2505.24749, NeurIPS version): R = Q_t^T Q_{t-1} (r x r), M <- R M (left, Q d x r
    column basis, M r x n); for the right side (paper: "the projection matrix would multiply the gradient from the
    right") we take M (m x r) <- M R^T. Columns convention here (q d x r), not the GaLore storage."""
    rot = q_new.T @ q_old
    return rot @ m if side == "left" else m @ rot.T


# --- base optimizers (issue 25): Lion as lion-pytorch and OSD's GaLoreLion run it --------------------------------
# kyleliang919/Online-Subspace-Descent e694775980036a62d2019957f075ff2c5c1c68ad: `galore_torch/lion.py` (lion-pytorch's
# `update_fn`, verbatim there) and `galore_torch/galore_lion.py` (GaLoreLion). lion-pytorch itself is not installed;
# these restate those two files.


def lion_pytorch_step(p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, *, lr: float, wd: float,
                      beta1: float = 0.9, beta2: float = 0.99) -> None:
    """lion-pytorch's own `update_fn` (the package, installed by the test extra): decay first, W ← W −
    lr·sign(β₁m + (1−β₁)g), then m ← β₂m + (1−β₂)g."""
    from lion_pytorch.lion_pytorch import update_fn

    update_fn(p, grad, exp_avg, lr, wd, beta1, beta2)


class GaLoreLionReference(torch.optim.Optimizer):
    """OSD's `GaLoreLion.step` (galore_lion.py lines 53–100) with galore-torch 1.0's `GaLoreProjector` ("std", the
    same SVD projector OSD's file builds for proj_type "std"): the sign is taken after the back-projection (which
    multiplies by `scale`), the decay W·(1 − lr·λ) after the update. Groups with "rank" are projected."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        from galore_torch.galore_projector import GaLoreProjector

        for group in self.param_groups:
            for p in (q for q in group["params"] if q.grad is not None):
                grad, lr, wd, (beta1, beta2), state = p.grad, group["lr"], group["weight_decay"], group["betas"], \
                    self.state[p]
                state.setdefault("step", 0)
                if "rank" in group:
                    if "projector" not in state:
                        state["projector"] = GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"],
                                                             scale=group["scale"], proj_type="std")
                    grad = state["projector"].project(grad, state["step"])
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                exp_avg = state["exp_avg"]
                update = exp_avg.clone().mul_(beta1).add(grad, alpha=1 - beta1)
                if "rank" in group:
                    update = state["projector"].project_back(update)
                update = update.sign_()
                p.add_(update, alpha=-lr)
                state["step"] += 1
                exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
                p.data.mul_(1 - lr * wd)
