"""`plan`: search method × rank × update gap × state bits × per-layer × micro-batch × checkpointing for the
configurations whose estimated device memory fits a budget, predict their throughput and rank them.

Quality comes from evidence, named in the output (`subprof.plan.evidence`): a `subprof probe` file (`--probe`,
predicted captured gradient energy) or, without one, published results with the committed reference probe's shape
(predicted loss gap to full rank). Among equal quality the faster configuration wins. `plan --burst` replaces both
with measured validation loss per unit time.
Pure Python: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from subprof.catalog import Budget, GpuSpec, ModelConfig, gpu_catalog
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods.spec import MethodSpec
from subprof.plan.evidence import QualityModel, default_quality
from subprof.plan.memory import Estimate, estimate
from subprof.plan.throughput import Throughput, measured_timings, predict_throughput, projection_seconds_per_step

MIN_RANK = 16
DEFAULT_GLOBAL_BATCH = 512  # sequences per optimizer step in the GaLore / OSD runs


@dataclass(kw_only=True, slots=True)
class PlanRequest:
    model: ModelConfig
    budget: Budget
    methods: list[tuple[MethodSpec, int | None]]
    seq: int = 256
    batch: int | None = None
    tokens_per_step: int | None = None
    dtype: str = "bf16"
    margin: float = 0.05
    top: int = 5
    gpu: GpuSpec | None = None
    utilization: float = 0.4
    proj_rows: list[dict] = field(default_factory=list)
    evidence: QualityModel | None = None  # what quality is read from (`plan.evidence`); None: published results
    _timings: dict = field(default_factory=dict, repr=False)  # method → {(m, n, r): s}, read once from proj_rows

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise SubprofError(f"--margin {self.margin} must be in [0, 1)")
        if self.batch is not None and self.batch <= 0:
            raise SubprofError(f"--batch must be at least 1, got {self.batch}")
        if self.batch is not None and self.tokens_per_step is not None:
            raise SubprofError("give --batch or --tokens-per-step, not both")
        if self.tokens_per_step is not None and self.tokens_per_step < self.seq:
            raise SubprofError(f"--tokens-per-step {self.tokens_per_step} is less than one sequence ({self.seq})")
        if self.seq <= 0:
            raise SubprofError(f"--seq must be at least 1, got {self.seq}")
        if self.top <= 0:
            raise SubprofError(f"--top must be at least 1, got {self.top}")
        if not 0 < self.utilization <= 1:
            raise SubprofError(f"--utilization {self.utilization} must be in (0, 1]")
        if self.evidence is None:
            self.evidence = default_quality()

    @property
    def global_tokens(self) -> int:
        """Tokens per optimizer step: --tokens-per-step, else --batch sequences, else 512 sequences (the global
        batch of the GaLore and OSD pretraining runs), reached by gradient accumulation."""
        if self.tokens_per_step is not None:
            return self.tokens_per_step
        if self.batch is not None:
            return self.batch * self.seq
        return DEFAULT_GLOBAL_BATCH * self.seq

    def measured_refresh_s(self, method: str, rank: int | None, update_gap: int | None) -> float | None:
        """Projection-refresh seconds per optimizer step from `subprof proj` rows (`--proj`), when they cover every
        weight shape of the model at this rank; None otherwise (the scaled H100 rates apply)."""
        if not self.proj_rows or rank is None or update_gap is None:
            return None
        if method not in self._timings:
            self._timings[method] = measured_timings(self.proj_rows, method)
        timings = self._timings[method]
        return projection_seconds_per_step(self.model, rank, timings, update_gap=update_gap) if timings else None

    @property
    def usable_bytes(self) -> int:
        return int(self.budget.bytes * (1 - self.margin))

    @property
    def throughput_gpu(self) -> GpuSpec:
        """The GPU whose TFLOP/s and bandwidth predict tokens/s: the named one, else the catalogue card whose
        memory is closest to the budget."""
        if self.gpu is not None:
            return self.gpu
        if self.budget.gpu is not None:
            return self.budget.gpu
        return min(gpu_catalog().values(), key=lambda g: abs(g.memory_bytes - self.budget.bytes))


@dataclass(kw_only=True, slots=True)
class Candidate:
    config: TrainConfig
    estimate: Estimate
    throughput: Throughput
    quality: float
    fits: bool
    projection_source: str = "scaled from H100 measurements"

    def to_dict(self) -> dict:
        c = self.config
        return {
            "method": c.method, "rank": c.rank, "update_gap": c.update_gap, "state_bits": c.state_bits,
            "layerwise": c.layerwise, "batch": c.batch, "accumulation": c.accumulation,
            "checkpointing": c.checkpointing, "seq": c.seq, "dtype": c.dtype,
            "estimated_peak_allocated_bytes": self.estimate.peak_allocated_bytes,
            "device_used_bytes": self.estimate.device_used_bytes, "peak_phase": self.estimate.peak_phase,
            "tokens_per_s": round(self.throughput.tokens_per_s, 1),
            "projection_share": round(self.throughput.projection_share, 4),
            "projection_source": self.projection_source, "quality": round(self.quality, 6),
            "fits": self.fits,
        }


@dataclass(kw_only=True, slots=True)
class Plan:
    request: PlanRequest
    candidates: list[Candidate]
    best_per_method: dict[str, Candidate]
    rejected: dict[str, str]
    suggestions: list[str] = field(default_factory=list)

    @property
    def recommendation(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


def ranks_for(model: ModelConfig) -> list[int]:
    """Powers of two from 16 up to the smallest projected weight dimension."""
    limit = model.min_weight_dim()
    ranks, r = [], MIN_RANK
    while r <= limit:
        ranks.append(r)
        r *= 2
    return ranks or [limit]


def _batches(req: PlanRequest, layerwise: bool) -> list[tuple[int, int]]:
    """(micro-batch, accumulation steps) pairs to try, largest micro-batch first. Without an explicit step size,
    per-layer candidates step every micro-batch: accumulating would keep every gradient alive and undo their
    saving."""
    if req.batch is not None:
        return [(req.batch, 1)]
    seqs = max(1, req.global_tokens // req.seq)
    micro = sorted({2**k for k in range(0, 12) if 2**k <= seqs}, reverse=True)
    if layerwise and req.tokens_per_step is None:
        return [(b, 1) for b in micro]
    return [(b, seqs // b) for b in micro if seqs % b == 0]


def _bits_for(req: PlanRequest, forced: int | None) -> list[int]:
    if forced is not None:
        return [forced]
    return [16, 8] if req.dtype == "bf16" else [32, 8]


def plan(req: PlanRequest) -> Plan:
    """Every configuration of the search space, the largest micro-batch that fits for each, ranked."""
    gpu = req.throughput_gpu
    fitting: list[Candidate] = []
    smallest: dict[str, Candidate] = {}
    for spec, forced_bits in req.methods:
        ranks = ranks_for(req.model) if spec.project else [None]
        for rank in ranks:
            for gap in (spec.gaps() if spec.project else (None,)):
                for bits in _bits_for(req, forced_bits):
                    for layerwise in (False, True):
                        for ckpt in (False, True):
                            found = _largest_fitting_batch(req, spec, rank, gap, bits, layerwise, ckpt,
                                                           _batches(req, layerwise), gpu, smallest)
                            if found is not None:
                                fitting.append(found)
    fitting.sort(key=lambda c: (c.quality, c.throughput.tokens_per_s), reverse=True)
    best: dict[str, Candidate] = {}
    for cand in fitting:
        best.setdefault(cand.config.method, cand)
    rejected = {}
    for spec, _ in req.methods:
        if spec.name not in best and spec.name in smallest:
            need = smallest[spec.name].estimate.device_used_bytes
            rejected[spec.name] = (f"{spec.name}: {need / 2**30:.1f} GiB > {req.usable_bytes / 2**30:.1f} GiB "
                                   f"(smallest configuration: {smallest[spec.name].config.label()}, "
                                   f"batch {smallest[spec.name].config.batch})")
    result = Plan(request=req, candidates=fitting, best_per_method=best, rejected=rejected)
    if not fitting:
        result.suggestions = suggest(req, smallest)
    return result


def _largest_fitting_batch(req: PlanRequest, spec: MethodSpec, rank: int | None, gap: int | None, bits: int,
                           layerwise: bool, ckpt: bool, batches: list[tuple[int, int]], gpu: GpuSpec,
                           smallest: dict[str, Candidate]) -> Candidate | None:
    """Memory grows with the micro-batch (`batches` is largest first): bisect for the largest that fits."""
    measured = req.measured_refresh_s(spec.name, rank, gap)

    def evaluate(i: int) -> Candidate:
        batch, accumulation = batches[i]
        cfg = TrainConfig(model=req.model, method=spec.name, rank=rank, update_gap=gap, state_bits=bits,
                          layerwise=layerwise, dtype=req.dtype, batch=batch, seq=req.seq, checkpointing=ckpt,
                          accumulation=accumulation)
        est = estimate(cfg)
        return Candidate(config=cfg, estimate=est,
                         fits=est.device_used_bytes <= req.usable_bytes,
                         throughput=predict_throughput(
                             cfg, gpu, utilization=req.utilization, refresh_s=measured,
                             states=est.components["optimizer_states"] + est.components["projection_matrices"]),
                         quality=req.evidence.quality(cfg),
                         projection_source="measured (--proj)" if measured is not None else
                         "scaled from H100 measurements")

    leanest = evaluate(len(batches) - 1)
    if not leanest.fits:
        prev = smallest.get(spec.name)
        if prev is None or leanest.estimate.device_used_bytes < prev.estimate.device_used_bytes:
            smallest[spec.name] = leanest
        return None
    lo, hi, best = 0, len(batches) - 2, leanest  # find the smallest index (largest batch) that fits
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = evaluate(mid)
        if cand.fits:
            best, hi = cand, mid - 1
        else:
            lo = mid + 1
    return best


def suggest(req: PlanRequest, smallest: dict[str, Candidate]) -> list[str]:
    """What would fit when nothing does: a shorter sequence, or a bigger catalogue GPU."""
    out = []
    lean = min(smallest.values(), key=lambda c: c.estimate.device_used_bytes) if smallest else None
    if lean is None:
        return out
    seq = req.seq // 2
    while seq >= 16:
        cfg = TrainConfig(model=req.model, method=lean.config.method, rank=lean.config.rank,
                          update_gap=lean.config.update_gap, state_bits=lean.config.state_bits,
                          layerwise=lean.config.layerwise, dtype=req.dtype, batch=1, seq=seq,
                          checkpointing=lean.config.checkpointing)
        if estimate(cfg).device_used_bytes <= req.usable_bytes:
            out.append(f"--seq {seq} fits with {cfg.label()} at batch 1")
            break
        seq //= 2
    if not lean.config.checkpointing:
        out.append("activation checkpointing was already searched; it does not suffice alone")
    need = lean.estimate.device_used_bytes / (1 - req.margin)
    bigger = sorted((g for g in gpu_catalog().values() if g.memory_bytes >= need), key=lambda g: g.memory_bytes)
    if bigger:
        g = bigger[0]
        out.append(f"a bigger GPU: {g.name} ({g.memory_bytes / 2**30:.0f} GiB) fits {lean.config.label()} "
                   f"at batch 1 (needs {lean.estimate.device_used_bytes / 2**30:.1f} GiB)")
    else:
        out.append(f"no single catalogue GPU holds {lean.estimate.device_used_bytes / 2**30:.1f} GiB: shard the "
                   "model (FSDP/ZeRO) — outside what subprof plans")
    return out

