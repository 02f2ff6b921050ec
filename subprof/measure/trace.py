"""The `trace` backend: the real training step (transformers model + the real optimizer) on fake tensors, under
`torch.distributed._tools.mem_tracker.MemTracker`, so every tensor the step allocates is counted and none is.

What runs is exactly the code a GPU would run, with CUDA's memory-relevant choices reproduced on the CPU:
- the model is built as on the GPU (`subprof.measure.model.build_model`, pure bf16 or fp32 + autocast), inside
  `FakeTensorMode` on the CPU device (fake CUDA tensors cannot run backward without a driver);
- torch AdamW gets `foreach=True` (its CUDA default; the CPU default is the per-tensor loop, whose temporaries
  are one tensor at a time instead of the whole parameter list);
- attention: transformers' sdpa path calls `scaled_dot_product_attention(is_causal=True)` without a mask; on the
  CPU that dispatches to `_scaled_dot_product_flash_attention_for_cpu`, which saves for backward the output and an
  fp32 logsumexp (B, H, S) — the same tensors CUDA's flash kernel saves (checked by `sdpa_kernel_used`);
- the loss upcast is transformers' own code (`logits.float()` then cross-entropy), identical on both devices;
- every storage counts as CUDA's caching allocator counts it in `max_memory_allocated`: rounded up to 512 bytes.
Protocol (shared/reference/README.md): peak reset before the first step, `steps` steps of forward, backward,
`opt.step()`, `opt.zero_grad(set_to_none=True)` on random tokens.

Not seen by a trace (added by calibration from real rows, `subprof.calibration`): the CUDA context, cuBLAS / cuDNN
workspaces, kernel-internal scratch buffers (flash-attention backward's fp32 dq accumulator, cuSOLVER SVD
workspace), allocator block rounding beyond 512 B and fragmentation (`max_memory_reserved`).

8-bit optimizer states: bitsandbytes' blockwise kernels cannot run on fake tensors. `Bnb8bitAdamWTrace` allocates
exactly the state bitsandbytes' `AdamW8bit` allocates (uint8 `state1`/`state2` of the parameter's shape, fp32
`absmax1`/`absmax2` of ⌈numel/256⌉, two 256-entry fp32 `qmap`s shared by the optimizer; tensors under 4096 values keep
fp32 states) and updates in place, as the fused 8-bit kernel does (no temporaries).
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed._tools import mem_tracker as _mt

from subprof.errors import SubprofError
from subprof.measure.case import Case
from subprof.measure.loss import FUSED_NOT_TRACED, forward_backward
from subprof.measure.model import build_model, train_context
from subprof.measure.reference import make_optimizer
from subprof.quiet import known_noise_filtered

CUDA_MIN_ALLOCATION = 512  # bytes: the caching allocator's rounding unit (c10/cuda/CUDACachingAllocator.cpp)

# MemTracker's categories → our names (FSDPMemTracker's own categories for one rank of a sharded job)
CATEGORIES = {
    "Parameter": "parameters", "Buffer": "buffers", "Gradient": "gradients", "Activation": "activations",
    "Temp": "temporaries", "Optstate": "optimizer", "Other": "inputs",
    "Sharded Param": "parameters", "Unsharded Param": "unsharded_parameters", "Sharded Grad": "gradients",
    "Unsharded Grad": "unsharded_gradients", "All Gather": "all_gather", "Reduce Scatter": "reduce_scatter",
    "OptState": "optimizer", "Inputs": "inputs",
}
# aten ops that mark a projection refresh (matched on the op's base name: "sqrt" must not match "qr")
DECOMPOSITIONS = frozenset({"linalg_svd", "_linalg_svd", "svd", "linalg_qr", "geqrf", "orgqr", "linalg_eigh",
                            "_linalg_eigh", "linalg_cholesky_ex", "cholesky"})


@dataclass(kw_only=True, slots=True)
class TraceResult:
    """Peaks in bytes. `categories` is the MemTracker breakdown at the overall peak; `phases` the peak per phase;
    `phase_categories` the breakdown at each phase's peak; `optimizer_state_bytes` what `optimizer.state` holds."""

    peak_allocated_bytes: int
    categories: dict[str, int]
    phases: dict[str, int | None]
    phase_categories: dict[str, dict[str, int]]
    optimizer_state_bytes: int
    param_bytes: int
    sdpa_kernel: str | None
    trace_seconds: float
    host_max_rss_bytes: int
    steps: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@contextlib.contextmanager
