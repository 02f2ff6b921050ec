"""The measurement behind `subprof probe`: how much of each gradient's energy a top-r subspace holds, and how fast
such a basis goes stale. Fed one step's gradients at a time; pure torch, no model, so a synthetic stream tests it.

For one projected weight W (m × n) with gradient G, GaLore's side convention (METHODS.md) gives the projected side
d = min(m, n) and the basis P (d × r): right singular vectors when m ≥ n, left ones otherwise. At a sampled step:

- **energy** E(r) = Σ_{i<r} σ_i² / ‖G‖_F² for each candidate r (σ the singular values of G);
- **staleness** at gap k, for a basis P_t kept from step t: s(k) = ‖P_tᵀ G_{t+k}‖² / Σ_{i<r} σ_i(G_{t+k})² — what
  the stale basis captures over what the fresh top-r basis would (Ori's "gradient subspace drift", GaLore's refresh
  interval T);
- **drift** ‖P_tᵀ P_{t+k}‖_F² / r: the overlap of the two fresh bases (1 = same subspace, r/d = unrelated);
- **knee**: how many directions carry more than the average direction's share ‖G‖²/d (Kaiser's rule): for a planted
  rank-k signal over isotropic noise this is k.

Decomposition: exact on small shapes — eigenvalues and eigenvectors of the d × d Gram matrix (GᵀG or GGᵀ) with
`torch.linalg.eigh`, whose eigenvalues are σ² (half the cost of `torch.linalg.svd` on these shapes here) — and
randomized above `exact_max_side` (`torch.svd_lowrank`, Halko et al. 2011, q = r_max + 8, two power iterations),
which sees only the top q values: energies then count Σ_{i<r} σ̂_i², a slight underestimate. Every row says which.

Memory: a basis P_t is kept only at anchor steps and only as long as a pending pair needs it. Pairs for gap k start
at multiples of `stride(k) = every · max(1, round(k / (2·every)))`, so about two anchors per gap are alive at any
time whatever the gap (`ProbeSchedule.max_live_bases`); bases are stored in fp16 (orthonormal columns, entries
below 1: round-off ~1e-3 of each captured share).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch

OVERSAMPLE = 8  # randomized SVD: q = r + 8 (Halko, Martinsson & Tropp 2011, §4)
POWER_ITERATIONS = 2
EXACT_MAX_SIDE = 2048  # exact eigendecomposition up to this smaller side; randomized above
STORE_DTYPE = torch.float16


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbeSchedule:
    """Which steps are decomposed and which (anchor, gap) pairs are measured.

    Energy every `every` steps (step 0 included); a pair (t, t + k) for each gap k at anchors t that are multiples of
    `stride(k)` with t + k < steps."""

    steps: int
    every: int
    gaps: tuple[int, ...]

    def stride(self, gap: int) -> int:
        return self.every * max(1, round(gap / (2 * self.every)))

    def anchor_gaps(self, step: int) -> list[int]:
        """Gaps for which `step` is an anchor."""
        return [k for k in self.gaps if step % self.stride(k) == 0 and step + k < self.steps]

    def pairs_ending(self, step: int) -> list[tuple[int, int]]:
        """(anchor, gap) pairs whose later step is `step`."""
        return [(step - k, k) for k in self.gaps if step - k >= 0 and (step - k) % self.stride(k) == 0]

    def decomposed(self, step: int) -> bool:
        return step % self.every == 0 or bool(self.anchor_gaps(step)) or bool(self.pairs_ending(step))

    def keep_until(self, step: int) -> int:
        """The last step that needs the basis taken at `step` (−1: none)."""
        return max((step + k for k in self.anchor_gaps(step)), default=-1)

    def sampled_steps(self) -> list[int]:
        return [s for s in range(self.steps) if self.decomposed(s)]

    def pair_count(self, gap: int) -> int:
        return len(range(0, self.steps - gap, self.stride(gap)))

    def max_live_bases(self) -> int:
        """The most bases per weight held at once (a basis lives from its anchor to its last pair)."""
        alive: list[int] = []
        most = 0
        for s in range(self.steps):
            alive = [u for u in alive if u >= s]
            until = self.keep_until(s)
            if until >= 0:
                alive.append(until)
            most = max(most, len(alive))
        return most


@dataclass(frozen=True, kw_only=True, slots=True)
class Decomposition:
    """The spectrum and top basis of one gradient on its projected side."""

    sigma_sq: torch.Tensor  # descending, all d values (exact) or the top q (randomized), fp32
    basis: torch.Tensor  # d × r_keep, columns in order of σ, fp32
    total: float  # ‖G‖_F²
    method: str  # "exact" or "randomized"
    side: int  # d

    def energy(self, rank: int) -> float | None:
        """E(r) = Σ_{i<r} σ_i² / ‖G‖² (1 at r ≥ d); None when a randomized spectrum does not reach r."""
        if rank >= self.side:
            return 1.0
        if rank > self.sigma_sq.numel():
            return None
        return float(self.sigma_sq[:rank].sum()) / self.total if self.total > 0 else 0.0

    def knee(self) -> int:
        """Directions carrying more than the mean share ‖G‖²/d (a lower bound when randomized and all q do)."""
        return int((self.sigma_sq > self.total / self.side).sum()) if self.total > 0 else 0


def projected_side(shape: tuple[int, int]) -> int:
    return min(shape)


def right_side(shape: tuple[int, int]) -> bool:
    """P multiplies G from the right (P holds right singular vectors) when m ≥ n."""
    return shape[0] >= shape[1]


def decompose(g: torch.Tensor, keep: int, *, exact_max_side: int = EXACT_MAX_SIDE) -> Decomposition:
    """Spectrum and top-`keep` basis of G (any float dtype; computed in fp32) on its projected side."""
    g = g.float()
    m, n = g.shape
    d = min(m, n)
    keep = min(keep, d)
    total = float(torch.linalg.vector_norm(g).square())
    if d <= exact_max_side:
        gram = g.T @ g if right_side((m, n)) else g @ g.T
        evals, evecs = torch.linalg.eigh(gram)
        return Decomposition(sigma_sq=evals.flip(0).clamp_min(0), basis=evecs[:, d - keep:].flip(1).contiguous(),
                             total=total, method="exact", side=d)
    q = min(d, keep + OVERSAMPLE)
    u, s, v = torch.svd_lowrank(g, q=q, niter=POWER_ITERATIONS)
    basis = (v if right_side((m, n)) else u)[:, :keep].contiguous()
    return Decomposition(sigma_sq=s.square(), basis=basis, total=total, method="randomized", side=d)


def captured_by_columns(basis: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖P[:, :r]ᵀ G‖² for r = 1 … cols(P), as a cumulative sum over P's columns (projected side of G)."""
    g = g.float()
    p = basis.to(g.dtype)
    z = g @ p if right_side(tuple(g.shape)) else p.T @ g
    per_column = z.square().sum(dim=0 if right_side(tuple(g.shape)) else 1)
    return per_column.cumsum(0)


