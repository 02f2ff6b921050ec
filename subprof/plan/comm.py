"""Communication of a data-parallel training step: bytes per optimizer step by collective, the time they take over
the GPU's links (`profiles/gpus.toml`: NVLink/PCIe within a node, the NIC share between nodes) and the job's
throughput. Pure Python, no torch.

What moves per optimizer step (a micro-batches per step; P the padded parameters, b_c the compute dtype, b_r the
reduce dtype; checked against the collectives a traced rank issues, `bench --backend trace --world-size N`):
- fsdp: every micro-batch all-gathers every unit in forward (P·b_c) and the decoder layers again in backward (the
  root stays gathered), and reduce-scatters every gradient (P·b_r);
- fsdp-no-reshard: one all-gather per micro-batch (P·b_c) and the reduce-scatter;
- hsdp: fsdp inside a node, plus an all-reduce of each reduce-scattered shard (P·b_r / g) across the nodes;
- ddp: one all-reduce of every gradient per step (P·b, accumulation under `no_sync`);
- the optimizer's own collectives, per projected weight, from the method's declaration (`MethodSpec.comms`): per
  step, and per refresh amortised over the update gap (SVD refreshes: gather G to the owner, broadcast P), plus
  the ranks' agreement on non-finite gradients (one int64 per step; per-layer updates: one fp32 per parameter).
Payload bytes are the tensors each collective moves; a ring sends (g−1)/g of the payload per rank for all-gather,
reduce-scatter and gather, 2(g−1)/g for all-reduce, and ≈ the payload for a broadcast.

Time: wire bytes over the link of the group — the intra-node link when the group sits in one node, else the
inter-node NIC share (the slowest hop of a ring that crosses nodes) — at `LINK_EFFICIENCY` of the datasheet figure.
Overlap, stated in every output: FSDP's and DDP's collectives run on their own streams alongside forward and
backward, so they cost only what exceeds the compute time of the step (step = max(compute, collectives)); the
optimizer's collectives run inside `optimizer.step()` and are added in full.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from subprof.catalog import GpuSpec, ModelConfig
from subprof.config import TrainConfig, param_bytes
from subprof.methods import get_method
from subprof.methods.spec import LAYERWISE_GRAD_NORM, NONFINITE_AGREEMENT, When
from subprof.plan.distributed import (RankEstimate, _layer_params, _root_params, estimate_rank, local_numel,
                                      shard_terms)
from subprof.plan.calibration import Calibration
from subprof.plan.parallel import Parallel
from subprof.plan.throughput import BANDWIDTH_EFFICIENCY, projection_seconds, train_flops_per_token

# NCCL reaches about this share of a link's datasheet bandwidth in large collectives ("bus bandwidth" in
# nccl-tests); an assumption, stated with the result. Small messages (the optimizer's d×r all-reduces) reach less.
LINK_EFFICIENCY = 0.7
# a collective's fixed cost (launch + ring latency); counted per call for the optimizer's per-weight collectives
COLLECTIVE_LATENCY_S = 30e-6
LEANEST_FIRST = ("fsdp", "hsdp", "fsdp-no-reshard", "ddp")
OVERLAP = ("FSDP/DDP collectives overlap with forward/backward compute (step = max(compute, collectives)); the "
           "optimizer's own collectives run inside optimizer.step() and add in full")


@dataclass(frozen=True, kw_only=True, slots=True)
class Transfer:
    """One kind of collective in a step: its payload bytes per optimizer step, the group size, whether the group
    spans nodes, and whether it overlaps with compute."""

    name: str
    op: str  # all_gather, reduce_scatter, all_reduce, gather, broadcast
    payload_bytes: float
    group: int
    spans_nodes: bool
    overlapped: bool
    calls: float = 0.0  # per optimizer step (latency term)

    @property
    def wire_bytes(self) -> float:
        """Bytes each rank sends: (g−1)/g of the payload, twice for an all-reduce, ≈ the payload for a broadcast."""
        g = self.group
        if g <= 1:
            return 0.0
        if self.op == "broadcast":
            return self.payload_bytes
        return (2 if self.op == "all_reduce" else 1) * self.payload_bytes * (g - 1) / g

    def seconds(self, gpu: GpuSpec) -> float:
        gbs = gpu.inter_node_gbs if self.spans_nodes else gpu.intra_node_gbs
        if self.group <= 1 or gbs <= 0:
            return 0.0
        return self.wire_bytes / (gbs * 1e9 * LINK_EFFICIENCY) + self.calls * COLLECTIVE_LATENCY_S


@dataclass(frozen=True, kw_only=True, slots=True)
class CommPlan:
    transfers: tuple[Transfer, ...] = ()

    def bytes_by_op(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in self.transfers:
            out[t.op] = out.get(t.op, 0.0) + t.payload_bytes
        return out

    def seconds(self, gpu: GpuSpec, *, overlapped: bool) -> float:
        return sum(t.seconds(gpu) for t in self.transfers if t.overlapped == overlapped)

    def to_dict(self) -> list[dict]:
        return [{"name": t.name, "op": t.op, "payload_bytes": int(t.payload_bytes), "wire_bytes": int(t.wire_bytes),
                 "group": t.group, "spans_nodes": t.spans_nodes, "overlapped": t.overlapped} for t in self.transfers]


def step_comm(c: TrainConfig, par: Parallel) -> CommPlan:
    """Every collective of one optimizer step of rank 0 (module docstring)."""
    return _step_comm(c.model, c.method, c.rank, c.update_gap, c.dtype, c.accumulation,
                      tuple(sorted(c.method_options.items())), par, c.layerwise)


@lru_cache(maxsize=8192)
def _comm_seconds(comm: CommPlan, gpu: GpuSpec) -> tuple[float, float]:
    """(overlapped, optimizer) seconds of a step's collectives on `gpu`."""
    return comm.seconds(gpu, overlapped=True), comm.seconds(gpu, overlapped=False)


