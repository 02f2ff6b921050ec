"""Fair comparisons: every method at its own learning rate.

Without `--lr`, a burst trains each method at its published default (`MethodSpec.default_lr`, with its source in
`MethodSpec.lr_source`): AdamW 1e-3, GaLore/OSD/Ori/SUMO 1e-2, SubTrack++/GrassWalk/GrassJump 1e-3 — one lr for all
would favour whichever method its value suits (SUMO's orthogonalised step and SubTrack++'s shrunken second moment
want different rates than GaLore's Adam).

`--lr-grid K` trains each configuration at K learning rates around that default (or around `--lr` when given), in
half-decade steps: lr₀ · 10^(j/2) for j = −⌊(K−1)/2⌋ … ⌊K/2⌋ (K = 3: lr₀/√10, lr₀, lr₀·√10), and keeps the one with
the lowest final validation loss per configuration (model, method, rank, gap, state bits, options); a best lr at
either end of the grid is flagged — the optimum may lie beyond it. Rows keep every lr tried; `best_rows` picks.
"""

from __future__ import annotations

import math
from typing import Iterable

GRID_STEP = math.sqrt(10.0)  # half a decade
CONFIG_FIELDS = ("model", "method", "rank", "update_gap", "state_bits", "dtype", "steps", "batch", "seq", "seed",
                 "corpus_key", "method_options")


def lr_grid(center: float, points: int) -> list[float]:
    """`points` learning rates in half-decade steps around `center` (3 significant digits), ascending. A centre on
    the half-decade lattice (1, 3.16, 10, … × 10ⁿ, as printed) gives lattice points, so grids around neighbouring
    centres share their learning rates exactly (and `--resume` finds them)."""
    if points < 1:
        raise ValueError(f"an lr grid needs at least one point, got {points}")
    low = -((points - 1) // 2)
    half_decades = 2 * math.log10(center)
    if abs(half_decades - round(half_decades)) < 1e-2:  # 0.00316 is 10^-2.5 to 3 digits
        return [float(f"{10 ** ((round(half_decades) + j) / 2):.3g}") for j in range(low, low + points)]
    return [float(f"{center * GRID_STEP ** j:.3g}") for j in range(low, low + points)]


def config_key(row: dict) -> tuple:
    """What identifies a configuration apart from its learning rate."""
    return tuple(repr(row.get(f)) for f in CONFIG_FIELDS)


def best_rows(rows: Iterable[dict]) -> list[dict]:
    """Per configuration the row with the lowest final validation loss (finished, finite runs only; a configuration
    whose every lr diverged keeps its first row), in first-seen order, each a copy with `lr_tried` (the lrs and
    their validation losses, None for a failed run) and `lr_at_edge` (the best lr is the grid's smallest or largest
    while the grid has more than one point)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(config_key(r), []).append(r)
    out = []
    for members in groups.values():
        ok = [r for r in members if r.get("status") == "ok" and r.get("val_loss") is not None]
        best = min(ok, key=lambda r: r["val_loss"]) if ok else members[0]
        lrs = sorted({r["lr"] for r in members})
        out.append(dict(best, lr_tried=[[r["lr"], r.get("val_loss")] for r in sorted(members, key=lambda r: r["lr"])],
                        lr_at_edge=len(lrs) > 1 and bool(ok) and best["lr"] in (lrs[0], lrs[-1])))
    return out
