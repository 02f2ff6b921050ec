"""Projection-update timing: how long one update of P takes for each method on a model's real weight shapes, next to
the two-GEMM floor G(GᵀP), and what that costs per optimizer step summed over every projected layer.

What one "update" is (G: a seeded Gaussian m×n gradient in the timed dtype; P: d×r on the side GaLore's "std" rule
projects, d = min(m, n)):
- the baselines: `floor` = G(GᵀP), two m×n×r GEMMs in the timed dtype, the least any streaming update can do;
  `svd` = `torch.linalg.svd(G.float(), full_matrices=False)` and the top-r singular vectors (GaLore's refresh);
  `rsvd` = `torch.svd_lowrank(G.float(), q=r, niter=2)` (torch's defaults: Halko et al. 2011, 2 power iterations).
- every registered method with a rule: its `update_projection` at the first step after step 0 where an update is
  due (step 0 only creates P), with the method's `timing_options`, and each of its named `timing_variants` (e.g.
  `osd-autograd`, the paper's autograd form). Moments are absent, so moment transfer is not part of the time.
Timing: `warmup` untimed calls, then `repeats` timed calls; each call timed by CUDA events (synchronised) on a GPU,
`time.perf_counter` on a CPU. Reported: the median and the spread (max − min) over the repeats.

Per step (`subprof.plan.throughput.projection_seconds_per_step`): Σ over projected weights of count · t(m, n, r) / gap,
with gap the method's update gap (its default unless `--update-gap` is given).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from subprof.config import check_dtype
from subprof.errors import SubprofError

FLOOR = "floor"
BASELINES = {"floor": None, "svd": "galore", "rsvd": "galore"}  # baseline → the method whose update gap applies
TENSOR_DTYPES = ("fp32", "bf16")


def timed_updates() -> dict[str, tuple[Any, dict]]:
    """Every timed update of a registered method: name → (its MethodSpec, the rule options it is timed with)."""
    from subprof.methods import REGISTRY

    return {name: (spec, options) for spec in REGISTRY.values() for name, options in spec.timed_updates().items()}


def method_names() -> list[str]:
    """What `proj --methods` accepts: the `svd` and `rsvd` baselines and every timed update of a method."""
    return ["svd", "rsvd", *timed_updates()]


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
    """`svd,osd,ori` → the timed updates, in the order given; `all` → every one. Unknown names: SubprofError."""
    known = method_names()
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    if names == ["all"]:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SubprofError(f"unknown projection method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if not names:
        raise SubprofError(f"--methods is empty; give some of {', '.join(known)}")
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
    """The tensor dtype of a timed gradient: fp32 or bf16 (the words `--dtype` uses everywhere)."""
    check_dtype(name, TENSOR_DTYPES)
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
    """A zero-argument callable doing one projection update of `method` (a baseline or a timed update of a
    registered method) on `grad` at `rank`, its state prepared."""
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
    updates = timed_updates()
    if method not in updates:
        raise SubprofError(f"unknown projection method {method!r}; known: {', '.join(method_names())}")
    spec, options = updates[method]
    rule = spec.rule(rank=rank, update_gap=spec.default_update_gap, **options)
    state: dict = {}
    rule.update_projection(state, grad, 0)  # creates P (and any pending step)
    step = spec.default_update_gap  # the first step after 0 where an update is due
    return lambda: rule.update_projection(state, grad, step)


def random_gradient(shape: tuple[int, int], *, dtype: Any, device: str, seed: int = 0) -> Any:
    """A seeded standard-Gaussian m×n gradient (drawn on the CPU in fp32, so every device times the same matrix)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def time_update(method: str, grad: Any, rank: int, *, repeats: int, warmup: int, device: str) -> Timing:
    """Time one method's projection update on `grad` (m×n) at `rank` (≤ min(m, n))."""
    fn = make_update(method, grad, rank)
    samples = time_call(fn, repeats=repeats, warmup=warmup, device=device)
    return Timing(method=method, shape=(int(grad.shape[0]), int(grad.shape[1])), rank=rank, samples=samples)


def update_gap_for(method: str, update_gap: int | None = None) -> int:
    """The gap a timed update is amortised over per step: `update_gap`, else its method's default (baselines: the
    method they stand for)."""
    from subprof.methods import get_method

    if method in BASELINES:
        spec = get_method(BASELINES[method])
    else:
        spec = timed_updates()[method][0]
    return update_gap if update_gap is not None else spec.default_update_gap


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


NOISY_SPREAD = 0.5  # a timing whose max − min exceeds half its median is flagged (`noisy`)


