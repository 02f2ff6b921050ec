"""Projection-update timing: how long one update of P takes for each method on a model's real weight shapes, next to
the two-GEMM floor G(GᵀP), and what that costs per optimizer step summed over every projected layer.

What one "update" is, per method (G: a seeded Gaussian m×n gradient in the timed dtype; P: d×r on the side GaLore's
"std" rule projects, d = min(m, n)):
- `svd`: GaLore's refresh, `torch.linalg.svd(G.float(), full_matrices=False)` and the top-r singular vectors.
- `rsvd`: `torch.svd_lowrank(G.float(), q=r, niter=2)` (torch's defaults: Halko et al. 2011 with 2 power iterations).
- `osd` / `osd-autograd`: one online-PCA step of `OSDRule` (pending Adam move of P applied, ∇L at the new P, Adam
  moments of P updated) in the analytic form / the paper's autograd form.
- `ori`: one `OriRule` step with every column active (an Oja step and the thin QR).
- `grasswalk`, `grassjump`, `subtrack`, `sumo`: the rule's `update_projection` at a step where a refresh is due
  (SubTrack: a geodesic step, not its step-0 SVD; SUMO: its SVD refresh). Moments are absent, so moment transfer
  is not part of the time.
- `floor`: G(GᵀP) — two m×n×r GEMMs in the timed dtype, the least any streaming update can do.
Timing: `warmup` untimed calls, then `repeats` timed calls; each call timed by CUDA events (synchronised) on a GPU,
`time.perf_counter` on a CPU. Reported: the median and the spread (max − min) over the repeats.

Per step (`projection_seconds_per_step`): Σ over projected weights of count · t(m, n, r) / gap, where gap = 1 for the
every-step methods (osd, ori) and the refresh interval T otherwise (SVD amortised over T steps). This module is
importable without torch (the planner uses that function); torch loads on the first timing.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from subprof.errors import SubprofError
from subprof.lazy import torch

FLOOR = "floor"
METHODS = ("svd", "rsvd", "osd", "osd-autograd", "ori", "grasswalk", "grassjump", "subtrack", "sumo")
# the registry method whose update gap (and every-step flag) applies to each timed update
SPEC_OF = {"svd": "galore", "rsvd": "galore", "osd": "osd", "osd-autograd": "osd", "ori": "ori",
           "grasswalk": "grasswalk", "grassjump": "grassjump", "subtrack": "subtrack", "sumo": "sumo"}
DTYPES = ("fp32", "bf16")


@dataclass(kw_only=True, slots=True)
class Timing:
    """One method on one shape and rank: seconds per update (median and max − min over `samples`)."""

    method: str
    shape: tuple[int, int]
    rank: int
    samples: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread_s(self) -> float:
        return max(self.samples) - min(self.samples)


def parse_methods(text: str) -> list[str]:
    """`svd,osd,ori` → the timed methods, in the order given; `all` → every method. Unknown names: SubprofError."""
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    if names == ["all"]:
        return list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SubprofError(f"unknown projection method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if not names:
        raise SubprofError(f"--methods is empty; give some of {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def resolve_device(text: str) -> str:
    """`auto` → cuda when a GPU is visible, else cpu; `cuda` without a GPU is a one-line error."""
    text = text.strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SubprofError(f"--device {text}: no CUDA GPU is visible (use --device cpu)")
        return text
    if text != "cpu":
        raise SubprofError(f"--device must be auto, cpu or cuda[:N], got {text!r}")
    return text


def torch_dtype(name: str) -> Any:
    if name not in DTYPES:
        raise SubprofError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return torch.float32 if name == "fp32" else torch.bfloat16


def time_call(fn: Callable[[], Any], *, repeats: int, warmup: int, device: str) -> list[float]:
    """Seconds per call of `fn`: `warmup` untimed calls, then `repeats` timed ones (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        return samples
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def make_update(method: str, grad: Any, rank: int, *, seed: int = 0) -> Callable[[], Any]:
    """A zero-argument callable doing one projection update of `method` on `grad` at `rank` (state prepared)."""
    from subprof.methods.osd import oriented, random_orthonormal
    from subprof.methods.rule import top_singular_basis

    m, n = grad.shape
    if method == FLOOR:
        g = oriented(grad)
        p = random_orthonormal(min(m, n), rank, seed=seed).to(device=grad.device, dtype=grad.dtype)
        return lambda: g @ (g.T @ p)
    if method == "svd":
        return lambda: top_singular_basis(grad, rank)
    if method == "rsvd":
        return lambda: torch.svd_lowrank(grad.float(), q=rank, niter=2)
    rule, step = _rule_for(method, rank)
    state: dict = {}
    rule.update_projection(state, grad, 0)  # creates P (and OSD's pending step)
    return lambda: rule.update_projection(state, grad, step)


def _rule_for(method: str, rank: int) -> tuple[Any, int]:
    """The rule and a step at which its update is due (past Ori's column activation)."""
    if method in ("osd", "osd-autograd"):
        from subprof.methods.osd import OSDRule

        rule = OSDRule(rank=rank, form="analytic" if method == "osd" else "autograd")
        rule.set_lr(1e-3)
        return rule, 1
    if method == "ori":
        from subprof.methods.ori import OriRule

        rule = OriRule(rank=rank)
        return rule, rule.epoch_steps * (rank.bit_length() + 1)
    gap = 200
    if method in ("grasswalk", "grassjump"):
        from subprof.methods.grass import GrassJumpRule, GrassWalkRule

        cls = GrassWalkRule if method == "grasswalk" else GrassJumpRule
        return cls(rank=rank, update_gap=gap), gap
    if method == "subtrack":
        from subprof.methods.subtrack import SubTrackRule

        return SubTrackRule(rank=rank, update_gap=gap), gap
    if method == "sumo":
        from subprof.methods.sumo import SumoRule

        return SumoRule(rank=rank, update_gap=gap), gap
    raise SubprofError(f"unknown projection method {method!r}; known: {', '.join(METHODS)}")


def random_gradient(shape: tuple[int, int], *, dtype: Any, device: str, seed: int = 0) -> Any:
    """A seeded standard-Gaussian m×n gradient (drawn on the CPU in fp32, so every device times the same matrix)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def time_update(method: str, grad: Any, rank: int, *, repeats: int, warmup: int, device: str) -> Timing:
    """Time one method's projection update on `grad` (m×n) at `rank` (≤ min(m, n))."""
    fn = make_update(method, grad, rank)
    samples = time_call(fn, repeats=repeats, warmup=warmup, device=device)
    return Timing(method=method, shape=(int(grad.shape[0]), int(grad.shape[1])), rank=rank, samples=samples)


# --- per optimizer step (torch-free: the planner calls these) -------------------------------------------------------


def update_gap_for(method: str, update_gap: int | None = None) -> int:
    """1 for every-step methods; otherwise `update_gap`, else the registry method's default T."""
    from subprof.methods import get_method

    spec = get_method(SPEC_OF.get(method, method))
    if spec.refresh_every_step:
        return 1
    return update_gap if update_gap is not None else spec.default_update_gap


def projection_seconds_per_step(model: Any, method: str, rank: int, timings: Mapping[tuple[int, int, int], float],
                                *, update_gap: int | None = None) -> float | None:
    """Seconds per optimizer step spent in projection updates of `method` over all projected weights of `model`
    (a `catalog.ModelConfig`): Σ count · t(m, n, min(rank, m, n)) / gap, with `timings[(m, n, r)]` seconds per update
    (e.g. from `timings_from_rows`) and gap from `update_gap_for`. None when a shape's timing is missing."""
    gap = update_gap_for(method, update_gap)
    total = 0.0
    for s in model.linear_shapes():
        key = (s.m, s.n, min(rank, s.m, s.n))
        if key not in timings:
            return None
        total += s.count * timings[key] / gap
    return total


def timings_from_rows(rows: Iterable[dict], method: str, *, device: str | None = None,
                      dtype: str | None = None) -> dict[tuple[int, int, int], float]:
    """{(m, n, r): median seconds} from `proj` result rows (kind "proj", status "ok") of one method; the newest row
    wins when a case was timed more than once. Filter by device kind ("cpu", "cuda") and dtype when given."""
    out: dict[tuple[int, int, int], float] = {}
    for row in rows:
        if row.get("kind") != "proj" or row.get("status") != "ok" or row.get("method") != method:
            continue
        if device is not None and str(row.get("device", "")).split(":")[0] != device:
            continue
        if dtype is not None and row.get("dtype") != dtype:
            continue
        m, n = row["shape"]
        out[(int(m), int(n), int(row["rank"]))] = float(row["median_ms"]) / 1e3
    return out


# --- a whole model: every distinct shape × rank × method, rows as they are produced ---------------------------------


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(device))
    import platform

    return platform.processor() or platform.machine() or "cpu"


