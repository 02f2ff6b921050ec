"""What `plan --gpus N` adds to the plan's tables: the strategy, per-rank memory, the whole job's tokens/s and the
share of a step spent waiting on communication, and the assumptions behind them (rendering only)."""

from __future__ import annotations

from subprof.catalog import GpuSpec
from subprof.plan.planner import Candidate, PlanRequest
from subprof.units import gib

JOB_COLUMNS = ("method", "strategy", "rank", "T", "bits", "layer", "micro", "seqs", "ckpt", "peak", "device",
               "job tok/s", "comm", "proj")  # micro, peak and device per rank (the table's title says so)


def ckpt_cell(cfg) -> str:
    """The ckpt column: the checkpointing mode (no, sel, full, 1/K for every:K) and, when not the full logits, the
    loss kind (+ch chunked, +fu fused)."""
    mode = {"none": "no", "selective": "sel", "full": "full"}.get(cfg.checkpointing, f"1/{cfg.checkpointing[6:]}")
    return mode + {"full": "", "chunked": "+ch", "fused": "+fu"}[cfg.loss]


def job_row(c: Candidate) -> list[str]:
    cfg = c.config
    t = c.throughput
    return [cfg.method, c.estimate.parallel.strategy, str(cfg.rank or "full"), str(cfg.update_gap or "–"),
            str(cfg.state_bits), "yes" if cfg.layerwise else "no",
            f"{cfg.batch}" + (f"×{cfg.accumulation}" if cfg.accumulation > 1 else ""),
            f"{c.sequences_per_step}" + ("" if c.keeps_requested_batch else " *"), ckpt_cell(cfg), f"{gib(c.estimate.peak_allocated_bytes):.2f}",
            f"{gib(c.estimate.device_used_bytes):.2f}", f"{t.tokens_per_s:,.0f}", f"{100 * t.comm_share:.1f}%",
            f"{100 * t.projection_share:.1f}%"]


def job_header(req: PlanRequest) -> str:
    where = f" on {req.nodes} nodes ({req.gpus // req.nodes} per node)" if req.nodes > 1 else " in one node"
    return (f"{req.gpus} GPUs{where}, strategy {req.strategy}; memory is per rank (rank 0 holds the most), "
            f"batch is per rank, tokens/s is the whole job's")


def job_recommendation(c: Candidate) -> str:
    t = c.throughput
    return (f"{c.estimate.parallel.label()}, job ≈ {t.tokens_per_s:,.0f} tokens/s "
            f"({t.tokens_per_s / c.estimate.parallel.gpus:,.0f} per GPU), communication {100 * t.comm_share:.1f}% "
            f"of a step")


def job_assumptions(req: PlanRequest, gpu: GpuSpec) -> str:
    from subprof.plan.comm import LINK_EFFICIENCY, OVERLAP  # imported by the job's functions: one GPU needs none

    between = (f"; between nodes {gpu.inter_node_gbs:,.1f} GB/s per GPU ({gpu.inter_node_link})"
               if req.nodes > 1 else "")
    return (f"Communication: {OVERLAP}. Links of {gpu.name}: within a node {gpu.intra_node_gbs:,.0f} GB/s per GPU "
            f"({gpu.intra_node_link}){between}, at {LINK_EFFICIENCY:.0%} of those figures (profiles/gpus.toml cites "
            f"each; the inter-node ones are the least certain). strategy auto: for each configuration the largest "
            f"micro-batch fsdp fits, then the fastest strategy that fits there. Projected weights are sharded on their long side, SVD refreshes gather each gradient to an owner "
            f"rank and broadcast P (methods/spec.py).")


def job_json(req: PlanRequest, gpu: GpuSpec) -> dict:
    from subprof.plan.comm import LINK_EFFICIENCY, OVERLAP

    return {"gpus": req.gpus, "nodes": req.nodes, "strategy": req.strategy, "overlap": OVERLAP,
            "link_efficiency": LINK_EFFICIENCY,
            "links": {"intra_node_gbs": gpu.intra_node_gbs, "intra_node_link": gpu.intra_node_link,
                      "inter_node_gbs": gpu.inter_node_gbs, "inter_node_link": gpu.inter_node_link}}