def cuda_rounding() -> Iterator[None]:
    """Count every storage as CUDA's allocator does: ⌈bytes / 512⌉ · 512 (MemTracker rounds only real CUDA
    devices; our fake tensors live on the CPU)."""
    cls = _mt._WeakRefInfo
    original = cls._calculate_mem_consumed

    def rounded(self) -> int:
        return math.ceil(self.size * self.element_size / CUDA_MIN_ALLOCATION) * CUDA_MIN_ALLOCATION

    cls._calculate_mem_consumed = rounded
    try:
        yield
    finally:
        cls._calculate_mem_consumed = original


class PhaseMixin:
    """On top of MemTracker (or FSDPMemTracker): the peak and its breakdown per named phase, decomposition ops
    noted, host reads of fake values answered. Call `_init_phases()` in `__init__`."""

    def _init_phases(self) -> None:
        self.phase = "idle"
        self.phase_peak: dict[str, int] = {}
        self.phase_snap: dict[str, dict[str, int]] = {}
        self.decomposed = False
        self.sdpa_ops: set[str] = set()
        self._all_outputs: set[int] = set()  # results of aten.all: their host read stands in as True

    def current_total(self) -> int:
        return sum(s.get(_mt._TOTAL_KEY, 0) for s in self._curr_mem_snap.values())

    def reset_peaks(self) -> None:
        """torch.cuda.reset_peak_memory_stats(): the overall and every phase's peak start again from now."""
        self._peak_mem = {}
        self._peak_mem_snap = {}
        self.phase_peak.clear()
        self.phase_snap.clear()

    def _update_peak_stats(self, peak_state) -> None:
        # MemTracker's own version also walks every module's stats on every op (its per-module peaks, which we
        # don't use): that was ~40% of a trace's time. Keep the global peak and add the per-phase one.
        total = self.current_total()
        if total > sum(self._peak_mem.values()):
            self._peak_mem = {dev: snap[_mt._TOTAL_KEY] for dev, snap in self._curr_mem_snap.items()}
            self._peak_mem_snap = deepcopy(self._curr_mem_snap)
        if total > self.phase_peak.get(self.phase, -1):
            self.phase_peak[self.phase] = total
            self.phase_snap[self.phase] = _flat(self._curr_mem_snap)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and isinstance(args[0], FakeTensor):
            if id(args[0]) in self._all_outputs:
                return True
            return _HOST_SCALAR.get(args[0].dtype, 1.0)
        name = func.__name__
        if name.startswith("all."):
            out = super().__torch_dispatch__(func, types, args, kwargs)
            self._all_outputs.add(id(out))
            return out
        if name.split(".")[0] in DECOMPOSITIONS:
            self.decomposed = True
        if "scaled_dot_product" in name or "flash" in name or "efficient_attention" in name:
            self.sdpa_ops.add(str(func))
        return super().__torch_dispatch__(func, types, args, kwargs)

    @contextlib.contextmanager
    def in_phase(self, name: str) -> Iterator[None]:
        self.phase = name
        self.phase_peak.setdefault(name, self.current_total())
        self.phase_snap.setdefault(name, _flat(self._curr_mem_snap))
        try:
            yield
        finally:
            self.phase = "idle"


class PhaseTracker(PhaseMixin, _mt.MemTracker):
    """MemTracker with per-phase peaks (`PhaseMixin`): the single-process trace."""

    def __init__(self) -> None:
        super().__init__()
        self._init_phases()


# A fake tensor has no values, so a host read (`.item()`, `bool(t)`, `float(t)`) gets a stand-in: False for
# booleans (finiteness checks, `if bad.any()`: nothing is NaN) except results of `all()`, which read True (SUMO:
# every singular value kept), 0 for integers, 1.0 for floats (norms that scale a step). No allocation of our
# optimizers depends on these values beyond those branches (shapes depend only on m, n and rank).
_HOST_SCALAR = {torch.bool: False, torch.uint8: 0, torch.int8: 0, torch.int16: 0, torch.int32: 0, torch.int64: 0}