def captured_share(basis: torch.Tensor, g: torch.Tensor) -> float:
    """‖Π G‖² / ‖G‖² for the orthogonal projector Π onto span(P) (P need not be orthonormal: OSD's is not)."""
    q, _ = torch.linalg.qr(basis.float(), mode="reduced")
    total = float(torch.linalg.vector_norm(g.float()).square())
    return float(captured_by_columns(q, g)[-1]) / total if total > 0 else 0.0


@dataclass(kw_only=True, slots=True)
class WeightInfo:
    """One projected weight: its name, layer index, type (q/k/v/o/gate/up/down) and shape."""

    name: str
    layer: int
    type: str
    shape: tuple[int, int]


@dataclass(kw_only=True, slots=True)
class SubspaceProbe:
    """Feeds on each decomposed step's gradients; returns result rows (plain dicts, no run fields).

    `ranks` are the candidate ranks (each weight uses min(r, d)); bases keep max(r < d) columns."""

    schedule: ProbeSchedule
    ranks: tuple[int, ...]
    exact_max_side: int = EXACT_MAX_SIDE
    _bases: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    _until: dict[tuple[str, int], int] = field(default_factory=dict)
    fresh: dict[str, Decomposition] = field(default_factory=dict)  # the latest decomposition per weight
    seconds: float = 0.0  # time spent decomposing and comparing

    def keep_for(self, side: int) -> int:
        below = [r for r in self.ranks if r < side]
        return max(below) if below else 0

    def bytes_per_basis(self, weights: Iterable[WeightInfo]) -> int:
        size = torch.tensor([], dtype=STORE_DTYPE).element_size()
        return sum(min(w.shape) * self.keep_for(min(w.shape)) * size for w in weights)

    def observe(self, step: int, grads: Iterable[tuple[WeightInfo, torch.Tensor]], *,
                skip: set[tuple] | None = None) -> list[dict]:
        """Rows for this step: one `probe_energy` row per weight, one `probe_stale` row per finished pair. Rows
        whose key (`row_key`) is in `skip` are not returned (already written: `--resume`), but the bases they
        leave behind are still kept."""
        import time

        if not self.schedule.decomposed(step):
            return []
        t0 = time.perf_counter()
        rows = []
        pairs = self.schedule.pairs_ending(step)
        until = self.schedule.keep_until(step)
        for info, g in grads:
            d = min(info.shape)
            keep = self.keep_for(d)
            dec = decompose(g, max(keep, 1), exact_max_side=self.exact_max_side)
            self.fresh[info.name] = dec
            energy = {str(r): _round(dec.energy(min(r, d))) for r in self.ranks}
            row = {"kind": "probe_energy", "step": step, **_where(info), "svd": dec.method, "side": d,
                   "grad_sq": dec.total, "energy": energy, "knee": dec.knee()}
            if skip is None or row_key(row) not in skip:
                rows.append(row)
            for anchor, gap in pairs:
                old = self._bases.get((info.name, anchor))
                if old is None or keep == 0:
                    continue
                row = {"kind": "probe_stale", "step": step, "anchor": anchor, "gap": gap, **_where(info),
                       "svd": dec.method, "side": d, **compare(old, dec, g, [r for r in self.ranks if r < d])}
                if skip is None or row_key(row) not in skip:
                    rows.append(row)
            if until >= 0 and keep > 0:
                self._bases[(info.name, step)] = dec.basis.to(STORE_DTYPE)
                self._until[(info.name, step)] = until
        for key in [k for k, u in self._until.items() if u <= step]:
            self._bases.pop(key, None)
            self._until.pop(key, None)
        self.seconds += time.perf_counter() - t0
        return rows

    @property
    def stored_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bases.values())


