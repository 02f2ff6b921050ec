"""Optimizer offload (`--offload optimizer`): FSDP2's `CPUOffloadPolicy` on one GPU. Pure Python, no torch.

What the policy keeps where (torch.distributed.fsdp `CPUOffloadPolicy` and `FSDPParam`, torch 2.14):
- host (pinned): the sharded parameters, their gradients and the optimizer states; `optimizer.step()` runs there,
  on CPU tensors (torch's single-tensor AdamW: CPU gets no foreach kernels);
- GPU, transiently: each unit's parameters, copied host-to-device (`sharded_param_data.to(device)`) and all-gathered
  for its forward and again for its backward (`reshard_after_forward=True`), the root (embeddings, final norm,
  lm_head) kept gathered from forward to backward; each unit's gradients until reduce-scattered and copied
  device-to-host; activations, logits and the CUDA runtime as always.
So the GPU side is the FSDP2 rank model of `plan.distributed` at one rank with no sharded parameters, gradients or
states, plus one layer's host-to-device and device-to-host staging copies; the host side is those three plus the
CPU step's temporary. One GPU, full-rank AdamW at 16 or 32 bits, stepped globally: the combinations torch runs.

Speed, per optimizer step: the GPU's compute, or the PCIe copies if longer (FSDP2 pins host memory so copies
overlap compute on their own streams), then the CPU step, which nothing overlaps:
    step = max(compute, A · max(H2D, D2H) / link) + P · bytes_per_param / HOST_STEP_GBS
with A micro-batches per step, H2D = (2 · decoder layers + root) · b per micro-batch, D2H = P · b (gradients, every
micro-batch), link = the GPU catalogue's `host_link_gbs` (its PCIe interface, one direction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from subprof.catalog import GpuSpec
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.plan import calibration as cal
from subprof.plan.calibration import Calibration
from subprof.plan.distributed import _layer_params, _root_params, shard_terms, token_terms
from subprof.plan.memory import Estimate
from subprof.plan.throughput import Throughput, predict_throughput, train_flops_per_token

OFFLOAD_CHOICES = ("none", "optimizer")
# Assumption, not a catalogue figure (no measured CPU AdamW rate is committed): the host-memory traffic torch's CPU
# AdamW step sustains, GB/s. One socket of 8 DDR4-3200 channels peaks at 204.8 GB/s (JEDEC: 25.6 GB/s per channel);
# torch's single-tensor CPU AdamW makes several passes per tensor and runs far from that peak. Change it here.
HOST_STEP_GBS = 25.0


@dataclass(kw_only=True, slots=True)
class OffloadEstimate(Estimate):
    """The GPU-side `Estimate` of an offloaded run, with what the host holds and what crosses PCIe per micro-batch."""

    host: dict[str, int] = field(default_factory=dict)
    h2d_bytes: int = 0  # per micro-batch: parameters copied host → GPU
    d2h_bytes: int = 0  # per micro-batch: gradients copied GPU → host

    @property
    def host_bytes(self) -> int:
        """Host memory the offloaded state needs (pinned parameters and gradients, states, the step's temporary);
        the process's own footprint (libraries, data loading) comes on top."""
        return sum(self.host.values())

    def to_dict(self) -> dict:
        return {**Estimate.to_dict(self), "offload": "optimizer", "host_bytes": self.host_bytes,
                "host": dict(self.host), "h2d_bytes_per_micro_batch": self.h2d_bytes,
                "d2h_bytes_per_micro_batch": self.d2h_bytes}


def parse_offload(text: str) -> str:
    """`--offload` as one of `OFFLOAD_CHOICES`, else one line naming them."""
    value = text.strip().lower()
    if value not in OFFLOAD_CHOICES:
        raise SubprofError(f"--offload {text!r} unknown: use {' or '.join(OFFLOAD_CHOICES)}")
    return value


def check_offload(c: TrainConfig, gpus: int = 1) -> None:
    """One line when FSDP2's CPU offload, as modelled, does not apply to `c`."""
    if gpus > 1:
        raise SubprofError("--offload optimizer is modelled for one GPU: leave out --gpus, or shard the states over "
                           "the GPUs instead (--strategy fsdp)")
    if c.spec.project:
        raise SubprofError(f"--offload optimizer applies to full-rank AdamW: {c.method}'s CPU step (projections, "
                           f"refreshes) has no speed model here; use --method adamw, or leave --offload out")
    if c.state_bits == 8:
        raise SubprofError("--offload optimizer keeps states on the CPU, where bitsandbytes' 8-bit AdamW (a CUDA "
                           "kernel) does not run: use --state-bits 16 or 32")
    if c.layerwise:
        raise SubprofError("--offload optimizer steps on the CPU after backward; --layerwise steps in backward hooks "
                           "on the GPU: use one or the other")


def offload_estimate(c: TrainConfig, calibration: Calibration | None = None) -> OffloadEstimate:
    """GPU and host bytes of `c` under FSDP2 `CPUOffloadPolicy` on one GPU (module docstring). GPU phases, each a sum
    of the terms alive together (as `plan.distributed._sharded` at one rank, reshard after forward):
    - forward, at the last layer: A + root + one layer gathered + 2 all-gather outputs + one layer staged H2D;
    - cross-entropy backward: A + logits peak + root + one all-gather output;
    - layer backward: root + one layer gathered and its all-gather output + that layer's unsharded gradients and
      lm_head's + a reduce-scatter input + one layer's gradient shard staged D2H + the activations still saved;
    - the root's reduce-scatter at the end of backward.
    Host: parameters and gradients (P · b each, pinned), two moments, one tensor's temporary in the CPU step."""
    check_offload(c)
    calib = calibration or cal.DEFAULT
    m, L = c.model, c.model.layers
    t = shard_terms(m, c.method, c.rank, c.state_bits, c.layerwise, c.dtype, (), 1)
    A, _, kept_layer, recompute, logit = token_terms(m, c.dtype, c.batch, c.seq, c.checkpointing, c.loss)
    runtime = calib.cuda_runtime_allocated_bytes
    base = {"cuda_runtime": runtime}
    gathered = t.root_unsharded + t.layer_unsharded
    staged = t.layer_grad_shard  # one layer's parameters (or gradients) at param dtype, on the GPU during a copy

    def layer_backward(k: int) -> dict[str, int]:
        return {**base, "unsharded_parameters": gathered, "all_gather_buffers": t.layer_all_gather,
                "unsharded_gradients": t.layer_unsharded + t.head_grad,
                "reduce_scatter_buffers": t.layer_reduce_scatter, "offload_staging": staged,
                "activations": max(L - k - 1, 0) * kept_layer + recompute}

    forward = {**base, "activations": A, "unsharded_parameters": gathered,
               "all_gather_buffers": 2 * t.layer_all_gather, "offload_staging": staged}
    cross_entropy = {**base, "activations": A, "logits_loss": logit, "unsharded_parameters": t.root_unsharded,
                     "all_gather_buffers": t.layer_all_gather}
    root_end = {**base, "unsharded_gradients": t.root_grads, "reduce_scatter_buffers": t.root_reduce_scatter,
                "offload_staging": t.root_grad_shard}
    fwd_bwd = max([forward, cross_entropy, layer_backward(1), layer_backward(max(L - 1, 1)), root_end],
                  key=lambda d: sum(d.values()))
    phases = {"model_built": {}, "forward_backward": fwd_bwd, "optimizer_step": {}, "projection_refresh": {}}
    peak = sum(fwd_bwd.values())
    host = {"weights": t.params, "gradients": t.grads, "optimizer_states": t.states,
            "optimizer_temporaries": _cpu_step_temporary(c)}
    components = {"weights": 0, "gradients": 0, "optimizer_states": 0, "activations": A, "logits_loss": logit,
                  "cuda_runtime": runtime, "unsharded_parameters": gathered,
                  "all_gather_buffers": 2 * t.layer_all_gather,
                  "reduce_scatter_buffers": max(t.layer_reduce_scatter, t.root_reduce_scatter),
                  "unsharded_gradients": max(t.layer_unsharded + t.head_grad, t.root_grads),
                  "offload_staging": max(staged, t.root_grad_shard)}
    layer_numel = sum(p.rows * p.cols for p in _layer_params(m))
    root_numel = sum(p.rows * p.cols for p in _root_params(m))
    return OffloadEstimate(
        config=c, components=components, phases=phases, peak_phase="forward_backward", peak_allocated_bytes=peak,
        reserved_bytes=calib.reserved_bytes(peak, logit), device_used_bytes=calib.device_used_bytes(peak, logit),
        calibration=calib.source, host=host,
        h2d_bytes=(2 * L * layer_numel + root_numel) * c.param_bytes, d2h_bytes=m.params * c.param_bytes,
        notes=["optimizer offload (FSDP2 CPUOffloadPolicy, one GPU): parameters, gradients and AdamW states live in "
               "host memory and the step runs on the CPU; the GPU holds each layer only while it computes"])


def _cpu_step_temporary(c: TrainConfig) -> int:
    """torch's single-tensor AdamW (CPU has no foreach kernels) allocates one denominator of the tensor's size at a
    time: the largest tensor's numel · state bytes."""
    m = c.model
    largest = max(max(s.m * s.n for s in m.linear_shapes()), *m.unprojected_tensors())
    return largest * {32: 4, 16: 2}[c.state_bits]


@dataclass(frozen=True, kw_only=True, slots=True)
class OffloadThroughput(Throughput):
    """`Throughput` of an offloaded run: `optimizer_s` is the CPU step; the PCIe copies and the same configuration's
    speed on the GPU alone (`on_gpu_tokens_per_s`, had it fit) beside it."""

    transfer_s: float
    link_gbs: float
    on_gpu_tokens_per_s: float

    @property
    def slowdown(self) -> float:
        """How many times slower than the same configuration on the GPU alone."""
        return self.on_gpu_tokens_per_s / self.tokens_per_s

    def to_dict(self) -> dict:
        return {"step_s": round(self.step_s, 4), "compute_s": round(self.compute_s, 4),
                "host_step_s": round(self.optimizer_s, 4), "transfer_s": round(self.transfer_s, 4),
                "host_link_gbs": self.link_gbs, "on_gpu_tokens_per_s": round(self.on_gpu_tokens_per_s, 1),
                "slowdown": round(self.slowdown, 3), "host_step_gbs": HOST_STEP_GBS}


def host_step_seconds(c: TrainConfig) -> float:
    """The CPU AdamW step: P · (weight + gradient) bytes and two moments, each read once and the weight and moments
    written once, at `HOST_STEP_GBS`."""
    b_state = {32: 4, 16: 2}[c.state_bits]
    per_param = 3 * c.param_bytes + 4 * b_state  # read w, g, m, v; write w, m, v
    return c.model.params * per_param / (HOST_STEP_GBS * 1e9)


def offload_throughput(c: TrainConfig, est: OffloadEstimate, gpu: GpuSpec, *, utilization: float = 0.4,
                       calibration: Calibration | None = None) -> OffloadThroughput:
    """tokens/s of the offloaded step (module docstring); `on_gpu_tokens_per_s` is `predict_throughput` of the same
    configuration with everything on the GPU."""
    if gpu.host_link_gbs <= 0:
        raise SubprofError(f"{gpu.name} has no host-link figure in the GPU catalogue: --offload cannot time it")
    tokens = c.tokens * c.accumulation
    compute = train_flops_per_token(c) * tokens / (utilization * gpu.bf16_tflops * 1e12)
    transfer = c.accumulation * max(est.h2d_bytes, est.d2h_bytes) / (gpu.host_link_gbs * 1e9)
    host = host_step_seconds(c)
    step = max(compute, transfer) + host
    on_gpu = predict_throughput(c, gpu, utilization=utilization, calibration=calibration).tokens_per_s
    return OffloadThroughput(tokens_per_s=tokens / step, step_s=step, compute_s=compute, optimizer_s=host,
                             projection_s=0.0, utilization=utilization, gpu=gpu.name, transfer_s=transfer,
                             link_gbs=gpu.host_link_gbs, on_gpu_tokens_per_s=on_gpu)