@lru_cache(maxsize=4096)
def _step_comm(model: ModelConfig, method: str, rank: int | None, update_gap: int | None, dtype: str,
               accumulation: int, options: tuple, par: Parallel, layerwise: bool = False) -> CommPlan:
    if par.gpus <= 1:
        return CommPlan()
    b = param_bytes(dtype)
    bc = 4 if dtype == "fp32" else 2
    br = 4 if dtype != "bf16" else 2
    a = accumulation
    out: list[Transfer] = []
    if not par.sharded:
        out.append(Transfer(name="gradient all-reduce", op="all_reduce", payload_bytes=model.params * b,
                            group=par.gpus, spans_nodes=par.nodes > 1, overlapped=True))
        return CommPlan(transfers=tuple(out))
    W = par.shard_ranks
    spans = par.strategy != "hsdp" and par.nodes > 1
    layer, root = _padded(model, get_method(method).project, W)
    padded = model.layers * layer + root
    again = model.layers * layer if par.reshard_after_forward else 0
    out.append(Transfer(name="parameter all-gather", op="all_gather", payload_bytes=a * (padded + again) * bc,
                        group=W, spans_nodes=spans, overlapped=True))
    out.append(Transfer(name="gradient reduce-scatter", op="reduce_scatter", payload_bytes=a * padded * br,
                        group=W, spans_nodes=spans, overlapped=True))
    if par.strategy == "hsdp":
        out.append(Transfer(name="gradient all-reduce across nodes", op="all_reduce",
                            payload_bytes=a * padded * br / W, group=par.replicas, spans_nodes=True,
                            overlapped=True))
    out += _method_transfers(model, method, rank, update_gap, dtype, options, W, spans)
    out.append(_agreement(model, layerwise, par))
    return CommPlan(transfers=tuple(out))


