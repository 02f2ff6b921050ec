"""How a job is spread over GPUs: the data-parallel strategy, the number of GPUs and nodes, and what each rank holds
whole or in shards. Pure data, no torch: the planner, the trace and `bench --world-size` share it.

Strategies (torch's own engines, DESIGN.md "Multi-GPU"):
- `ddp`: `DistributedDataParallel` — every rank holds the whole model, its gradients and optimizer states;
  gradients are all-reduced in buckets.
- `fsdp`: FSDP2 `fully_shard` on every decoder layer and on the root, `reshard_after_forward=True` (ZeRO-3-like):
  parameters, gradients and states sharded over all GPUs; each layer is all-gathered in forward and again in
  backward, gradients reduce-scattered.
- `fsdp-no-reshard`: the same with `reshard_after_forward=False` (ZeRO-2-like): gathered layers stay gathered
  from forward through backward (one all-gather per step instead of two, the whole model unsharded at the peak).
- `hsdp`: FSDP2 on a 2-D mesh (replicate across nodes, shard within a node): states sharded over the GPUs of one
  node, gradients all-reduced across nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from subprof.catalog import ModelConfig
from subprof.errors import SubprofError

STRATEGIES = ("ddp", "fsdp", "fsdp-no-reshard", "hsdp")
STRATEGY_CHOICES = ("auto",) + STRATEGIES


@dataclass(frozen=True, kw_only=True, slots=True)
class Parallel:
    """`gpus` ranks on `nodes` nodes (equal GPUs per node) under one resolved `strategy`."""

    gpus: int
    nodes: int = 1
    strategy: str = "fsdp"

    def __post_init__(self) -> None:
        check_layout(self.gpus, self.nodes, self.strategy)
        if self.strategy == "auto":
            raise SubprofError("internal: resolve --strategy auto before building a Parallel")

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes

    @property
    def shard_ranks(self) -> int:
        """Ranks one parameter is split over: 1 (ddp), all GPUs (fsdp), the GPUs of one node (hsdp)."""
        return {"ddp": 1, "hsdp": self.gpus_per_node}.get(self.strategy, self.gpus)

    @property
    def replicas(self) -> int:
        """Copies of each shard: the gradient all-reduce runs over these."""
        return self.gpus // self.shard_ranks

    @property
    def sharded(self) -> bool:
        return self.strategy != "ddp"

    @property
    def reshard_after_forward(self) -> bool:
        return self.strategy in ("fsdp", "hsdp")

    def label(self) -> str:
        where = f" on {self.nodes} nodes" if self.nodes > 1 else ""
        return f"{self.strategy} × {self.gpus} GPUs{where}"

    def to_dict(self) -> dict:
        return {"gpus": self.gpus, "nodes": self.nodes, "strategy": self.strategy,
                "shard_ranks": self.shard_ranks, "replicas": self.replicas}


def check_layout(gpus: int, nodes: int, strategy: str) -> None:
    """One line for each bad combination of --gpus, --nodes and --strategy."""
    if gpus < 1:
        raise SubprofError(f"--gpus must be at least 1, got {gpus}")
    if nodes < 1:
        raise SubprofError(f"--nodes must be at least 1, got {nodes}")
    if gpus % nodes:
        raise SubprofError(f"--nodes {nodes} does not divide --gpus {gpus}: give the same number of GPUs per node")
    if strategy not in STRATEGY_CHOICES:
        raise SubprofError(f"--strategy {strategy!r} unknown: use one of {', '.join(STRATEGY_CHOICES)}")
    if strategy == "hsdp" and nodes < 2:
        raise SubprofError("--strategy hsdp shards within a node and replicates across nodes: give --nodes 2 or more "
                           "(on one node use fsdp)")


def strategies_for(gpus: int, nodes: int, strategy: str) -> tuple[str, ...]:
    """The strategies a plan searches: the one asked for, or for `auto` every one that applies (hsdp only across
    nodes)."""
    check_layout(gpus, nodes, strategy)
    if strategy != "auto":
        return (strategy,)
    return tuple(s for s in STRATEGIES if s != "hsdp" or nodes > 1)


def check_shardable(model: ModelConfig, par: Parallel) -> None:
    """FSDP2 splits every parameter's first dim over the shard group: with more ranks than the shortest one has rows
    some ranks would hold nothing of it — one line, not a plan. The rows are those of the family's own tensors: its
    projected weights as it stores them (`ModelConfig.linear_shapes`: k/v KV·d rows, Phi-3's fused qkv_proj
    (H + 2KV)·d and gate_up_proj 2I) and its per-layer vectors (`ModelConfig.layer_vectors`: norm weights h, Qwen3's
    and Gemma 3's q/k norms d, biases)."""
    if not par.sharded:
        return
    rows = {f"{s.name.split('.')[-1]} rows": s.m for s in reversed(model.linear_shapes())}
    rows["hidden (norm weights)"] = model.hidden
    if model.q_norm:
        rows["q_norm/k_norm weights"] = min(model.q_norm, model.k_norm)
    rows["vector (bias or norm) elements"] = min(model.layer_vectors())
    name, least = min(rows.items(), key=lambda kv: kv[1])
    if par.shard_ranks > least:
        raise SubprofError(f"{par.strategy} over {par.shard_ranks} ranks: {model.name} has only {least} {name} to "
                           f"shard; use at most {least} ranks per shard group (or --strategy hsdp/ddp)")
