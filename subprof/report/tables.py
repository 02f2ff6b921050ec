"""The planned tables of a procurement report, as pandas DataFrames: one `plan` per model × GPU (the same search as
`subprof plan`, with the GPU's driver-reported memory as budget), and from those plans the fit matrix, the memory
breakdown per method at its recommended configuration, the hours and cost of a token budget (tokens / predicted
tokens/s × catalogue or user price) and the GPU figures used. Nothing here is measured: every number comes from
`subprof.plan`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Callable

import pandas as pd

from subprof.catalog import Budget, GpuSpec, ModelConfig
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import REGISTRY
from subprof.methods.spec import MethodSpec
from subprof.plan.calibration import Calibration, calibration_for
from subprof.plan.evidence import QualityModel
from subprof.plan.memory import Estimate, estimate
from subprof.plan.planner import Candidate, Plan, PlanRequest, plan, ranks_for
from subprof.report.words import short_config

GIB = 2**30
FIT_CLASSES = ("nothing fits", "low-rank only", "full-rank AdamW fits")


@dataclass(kw_only=True, slots=True)
class ReportRequest:
    """What the report covers. `prices` overrides catalogue USD/h per GPU key."""

    models: list[ModelConfig]
    gpus: list[GpuSpec]
    methods: list[tuple[MethodSpec, int | None]]
    seq: int = 256
    dtype: str = "bf16"
    tokens: int = 10**10
    margin: float = 0.05
    utilization: float = 0.4
    prices: dict[str, float] = field(default_factory=dict)
    bench_rows: list[dict] = field(default_factory=list)
    proj_rows: list[dict] = field(default_factory=list)
    burst_rows: list[dict] = field(default_factory=list)
    probe_rows: list[dict] = field(default_factory=list)
    evidence: QualityModel | None = None  # quality for every cell's plan (`--probe`); None: published results
    gpus_per_node: list[int] = field(default_factory=lambda: [1])  # the GPU-count matrix (report/scaling.py)
    nodes: list[int] = field(default_factory=lambda: [1])
    strategy: str = "auto"
    days: float | None = None
    # `--calibration FILE` records, each for the catalogue GPU it was measured on; other GPUs take their newest
    # record found, else the default (`plan.calibration.calibration_for`)
    calibrations: list[Calibration] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.models:
            raise SubprofError("--models is empty; give e.g. 1b,7b")
        if not self.gpus:
            raise SubprofError("--gpus is empty; give e.g. 4090,a100-80gb or all")
        if self.tokens <= 0:
            raise SubprofError(f"--tokens must be positive, got {self.tokens}")
        if any(g < 1 for g in self.gpus_per_node) or any(n < 1 for n in self.nodes) or not self.gpus_per_node \
                or not self.nodes:
            raise SubprofError("--gpus-per-node and --nodes take counts of at least 1, e.g. 1,2,4,8")
        if self.days is not None and not (self.days > 0 and math.isfinite(self.days)):
            raise SubprofError(f"--days must be a positive number of days, got {self.days}")
        for key, usd in self.prices.items():
            if not (usd > 0 and math.isfinite(usd)):
                raise SubprofError(f"--price {key}={usd}: a price must be a positive number of USD per hour")
        keys = {g.key for g in self.gpus}
        for c in self.calibrations:
            if c.gpu not in keys:
                raise SubprofError(f"--calibration {c.source}: measured on {c.gpu or 'no catalogue GPU'}, which is not "
                                   f"among --gpus ({', '.join(sorted(keys))})")
        if len({c.gpu for c in self.calibrations}) < len(self.calibrations):
            raise SubprofError("--calibration: two records for one GPU; give one per GPU")

    def calibration(self, gpu: GpuSpec) -> Calibration:
        """The calibration `gpu`'s memory figures use: its `--calibration` record, else `calibration_for`."""
        return next((c for c in self.calibrations if c.gpu == gpu.key), None) or calibration_for(gpu.key)

    @property
    def multi_gpu(self) -> bool:
        """Whether the report has the GPU-count matrix (more than one GPU anywhere, or a deadline)."""
        return self.gpus_per_node != [1] or self.nodes != [1] or self.days is not None

    def price(self, gpu: GpuSpec) -> tuple[float, str]:
        """USD per GPU-hour and where it came from."""
        if gpu.key in self.prices:
            return self.prices[gpu.key], "--price"
        return gpu.price_per_hour, gpu.sources.get("price", "catalogue (no source given)")


@dataclass(kw_only=True, slots=True)
class Cell:
    model: ModelConfig
    gpu: GpuSpec
    plan: Plan