def _agreement(model: ModelConfig, layerwise: bool, par: Parallel) -> Transfer:
    """How the ranks agree on non-finite gradients (`methods.spec.NONFINITE_AGREEMENT`): one int64 all-reduce over
    every rank per step; per-layer updates instead all-reduce ‖G‖² of each parameter (`LAYERWISE_GRAD_NORM`, also
    the lagged clipping's norm) over the shard group, one call per FSDP unit (each decoder layer and the root).
    Latency-bound, inside the step."""
    if not layerwise:
        nbytes = NONFINITE_AGREEMENT.nbytes(1, 1, 1, param_bytes=0)
        return Transfer(name="optimizer non-finite agreement", op="all_reduce", payload_bytes=nbytes,
                        group=par.gpus, spans_nodes=par.nodes > 1, overlapped=False, calls=1.0)
    count = model.layers * len(_layer_params(model)) + len(_root_params(model))
    nbytes = LAYERWISE_GRAD_NORM.nbytes(1, 1, 1, param_bytes=0)
    return Transfer(name="optimizer per-layer gradient norms", op="all_reduce", payload_bytes=count * nbytes,
                    group=par.shard_ranks, spans_nodes=par.strategy != "hsdp" and par.nodes > 1, overlapped=False,
                    calls=float(model.layers + 1))


@lru_cache(maxsize=1024)
def _padded(model: ModelConfig, long_side: bool, W: int) -> tuple[int, int]:
    """Values one decoder layer and the root unit hold gathered: W · the padded shard of every parameter."""
    return (sum(local_numel(p, long_side, W) for p in _layer_params(model)) * W,
            sum(local_numel(p, long_side, W) for p in _root_params(model)) * W)


@lru_cache(maxsize=4096)
def _method_transfers(model: ModelConfig, method: str, rank: int | None, update_gap: int | None, dtype: str,
                      options: tuple, W: int, spans: bool) -> tuple[Transfer, ...]:
    """The optimizer's collectives per step (declared per weight, `MethodSpec.comm_bytes`): STEP ones every step,
    REFRESH ones once per `update_gap` steps; FIRST ones (an SVD start) are left out — once in a run."""
    spec = get_method(method)
    if not spec.project:
        return ()
    b = param_bytes(dtype)
    by_op: dict[str, list[float]] = {}
    for s in model.linear_shapes():
        r = min(rank, s.m, s.n)
        for when, share in ((When.STEP, 1.0), (When.REFRESH, 1.0 / (update_gap or 1))):
            for op, nbytes in spec.comm_bytes(s.m, s.n, r, ranks=W, when=when, param_bytes=b,
                                              options=dict(options)).items():
                acc = by_op.setdefault(op, [0.0, 0.0])
                acc[0] += s.count * nbytes * share
                acc[1] += s.count * share
    return tuple(Transfer(name=f"optimizer {op.replace('_', '-')}", op=op, payload_bytes=v[0], group=W,
                          spans_nodes=spans, overlapped=False, calls=v[1]) for op, v in by_op.items())


@dataclass(frozen=True, kw_only=True, slots=True)
class JobThroughput:
    """tokens/s of the whole job and where one rank's step time goes."""

    tokens_per_s: float
    step_s: float
    compute_s: float
    optimizer_s: float
    projection_s: float
    collectives_s: float  # FSDP/DDP collectives (overlapped)
    exposed_collectives_s: float  # what of them exceeds compute
    optimizer_comm_s: float  # the optimizer's own collectives
    gpus: int
    gpu: str
    comm: CommPlan = field(default_factory=CommPlan)

    @property
    def comm_share(self) -> float:
        """Share of the step spent waiting on communication (exposed collectives + the optimizer's)."""
        return (self.exposed_collectives_s + self.optimizer_comm_s) / self.step_s if self.step_s else 0.0

    @property
    def projection_share(self) -> float:
        return self.projection_s / self.step_s if self.step_s else 0.0

    def to_dict(self) -> dict:
        return {"tokens_per_s": round(self.tokens_per_s, 1), "step_s": self.step_s, "compute_s": self.compute_s,
                "optimizer_s": self.optimizer_s, "projection_s": self.projection_s,
                "collectives_s": self.collectives_s, "exposed_collectives_s": self.exposed_collectives_s,
                "optimizer_comm_s": self.optimizer_comm_s, "comm_share": round(self.comm_share, 4),
                "gpus": self.gpus, "gpu": self.gpu, "comm": self.comm.to_dict(), "overlap": OVERLAP}


