"""The torch side of a method: how P is refreshed, and how a gradient is projected and an update projected back.

A rule keeps no per-weight data: everything it keeps lives in the optimizer's per-parameter state dict under the names its
`MethodSpec` declares (`projector`, `projector_exp_avg`, …), so `Optimizer.state_dict()` round-trips it and the
memory model's declaration can be checked against `optimizer.state` byte for byte. Randomized rules keep their
generator state in `state["rng_state"]` (a uint8 tensor, not counted as memory), seeded from `state["stream"]`, the
weight's position in the optimizer (an int the optimizer sets at the weight's first step).

Convention (GaLore "std"): for W of shape (m, n), if m ≥ n then P is n×r and R = G·P (m×r), else P is m×r and
R = Pᵀ·G (r×n). P is stored in the gradient's dtype; the rules compute in fp32 where precision matters.

What the optimizer (`subprof.optim.SubspaceAdamW`) does with a rule, per projected weight W and step t (0-based):

    rule.update_projection(state, G, t)             # every step; the rule decides whether P moves
    R = rule.project(state, G)                      # G's dtype
    U = rule.low_rank_update(state, R, group, t)    # default: Adam on R (below); SUMO overrides
    E = rule.recovery_term(state, G, R, U, scale=α) # default None; Fira-style out-of-subspace term
    f = rule.step_factor(state, group, t)           # default: Adam's bias correction (1 for overriding rules)
    W ← W − lr·f·E                                  # if E is not None; E is not multiplied by α
    W ← W − lr·f·α·project_back(U)                  # α = group["scale"]
    W ← W·(1 − lr·λ)                                # decoupled weight decay after the update, as GaLoreAdamW

Where the weight lives (`ctx`): the optimizer binds each call to a context for the weight being stepped —
`LOCAL` (the whole weight in this process: one process, or DDP after its all-reduce) or, under FSDP2, a sharded
context (`subprof.optim.distributed.ShardContext`) with the same methods. A rule takes the weight's geometry from it
(`self.weight_shape(grad)`: never a shard's shape) and calls it for the only steps that are not local: the
projection and back-projection (`ctx.project`, `ctx.project_back`), sums over ranks (`ctx.sum_`, `ctx.norm`,
`ctx.covariance_product`) and work on the whole gradient (`ctx.whole`: at one owner rank, result broadcast). The
`LOCAL` methods are the single-process code itself, so one process runs exactly what it ran before.

Moments are stored in the format `state_bits` asks for (`subprof.methods.moments`); rules go through
`read_moment` / `write_moment` (never touch `state["exp_avg"]` directly) so that every rule works at 32, 16 and 8
bits.

Options: a rule declares its options and their defaults in the class attribute `defaults` — the one place they are
stated. `MethodSpec.resolve_options` and the rule's constructor both merge given options over them and reject
unknown names, so the memory declaration (which may depend on an option) and the rule never disagree. A rule also
knows its group's Adam betas (`self.betas`; SubTrack++'s moment rotation uses β₂).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

from subprof.methods.bases import update_for
from subprof.methods.lazy import torch
from subprof.methods.spec import basis_shape
from subprof.methods.moments import (adam_correction, adam_direction, init_state_moment, read_state_moment,
                                      write_state_moment)

Tensor = Any  # torch.Tensor, without importing torch at module import


def right_side(shape: tuple[int, ...]) -> bool:
    """True when P multiplies G from the right (m ≥ n)."""
    return shape[0] >= shape[1]


class LocalContext:
    """The whole weight, here: every operation a rule delegates is the single-process computation itself (module
    docstring). `sharded`: the weight is split over ranks; `crossed`: split on P's side, so R is a sum over ranks."""

    sharded = False
    crossed = False

    def shape(self, grad: Tensor) -> tuple[int, ...]:
        return tuple(grad.shape)

    def project(self, grad: Tensor, p: Tensor) -> Tensor:
        """R = G·P (m ≥ n) or Pᵀ·G (m < n), in G's dtype."""
        return grad @ p if right_side(grad.shape) else p.T @ grad

    def project_back(self, low_rank: Tensor, p: Tensor, shape: tuple[int, ...]) -> Tensor:
        """N·Pᵀ (m ≥ n) or P·N (m < n): the full-size update of a weight of `shape`."""
        return low_rank @ p.T if right_side(shape) else p @ low_rank

    def whole(self, grad: Tensor, fn: Any, shape: tuple[int, ...]) -> Tensor:
        """fn(G) of the whole gradient (a `shape`-sized result in G's dtype, e.g. an SVD basis)."""
        return fn(grad)

    def norm(self, t: Tensor) -> Tensor:
        """‖t‖_F of a weight-sized tensor (fp32 accumulation), a 0-d tensor on its device (no host read)."""
        return torch.linalg.vector_norm(t, dtype=torch.float32)

    def sum_(self, t: Tensor) -> Tensor:
        """The sum of `t` over the ranks holding the weight (nothing to add here)."""
        return t