def compare(old_basis: torch.Tensor, fresh: Decomposition, g: torch.Tensor, ranks: list[int]) -> dict:
    """Staleness, drift and the two captured shares for each rank r < d between a kept basis and this step."""
    stale = captured_by_columns(old_basis, g)
    overlap = old_basis.float().T @ fresh.basis.float()
    out: dict[str, dict[str, float | None]] = {"staleness": {}, "drift": {}, "stale_share": {}, "fresh_share": {}}
    for r in ranks:
        fresh_sq = float(fresh.sigma_sq[:r].sum())
        stale_sq = float(stale[min(r, stale.numel()) - 1])
        key = str(r)
        out["staleness"][key] = _round(stale_sq / fresh_sq) if fresh_sq > 0 else None
        out["drift"][key] = _round(float(overlap[:r, :r].square().sum()) / r)
        out["stale_share"][key] = _round(stale_sq / fresh.total) if fresh.total > 0 else None
        out["fresh_share"][key] = _round(fresh_sq / fresh.total) if fresh.total > 0 else None
    return out


def row_key(row: dict) -> tuple:
    """What identifies a row within one probe run (for `--resume`)."""
    return (row.get("kind"), row.get("step"), row.get("anchor"), row.get("name"))


def _where(info: WeightInfo) -> dict:
    return {"name": info.name, "layer": info.layer, "type": info.type, "m": info.shape[0], "n": info.shape[1]}


def _round(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 6)