def plan_cells(req: ReportRequest, on_cell: Callable[[str], None] | None = None) -> list[Cell]:
    """One `plan` per model × GPU: the GPU's full memory as budget, its TFLOP/s and bandwidth for tokens/s."""
    cells = []
    for model in req.models:
        for gpu in req.gpus:
            budget = Budget(gpu.memory_bytes, f"{gpu.name}: {gpu.memory_bytes / GIB:.2f} GiB", gpu)
            result = plan(PlanRequest(model=model, budget=budget, methods=req.methods, seq=req.seq, dtype=req.dtype,
                                      margin=req.margin, gpu=gpu, utilization=req.utilization,
                                      evidence=req.evidence, calibration=req.calibration(gpu)))
            cells.append(Cell(model=model, gpu=gpu, plan=result))
            if on_cell is not None:
                on_cell(f"{model.name} on {gpu.name}")
    return cells


def _max_lowrank_rank(p: Plan) -> int | None:
    ranks = [c.config.rank for c in p.candidates if c.config.spec.project]
    return max(ranks) if ranks else None


def quality_cost(p: Plan, cand: Candidate) -> float:
    """Predicted quality of the same configuration trained full rank minus the candidate's, on the scale of the
    plan's evidence (`QualityModel.unit`: nats of predicted validation-loss gap under the published prior, share of
    gradient energy under a probe); 0 for a full-rank candidate."""
    if not cand.config.spec.project:
        return 0.0
    full = next(name for name, spec in REGISTRY.items() if not spec.project)
    ref = replace(cand.config, method=full, rank=None, update_gap=None, method_options={})
    return p.request.evidence.quality(ref) - cand.quality


def _fit_class(p: Plan) -> int:
    """2: full-rank AdamW itself fits (full rank with Lion or Adafactor does not count), 1: something fits."""
    if any(not c.config.spec.project and c.config.base == "adamw" for c in p.candidates):
        return 2
    return 1 if p.candidates else 0


def fit_matrix(cells: list[Cell]) -> pd.DataFrame:
    """One row per model × GPU: the recommended configuration, its peaks against usable memory, tokens/s."""
    rows = []
    for cell in cells:
        p, rec = cell.plan, cell.plan.recommendation
        row = {"model": cell.model.name, "gpu": cell.gpu.key, "gpu_name": cell.gpu.name,
               "gpu_memory_label": cell.gpu.memory_label, "gpu_memory_bytes": cell.gpu.memory_bytes,
               "usable_bytes": p.request.usable_bytes, "fit": FIT_CLASSES[_fit_class(p)],
               "max_lowrank_rank": _max_lowrank_rank(p), "methods_fitting": ",".join(p.best_per_method)}
        adamw = p.best_per_method.get("adamw")
        row["adamw_config"] = adamw.config.label() if adamw else None
        row["adamw_batch"] = adamw.config.batch if adamw else None
        if rec is not None:
            c = rec.config
            row.update(config=rec.describe(), short_config=short_config(c), method=c.method, rank=c.rank,
                       update_gap=c.update_gap, state_bits=c.state_bits, layerwise=c.layerwise,
                       checkpointing=c.checkpointing, batch=c.batch, accumulation=c.accumulation,
                       sequences_per_step=rec.sequences_per_step, requested_sequences=rec.requested_sequences,
                       keeps_requested_batch=rec.keeps_requested_batch, quality=rec.quality,
                       quality_cost=quality_cost(p, rec),
                       estimated_peak_allocated_bytes=rec.estimate.peak_allocated_bytes,
                       device_used_bytes=rec.estimate.device_used_bytes,
                       tokens_per_s=round(rec.throughput.tokens_per_s, 1))
        else:
            row.update(config="nothing fits", short_config=None, method=None, rank=None, update_gap=None,
                       state_bits=None, layerwise=None, checkpointing=None, batch=None, accumulation=None,
                       sequences_per_step=None, requested_sequences=None, keeps_requested_batch=None, quality=None,
                       quality_cost=None,
                       estimated_peak_allocated_bytes=None,
                       device_used_bytes=None, tokens_per_s=None)
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("estimated_peak_allocated_bytes", "device_used_bytes", "usable_bytes", "gpu_memory_bytes"):
        df[col.replace("_bytes", "_gib")] = df[col].astype(float) / GIB
    return df


def leanest(model: ModelConfig, spec: MethodSpec, forced_bits: int | None, req: ReportRequest) -> TrainConfig:
    """A method's smallest configuration: lowest rank, 8-bit states if it has them, per-layer, checkpointing,
    batch 1 — what is shown for a method that does not fit."""
    bits = forced_bits or min(spec.state_bits_supported)
    return TrainConfig(model=model, method=spec.name, rank=ranks_for(model)[0] if spec.project else None,
                       state_bits=bits, layerwise=True, dtype=req.dtype, batch=1, seq=req.seq, checkpointing=True)