def _flat(snap: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for dev_snap in snap.values():
        for key, val in dev_snap.items():
            name = CATEGORIES.get(getattr(key, "value", key), "total" if key == _mt._TOTAL_KEY else str(key))
            out[name] = out.get(name, 0) + int(val)
    return out


def _state_tensors(opt) -> list[torch.Tensor]:
    """Tensors an optimizer keeps in `state` (also inside helper objects such as galore-torch's projector)."""
    found: dict[int, torch.Tensor] = {}
    for st in opt.state.values():
        for val in st.values():
            items = [val] if isinstance(val, torch.Tensor) else list(getattr(val, "__dict__", {}).values())
            for t in items:
                if isinstance(t, torch.Tensor):
                    found[id(t)] = t
    return list(found.values())


def _bytes(t: torch.Tensor) -> int:
    n = t.untyped_storage().nbytes()
    return math.ceil(n / CUDA_MIN_ALLOCATION) * CUDA_MIN_ALLOCATION


def trace_case(case: Case) -> TraceResult:
    """Trace `case.steps` training steps of a bench case on fake tensors and return the peaks (module docstring);
    `case.backend`, `budget_bytes` and `seed` play no part here (fake tensors hold no values)."""
    t0 = time.perf_counter()
    c = case.config
    if c.loss == "fused":
        raise SubprofError(FUSED_NOT_TRACED)
    with FakeTensorMode(allow_non_fake_inputs=True), cuda_rounding():
        model = build_model(c.model, dtype=c.dtype, device="cpu", checkpointing=c.checkpointing)
        opt = make_optimizer(model, case, lr=1e-3, trace=True)
        tracker = PhaseTracker()
        tracker.track_external(model)
        params = sum(_bytes(p) for p in model.parameters())
        steps = []
        with known_noise_filtered(), tracker:  # ModTracker's warning on re-entered modules (subprof.quiet)
            tracker._peak_mem = {}  # torch.cuda.reset_peak_memory_stats() before the first step
            built = tracker.current_total()
            for i in range(case.steps):
                tracker.reset_mod_stats()  # MemTracker refuses a second root forward otherwise
                ids = torch.randint(0, c.model.vocab, (c.batch, c.seq), device="cpu")
                tracker.decomposed = False
                with tracker.in_phase(f"fwbw{i}"):
                    loss = forward_backward(model, ids, c.loss, train_context(c.dtype, "cpu"))
                fwbw_refresh = tracker.decomposed  # per-layer methods refresh inside backward
                tracker.decomposed = False
                with tracker.in_phase(f"opt{i}"):
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                refresh = tracker.decomposed or fwbw_refresh
                del loss, ids
                steps.append({"step": i + 1, "forward_backward_peak_bytes": tracker.phase_peak[f"fwbw{i}"],
                              "optimizer_step_peak_bytes": tracker.phase_peak[f"opt{i}"], "refresh": refresh})
        states = sum(_bytes(t) for t in _state_tensors(opt))
    peak_snap = _flat(tracker._peak_mem_snap)
    peak = peak_snap.pop("total", 0)
    phases, phase_categories = _phases(tracker, steps, built)
    return TraceResult(
        peak_allocated_bytes=peak, categories=peak_snap, phases=phases, phase_categories=phase_categories,
        optimizer_state_bytes=states, param_bytes=params, sdpa_kernel=",".join(sorted(tracker.sdpa_ops)) or None,
        trace_seconds=time.perf_counter() - t0,
        host_max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, steps=steps)


def _phases(tracker: PhaseTracker, steps: list[dict], built: int) -> tuple[dict, dict]:
    """Phase peaks over the steps: model_built (before step 1), forward_backward (max over steps), optimizer_step
    (max over steps without a projection refresh; the refresh peak if every step refreshes), projection_refresh
    (max over the optimizer phases of steps that ran a decomposition; None if none did)."""
    def best(keys: list[str]) -> tuple[int | None, dict]:
        if not keys:
            return None, {}
        k = max(keys, key=lambda k: tracker.phase_peak[k])
        snap = dict(tracker.phase_snap[k])
        snap.pop("total", None)
        return tracker.phase_peak[k], snap

    fwbw = best([f"fwbw{s['step'] - 1}" for s in steps])
    plain = best([f"opt{s['step'] - 1}" for s in steps if not s["refresh"]])
    refresh = best([f"opt{s['step'] - 1}" for s in steps if s["refresh"]])
    if plain[0] is None:
        plain = refresh
    phases = {"model_built": built, "forward_backward": fwbw[0], "optimizer_step": plain[0],
              "projection_refresh": refresh[0]}
    cats = {"forward_backward": fwbw[1], "optimizer_step": plain[1], "projection_refresh": refresh[1]}
    return phases, cats


def sdpa_kernel_used(model: str, *, batch: int = 1, seq: int = 16) -> str | None:
    """Which attention op the traced forward dispatches to, for a catalogue model or config path (tests, README)."""
    from subprof.config import TrainConfig
    from subprof.catalog import load_model

    return trace_case(Case(config=TrainConfig(model=load_model(model), batch=batch, seq=seq), steps=1)).sdpa_kernel
