"""Per-rank memory of a data-parallel training step (DDP, FSDP2, FSDP2 without resharding, HSDP): bytes per
component and per phase on rank 0, the rank that holds the most. Pure Python, no torch.

One GPU (`Parallel.gpus == 1`) is `subprof.plan.memory.estimate` unchanged. DDP is that estimate plus DDP's
gradient buckets (`gradient_as_bucket_view=False`, torch's default: a second copy of every gradient for the whole
run — GaLore issue #55). FSDP2 (`fully_shard` per decoder layer and on the root) is built from these terms, each
one formula below, and the phases in which they meet; every term was read off traced steps of one rank
(`subprof bench --backend trace --world-size N`, /work/notes/fsdp_trace.md §2, §4):

- sharded parameters and gradients: Σ ⌈d/W⌉·rest·b over parameters (padded on every rank), split on the side
  their method declares (`MethodSpec.weight_shard`); optimizer states per the declaration (`rank_state_bytes`);
- the root unit (embeddings, final norm, lm_head) stays gathered from its forward through backward (torch's default
  for the root); one decoder layer gathered: its per-parameter storages (unsharded parameters) plus FSDP2's flat
  all-gather output — up to two of those in forward (the unit in use and the prefetched one), one in backward;
- backward holds one layer's unsharded gradients, the flat reduce-scatter input of the previous layer (in the
  reduce dtype: fp32 under mixed precision) and lm_head's unsharded gradient until the root reduce-scatters;
- activations, logits and the cross-entropy peak per rank from the per-rank micro-batch, as on one GPU. Under FSDP2
  mixed precision (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` over fp32 shards) the forward runs
  in bf16, so activations follow the bf16 reading and there is no autocast cache.

Not allocated by PyTorch, so not in the peak, but in device memory: NCCL's communicator buffers, a stated constant
(`NCCL_BUFFER_BYTES`, unmeasured here).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from subprof.catalog import ModelConfig
from subprof.config import TrainConfig, param_bytes
from subprof.methods import get_method
from subprof.methods.spec import Dtype, tensor_bytes, weight_sharding
from subprof.plan import calibration as cal
from subprof.plan.calibration import Calibration
from subprof.plan.memory import (Estimate, activation_bytes, activation_bytes_per_token_layer, estimate,
                                 layers_kept_bytes_per_token, logits_bytes)
from subprof.plan.parallel import Parallel

# NCCL's own device buffers per communicator, outside PyTorch's allocator: NCCL_BUFFSIZE (4 MiB by default, NCCL
# environment-variable docs) per channel, send and receive, to each ring/tree peer, over up to 32 channels on NVLink
# systems: 4 MiB · 2 · 2 · 32 = 512 MiB. An assumption, not a measurement (`bench --backend cuda --world-size N`
# measures it); HSDP holds two communicators (shard and replicate groups).
NCCL_BUFFER_BYTES = 512 * 2**20
NCCL_NOTE = (f"device used includes NCCL's communicator buffers at an assumed {NCCL_BUFFER_BYTES / 2**20:.0f} MiB "
             "per communicator (hsdp: two), not measured")
GATHER_NOTE = ("a projection refresh gathers each weight's gradient to its owner rank for the SVD (projection "
               "workspace = gathered gradient + SVD factors, on one rank at a time)")


@dataclass(kw_only=True, slots=True)
class RankEstimate(Estimate):
    """An `Estimate` of rank 0 of a data-parallel job (`parallel`)."""

    parallel: Parallel

    def to_dict(self) -> dict:
        return {**Estimate.to_dict(self), "parallel": self.parallel.to_dict()}


# ------------------------------------------------------------------------------------------ parameter geometry


@dataclass(frozen=True, slots=True)
class _Param:
    """One parameter: rows × cols (1-D: cols = 1) and whether its method projects it."""

    rows: int
    cols: int
    projected: bool = False


def _layer_params(m: ModelConfig) -> list[_Param]:
    """One decoder layer's parameters (as `catalog.ModelConfig.params` counts them): its projected weights and its
    1-D tensors (`ModelConfig.layer_vectors`: the family's norms, q/k norms and biases)."""
    return [_Param(s.m, s.n, True) for s in m.linear_shapes()] + [_Param(n, 1) for n in m.layer_vectors()]


def _root_params(m: ModelConfig) -> list[_Param]:
    """The root unit: embeddings, final norm, lm_head (unless tied)."""
    out = [_Param(m.vocab, m.hidden), _Param(m.hidden, 1)]
    return out + ([] if m.tied else [_Param(m.vocab, m.hidden)])


def local_numel(p: _Param, long_side: bool, ranks: int) -> int:
    """Values rank 0 holds of `p`: ⌈rows/W⌉·cols on Shard(0), rows·⌈cols/W⌉ on Shard(1) (a projected weight of a
    method that shards on the long side: `MethodSpec.weight_shard`). FSDP2 pads parameters and gradients to this on
    every rank; rank 0's unpadded chunk is the same size."""
    sh = weight_sharding(p.rows, p.cols, ranks, long_side=long_side and p.projected)
    if sh.dim == 0:
        return -(-p.rows // ranks) * p.cols
    return p.rows * -(-p.cols // ranks)


# ------------------------------------------------------------------------------------------------ the terms


@dataclass(frozen=True, kw_only=True, slots=True)
class ShardTerms:
    """The token-independent per-rank bytes of one configuration under FSDP2 (names as in the module docstring)."""

    params: int  # sharded parameters, padded
    grads: int  # sharded gradients, padded
    states: int  # optimizer states of rank 0
    projection: int  # projection matrices of rank 0
    step_temporaries: int
    refresh_workspace: int
    root_unsharded: int  # root unit gathered, compute dtype
    layer_unsharded: int  # one decoder layer gathered, compute dtype
    layer_all_gather: int  # one layer's flat all-gather output (W · padded shard), compute dtype
    layer_reduce_scatter: int  # one layer's flat reduce-scatter input, reduce dtype
    root_reduce_scatter: int
    layer_grad_shard: int  # one layer's sharded gradients
    root_grad_shard: int
    head_grad: int  # lm_head's (or the tied embedding's) unsharded gradient, compute dtype
    root_grads: int  # the root's unsharded gradients at its reduce-scatter, compute dtype
    largest_unit_grad_shard: int  # per-layer updates: the most sharded gradient alive at once
    gathers: bool  # a projection refresh gathers gradients to an owner rank


@lru_cache(maxsize=4096)
def shard_terms(model: ModelConfig, method: str, rank: int | None, state_bits: int, layerwise: bool, dtype: str,
                options: tuple, ranks: int) -> ShardTerms:
    """Every token-independent term for rank 0 of a shard group of `ranks` (cached: `plan` asks often)."""
    spec = get_method(method)
    b = param_bytes(dtype)  # sharded parameters, gradients (fp32 master under mixed)
    bc = 4 if dtype == "fp32" else 2  # compute dtype: what FSDP2 all-gathers and backward produces
    br = 4 if dtype != "bf16" else 2  # reduce dtype
    layer, root = _layer_params(model), _root_params(model)
    loc = {id(p): local_numel(p, spec.project, ranks) for p in layer + root}

    def moments(n: int) -> int:
        return 2 * tensor_bytes(n, Dtype.STATE, state_bits=state_bits, param_bytes=b)

    states = projection = 0
    step_ws = [0]
    refresh_ws = [0]
    gathers = False
    for p in layer:
        if p.projected and spec.project:
            w = _weight_terms(method, p.rows, p.cols, min(rank, p.rows, p.cols), ranks, state_bits, b, options)
            states += model.layers * w[0]
            projection += model.layers * w[1]
            step_ws.append(w[2])
            refresh_ws.append(w[3])
            gathers = gathers or w[4]
        else:
            states += model.layers * moments(loc[id(p)])
    states += sum(moments(loc[id(p)]) for p in root)
    b_state = {32: 4, 16: 2, 8: 0}[state_bits]
    plain = [loc[id(p)] for p in root] + [loc[id(p)] for p in layer if not (p.projected and spec.project)]
    if not spec.project:
        # foreach AdamW: one state-sized copy of every moment (`_foreach_sqrt`), per-layer: one tensor at a time
        tmp = max(plain) * b_state if layerwise else (sum(loc[id(p)] for p in layer) * model.layers
                                                      + sum(loc[id(p)] for p in root)) * b_state
    else:
        tmp = max(max(step_ws), max(plain) * b_state)
    numel_layer = sum(p.rows * p.cols for p in layer)
    padded_layer = sum(loc[id(p)] for p in layer)
    padded_root = sum(loc[id(p)] for p in root)
    head = model.vocab * model.hidden
    return ShardTerms(
        params=b * (model.layers * padded_layer + padded_root),
        grads=b * (model.layers * padded_layer + padded_root),
        states=states, projection=projection, step_temporaries=tmp, refresh_workspace=max(refresh_ws),
        root_unsharded=bc * sum(p.rows * p.cols for p in root), layer_unsharded=bc * numel_layer,
        layer_all_gather=bc * ranks * padded_layer, layer_reduce_scatter=br * ranks * padded_layer,
        root_reduce_scatter=br * ranks * padded_root, layer_grad_shard=b * padded_layer,
        root_grad_shard=b * padded_root, head_grad=bc * head, root_grads=bc * sum(p.rows * p.cols for p in root
                                                                                   if p.cols > 1),
        largest_unit_grad_shard=b * max(padded_layer, padded_root), gathers=gathers)


@lru_cache(maxsize=8192)
def _weight_terms(method: str, m: int, n: int, r: int, ranks: int, state_bits: int, b: int,
                  options: tuple) -> tuple[int, int, int, int, bool]:
    """One projected weight on rank 0, from its method's declaration: (optimizer states, projection matrices, step
    workspace, refresh workspace, whether the refresh gathers the gradient)."""
    spec, opts = get_method(method), dict(options)
    kw = dict(ranks=ranks, state_bits=state_bits, param_bytes=b, options=opts)
    by_role = spec.rank_state_bytes(m, n, r, **kw)
    return (by_role.get("optimizer_states", 0), by_role.get("projection_matrices", 0),
            spec.rank_step_workspace_bytes(m, n, r, **kw), spec.rank_workspace_bytes(m, n, r, **kw),
            spec.gathers_at_refresh(m, n, ranks, opts))


@lru_cache(maxsize=4096)
def token_terms(model: ModelConfig, dtype: str, batch: int, seq: int, checkpointing: str,
                loss: str = "full") -> tuple[int, ...]:
    """(A, one layer's saved activations, what a layer keeps on average under the checkpointing mode, the
    recomputed layer, logits peak) for one rank's micro-batch; FSDP2 mixed precision computes in bf16, so
    activations follow the bf16 reading."""
    c = TrainConfig(model=model, dtype="bf16" if dtype == "mixed" else dtype, batch=batch, seq=seq,
                    checkpointing=checkpointing, loss=loss)
    per_layer = activation_bytes_per_token_layer(c) * c.tokens
    kept = layers_kept_bytes_per_token(c) * c.tokens // model.layers
    return activation_bytes(c), per_layer, kept, per_layer if c.recomputes else 0, logits_bytes(c)


# ---------------------------------------------------------------------------------------------------- estimate


def estimate_rank(c: TrainConfig, par: Parallel | None, calibration: Calibration | None = None) -> Estimate:
    """Rank 0's breakdown by component and phase. One GPU: `estimate(c)` itself; DDP: that plus the buckets;
    FSDP2/HSDP: `_sharded`. `c.batch` is the micro-batch of one rank; the GPU-side terms come from `calibration`
    (default: the H100 reference fit)."""
    calib = calibration or cal.DEFAULT
    if par is None or par.gpus == 1:
        return estimate(c, calib)
    if not par.sharded:
        return _ddp(c, par, calib)
    return _sharded(c, par, calib)


def _ddp(c: TrainConfig, par: Parallel, calib: Calibration) -> RankEstimate:
    """One GPU's estimate + DDP's gradient buckets (P · b_grad, allocated at construction and kept) in every
    phase after the model is wrapped."""
    one = estimate(c, calib)
    buckets = c.model.params * c.param_bytes
    phases = {name: ({**parts, "ddp_buckets": buckets} if parts else {}) for name, parts in one.phases.items()}
    return _finish(c, par, calib, phases, {**one.components, "ddp_buckets": buckets},
                   one.components["logits_loss"], list(one.notes))


def _sharded(c: TrainConfig, par: Parallel, calib: Calibration) -> RankEstimate:
    """FSDP2 / HSDP on rank 0. The phases (each a sum of the terms alive together, module docstring):
    - forward, at the last layer: base + A + root + (one layer, or every layer without resharding) + 2 all-gather
      outputs;
    - cross-entropy backward: base + A + logits peak + root + one all-gather output (none without resharding);
    - layer backward after k layers: base + gathered + one layer's unsharded grads + a reduce-scatter input +
      lm_head's grad + activations of the L−k−1 layers below + k layers' sharded grads, at k = 1 and k = L−1;
    - root reduce-scatter at the end of backward; the optimizer step; a projection refresh.
    base = sharded parameters + states + projection matrices (+ every sharded gradient when accumulating)."""
    m, L = c.model, c.model.layers
    t = shard_terms(m, c.method, c.rank, c.state_bits, c.layerwise, c.dtype,
                    tuple(sorted(c.method_options.items())), par.shard_ranks)
    A, _, kept_layer, recompute, logit = token_terms(m, c.dtype, c.batch, c.seq, c.checkpointing, c.loss)
    runtime = calib.cuda_runtime_allocated_bytes
    accumulating = c.accumulation > 1
    lw = c.layerwise
    base = {"weights": t.params, "optimizer_states": t.states, "projection_matrices": t.projection,
            "cuda_runtime": runtime}
    if accumulating:
        base["gradients"] = t.grads
    reshard = par.reshard_after_forward
    gathered = t.root_unsharded + (t.layer_unsharded if reshard else L * t.layer_unsharded)
    inside = max(t.step_temporaries, t.refresh_workspace) if lw else 0  # per-layer: a hook's step transients

    def layer_backward(k: int) -> dict[str, int]:
        done = 0 if (lw or accumulating) else k * t.layer_grad_shard
        return {**base, "unsharded_parameters": gathered - (0 if reshard else k * t.layer_unsharded),
                "all_gather_buffers": t.layer_all_gather if reshard else 0,
                "unsharded_gradients": t.layer_unsharded + t.head_grad,
                "reduce_scatter_buffers": t.layer_reduce_scatter,
                "activations": max(L - k - 1, 0) * kept_layer + recompute,
                "gradients": base.get("gradients", 0) + done + (t.largest_unit_grad_shard if lw else 0),
                "optimizer_temporaries": inside}

    forward = {**base, "activations": A, "unsharded_parameters": gathered, "all_gather_buffers": 2 * t.layer_all_gather}
    cross_entropy = {**base, "activations": A, "logits_loss": logit, "unsharded_parameters": t.root_unsharded
                     + (0 if reshard else L * t.layer_unsharded),
                     "all_gather_buffers": t.layer_all_gather if reshard else 0}
    # FSDP2 reshards a unit before its reduce-scatter: the root's parameters are gone, its gradients (compute dtype)
    # and the flat reduce-scatter input (reduce dtype) meet during the copy-in
    root_end = {**base, "gradients": t.largest_unit_grad_shard if lw else t.grads - t.root_grad_shard,
                "unsharded_gradients": t.root_grads,
                "reduce_scatter_buffers": t.root_reduce_scatter, "optimizer_temporaries": inside}
    states = [forward, cross_entropy, layer_backward(1), layer_backward(max(L - 1, 1)), root_end]
    kept = {k: v for k, v in base.items() if k != "gradients"}
    phases = {
        "model_built": {"weights": t.params},
        "forward_backward": max(states, key=_total),
        "optimizer_step": {} if lw else {**kept, "gradients": t.grads, "optimizer_temporaries": t.step_temporaries},
        "projection_refresh": {**kept, "gradients": t.grads, "projection_workspace": t.refresh_workspace}
        if c.spec.project and not lw else {},
    }
    components = {"weights": t.params, "gradients": t.grads, "optimizer_states": t.states,
                  "projection_matrices": t.projection, "projection_workspace": t.refresh_workspace,
                  "activations": A, "logits_loss": logit, "optimizer_temporaries": t.step_temporaries,
                  "autocast_cache": 0, "cuda_runtime": runtime, "unsharded_parameters": gathered,
                  "all_gather_buffers": 2 * t.layer_all_gather if reshard else t.layer_all_gather,
                  "reduce_scatter_buffers": max(t.layer_reduce_scatter, t.root_reduce_scatter),
                  "unsharded_gradients": max(t.layer_unsharded + t.head_grad, t.root_grads), "ddp_buckets": 0}
    return _finish(c, par, calib, phases, components, logit, [GATHER_NOTE] if t.gathers else [])


def _total(parts: dict[str, int]) -> int:
    return sum(parts.values())


def nccl_bytes(par: Parallel | None) -> int:
    """NCCL's communicator buffers of a rank (device memory outside PyTorch's allocator): none for one process."""
    if par is None or par.gpus <= 1:
        return 0
    return (2 if par.strategy == "hsdp" else 1) * NCCL_BUFFER_BYTES


def _finish(c: TrainConfig, par: Parallel, calib: Calibration, phases: dict, components: dict, logit: int,
            notes: list[str]) -> RankEstimate:
    peak_phase, peak = "model_built", -1
    for name, parts in phases.items():
        total = sum(parts.values())
        if total > peak:
            peak_phase, peak = name, total
    reserved = calib.reserved_bytes(peak, logit)
    used = calib.device_used_bytes(peak, logit) + nccl_bytes(par)
    notes = notes + [NCCL_NOTE]
    return RankEstimate(config=c, components=components, phases=phases, peak_phase=peak_phase,
                        peak_allocated_bytes=peak, reserved_bytes=reserved, device_used_bytes=used, notes=notes,
                        calibration=calib.source, parallel=par)


def shard_bytes(c: TrainConfig, par: Parallel) -> dict[str, int]:
    """Exact bytes rank 0 holds in sharded parameters, gradients and optimizer states (the arithmetic a trace must
    reproduce byte for byte: /work/notes/fsdp_trace.md §2)."""
    t = shard_terms(c.model, c.method, c.rank, c.state_bits, c.layerwise, c.dtype,
                    tuple(sorted(c.method_options.items())), par.shard_ranks)
    return {"parameters": t.params, "gradients": t.grads, "optimizer_states": t.states + t.projection}