def breakdown_gpu(cells: list[Cell], model: ModelConfig) -> Cell:
    """The cell whose breakdown is drawn for a model: the smallest selected GPU where any configuration fits
    (the interesting constraint), else the largest selected GPU."""
    own = sorted((c for c in cells if c.model is model), key=lambda c: c.gpu.memory_bytes)
    fitting = [c for c in own if c.plan.candidates]
    return fitting[0] if fitting else own[-1]


def _device_parts(est: Estimate) -> dict[str, int]:
    """Components alive in the peak phase, plus allocator reserve and CUDA context: they add up to device used."""
    parts = {k: v for k, v in est.phases[est.peak_phase].items() if v and k != "cuda_runtime"}
    parts["cuda_runtime"] = est.phases[est.peak_phase].get("cuda_runtime", 0)
    parts["allocator_reserve"] = est.reserved_bytes - est.peak_allocated_bytes
    parts["cuda_context"] = est.device_used_bytes - est.reserved_bytes
    return parts


def memory_breakdown(req: ReportRequest, cells: list[Cell]) -> pd.DataFrame:
    """Long table (model, gpu, method, component, bytes): each method at its recommended configuration on the
    breakdown GPU of each model, or at its leanest configuration when it does not fit there."""
    rows = []
    for model in req.models:
        cell = breakdown_gpu(cells, model)
        for spec, forced in req.methods:
            cand: Candidate | None = cell.plan.best_per_method.get(spec.name)
            est = cand.estimate if cand is not None else estimate(leanest(model, spec, forced, req),
                                                                  req.calibration(cell.gpu))
            for comp, nbytes in _device_parts(est).items():
                rows.append({"model": model.name, "gpu": cell.gpu.key, "gpu_name": cell.gpu.name,
                             "usable_bytes": cell.plan.request.usable_bytes, "method": spec.name,
                             "config": est.config.label(), "batch": est.config.batch, "fits": cand is not None,
                             "peak_phase": est.peak_phase, "component": comp, "bytes": int(nbytes),
                             "gib": nbytes / GIB, "device_used_bytes": est.device_used_bytes})
    return pd.DataFrame(rows)


def cost_table(req: ReportRequest, cells: list[Cell]) -> pd.DataFrame:
    """hours = tokens / tokens_per_s / 3600 on one GPU at the recommended configuration; cost = hours × USD/h; and
    the same for the fastest configuration that fits (`Plan.fastest`), when it is another one."""
    rows = []
    for cell in cells:
        rec, fast = cell.plan.recommendation, cell.plan.fastest
        usd, source = req.price(cell.gpu)
        row = {"model": cell.model.name, "gpu": cell.gpu.key, "gpu_name": cell.gpu.name,
               "usd_per_hour": usd, "price_source": source, "tokens": req.tokens,
               "config": rec.describe() if rec else "nothing fits",
               "short_config": short_config(rec.config) if rec else None, "batch": rec.config.batch if rec else None,
               "tokens_per_s": None, "hours": None, "cost_usd": None, "usd_per_billion_tokens": None,
               "fastest_config": None, "fastest_short_config": None,
               "fastest_tokens_per_s": None, "fastest_hours": None, "fastest_cost_usd": None}
        if rec is not None:
            tps = rec.throughput.tokens_per_s
            hours = req.tokens / tps / 3600
            row.update(tokens_per_s=round(tps, 1), hours=hours, cost_usd=hours * usd,
                       usd_per_billion_tokens=1e9 / tps / 3600 * usd)
        if fast is not None and fast is not rec:
            hours = req.tokens / fast.throughput.tokens_per_s / 3600
            row.update(fastest_config=fast.describe(), fastest_short_config=short_config(fast.config),
                       fastest_tokens_per_s=round(fast.throughput.tokens_per_s, 1),
                       fastest_hours=hours, fastest_cost_usd=hours * usd)
        rows.append(row)
    return pd.DataFrame(rows)


def gpu_table(req: ReportRequest) -> pd.DataFrame:
    """The catalogue figures the report used, with the source of each price."""
    rows = []
    for g in req.gpus:
        usd, source = req.price(g)
        rows.append({"gpu": g.key, "name": g.name, "memory_label": g.memory_label, "memory_bytes": g.memory_bytes,
                     "memory_gib": g.memory_bytes / GIB, "bf16_tflops": g.bf16_tflops,
                     "bandwidth_gbs": g.bandwidth_gbs, "usd_per_hour": usd,
                     "price_date": "--price" if g.key in req.prices else price_date(source),
                     "price_source": source})
    return pd.DataFrame(rows)


def price_date(source: str) -> str:
    """The first date a price source states ("late 2025", "2026-01"), or "undated"."""
    m = re.search(r"(?:(?:early|mid|late|Q[1-4])\s+)?20\d\d(?:-\d\d)?", source)
    return m.group(0) if m else "undated"