def job_throughput(c: TrainConfig, par: Parallel, gpu: GpuSpec, *, utilization: float, states: int,
                   refresh_s: float | None = None, calibration: Calibration | None = None) -> JobThroughput:
    """The job's tokens/s = GPUs × tokens per rank and step / the step time of one rank:
    step = max(compute, FSDP/DDP collectives) + optimizer step + projection updates + the optimizer's collectives.
    `states` are rank 0's optimizer-state and projection bytes. Sharded strategies split the optimizer step and the
    projection work over the shard group (each rank updates its shards; SVDs are spread over owner ranks)."""
    tokens = c.tokens * c.accumulation
    compute = train_flops_per_token(c) * tokens / (utilization * gpu.bf16_tflops * 1e12)
    split = par.shard_ranks if par.sharded else 1
    moved = 3 * c.model.params * c.param_bytes / split + 2 * states
    opt = moved / (gpu.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY)
    proj = (projection_seconds(c, gpu, utilization, refresh_s, calibration) / split) if c.rank else 0.0
    comm = step_comm(c, par)
    coll, own = _comm_seconds(comm, gpu)
    exposed = max(0.0, coll - compute)
    step = compute + exposed + opt + proj + own
    return JobThroughput(tokens_per_s=par.gpus * tokens / step, step_s=step, compute_s=compute, optimizer_s=opt,
                         projection_s=proj, collectives_s=coll, exposed_collectives_s=exposed, optimizer_comm_s=own,
                         gpus=par.gpus, gpu=gpu.name, comm=comm)


def choose_layout(c: TrainConfig, layouts: tuple[Parallel, ...], gpu: GpuSpec, *, usable_bytes: int,
                  utilization: float, refresh_s: float | None = None,
                  calibration: Calibration | None = None) -> tuple[RankEstimate, JobThroughput]:
    """Of the candidate layouts (one per strategy), the fastest whose rank fits `usable_bytes` (device used); when
    none fits, the leanest. `plan --strategy auto` finds each configuration's largest micro-batch on the leanest
    layout (fsdp), then asks this for the fastest layout that fits at that micro-batch.

    Speeds need no memory estimate (states come from the cached per-rank terms), so layouts are tried fastest first
    and the first that fits wins. Shortcuts, both exact under this model: fsdp holds the least of every term, so
    when it does not fit nothing does; and when its collectives hide behind compute and the optimizer's own are
    negligible (< 1% of the step), no other strategy is faster — they move as much or more, and DDP repeats the
    optimizer step and projection work that fsdp splits over the ranks."""
    def speed(par: Parallel) -> JobThroughput:
        t = shard_terms(c.model, c.method, c.rank, c.state_bits, c.layerwise, c.dtype,
                        tuple(sorted(c.method_options.items())), par.shard_ranks)
        return job_throughput(c, par, gpu, utilization=utilization, refresh_s=refresh_s,
                              states=t.states + t.projection, calibration=calibration)

    ordered = sorted(layouts, key=lambda p: LEANEST_FIRST.index(p.strategy))
    lean = estimate_rank(c, ordered[0], calibration)
    lean_speed = speed(ordered[0])
    if lean.device_used_bytes > usable_bytes or len(ordered) == 1 or (
            lean_speed.exposed_collectives_s == 0 and lean_speed.optimizer_comm_s <= 0.01 * lean_speed.step_s):
        return lean, lean_speed
    speeds = {par: (lean_speed if par is ordered[0] else speed(par)) for par in ordered}
    for par in sorted(ordered, key=lambda p: -speeds[p].tokens_per_s):
        est = lean if par is ordered[0] else estimate_rank(c, par, calibration)
        if est.device_used_bytes <= usable_bytes:
            return est, speeds[par]
    return lean, lean_speed
