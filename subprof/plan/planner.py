"""`plan`: search method × rank × update gap × state bits × per-layer × micro-batch × checkpointing × loss kind for the
configurations whose estimated device memory fits a budget, predict their throughput and rank them.

The search space, stated in the output:
- ranks: powers of two from 16 up to the widest weight's smaller side / `COMPRESSION` (4): a projected candidate
  must compress (GaLore's 1b r512 and 7b r1024 sit at that bound); each weight uses min(rank, m, n);
- a low-rank configuration that needs as much device memory as full-rank AdamW at the same settings (state bits,
  per-layer, checkpointing, micro-batch, accumulation) is not offered — it saves nothing;
- checkpointing modes (`subprof.modes`) least recompute first — none, selective, full — each kept only where it fits
  a larger micro-batch than the cheaper ones; at each micro-batch the full logits first, the chunked loss where
  they do not fit (`--loss` fixes one kind; `fused` only so);
- the optimizer batch: `--tokens-per-step`, else `--batch` sequences, else 512 sequences (GaLore/OSD), reached by
  gradient accumulation. Per-layer candidates are searched both ways: accumulating (their gradients then stay alive
  across micro-batches) and stepping every micro-batch, which changes the optimizer batch — such candidates say so
  and rank after every candidate that keeps the requested batch;
- optimizer offload (`plan.offload`: FSDP2 CPUOffloadPolicy, full-rank AdamW, one GPU) only when no configuration
  fits on the GPU alone, so the usual search is unchanged; such candidates carry their host memory and slowdown.

Quality is the predicted validation-loss gap to full-rank AdamW (`subprof.plan.quality`: fitted to published tables
and our long CPU runs; `--probe` puts the user's measured rank curve into the same model), scored at each
candidate's own optimizer batch. Candidates within the model's cross-validated band of the best (`band(model)`)
are ordered by predicted speed: differences below it are within what the evidence can tell apart.
`plan --burst` adds measured validation loss per unit time. Pure Python: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

from subprof.catalog import Budget, GpuSpec, ModelConfig, gpu_catalog
from subprof.config import TrainConfig, default_state_bits
from subprof.errors import SubprofError
from subprof.methods import get_method
from subprof.methods.spec import MethodSpec
from subprof.modes import check_loss
from subprof.plan.calibration import Calibration, calibration_for
from subprof.plan.distributed import RankEstimate, estimate_rank
from subprof.plan.evidence import default_quality
from subprof.plan.quality import QualityModel
from subprof.plan.memory import Estimate, estimate
from subprof.plan.hf_trainer import HfOptimizer, hf_refusal
from subprof.plan.offload import OffloadEstimate, offload_estimate, offload_throughput
from subprof.plan.parallel import STRATEGY_CHOICES, Parallel, check_shardable, strategies_for
from subprof.plan.published import Recipe, load_recipes
from subprof.plan.throughput import Throughput, measured_timings, predict_throughput, projection_seconds_per_step
from subprof.units import fmt_gib, percent_hint

MIN_RANK = 16
COMPRESSION = 4  # a searched rank is at most the widest weight's smaller side / 4
DEFAULT_GLOBAL_BATCH = 512  # sequences per optimizer step in the GaLore / OSD runs
SPEED_TOLERANCE = 0.03  # predicted tokens/s within 3% of each other count as equally fast
# checkpointing modes, least recompute first: a costlier one is kept only where it fits a larger micro-batch
CHECKPOINTING_SEARCH = ("none", "selective", "full")
PLAN_LOSSES = ("full", "chunked")  # fused needs Liger Kernel: searched when asked for (`--loss fused`)


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
    calibration: Calibration | None = None  # None: the record for the throughput GPU, else the H100 default
    gpus: int = 1  # data-parallel ranks (plan/parallel.py); batch is per rank, the optimizer batch the whole job's
    nodes: int = 1
    strategy: str = "auto"
    evidence: QualityModel | None = None  # what quality is read from (`plan.evidence`); None: published results
    hf: tuple[HfOptimizer, ...] = ()  # Trainer optimizers asked for (`--methods hf:NAME`, plan/hf_trainer.py)
    losses: tuple[str, ...] = PLAN_LOSSES  # loss kinds tried where the full logits do not fit (`--loss`: one)
    bases: tuple[str, ...] = ()  # base optimizers searched (`subprof.methods.bases`); empty: every one a method runs
    _timings: dict = field(default_factory=dict, repr=False)  # method → {(m, n, r): s}, read once from proj_rows
    _floors: dict = field(default_factory=dict, repr=False)  # the search's memo: see `_largest_fitting_batch`
    _layouts: tuple = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise SubprofError(f"--margin {self.margin:g} must be in [0, 1){percent_hint(self.margin)}")
        if self.seq <= 0:
            raise SubprofError(f"--seq must be at least 1, got {self.seq}")
        if self.batch is not None and self.batch <= 0:
            raise SubprofError(f"--batch must be at least 1, got {self.batch}")
        if self.tokens_per_step is not None:
            if self.tokens_per_step < self.seq or self.tokens_per_step % self.seq:
                raise SubprofError(f"--tokens-per-step {self.tokens_per_step} is not a whole number of sequences "
                                   f"of {self.seq} tokens")
            if self.batch is not None and (self.tokens_per_step // self.seq) % self.batch:
                raise SubprofError(f"--tokens-per-step {self.tokens_per_step} is {self.tokens_per_step // self.seq} "
                                   f"sequences, not a multiple of --batch {self.batch}")
        self.losses = tuple(check_loss(k) for k in self.losses)
        if self.top <= 0:
            raise SubprofError(f"--top must be at least 1, got {self.top}")
        if self.gpus == 1 and self.nodes == 1 and self.strategy in STRATEGY_CHOICES and self.strategy != "auto":
            raise SubprofError(f"--strategy {self.strategy} spreads a job over several GPUs, and this plan is for one: "
                               f"add --gpus N (N ≥ 2), or leave --strategy out")
        if not 0 < self.utilization <= 1:
            raise SubprofError(f"--utilization {self.utilization:g} must be in (0, 1]{percent_hint(self.utilization)}")
        if self.calibration is None:
            self.calibration = calibration_for(self.throughput_gpu.key)
        if self.evidence is None:
            self.evidence = default_quality()
        self._layouts = job_layouts(self)

    @property
    def global_tokens(self) -> int:
        """Tokens per optimizer step: --tokens-per-step, else --batch sequences, else 512 sequences (the global
        batch of the GaLore and OSD pretraining runs), reached by gradient accumulation."""
        if self.tokens_per_step is not None:
            return self.tokens_per_step
        if self.batch is not None:
            return self.batch * self.seq * self.gpus
        return DEFAULT_GLOBAL_BATCH * self.seq

    @property
    def band(self) -> float:
        """Quality differences below this (nats) are within what the evidence can tell apart for this model."""
        return self.evidence.band(self.model)

    @property
    def sequences_per_step(self) -> int:
        """The requested optimizer batch, in sequences."""
        return self.global_tokens // self.seq

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
        return self._throughput_gpu()[0]

    @property
    def throughput_gpu_reason(self) -> str:
        return self._throughput_gpu()[1]

    def _throughput_gpu(self) -> tuple[GpuSpec, str]:
        """The GPU whose TFLOP/s and bandwidth predict tokens/s, and why it was taken: the named one, else the
        --gpu-mem card, else the catalogue card whose memory is closest to the budget (the output says so)."""
        if self.gpu is not None:
            return self.gpu, "--gpu"
        if self.budget.gpu is not None:
            return self.budget.gpu, "the --gpu-mem card"
        card = min(gpu_catalog().values(), key=lambda g: abs(g.memory_bytes - self.budget.bytes))
        return card, f"assumed: the catalogue card closest to {self.budget.text} — choose with --gpu NAME"


@dataclass(kw_only=True, slots=True)
class Candidate:
    config: TrainConfig
    estimate: Estimate
    throughput: Throughput
    quality: float  # −(predicted gap to full-rank AdamW, nats)
    fits: bool
    requested_sequences: int
    calibration: Calibration
    projection_source: str = "scaled from H100 measurements"
    ranks: int = 1  # data-parallel ranks, each running the micro-batch
    quality_evidence: str = "independent"  # what the quality rests on (FittedQuality.evidence_kind)
    entry: str = ""  # the `--methods` item it answers when not the method's own name (`hf:galore_adamw`)

    @property
    def sequences_per_step(self) -> int:
        """The optimizer batch of this candidate, in sequences (micro-batch × accumulation steps × ranks)."""
        return self.config.batch * self.config.accumulation * self.ranks

    @property
    def keeps_requested_batch(self) -> bool:
        return self.sequences_per_step == self.requested_sequences

    @property
    def tokens_per_step(self) -> int:
        return self.sequences_per_step * self.config.seq

    @property
    def gap_nats(self) -> float:
        """Predicted validation-loss gap to full-rank AdamW, nats (0 for AdamW itself)."""
        return -self.quality

    @property
    def ppl_increase(self) -> float:
        """The gap as a share of perplexity: exp(Δ) − 1."""
        return math.expm1(self.gap_nats)

    @property
    def offloaded(self) -> bool:
        """Parameters, gradients and AdamW states in host memory, stepped on the CPU (`plan.offload`)."""
        return isinstance(self.estimate, OffloadEstimate)

    def describe(self) -> str:
        """The candidate in words: configuration, micro-batch and optimizer batch."""
        cfg = self.config
        step = (f"micro-batch {cfg.batch} × {cfg.accumulation} accumulation = {self.sequences_per_step} sequences per "
                f"optimizer step" if cfg.accumulation > 1 else
                f"micro-batch {cfg.batch}, optimizer step every micro-batch ({self.sequences_per_step} sequences)")
        if not self.keeps_requested_batch:
            step += f" — not the requested {self.requested_sequences}"
        what = f"{self.entry} ({cfg.label()})" if self.entry else cfg.label()
        return f"{what}{' + optimizer offload' if self.offloaded else ''}, {step}"

    def to_dict(self) -> dict:
        c = self.config
        return {
            "method": c.method, "base": c.base, "rank": c.rank, "update_gap": c.update_gap, "state_bits": c.state_bits,
            "layerwise": c.layerwise, "batch": c.batch, "accumulation": c.accumulation,
            "sequences_per_step": self.sequences_per_step, "tokens_per_step": self.sequences_per_step * c.seq,
            "keeps_requested_batch": self.keeps_requested_batch,
            "checkpointing": c.checkpointing, "loss": c.loss, "seq": c.seq, "dtype": c.dtype,
            "estimated_peak_allocated_bytes": self.estimate.peak_allocated_bytes,
            "device_used_bytes": self.estimate.device_used_bytes, "peak_phase": self.estimate.peak_phase,
            "tokens_per_s": round(self.throughput.tokens_per_s, 1),
            "projection_share": round(self.throughput.projection_share, 4),
            "projection_source": self.projection_source, "quality": round(self.quality, 6),
            "predicted_gap_nats": round(self.gap_nats, 6), "predicted_ppl_increase": round(self.ppl_increase, 6),
            "quality_evidence": self.quality_evidence, "fits": self.fits,
            **(_offload_fields(self) if self.offloaded else {}),
            **({"hf_optim": self.entry.removeprefix("hf:"), "method_options": dict(c.method_options)}
               if self.entry else {}),
            **({"parallel": self.estimate.parallel.to_dict(), "job": self.throughput.to_dict()}
               if isinstance(self.estimate, RankEstimate) else {}),
        }


@dataclass(kw_only=True, slots=True)
class RecipeCheck:
    """An authors' published recipe for the planned model: the best-ranked candidate that runs it (None: it does not
    fit the budget, or its method was not asked for)."""

    recipe: Recipe
    candidate: Candidate | None

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.label(), "source": self.recipe.source, "fits": self.candidate is not None,
                "candidate": self.candidate.to_dict() if self.candidate else None}


@dataclass(kw_only=True, slots=True)
class Plan:
    request: PlanRequest
    candidates: list[Candidate]
    best_per_method: dict[str, Candidate]
    rejected: dict[str, str]
    suggestions: list[str] = field(default_factory=list)
    recipes: list[RecipeCheck] = field(default_factory=list)
    gpu_alone: dict[str, str] = field(default_factory=dict)  # offloaded methods: what they need without offload

    @property
    def indistinguishable(self) -> list[Candidate]:
        """The candidates of the recommendation's batch class whose predicted quality is within the evidence's band
        of the best: the evidence cannot order them, so speed did."""
        rec = self.recommendation
        if rec is None:
            return []
        pool = [c for c in self.candidates if c.keeps_requested_batch == rec.keeps_requested_batch]
        best, band = max(c.quality for c in pool), self.request.band
        return [c for c in pool if best - c.quality < band]

    @property
    def recommendation(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def fastest(self) -> Candidate | None:
        """The fitting candidate with the highest predicted tokens/s (that keeps the requested optimizer batch
        when any does)."""
        pool = [c for c in self.candidates if c.keeps_requested_batch] or self.candidates
        return max(pool, key=lambda c: c.throughput.tokens_per_s) if pool else None


def ranks_for(model: ModelConfig) -> list[int]:
    """Powers of two from 16 up to the widest weight's smaller side / COMPRESSION."""
    limit = max(MIN_RANK, model.rank_limit() // COMPRESSION)
    ranks, r = [], MIN_RANK
    while r <= limit:
        ranks.append(r)
        r *= 2
    return ranks


def rank_candidates(cands: list[Candidate], band: float) -> list[Candidate]:
    """Best first: candidates that keep the requested optimizer batch; then quality bands of width `band` (the
    evidence's cross-validated band for the model: `QualityModel.band`) below the best; within a band, speed
    bands of `SPEED_TOLERANCE` below the band's fastest (the throughput model cannot tell 1% apart either); within
    those, the better predicted quality, then the faster."""
    if not cands:
        return []
    best = max(c.quality for c in cands)
    group = {id(c): (c.keeps_requested_batch, math.floor((best - c.quality) / band + 1e-9)) for c in cands}
    fastest: dict[tuple, float] = {}
    for c in cands:
        k = group[id(c)]
        fastest[k] = max(fastest.get(k, 0.0), c.throughput.tokens_per_s)
    step = math.log1p(SPEED_TOLERANCE)

    def key(c: Candidate) -> tuple:
        keeps, qband = k = group[id(c)]
        sband = math.floor(math.log(fastest[k] / c.throughput.tokens_per_s) / step + 1e-9)
        return (not keeps, qband, sband, -c.quality, -c.throughput.tokens_per_s)

    return sorted(cands, key=key)


def _batches(req: PlanRequest, layerwise: bool) -> list[list[tuple[int, int]]]:
    """Lists of (micro-batch, accumulation steps) to search, each largest micro-batch first: the ones that keep
    the requested optimizer batch, and for per-layer candidates also stepping every micro-batch (accumulating
    keeps every gradient alive and undoes their saving; stepping every micro-batch changes the optimizer batch)."""
    seqs = req.sequences_per_step // req.gpus  # per rank
    if req.batch is not None:
        keep = [[(req.batch, seqs // req.batch)]]
        return keep + ([[(req.batch, 1)]] if layerwise and seqs != req.batch else [])
    micro = sorted({2**k for k in range(0, 12) if 2**k <= seqs}, reverse=True)
    keep = [[(b, seqs // b) for b in micro if seqs % b == 0]]
    return keep + ([[(b, 1) for b in micro if b != seqs]] if layerwise else [])


def _bases_for(req: PlanRequest, spec: MethodSpec, bits: int) -> list[str]:
    """The base optimizers searched for a method at a state precision: those it runs (`MethodSpec.bases`) that
    have that precision (Adafactor has no 8-bit form), limited to `req.bases` when given. Full rank is AdamW unless
    `--bases` names others: `--methods adamw` asks for AdamW, and full-rank Lion or Adafactor is another optimizer."""
    from subprof.methods.bases import get_base

    asked = req.bases or (spec.bases if spec.project else spec.bases[:1])
    return [b for b in spec.bases if b in asked and bits in get_base(b).state_bits_supported]


def _bits_for(req: PlanRequest, forced: int | None) -> list[int]:
    if forced is not None:
        return [forced]
    return [16, 8] if req.dtype == "bf16" else [32, 8]


def plan(req: PlanRequest) -> Plan:
    """Every configuration of the search space, the largest micro-batch that fits for each, ranked. Memory does not
    depend on the update gap, so the micro-batch is searched once per configuration and each gap scored there."""
    gpu = req.throughput_gpu
    fitting: list[Candidate] = []
    smallest: dict[str, Candidate] = {}
    for spec, forced_bits in req.methods:
        gaps = spec.gaps() if spec.project else (None,)
        for rank in ([spec.fixed_rank] if spec.fixed_rank else ranks_for(req.model)) if spec.project else [None]:
            for bits, base in ((b, o) for b in _bits_for(req, forced_bits) for o in _bases_for(req, spec, b)):
                for layerwise in (False, True):
                    for batches in _batches(req, layerwise):
                        for found in _fitting_modes(req, spec, rank, gaps[0], bits, layerwise, batches, gpu, smallest,
                                                    base=base):
                            if _saves_memory(found):
                                fitting += _at_every_gap(req, spec, found, gaps, gpu, base=base)
    hf_rejected = {}
    for hf in req.hf:
        found, reason = _hf_candidates(req, hf, gpu, smallest)
        fitting += found
        if reason:
            hf_rejected[hf.key] = reason
    if not fitting and req.gpus == 1:
        fitting = _offload_candidates(req, gpu)
    if fitting:
        fitting = rank_candidates(fitting, req.band)
    best = best_per_method(fitting)
    rejected, gpu_alone = {}, {}
    for spec, _ in req.methods:
        if spec.name in best and best[spec.name].offloaded and spec.name in smallest:
            lean = smallest[spec.name]
            gpu_alone[spec.name] = (f"needs {fmt_gib(lean.estimate.device_used_bytes, 1)} (smallest: "
                                    f"{lean.config.label()}, batch {lean.config.batch})")
        elif spec.name not in best and spec.name in smallest:
            need = smallest[spec.name].estimate.device_used_bytes
            rejected[spec.name] = (f"{spec.name}: {fmt_gib(need, 1)} > {fmt_gib(req.usable_bytes, 1)} "
                                   f"(smallest configuration: {smallest[spec.name].config.label()}, "
                                   f"batch {smallest[spec.name].config.batch})")
        elif spec.name not in best:
            rejected[spec.name] = (f"{spec.name}: every configuration that fits needs as much memory as full-rank "
                                   f"AdamW at the same settings")
    rejected.update({k: v for k, v in hf_rejected.items() if k not in best})
    result = Plan(request=req, candidates=fitting, best_per_method=best, rejected=rejected,
                  recipes=recipe_checks(req, fitting), gpu_alone=gpu_alone)
    if not fitting:
        result.suggestions = suggest(req, smallest)
    return result


def best_per_method(ranked: list[Candidate]) -> dict[str, Candidate]:
    """The best-ranked candidate of each `--methods` entry (a Trainer name apart from its method)."""
    best: dict[str, Candidate] = {}
    for cand in ranked:
        best.setdefault(cand.entry or cand.config.method, cand)
    return best


def _at_every_gap(req: PlanRequest, spec: MethodSpec, found: Candidate, gaps: tuple, gpu: GpuSpec,
                  **kw) -> list[Candidate]:
    """`found` (scored at `gaps[0]`) and the same configuration at each other update gap it searches: memory does not
    depend on the gap (one GPU: `found`'s estimate kept; several: its strategy kept)."""
    c = found.config
    return [found] + [_candidate(req, spec, c.rank, gap, c.state_bits, c.layerwise, c.checkpointing,
                                 (c.batch, c.accumulation), gpu, loss=c.loss,
                                 layout=getattr(found.estimate, "parallel", None),
                                 known=None if req._layouts else found.estimate, **kw) for gap in gaps[1:]]


def _offload_candidates(req: PlanRequest, gpu: GpuSpec) -> list[Candidate]:
    """When nothing fits on the GPU alone: each full-rank method asked for with its optimizer offloaded (16/32-bit
    states, stepped globally: `offload.check_offload`), the largest micro-batch that fits, with and without
    checkpointing."""
    found = []
    for spec, forced_bits in req.methods:
        if spec.project:
            continue
        for bits in [b for b in _bits_for(req, forced_bits) if b != 8]:
            for batches in _batches(req, False):
                found += _fitting_modes(req, spec, None, None, bits, False, batches, gpu, {}, offload=True)
    return found


def _hf_candidates(req: PlanRequest, hf: HfOptimizer, gpu: GpuSpec,
                   smallest: dict[str, Candidate]) -> tuple[list[Candidate], str | None]:
    """A Trainer optimizer as transformers runs it: its method, options, state bits and per-layer updates fixed by
    the name; rank, update gap, micro-batch and checkpointing searched. Layer-wise names never accumulate
    (transformers refuses it). Returns the candidates that fit and, when none does, the reason."""
    refusal = hf_refusal(hf, gpus=req.gpus, strategy=req.strategy)
    if refusal:
        return [], refusal
    spec = get_method(hf.method)
    bits = hf.state_bits or default_state_bits(req.dtype)
    batch_lists = [[b for b in lst if b[1] == 1] for lst in _batches(req, hf.layerwise)] if hf.layerwise else \
        _batches(req, False)
    gaps = spec.gaps()
    mine: dict[str, Candidate] = {}
    out = []
    for rank in [spec.fixed_rank] if spec.fixed_rank else ranks_for(req.model):
        for batches in (lst for lst in batch_lists if lst):
            for found in _fitting_modes(req, spec, rank, gaps[0], bits, hf.layerwise, batches, gpu, mine,
                                        options=hf.options, entry=hf.key):
                out += _at_every_gap(req, spec, found, gaps, gpu, options=hf.options, entry=hf.key)
    if out:
        return out, None
    lean = mine.get(spec.name)
    if lean is None:
        return [], f"{hf.key}: no micro-batch of the requested optimizer batch runs it without accumulation"
    smallest[hf.key] = lean
    return [], (f"{hf.key}: {fmt_gib(lean.estimate.device_used_bytes, 1)} > {fmt_gib(req.usable_bytes, 1)} (smallest "
                f"configuration: {lean.config.label()}, batch {lean.config.batch})")


def _offload_fields(c: Candidate) -> dict:
    """What an offloaded candidate adds to its JSON: host bytes and the speed terms."""
    est = c.estimate
    return {"offload": "optimizer", "host_bytes": est.host_bytes, "host": dict(est.host),
            "offload_speed": c.throughput.to_dict()}


def recipe_checks(req: PlanRequest, ranked: list[Candidate]) -> list[RecipeCheck]:
    """The published recipes for this model among the methods asked for, each with the best-ranked candidate that
    runs it (same method, rank and gap; the recipe's bits and per-layer where it sets them)."""
    asked = {spec.name for spec, _ in req.methods}
    out = []
    for r in load_recipes():
        if r.model != req.model.name or r.method not in asked:
            continue
        match = next((c for c in ranked if (c.config.method, c.config.rank, c.config.update_gap, c.config.base) ==
                      (r.method, r.rank, r.update_gap, "adamw") and (r.state_bits is None or c.config.state_bits ==
                                                                     r.state_bits)
                      and (r.layerwise is None or c.config.layerwise == r.layerwise)), None)
        out.append(RecipeCheck(recipe=r, candidate=match))
    return out


def _saves_memory(cand: Candidate) -> bool:
    """A low-rank candidate must need less device memory than full-rank AdamW at the same settings, and a per-layer
    candidate less than the same configuration stepped globally (with accumulation it often saves nothing)."""
    c = cand.config
    used = cand.estimate.device_used_bytes
    par = getattr(cand.estimate, "parallel", None)  # several GPUs: held against the same strategy, per rank
    if c.layerwise and used >= estimate_rank(replace(c, layerwise=False), par, cand.calibration).device_used_bytes:
        return False
    if not c.spec.project:
        return True
    return used < _full_rank_device_used(c.model, c.state_bits, c.layerwise, c.dtype, c.batch, c.seq, c.checkpointing,
                                         c.accumulation, cand.calibration, par, c.loss)


@lru_cache(maxsize=1024)
def _full_rank_device_used(model: ModelConfig, bits: int, layerwise: bool, dtype: str, batch: int, seq: int,
                           ckpt: str, accumulation: int, calibration: Calibration, par: Parallel | None,
                           loss: str = "full") -> int:
    """Device memory of full-rank AdamW at these settings (cached: every low-rank candidate is held against it)."""
    return estimate_rank(TrainConfig(model=model, method="adamw", state_bits=bits, layerwise=layerwise, dtype=dtype,
                                     batch=batch, seq=seq, checkpointing=ckpt, accumulation=accumulation, loss=loss),
                         par, calibration).device_used_bytes


def _candidate(req: PlanRequest, spec: MethodSpec, rank: int | None, gap: int | None, bits: int, layerwise: bool,
               ckpt: str, batch: tuple[int, int], gpu: GpuSpec, bisecting: bool = False,
               layout: Parallel | None = None, known: Estimate | None = None, loss: str = "full",
               offload: bool = False, options: dict | None = None, entry: str = "", base: str = "adamw") -> Candidate:
    """One configuration at one (micro-batch, accumulation): its estimate, predicted throughput and quality. On
    several GPUs: the fastest strategy that fits (plan/comm.py). `bisecting`: memory alone — on several GPUs the
    leanest strategy's — (only `fits` is read then; throughput None, quality 0); `layout` keeps the strategy already
    chosen for this configuration (another update gap changes neither its memory nor its collectives much). On one
    GPU, `known` is the estimate of the same configuration at another update gap: memory does not depend on the
    gap. `base`: the base optimizer; `options`, `entry`: a Trainer name's method options and the name."""
    cfg = TrainConfig(model=req.model, method=spec.name, rank=rank, update_gap=gap, state_bits=bits,
                      layerwise=layerwise, dtype=req.dtype, batch=batch[0], seq=req.seq, checkpointing=ckpt,
                      accumulation=batch[1], loss=loss, method_options={"base": base, **(options or {})})
    if offload:
        est = offload_estimate(cfg, req.calibration)
    elif bisecting:  # only `fits` is read: memory alone (the leanest strategy's on several GPUs)
        est = estimate_rank(cfg, req._layouts[0] if req._layouts else None, req.calibration)
    if bisecting:
        return Candidate(config=cfg, estimate=est, requested_sequences=req.sequences_per_step,
                         calibration=req.calibration, ranks=req.gpus, fits=est.device_used_bytes <= req.usable_bytes,
                         throughput=None, quality=0.0, entry=entry)
    measured = req.measured_refresh_s(spec.name, rank, gap)
    if offload:
        tput = offload_throughput(cfg, est, gpu, utilization=req.utilization, calibration=req.calibration)
    elif req._layouts:
        from subprof.plan.comm import choose_layout  # several GPUs only: one-GPU plans do without plan/comm.py

        est, tput = choose_layout(cfg, (layout,) if layout else req._layouts, gpu, usable_bytes=req.usable_bytes,
                                  utilization=req.utilization, refresh_s=measured, calibration=req.calibration)
    else:
        est = known or estimate(cfg, req.calibration)
        tput = predict_throughput(cfg, gpu, utilization=req.utilization, refresh_s=measured,
                                  calibration=req.calibration,
                                  states=est.components["optimizer_states"] + est.components["projection_matrices"])
    return Candidate(config=cfg, estimate=est, requested_sequences=req.sequences_per_step,
                     calibration=req.calibration, ranks=req.gpus, entry=entry,
                     fits=est.device_used_bytes <= req.usable_bytes,
                     throughput=tput,
                     quality=req.evidence.quality(cfg, batch[0] * batch[1] * req.gpus * req.seq),
                     quality_evidence=req.evidence.evidence_kind(spec.name, cfg.base),
                     projection_source="measured (--proj)" if measured is not None else
                     "scaled from H100 measurements")


def _fitting_modes(req: PlanRequest, spec: MethodSpec, rank: int | None, gap: int | None, bits: int,
                   layerwise: bool, batches: list[tuple[int, int]], gpu: GpuSpec, smallest: dict[str, Candidate],
                   **kw) -> list[Candidate]:
    """The largest fitting micro-batch under each checkpointing mode of `CHECKPOINTING_SEARCH`, cheapest first: a
    costlier mode is kept only where it fits a larger micro-batch than the cheaper ones (recomputing must buy
    something); once the largest micro-batch fits, costlier modes are not tried."""
    out, reached = [], 0
    for ckpt in CHECKPOINTING_SEARCH:
        found = _largest_fitting_batch(req, spec, rank, gap, bits, layerwise, ckpt, batches, gpu, smallest, **kw)
        if found is None or found.config.batch <= reached:
            continue
        reached = found.config.batch
        out.append(found)
        if reached == batches[0][0]:
            break
    return out


def _largest_fitting_batch(req: PlanRequest, spec: MethodSpec, rank: int | None, gap: int | None, bits: int,
                           layerwise: bool, ckpt: str, batches: list[tuple[int, int]], gpu: GpuSpec,
                           smallest: dict[str, Candidate], offload: bool = False, options: dict | None = None,
                           entry: str = "", base: str = "adamw") -> Candidate | None:
    """Memory grows with the micro-batch (`batches` is largest first): bisect for the largest that fits, from what
    the same configuration found at the lower rank (`req._floors`). At each micro-batch the loss kinds of
    `req.losses` are tried in order (`full` first), the first that fits taken: a loss kind is chosen only where it
    decides the fit."""

    def evaluate(i: int) -> Candidate:
        for loss in req.losses:
            cand = _candidate(req, spec, rank, gap, bits, layerwise, ckpt, batches[i], gpu, bisecting=True,
                              loss=loss, offload=offload, options=options, entry=entry, base=base)
            if cand.fits:
                break
        return cand

    # memory grows with the rank, so the same configuration at a lower rank (`plan` searches ranks in ascending
    # order) bounds the search: none of the larger micro-batches that did not fit there fits here, and where none
    # fitted there (floor `len(batches)`) none fits here — nor is it smaller than the `smallest` already offered
    key = (spec.name, gap, bits, layerwise, ckpt, base, offload, entry, tuple(batches),
           tuple(sorted((options or {}).items())))
    floor = req._floors.get(key)
    bounded = floor is not None and rank is not None and floor[0] is not None and rank >= floor[0]
    lo = floor[1] if bounded else 0
    if lo == len(batches):
        return None
    # the micro-batch that fitted at the lower rank is tried first: most often it still fits, and then it is the
    # answer (every larger one is ruled out above; the smaller ones fit too)
    best = evaluate(lo) if bounded else None
    if best is None or not best.fits:
        if best is not None:  # the lower rank's micro-batch no longer fits: the search starts below it
            lo += 1
        leanest = best if lo == len(batches) else evaluate(len(batches) - 1)
        if not leanest.fits:
            prev = smallest.get(spec.name)
            if prev is None or leanest.estimate.device_used_bytes < prev.estimate.device_used_bytes:
                smallest[spec.name] = leanest
            req._floors[key] = (rank, len(batches))
            return None
        # bisect for the smallest index (largest micro-batch) that fits, from the lower rank's floor
        hi, best = len(batches) - 2, leanest
        while lo <= hi:
            mid = (lo + hi) // 2
            cand = evaluate(mid)
            if cand.fits:
                best, hi = cand, mid - 1
            else:
                lo = mid + 1
    req._floors[key] = (rank, batches.index((best.config.batch, best.config.accumulation)))
    # throughput and quality once, at the micro-batch found (several GPUs: the strategies weighed there)
    return _candidate(req, spec, rank, gap, bits, layerwise, ckpt, (best.config.batch, best.config.accumulation), gpu,
                      loss=best.config.loss, known=None if req._layouts or offload else best.estimate,
                      offload=offload, options=options, entry=entry, base=base)


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
                          checkpointing=lean.config.checkpointing, loss=lean.config.loss,
                          method_options=dict(lean.config.method_options))
        if estimate(cfg, req.calibration).device_used_bytes <= req.usable_bytes:
            out.append(f"--seq {seq} fits with {cfg.label()} at batch 1")
            break
        seq //= 2
    if not lean.config.recomputes:
        out.append("activation checkpointing was already searched; it does not suffice alone")
    need = lean.estimate.device_used_bytes / (1 - req.margin)
    bigger = sorted((g for g in gpu_catalog().values() if g.memory_bytes >= need), key=lambda g: g.memory_bytes)
    if bigger:
        g = bigger[0]
        out.append(f"a bigger GPU: {g.name} ({g.memory_bytes / 2**30:.0f} GiB) fits {lean.config.label()} "
                   f"at batch 1 (needs {lean.estimate.device_used_bytes / 2**30:.1f} GiB)")
    else:
        out.append(f"no single catalogue GPU holds {lean.estimate.device_used_bytes / 2**30:.1f} GiB: shard it "
                   "over several (--gpus 8: FSDP splits parameters, gradients and states)")
    return out


def job_layouts(req: PlanRequest) -> tuple[Parallel, ...]:
    """The layouts a multi-GPU plan tries for every configuration (none for one GPU), leanest first: the strategy
    asked for, or with `auto` each strategy that applies and that the model can be sharded for. One line when none
    can."""
    if req.gpus == 1 and req.nodes == 1 and req.strategy == "auto":
        return ()
    from subprof.plan.comm import LEANEST_FIRST

    names = strategies_for(req.gpus, req.nodes, req.strategy)
    if req.sequences_per_step < req.gpus:
        raise SubprofError(f"--gpus {req.gpus} is more ranks than the {req.sequences_per_step} sequences of an "
                           f"optimizer step: raise --tokens-per-step (each rank needs at least one sequence)")
    layouts, reasons = [], []
    for name in sorted(names, key=LEANEST_FIRST.index):  # the leanest first: the search bisects on it
        par = Parallel(gpus=req.gpus, nodes=req.nodes, strategy=name)
        try:
            check_shardable(req.model, par)
        except SubprofError as exc:
            reasons.append(str(exc))
            continue
        layouts.append(par)
    if not layouts:
        raise SubprofError(reasons[0])
    return tuple(layouts) if req.gpus > 1 else ()
