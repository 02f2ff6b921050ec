"""Which optimizer a bench case runs: subprof's own (`build_optimizer`, the default) or a reference implementation run
side by side with it (galore-torch's `GaLoreAdamW`), and the stand-in for bitsandbytes' 8-bit AdamW under a trace.

Per-layer updates are always `subprof.optim.LayerwiseOptimizer`, whatever the inner optimizer: `bench adamw
--layerwise` measures exactly what `build_optimizer(model, "adamw", layerwise=True)` returns.
"""

from __future__ import annotations

import torch

from subprof.errors import SubprofError
from subprof.measure.case import Case


class Bnb8bitAdamWTrace(torch.optim.Optimizer):
    """bitsandbytes `AdamW8bit`'s memory, for fake tensors (its CUDA kernels cannot run there). Per parameter:
    `state1`/`state2` uint8 of the parameter's shape + fp32 `absmax1`/`absmax2` of ⌈numel/256⌉ blocks, or fp32
    `state1`/`state2` when numel < 4096 (bitsandbytes 0.4x `Optimizer2State.init_state`); the two 256-entry qmaps
    are shared. The update is in place, like the fused blockwise kernel: no temporaries. A sharded (DTensor)
    parameter gets states of its local shard, quantised in blocks of the local values — how an 8-bit optimizer
    keeps states under FSDP2 (the declared per-rank layout: `TensorSpec.rank_nbytes`)."""

    def __init__(self, params, lr: float = 1e-3, min_8bit_size: int = 4096, blocksize: int = 256) -> None:
        super().__init__(params, {"lr": lr})
        self.min_8bit_size, self.blocksize = min_8bit_size, blocksize
        self.qmaps: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                local = p.to_local() if hasattr(p, "to_local") else p
                if not st:
                    if local.numel() < self.min_8bit_size:
                        st["state1"] = torch.zeros_like(local, dtype=torch.float32)
                        st["state2"] = torch.zeros_like(local, dtype=torch.float32)
                    else:
                        if not self.qmaps:
                            self.qmaps = [torch.zeros(256, device=p.device, dtype=torch.float32) for _ in range(2)]
                        blocks = -(-local.numel() // self.blocksize)
                        st["state1"] = torch.zeros_like(local, dtype=torch.uint8)
                        st["state2"] = torch.zeros_like(local, dtype=torch.uint8)
                        st["absmax1"] = torch.zeros(blocks, device=p.device, dtype=torch.float32)
                        st["absmax2"] = torch.zeros(blocks, device=p.device, dtype=torch.float32)
                p.add_(p.grad, alpha=-group["lr"])  # stands for the in-place fused kernel
        return None


def make_optimizer(model: torch.nn.Module, case: Case, *, lr: float = 1e-3, trace: bool = False):
    """The optimizer of a case. subprof: `build_optimizer` with torch AdamW in its CUDA implementation
    (`foreach=True`, forced so the CPU trace matches CUDA) and, under a trace, `Bnb8bitAdamWTrace` for bitsandbytes'
    8-bit AdamW (its kernels cannot run on fake tensors). galore-torch: 1.0's `GaLoreAdamW` (8-bit:
    `GaLoreAdamW8bit`) on the reference rows' parameter groups."""
    from subprof.optim import LayerwiseOptimizer, build_optimizer

    c = case.config
    if case.implementation == "subprof":
        if trace and not c.spec.project and c.state_bits == 8:
            params = [p for p in model.parameters() if p.requires_grad]
            inner = Bnb8bitAdamWTrace(params, lr=lr)
            return LayerwiseOptimizer(inner) if c.layerwise else inner
        return build_optimizer(model, c.method, rank=c.rank, update_gap=c.update_gap, state_bits=c.state_bits,
                               layerwise=c.layerwise, lr=lr, foreach=True, **c.method_options)
    case.check_installed()
    import galore_torch

    bits8 = c.state_bits == 8
    if bits8 and trace:
        raise SubprofError("galore-ref with 8-bit states runs bitsandbytes kernels: not traceable; "
                           "use --backend cuda, or --methods galore --state-bits 8")
    cls = galore_torch.GaLoreAdamW8bit if bits8 else galore_torch.GaLoreAdamW
    inner = cls(_galore_groups(model, c.rank, c.update_gap), lr=lr)
    return LayerwiseOptimizer(inner) if c.layerwise else inner


def _galore_groups(model: torch.nn.Module, rank: int, update_gap: int) -> list[dict]:
    """shared/reference/README.md: GaLore on every 2-D weight whose name contains `attn` or `mlp` (rank, gap,
    scale 0.25, proj_type std); plain AdamW groups for the rest (embeddings, norms, lm_head)."""
    lowrank, rest = [], []
    for name, p in model.named_parameters():
        (lowrank if p.dim() == 2 and ("attn" in name or "mlp" in name) else rest).append(p)
    return [{"params": rest},
            {"params": lowrank, "rank": rank, "update_proj_gap": update_gap, "scale": 0.25, "proj_type": "std"}]