def run_proj(model: Any, ranks: list[int], methods: list[str], *, dtype: str = "fp32", device: str = "cpu",
             repeats: int = 5, warmup: int = 1, update_gap: int | None = None, shapes: list | None = None,
             log: Any = None, progress: Any = None) -> dict:
    """Time `methods` (and the floor) on every distinct weight shape of `model` at every rank.

    Ranks are capped per shape at min(m, n) and each effective rank is timed once. Per (shape, rank) the floor is
    timed first, then `svd` when asked, then the rest, so each row carries its ratios from this same run:
    `svd_over_method` = svd median / method median, `method_over_floor` = method median / floor median. A rank equal
    to the shape's smaller side is `degenerate` (P spans that side: tracking methods have nothing to do; no ratios);
    a timing whose spread exceeds half its median is `noisy`. Each row goes to `log` (a `results.ResultLog`) the
    moment it exists; rows already in a resumed log (same model, device, dtype) are reused, not timed again.
    Returns {"rows", "per_step"}: per method and requested rank, seconds per optimizer step over all projected
    layers."""
    from subprof.plan.throughput import projection_seconds_per_step, timings_from_rows
    from subprof.results import now_iso

    if repeats < 1 or warmup < 0:
        raise SubprofError("--repeats must be ≥ 1 and --warmup ≥ 0")
    if any(r <= 0 for r in ranks):
        raise SubprofError("ranks must be positive")
    tdtype = torch_dtype(dtype)
    order = [FLOOR] + [m for m in ("svd",) if m in methods] + [m for m in methods if m != "svd"]
    common = {"model": model.name, "device": device, "device_name": device_name(device), "dtype": dtype,
              "repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(),
              "torch": str(torch.__version__)}
    earlier = {(tuple(r["shape"]), r["rank"], r["method"]): r for r in (log.existing if log is not None else [])
               if r.get("kind") == "proj" and r.get("status") == "ok" and r.get("model") == model.name
               and r.get("device") == device and r.get("dtype") == dtype}
    rows: list[dict] = []
    for m, n in shapes or model.distinct_shapes():
        grad = random_gradient((m, n), dtype=tdtype, device=device)
        for r in sorted({min(rank, m, n) for rank in ranks}):
            medians: dict[str, float] = {}
            held: list[dict] = []  # the floor row waits for the svd row: it carries both ratios
            for method in order:
                row = earlier.get(((m, n), r, method))
                if row is None:
                    row = _timed_row(method, grad, r, repeats=repeats, warmup=warmup, device=device)
                    row = {"kind": "proj", "method": method, "shape": [m, n], "rank": r, **common,
                           "date": now_iso(), **row, "degenerate": r >= min(m, n)}
                    new = True
                else:
                    row, new = dict(row, resumed=True), False
                if row["status"] == "ok":
                    medians[method] = row["median_ms"]
                held.append((row, new))
                if method == FLOOR and "svd" in methods:
                    continue
                for done, is_new in held:
                    median = medians.get(done["method"]) if done["status"] == "ok" else None
                    ratios = not done["degenerate"]
                    done["svd_over_method"] = _ratio(medians.get("svd"), median) if ratios else None
                    done["method_over_floor"] = _ratio(median, medians.get(FLOOR)) if ratios else None
                    rows.append(done)
                    if log is not None and is_new:
                        log.append(done)
                    if progress is not None:
                        progress.advance(f"{m}×{n} r{r} {done['method']}")
                held = []
        del grad
    per_step = []
    for method in methods:
        timings = timings_from_rows(rows, method)
        gap = update_gap_for(method, update_gap)
        for rank in ranks:
            seconds = projection_seconds_per_step(model, rank, timings, update_gap=gap)
            row = {"kind": "proj_per_step", "model": model.name, "method": method, "rank": rank, "update_gap": gap,
                   "seconds_per_step": seconds, "device": device, "dtype": dtype, "date": now_iso()}
            per_step.append(row)
            if log is not None:
                log.append(row)
    return {"rows": rows, "per_step": per_step}


def _timed_row(method: str, grad: Any, rank: int, *, repeats: int, warmup: int, device: str) -> dict:
    """The measured fields of one row: median and spread in ms (and the samples), or the error."""
    try:
        timing = time_update(method, grad, rank, repeats=repeats, warmup=warmup, device=device)
    except Exception as exc:  # one failing method must not end the sweep
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300], "median_ms": None,
                "spread_ms": None}
    median, spread = timing.median_s * 1e3, timing.spread_s * 1e3
    return {"status": "ok", "median_ms": median, "spread_ms": spread, "samples_ms": [t * 1e3 for t in timing.samples],
            "noisy": spread > NOISY_SPREAD * median}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