LOCAL = LocalContext()


class ProjectionRule:
    """Base class. Subclasses implement `update_projection`, list their options in `defaults`, and read them from
    `self.options`; most keep the default geometry and the default Adam update."""

    defaults: ClassVar[dict[str, Any]] = {}
    ctx: Any = LOCAL  # the weight being stepped (the optimizer binds it with `acting_on`)

    def __init__(self, *, rank: int, update_gap: int, state_bits: int = 32,
                 betas: tuple[float, float] = (0.9, 0.999), **options: Any) -> None:
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        if update_gap <= 0:
            raise ValueError(f"update_gap must be positive, got {update_gap}")
        if state_bits not in (32, 16, 8):
            raise ValueError(f"state_bits must be 32, 16 or 8, got {state_bits}")
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(self.defaults)) or 'none'}")
        self.rank = rank
        self.update_gap = update_gap
        self.state_bits = state_bits
        self.betas = (float(betas[0]), float(betas[1]))
        self.options = {**self.defaults, **options}

    # --- geometry -------------------------------------------------------------------------------------------
    @contextmanager
    def acting_on(self, ctx: Any) -> Iterator[None]:
        """Bind the context of the weight being stepped for the duration of its update (module docstring)."""
        self.ctx = ctx
        try:
            yield
        finally:
            self.ctx = LOCAL

    def weight_shape(self, grad: Tensor) -> tuple[int, ...]:
        """(m, n) of the whole weight whose gradient (or gradient shard) `grad` is."""
        return self.ctx.shape(grad)

    def effective_rank(self, shape: tuple[int, ...]) -> int:
        return min(self.rank, min(shape))

    def svd_basis(self, grad: Tensor, rank: int) -> Tensor:
        """GaLore's basis of the whole gradient (`top_singular_basis`) — at its owner rank, broadcast, when the
        gradient is sharded — with the column signs of option `svd_signs` where the rule has it ("lapack": as
        `torch.linalg.svd` returns them, galore-torch's; "canonical": `canonical_signs`)."""
        m, n = self.weight_shape(grad)
        canonical = self.options.get("svd_signs", "lapack") == "canonical"

        def basis(g: Tensor) -> Tensor:
            b = top_singular_basis(g, rank)
            return canonical_signs(b) if canonical else b

        return self.ctx.whole(grad, basis, basis_shape(m, n, rank))

    def project(self, state: dict, grad: Tensor) -> Tensor:
        """R = G·P (m ≥ n) or Pᵀ·G (m < n), in G's dtype."""
        return self.ctx.project(grad, state["projector"])

    def project_back(self, state: dict, low_rank: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Full-size update of a weight of `shape` from a low-rank one: N·Pᵀ (m ≥ n) or P·N (m < n)."""
        return self.ctx.project_back(low_rank, state["projector"], shape)

    # --- refresh ----------------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether P is updated at this 0-based step: every `update_gap` steps, step 0 included."""
        return step % self.update_gap == 0

    # the methods that make up a projection update, timed by `burst` (a rule that splits its update across other
    # methods, as OSD does to share GᵀP with the projection, names those instead)
    update_methods: tuple[str, ...] = ("update_projection",)

    def update_projection(self, state: dict, grad: Tensor, step: int) -> None:
        """Create (step 0) or refresh `state["projector"]` (and any projector states) from this step's gradient.
        Called by the optimizer every step before `project`; the rule decides whether anything is due."""
        raise NotImplementedError

    def refresh_and_project(self, state: dict, grad: Tensor, step: int) -> Tensor:
        """What the optimizer calls each step: `update_projection`, then R = `project`. A rule whose P update needs
        the same product as R (OSD: GᵀP) overrides this to compute it once."""
        self.update_projection(state, grad, step)
        return self.project(state, grad)

    # --- moments in any state precision ---------------------------------------------------------------------
    def read_moment(self, state: dict, name: str) -> Tensor:
        """The moment `name` as an fp32 tensor. At 32 bits this IS the stored tensor (in-place changes persist);
        otherwise a fresh fp32 copy (dequantised at 8 bits). Either way, store changes with `write_moment`."""
        return read_state_moment(state, name)

    def write_moment(self, state: dict, name: str, value: Tensor) -> None:
        """Store `value` (any float dtype, the moment's shape) as moment `name` in this rule's `state_bits` format,
        in place when a tensor of that format already exists (no reallocation), creating it otherwise. When it
        creates the entry and `value` already has the stored dtype, the state takes `value` itself (no copy):
        don't modify it afterwards."""
        write_state_moment(state, name, value, self.state_bits)

    def init_moment(self, state: dict, name: str, like: Tensor) -> None:
        """Create moment `name` as zeros of `like`'s shape and device, in this rule's format."""
        init_state_moment(state, name, like, self.state_bits)

    # --- the low-rank step --------------------------------------------------------------------------------------
    def low_rank_update(self, state: dict, r_grad: Tensor, group: dict, step: int) -> Tensor:
        """The update direction U in the subspace (shape of R, R's dtype); the optimizer applies
        −lr·f·α·back(U) with f = `step_factor`. A rule that overrides this gets f = 1 unless it overrides
        `step_factor` too.

        Default: Adam on R as GaLoreAdamW computes it, moments `exp_avg`, `exp_avg_sq` (created here):
            m ← β₁m + (1−β₁)R,  v ← β₂v + (1−β₂)R²,  U = m / (√v + ε),  f = √(1−β₂ᵗ) / (1−β₁ᵗ),  t = step + 1.
        At 8 bits (tensors ≥ 4096 values) the update is bitsandbytes' blockwise 8-bit Adam kernel (fused on CUDA,
        dequantise–update–requantise on CPU), which returns the corrected U = m̂ / (√v̂ + ε) (ε on the
        bias-corrected √v̂, as bitsandbytes' Adam) and f = 1; smaller tensors keep fp32 moments, as bitsandbytes
        does, with its 32-bit kernel's arithmetic U = m / (√v + ε·√(1−β₂ᵗ)) (the same ε placement)."""
        if "exp_avg" not in state:
            self.init_moment(state, "exp_avg", r_grad)
            self.init_moment(state, "exp_avg_sq", r_grad)
        return adam_direction(state, r_grad, betas=group["betas"], eps=group["eps"], t=step + 1, corrected=False,
                              eps_after_correction=self.state_bits == 8)

    def step_factor(self, state: dict, group: dict, step: int) -> float:
        """Multiplier of lr for this step's update (low-rank and recovery terms). Default: Adam's bias correction
        √(1−β₂ᵗ)/(1−β₁ᵗ) for the built-in Adam update at 32/16 bits (applied as GaLoreAdamW applies it, so the two
        agree bit for bit); 1 at 8 bits (the kernel corrects) and for rules that override `low_rank_update`."""
        base = update_for(group.get("base"))
        if base is not None:  # a base optimizer other than Adam (`subprof.methods.bases`) states its own factor
            return base.step_factor(state, group, step)
        if type(self).low_rank_update is not ProjectionRule.low_rank_update:
            return 1.0
        if state["exp_avg"].dtype == torch.uint8:
            return 1.0
        return adam_correction(group["betas"], step + 1)

    def recovery_term(self, state: dict, grad: Tensor, r_grad: Tensor, r_update: Tensor, *,
                      scale: float = 1.0) -> Tensor | None:
        """A full-size term added to the step outside the subspace (Fira-style recovery), or None (default).
        `scale` is the group's α (Fira's residual is G − α·P PᵀG). The optimizer applies W ← W − lr·f·E (not
        multiplied by α again) before the low-rank update."""
        return None


class SeededRule(ProjectionRule):
    """A rule that draws random numbers: one CPU `torch.Generator` per projected weight, seeded from option `seed`
    and the weight's stream — `state["stream"]`, the weight's position in the optimizer (set by `SubspaceAdamW`, so
    per-layer and global stepping draw alike), else the order in which weights first reach the rule. Its state is
    kept in `state["rng_state"]` (uint8, not counted as memory) so that `state_dict()` round-trips and a resumed run
    draws the same numbers. Draws are fp32 on the CPU (the same numbers on any device), moved to where they are
    used."""

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        self.seed = int(self.options.get("seed", 0))
        self._streams = 0  # weights seen so far: each weight gets its own stream

    def generator(self, state: dict) -> Tensor:
        gen = torch.Generator(device="cpu")
        if "rng_state" in state:
            gen.set_state(state["rng_state"].cpu())
            return gen
        stream = state.get("stream")
        if stream is None:
            stream, self._streams = self._streams, self._streams + 1
        gen.manual_seed(self.seed * 1_000_003 + int(stream))
        return gen

    def save_generator(self, state: dict, gen: Tensor) -> None:
        state["rng_state"] = gen.get_state()

    @staticmethod
    def gaussian(gen: Tensor, rows: int, cols: int, device: Any = "cpu") -> Tensor:
        """A rows×cols standard Gaussian from the CPU generator (row-major fill), fp32, moved to `device`."""
        return torch.randn(rows, cols, generator=gen, dtype=torch.float32).to(device)


def orthonormal_columns(a: Tensor) -> Tensor:
    """Q of a thin QR, with signs fixed so that diag(R) ≥ 0 (deterministic across LAPACK builds), row-major (see
    `grass.random_basis`)."""
    q, r = torch.linalg.qr(a, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    return (q * torch.where(signs == 0, torch.ones_like(signs), signs)).contiguous()  # no boolean indexing: no sync


def canonical_signs(basis: Tensor) -> Tensor:
    """Each column flipped so that its largest-magnitude entry is positive. LAPACK's column signs are not a
    continuous function of the input: a 1e-7 change of G (another summation order, e.g. a reduce-scatter) flipped 3
    of 8 columns in our measurement (/work/notes/dist_optim.md §5), and GaLore keeps its moments across refreshes,
    so a flip changes the run. Under this convention the basis follows the subspace, not the LAPACK path."""
    idx = basis.abs().argmax(dim=0, keepdim=True)
    signs = torch.sign(basis.gather(0, idx))
    return (basis * torch.where(signs == 0, torch.ones_like(signs), signs)).contiguous()


def top_singular_basis(grad: Tensor, rank: int) -> Tensor:
    """GaLore's projector: the top-`rank` singular vectors of the projected side of G, from
    `torch.linalg.svd(G.float(), full_matrices=False)`, cast back to G's dtype (galore-torch 1.0, `std`)."""
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    basis = vh[:rank, :].T if right_side(grad.shape) else u[:, :rank]
    return basis.to(grad.dtype).contiguous()


