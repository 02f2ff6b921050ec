"""Predicted training throughput: FLOPs over the GPU's dense BF16 TFLOP/s at a stated utilisation, the optimizer
step as a memory-bound pass over weights, gradients and states, and projection refreshes amortised over their gap.

Projection-update rates come from one real H100 measurement (METHODS.md, fp32, median, 1b 2048×5461 rank 128):
a full `torch.linalg.svd` took 236 ms and the two-GEMM floor G(GᵀP) 0.17 ms. Neither runs on BF16 tensor cores,
so they are carried to other GPUs in proportion to memory bandwidth (H100 SXM: 3,350 GB/s) — a rough scaling,
stated in every output; `subprof proj` measures the real numbers on the user's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from typing import Iterable, Mapping

from subprof.catalog import GpuSpec, ModelConfig
from subprof.config import TrainConfig
from subprof.methods import get_method
from subprof.methods.spec import svd_flops, two_gemm_flops
from subprof.plan.calibration import Calibration
from subprof.plan.checkpointing import recompute_flops_per_token
from subprof.plan.memory import state_bytes

H100_BANDWIDTH_GBS = 3350.0
# 1b shape 2048×5461, rank 128, on an H100 (METHODS.md): SVD 236 ms, two-GEMM floor 0.17 ms → FLOP/s
H100_SVD_FLOPS = svd_flops(2048, 5461, 128) / 0.236
H100_GEMM_FP32_FLOPS = two_gemm_flops(2048, 5461, 128) / 0.17e-3
# the optimizer step streams weights, gradients and states; assume 70% of datasheet bandwidth
BANDWIDTH_EFFICIENCY = 0.7


@dataclass(frozen=True, kw_only=True, slots=True)
class Throughput:
    tokens_per_s: float
    step_s: float
    compute_s: float
    optimizer_s: float
    projection_s: float
    utilization: float
    gpu: str

    @property
    def projection_share(self) -> float:
        return self.projection_s / self.step_s if self.step_s else 0.0


def train_flops_per_token(c: TrainConfig) -> float:
    """3 × forward FLOPs (forward + backward) + the forward FLOPs checkpointing repeats in backward
    (`plan.checkpointing.recompute_flops_per_token`: `full` one whole forward of the decoder layers, `every:K` 1/K of
    it, `selective` the matmuls whose output it did not save). The loss kinds cost the same FLOPs (`plan.loss`)."""
    return _flops_per_token(c.model, c.seq, c.checkpointing)


@lru_cache(maxsize=1024)
def _flops_per_token(model: ModelConfig, seq: int, checkpointing: str) -> float:
    """`train_flops_per_token`, which reads the model, the sequence and the checkpointing mode alone (cached: `plan`
    predicts the speed of thousands of configurations at a few such settings)."""
    c = TrainConfig(model=model, seq=seq, checkpointing=checkpointing)
    return 3 * model.forward_flops_per_token(seq) + recompute_flops_per_token(c)


def projection_seconds(c: TrainConfig, gpu: GpuSpec, utilization: float = 0.4, refresh_s: float | None = None,
                       calibration: Calibration | None = None) -> float:
    """Per optimizer step: projection refreshes (`refresh_s` when measured by `subprof proj`, else the rates of
    `refresh_rates`) + projecting G and the update back."""
    svd, gemm = refresh_rates(gpu, calibration)
    refresh = (_refresh_seconds(c.model, c.method, c.rank, c.update_gap, svd, gemm) if refresh_s is None
               else refresh_s)
    return refresh + _project_seconds(c.model, c.method, c.rank, gpu, utilization)


def refresh_rates(gpu: GpuSpec, calibration: Calibration | None = None) -> tuple[float, float]:
    """(SVD FLOP/s, fp32 GEMM FLOP/s) on `gpu`: measured by `subprof calibrate` when the calibration was made on this
    GPU and carries them, else the H100 figures scaled by memory bandwidth."""
    scale = gpu.bandwidth_gbs / H100_BANDWIDTH_GBS
    svd, gemm = H100_SVD_FLOPS * scale, H100_GEMM_FP32_FLOPS * scale
    if calibration is not None and calibration.gpu == gpu.key:
        svd = calibration.svd_flops_per_s or svd
        gemm = calibration.gemm_fp32_flops_per_s or gemm
    return svd, gemm


@lru_cache(maxsize=4096)
def _refresh_seconds(model, method: str, rank: int | None, update_gap: int | None, svd_rate: float,
                     gemm_rate: float) -> float:
    """Σ over projected weights of refresh FLOPs / (rate · gap): methods whose refresh is a decomposition
    (`refresh_cost` "svd") at the SVD rate, streaming and geodesic updates ("gemm") at the fp32 GEMM rate. Per-step
    work on the small r-sized factors (e.g. SUMO's SVD of its moment) is not counted."""
    spec = get_method(method)
    if not spec.project or spec.refresh_cost == "none":
        return 0.0
    rate = svd_rate if spec.refresh_cost == "svd" else gemm_rate
    return sum(s.count * spec.refresh_flops(s.m, s.n, min(rank, s.m, s.n)) / rate / update_gap
               for s in model.linear_shapes())


@lru_cache(maxsize=4096)
def _project_seconds(model, method: str, rank: int | None, gpu: GpuSpec, utilization: float) -> float:
    """Projecting G and the update back: 2 · 2·m·n·r FLOPs per weight, in the training dtype, at the model's
    matmul rate."""
    if not get_method(method).project:
        return 0.0
    matmul_rate = utilization * gpu.bf16_tflops * 1e12
    return sum(s.count * 4.0 * s.m * s.n * min(rank, s.m, s.n) / matmul_rate for s in model.linear_shapes())


def optimizer_seconds(c: TrainConfig, gpu: GpuSpec, states: int | None = None) -> float:
    """Read gradient, read+write weight and states once: (P·b + 2·P·b + 2·states) / bandwidth."""
    states = sum(state_bytes(c).values()) if states is None else states
    moved = 3 * c.model.params * c.param_bytes + 2 * states
    return moved / (gpu.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY)


def predict_throughput(c: TrainConfig, gpu: GpuSpec, *, utilization: float = 0.4, states: int | None = None,
                       refresh_s: float | None = None, calibration: Calibration | None = None) -> Throughput:
    """tokens/s = tokens per optimizer step / (compute + optimizer step + projection updates)."""
    tokens = c.tokens * c.accumulation
    compute = train_flops_per_token(c) * tokens / (utilization * gpu.bf16_tflops * 1e12)
    opt = optimizer_seconds(c, gpu, states)
    proj = projection_seconds(c, gpu, utilization, refresh_s, calibration)
    step = compute + opt + proj
    return Throughput(tokens_per_s=tokens / step, step_s=step, compute_s=compute, optimizer_s=opt,
                      projection_s=proj, utilization=utilization, gpu=gpu.name)


# --- measured projection-update times (`subprof proj` rows) ---------------------------------------------------------


def projection_seconds_per_step(model: ModelConfig, rank: int, timings: Mapping[tuple[int, int, int], float], *,
                                update_gap: int) -> float | None:
    """Seconds per optimizer step spent in projection updates over all projected weights of `model`:
    Σ count · t(m, n, min(rank, m, n)) / update_gap, with `timings[(m, n, r)]` seconds per update (e.g. from
    `timings_from_rows`). None when a shape's timing is missing."""
    total = 0.0
    for s in model.linear_shapes():
        key = (s.m, s.n, min(rank, s.m, s.n))
        if key not in timings:
            return None
        total += s.count * timings[key] / update_gap
    return total


def timings_from_rows(rows: Iterable[dict], method: str, *, device: str | None = None,
                      dtype: str | None = None) -> dict[tuple[int, int, int], float]:
    """{(m, n, r): median seconds} from `proj` result rows (kind "proj", status "ok") of one timed update; the
    newest row wins when a case was timed more than once. Filter by device kind ("cpu", "cuda") and dtype."""
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


def measured_timings(rows: Iterable[dict], method: str) -> dict[tuple[int, int, int], float]:
    """A method's measured update times: its own `proj` rows; for a method whose refresh is a decomposition
    (`refresh_cost` "svd") without rows of its own, the plain `svd` baseline rows."""
    rows = list(rows)
    timings = timings_from_rows(rows, method)
    if not timings and get_method(method).refresh_cost == "svd":
        timings = timings_from_rows(rows, "svd")
    return timings