def parse_shapes(text: str | None, model: Any) -> list[tuple[int, int]]:
    """`2048x5461,5461x2048` → those of the model's distinct weight shapes (all of them when `text` is None)."""
    shapes = model.distinct_shapes()
    if text is None:
        return shapes
    out = []
    for part in (p.strip().lower().replace("×", "x") for p in text.split(",") if p.strip()):
        try:
            m, n = (int(v) for v in part.split("x"))
        except ValueError:
            raise SubprofError(f"--shapes: {part!r} is not MxN (e.g. 2048x5461)") from None
        if (m, n) not in shapes:
            raise SubprofError(f"--shapes: {m}x{n} is not a weight shape of {model.name} "
                               f"({', '.join(f'{a}x{b}' for a, b in shapes)})")
        out.append((m, n))
    if not out:
        raise SubprofError("--shapes is empty")
    return out


def run_proj(model: Any, ranks: list[int], methods: list[str], *, dtype: str = "fp32", device: str = "cpu",
             repeats: int = 5, warmup: int = 1, update_gap: int | None = None, shapes: list | None = None,
             log: Any = None, progress: Any = None) -> dict:
    """Time `methods` (and the floor) on every distinct weight shape of `model` at every rank.

    Per (shape, rank) the floor is timed first, then `svd` when asked, then the rest, so each row carries its ratios
    from this same run: `svd_over_method` = svd median / method median, `method_over_floor` = method median / floor
    median. Each row goes to `log` (a `results.ResultLog`) the moment it exists. Returns {"rows", "per_step"}: the
    per-step summary has, per method and rank, seconds per optimizer step over all projected layers."""
    from subprof.results import now_iso

    if repeats < 1 or warmup < 0:
        raise SubprofError("--repeats must be ≥ 1 and --warmup ≥ 0")
    if any(r <= 0 for r in ranks):
        raise SubprofError("ranks must be positive")
    tdtype = torch_dtype(dtype)
    order = [FLOOR] + [m for m in ("svd",) if m in methods] + [m for m in methods if m != "svd"]
    held = 2 if "svd" in methods else 1
    common = {"model": model.name, "device": device, "device_name": device_name(device), "dtype": dtype,
              "repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(),
              "torch": str(torch.__version__)}
    rows: list[dict] = []
    for m, n in shapes or model.distinct_shapes():
        grad = random_gradient((m, n), dtype=tdtype, device=device)
        for rank in ranks:
            r = min(rank, m, n)
            medians: dict[str, float] = {}
            pending: list[dict] = []  # the floor and svd rows (first in `order`) wait for each other: both ratios
            for method in order:
                row = {"kind": "proj", "method": method, "shape": [m, n], "rank": r, "requested_rank": rank,
                       **common, "date": now_iso()}
                try:
                    timing = time_update(method, grad, r, repeats=repeats, warmup=warmup, device=device)
                except Exception as exc:  # one failing method must not end the sweep
                    row |= {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300], "median_ms": None,
                            "spread_ms": None}
                else:
                    medians[method] = timing.median_s
                    row |= {"status": "ok", "median_ms": timing.median_s * 1e3, "spread_ms": timing.spread_s * 1e3,
                            "samples_ms": [s * 1e3 for s in timing.samples]}
                pending.append(row)
                if len(pending) < held and not any(g["shape"] == [m, n] and g["rank"] == r for g in rows):
                    continue
                for done in pending:
                    median = medians.get(done["method"]) if done["status"] == "ok" else None
                    done["svd_over_method"] = _ratio(medians.get("svd"), median)
                    done["method_over_floor"] = _ratio(median, medians.get(FLOOR))
                    rows.append(done)
                    if log is not None:
                        log.append(done)
                    if progress is not None:
                        progress.advance(f"{m}×{n} r{r} {done['method']}")
                pending = []
        del grad
    per_step = []
    for method in methods:
        timings = timings_from_rows(rows, method)
        gap = update_gap_for(method, update_gap)
        for rank in ranks:
            seconds = projection_seconds_per_step(model, method, rank, timings, update_gap=gap)
            row = {"kind": "proj_per_step", "model": model.name, "method": method, "rank": rank, "update_gap": gap,
                   "seconds_per_step": seconds, "device": device, "dtype": dtype, "date": now_iso()}
            per_step.append(row)
            if log is not None:
                log.append(row)
    return {"rows": rows, "per_step": per_step}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
