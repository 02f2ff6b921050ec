"""A bench case: one training configuration and how to measure it. Pure data (no torch): it travels to the worker
process as JSON.

`implementation` says whose optimizer runs: "subprof" (`subprof.optim.build_optimizer`, the default) or a reference
package run side by side with ours — "galore-torch" (galore-torch 1.0's `GaLoreAdamW`, what the H100 reference rows
ran), valid for `galore` only. On the command line that is the method name `galore-ref`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.plan.parallel import Parallel, check_shardable
from subprof.results import case_key

BACKENDS = ("auto", "cuda", "trace", "cpu")
IMPLEMENTATIONS = {"subprof": None, "galore-torch": "galore"}  # implementation → the one method it implements
PACKAGES = {"galore-torch": "galore_torch"}  # implementation → the module it needs (extra `subprof[reference]`)
REFERENCE_NAMES = {"galore-ref": ("galore", "galore-torch")}  # what a user types → (method, implementation)
# what identifies a finished row for `--resume`
KEY_FIELDS = ("model", "method", "implementation", "rank", "update_gap", "batch", "seq", "dtype", "state_bits",
              "layerwise", "checkpointing", "loss", "backend", "steps", "world_size", "nodes", "strategy",
              "method_options")  # the base optimizer and a method's variant options tell cases apart too


@dataclass(kw_only=True, slots=True)
class Case:
    """One measurement: a training configuration, the backend that measures it and for how many steps. `threads`:
    torch CPU threads (None: the default). `world_size` > 1 measures one rank of a data-parallel job under
    `strategy` (default fsdp) on `nodes` nodes: `batch` is the micro-batch per rank."""

    config: TrainConfig
    backend: str = "trace"
    steps: int = 3
    implementation: str = "subprof"
    seed: int = 0
    threads: int | None = None
    world_size: int = 1
    nodes: int = 1
    strategy: str | None = None

    def __post_init__(self) -> None:
        if self.world_size > 1 and self.strategy is None:
            self.strategy = "fsdp"
        if self.world_size == 1 and (self.strategy is not None or self.nodes != 1):
            raise SubprofError("--strategy and --nodes describe a data-parallel job: give --world-size 2 or more")
        if self.world_size > 1:
            if self.strategy == "auto":
                raise SubprofError("bench measures one strategy: give --strategy ddp, fsdp, fsdp-no-reshard or hsdp")
            check_shardable(self.config.model, Parallel(gpus=self.world_size, nodes=self.nodes,
                                                        strategy=self.strategy))
            if self.backend == "cpu":
                raise SubprofError("--world-size needs --backend trace (one rank on a fake process group) or cuda "
                                   "(torchrun on the local GPUs)")
        if self.backend not in BACKENDS[1:]:
            raise SubprofError(f"--backend {self.backend!r} unknown: use one of {', '.join(BACKENDS)}")
        if self.steps < 1:
            raise SubprofError(f"--steps must be at least 1, got {self.steps}")
        if self.implementation not in IMPLEMENTATIONS:
            raise SubprofError(f"implementation {self.implementation!r} unknown: use one of "
                               f"{', '.join(IMPLEMENTATIONS)}")
        only = IMPLEMENTATIONS[self.implementation]
        if only is not None and self.config.method != only:
            raise SubprofError(f"{self.implementation} implements {only}, not {self.config.method}")

    def check_installed(self) -> None:
        """A reference implementation's package must be importable (it is the optional extra `reference`)."""
        import importlib.util

        module = PACKAGES.get(self.implementation)
        if module is not None and importlib.util.find_spec(module) is None:
            raise SubprofError(f"{self.method_label} runs {self.implementation}, which is not installed: "
                               f"pip install 'subprof[reference]' (or pip install {self.implementation})")

    @property
    def parallel(self) -> Parallel | None:
        """The job's data-parallel layout, or None for one process."""
        if self.world_size == 1:
            return None
        return Parallel(gpus=self.world_size, nodes=self.nodes, strategy=self.strategy or "fsdp")

    @property
    def method_label(self) -> str:
        """The method as a user names it on the command line (`galore-ref` for galore-torch's GaLore)."""
        for name, (method, impl) in REFERENCE_NAMES.items():
            if (method, impl) == (self.config.method, self.implementation):
                return name
        return self.config.method

    def key(self) -> tuple:
        return case_key(self.row_fields(), KEY_FIELDS)

    def row_fields(self) -> dict[str, Any]:
        """The identifying fields every result row of this case carries, whatever happened."""
        return {**self.config.to_dict(), "model": self.config.model.name, "implementation": self.implementation,
                "backend": self.backend, "steps": self.steps, "world_size": self.world_size, "nodes": self.nodes,
                "strategy": self.strategy}

    def label(self) -> str:
        c = self.config
        r = f" r{c.rank}" if c.rank else ""
        extra = "".join(s for s, on in ((" per-layer", c.layerwise), (f" ckpt:{c.checkpointing}", c.recomputes),
                                         (f" {c.loss}-ce", c.loss != "full")) if on)
        par = f" {self.parallel.label()}" if self.parallel else ""
        base = f"+{c.base}" if c.base != "adamw" else ""
        return (f"{c.model.name} {self.method_label}{base}{r} {c.state_bits}-bit{extra} b{c.batch} s{c.seq}{par} "
                f"[{self.backend}]")

    def to_json(self) -> str:
        return json.dumps({"config": self.config.to_dict(), "backend": self.backend, "steps": self.steps,
                           "implementation": self.implementation, "seed": self.seed, "threads": self.threads,
                           "world_size": self.world_size, "nodes": self.nodes, "strategy": self.strategy})

    @classmethod
    def from_json(cls, text: str) -> "Case":
        data = json.loads(text)
        return cls(config=TrainConfig.from_dict(data.pop("config")), **data)


def resolve_backend(backend: str) -> str:
    """`auto` → `cuda` when a GPU is present, else `trace`; `cuda` without a GPU is a one-line error now, before any
    case runs (asks torch only when it must)."""
    if backend not in BACKENDS:
        raise SubprofError(f"--backend {backend!r} unknown: use one of {', '.join(BACKENDS)}")
    if backend in ("trace", "cpu"):
        return backend
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if backend == "cuda":
        raise SubprofError("--backend cuda needs a CUDA GPU and none is visible here; use --backend trace (fake "
                           "tensors, any model) or --backend cpu (real steps, small models)")
    return "trace"
