"""The analytic memory model: bytes per component and per phase of one LLaMA training step. Pure Python, no torch.

What it predicts, for one configuration (model × method × rank × update gap × state bits × per-layer × dtype ×
micro-batch × sequence × checkpointing mode × loss kind):
- `peak_allocated_bytes`: what `torch.cuda.max_memory_allocated()` reports over a few training steps;
- `device_used_bytes`: what nvidia-smi shows: the allocator's reserved memory plus the CUDA context.

The peak is the maximum over phases (built model, forward/backward, optimizer step, projection refresh), never the
sum of every component. Per-weight optimizer states come from each method's own declaration
(`subprof.methods.*.SPEC`, under the method options of the configuration), the same declaration the optimizer allocates from. Activation bytes follow the
tensors the family's transformers class saves for backward (`plan.activations`); the constants were checked against
traced steps (FakeTensorMode + MemTracker, `subprof bench --backend trace`) and the GPU-side terms calibrated on
real H100 rows (see `calibration.py`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from subprof.catalog import ModelConfig
from subprof.config import TrainConfig
from subprof.methods.spec import FOREACH_NUMEL, Dtype, tensor_bytes
from subprof.plan import calibration as cal
from subprof.plan.calibration import Calibration
from subprof.plan.activations import (all_layers_saved_bytes_per_token, compute_bytes,
                                      final_saved_bytes_per_token, largest_layer_saved_bytes_per_token,
                                      residual_bytes)
from subprof.plan.checkpointing import selective_saved_bytes_per_token
from subprof.plan.loss import loss_kind_bytes

COMPONENTS = (
    "weights", "gradients", "optimizer_states", "projection_matrices", "projection_workspace", "activations",
    "logits_loss", "optimizer_temporaries", "autocast_cache", "cuda_runtime",
)
PHASES = ("model_built", "forward_backward", "optimizer_step", "projection_refresh")
PHASE_MEANING = {  # what each phase holds: the legend of the per-phase breakdown (`estimate` prints it)
    "model_built": "weights only, before any step",
    "forward_backward": "the larger of backward's start (saved activations + cross-entropy) and its end (every "
                        "gradient); accumulated gradients stay alive through it",
    "optimizer_step": "inside optimizer.step(): gradients + states + the step's temporaries",
    "projection_refresh": "one weight's projection refresh (SVD/QR workspace) + gradients + states",
}


@dataclass(kw_only=True, slots=True)
class Estimate:
    config: TrainConfig
    components: dict[str, int]
    phases: dict[str, dict[str, int]]
    peak_phase: str
    peak_allocated_bytes: int
    reserved_bytes: int
    device_used_bytes: int
    notes: list[str] = field(default_factory=list)
    calibration: str = ""

    def to_dict(self) -> dict:
        c = self.config
        return {
            "model": c.model.name, "method": c.method, "base": c.base, "rank": c.rank, "update_gap": c.update_gap,
            "state_bits": c.state_bits, "layerwise": c.layerwise, "dtype": c.dtype, "batch": c.batch, "seq": c.seq,
            "checkpointing": c.checkpointing, "loss": c.loss, "accumulation": c.accumulation,
            "peak_allocated_bytes": self.peak_allocated_bytes, "reserved_bytes": self.reserved_bytes,
            "device_used_bytes": self.device_used_bytes, "peak_phase": self.peak_phase,
            "components": dict(self.components), "phases": {k: dict(v) for k, v in self.phases.items()},
            "notes": list(self.notes), "calibration": self.calibration,
        }


# ------------------------------------------------------------------------------------------- model-side terms


def weight_bytes(c: TrainConfig) -> int:
    """weights = P · b_param (bf16: 2 B; mixed: fp32 master, 4 B)."""
    return c.model.params * c.param_bytes


def gradient_bytes(c: TrainConfig) -> int:
    """gradients = P · b_param; per-layer updates without gradient accumulation free each gradient in its hook, so
    only the largest tensor's gradient (the embedding or lm_head, V·h) is alive at once. With accumulation the
    gradients must survive between micro-batches, per-layer or not."""
    if c.layerwise and c.accumulation == 1:
        return max(c.model.embedding_params, c.model.lm_head_params) * c.param_bytes
    return c.model.params * c.param_bytes


def _adamw_tensor_bytes(numel: int, c: TrainConfig) -> int:
    """Two AdamW moments of one tensor at `state_bits`."""
    return 2 * tensor_bytes(numel, Dtype.STATE, state_bits=c.state_bits, param_bytes=c.param_bytes)


def _plain_state_bytes(c: TrainConfig) -> int:
    """The base optimizer's states on every unprojected tensor (`subprof.methods.bases`: AdamW's two moments,
    Lion's one, Adafactor's row and column factors of the embedding and lm_head, a full second moment of 1-D ones).
    Tensors of one size hold the same states: each size is counted once, times how many there are."""
    m = c.model
    if c.base == "adamw":
        sizes = m.unprojected_tensors()
        return sum(sizes.count(n) * _adamw_tensor_bytes(n, c) for n in set(sizes))
    from subprof.methods.bases import expand, base_moments
    from subprof.methods.spec import full_shape

    matrix = expand((base_moments(full_shape),), c.base)
    vector = expand((base_moments(lambda a, b, r: (a,)),), c.base)
    mats = [m.embedding_params] + ([m.lm_head_params] if not m.tied else [])
    vectors = Counter(m.unprojected_tensors()[1:len(m.unprojected_tensors()) - (0 if m.tied else 1)])
    total = sum(t.nbytes(m.vocab, m.hidden, 0, state_bits=c.state_bits, param_bytes=c.param_bytes)
                for _ in mats for t in matrix)
    return total + sum(k * t.nbytes(n, 1, 0, state_bits=c.state_bits, param_bytes=c.param_bytes)
                       for n, k in vectors.items() for t in vector)


def state_bytes(c: TrainConfig) -> dict[str, int]:
    """optimizer_states and projection_matrices: Σ over projected weights of the method's declared tensors
    (MethodSpec.state_bytes) + two AdamW moments for every tensor kept in plain AdamW. Weights of one shape hold
    the same states (`ModelConfig.shape_counts`)."""
    spec, m = c.spec, c.model
    out = {"optimizer_states": 0, "projection_matrices": 0}
    if not spec.project:
        for rows, cols, count in m.shape_counts():
            out["optimizer_states"] += count * sum(spec.state_bytes(rows, cols, 0, state_bits=c.state_bits,
                                                                    param_bytes=c.param_bytes,
                                                                    options=c.method_options).values())
    else:
        for rows, cols, count in m.shape_counts():
            r = min(c.rank, rows, cols)
            for role, n_bytes in spec.state_bytes(rows, cols, r, state_bits=c.state_bits, param_bytes=c.param_bytes,
                                                  options=c.method_options).items():
                out[role] = out.get(role, 0) + count * n_bytes
    out["optimizer_states"] += _plain_state_bytes(c)
    return out


def refresh_workspace_bytes(c: TrainConfig) -> int:
    """projection_workspace = max over weights of the method's declared refresh workspace (weights refresh one at
    a time), e.g. GaLore: fp32 copy of G (4mn) + U (4mk) + S (4k) + Vh (4kn), k = min(m, n)."""
    spec = c.spec
    if not spec.project:
        return 0
    return max(spec.workspace_bytes(rows, cols, min(c.rank, rows, cols), state_bits=c.state_bits,
                                    param_bytes=c.param_bytes, options=c.method_options)
               for rows, cols, _ in c.model.shape_counts())


def step_temporary_bytes(c: TrainConfig) -> int:
    """optimizer_temporaries during the step.
    AdamW on CUDA (foreach, torch ≥ 2.0): `_foreach_sqrt(exp_avg_sqs)` makes one state-sized copy of every moment
    of the group at once → P · b_state; per-layer AdamW steps one tensor at a time → its largest tensor · b_state.
    8-bit states: bitsandbytes' fused blockwise kernel updates in place → none.
    Subspace methods (subprof.optim) step weight by weight: max over weights of the method's declared step
    workspace, and the plain-AdamW tensors (embeddings, norms, lm_head): those over `FOREACH_NUMEL` values one at
    a time with one temporary each, the smaller ones together (one foreach pass: a denominator and a direction
    each), none at 8 bits. Checked against traced steps (profiles/measured/trace_*.jsonl). Maxima take each
    weight shape and tensor size once."""
    spec, m = c.spec, c.model
    b_state = {32: 4, 16: 2, 8: 0}[c.state_bits]
    if c.base != "adamw":  # a base other than Adam steps every unprojected tensor alone (`SubspaceAdamW._plain_base`)
        from subprof.methods.bases import get_base

        one = get_base(c.base).plain_temporary_bytes
        plain = max(one(n, c.state_bits, c.param_bytes) for n in set(m.unprojected_tensors()))
        if not spec.project:
            return max(plain, max(one(rows * cols, c.state_bits, c.param_bytes) for rows, cols, _ in m.shape_counts()))
        return max(plain, max(spec.step_workspace_bytes(rows, cols, min(c.rank, rows, cols), state_bits=c.state_bits,
                                                        param_bytes=c.param_bytes, options=c.method_options)
                              for rows, cols, _ in m.shape_counts()))
    if not spec.project:
        if c.layerwise:
            return max(max(s.m * s.n for s in m.linear_shapes()), *m.unprojected_tensors()) * b_state
        return m.params * b_state
    per_weight = max(
        spec.step_workspace_bytes(rows, cols, min(c.rank, rows, cols), state_bits=c.state_bits,
                                  param_bytes=c.param_bytes, options=c.method_options)
        for rows, cols, _ in m.shape_counts())
    small = sum(t for t in m.unprojected_tensors() if t <= FOREACH_NUMEL)
    return max(per_weight, max(m.unprojected_tensors()) * b_state, 2 * small * b_state)


def activation_bytes_per_token_layer(c: TrainConfig) -> int:
    """Bytes the decoder layer that saves the most keeps for backward per token (`plan.activations`, from the
    family's declarations in `ModelConfig`). LLaMA (sdpa) in bf16: 16h + 4q + 4kv + 8I + 4H + 8, with q = H·d,
    kv = KV·d: two RMSNorms keep their fp32 input, 1/rms and bf16 output (2 · (6h + 4)), q/k/v and gate/up read
    one input each (2 · 2h), o_proj and down_proj theirs (2q, 2I), attention q, k, v and the fp32 logsumexp
    (2q + 4kv + 4H), the SwiGLU MLP gate, up and silu(gate) (6I). mixed: the norms keep fp32 (16h + 8) and each
    autocast linear its own bf16 cast (10h); fp32: every bf16 tensor in fp32. Every term was read off the backward
    graph of the real transformers classes and holds exactly for LLaMA, Qwen3, OLMo 2 and Phi-3 (Gemma: 0.3% below,
    its (1 + w) norm vectors, token-independent); traced steps of every family hold the whole model within 2%
    (`profiles/measured/families_trace.jsonl`, `tests/test_families_memory.py`)."""
    return largest_layer_saved_bytes_per_token(c)


def layers_kept_bytes_per_token(c: TrainConfig) -> int:
    """What the decoder layers keep for backward per token, all together, under the checkpointing mode
    (`subprof.modes`): every activation (`all_layers_saved_bytes_per_token`) without checkpointing; with `full`
    each layer's input (b_r · h); with `selective` its input + the saved op outputs
    (`selective_saved_bytes_per_token`); with `every:K` the ⌊L/K⌋ checkpointed layers their input, the others
    everything (their share of the layers' total)."""
    m = c.model
    kept_input = residual_bytes(c) * m.hidden
    if c.checkpointing == "selective":
        return m.layers * (kept_input + selective_saved_bytes_per_token(c))
    whole = c.recomputed_layers
    return whole * kept_input + all_layers_saved_bytes_per_token(c) * (m.layers - whole) // m.layers


def activation_bytes(c: TrainConfig) -> int:
    """activations saved when backward starts = T · (`layers_kept_bytes_per_token` + what the model keeps outside
    its layers, `final_saved_bytes_per_token`) + 4·S·d (rotary cos/sin)."""
    return c.tokens * _saved_per_token(c.model, c.dtype, c.seq, c.checkpointing)[0] + 4 * c.seq * c.model.head_dim


def backward_end_bytes(c: TrainConfig) -> int:
    """Transients at the end of backward, when (nearly) every gradient exists and the activations are gone:
    the embedding's gradient buffer (V·h·b_param), or with checkpointing the first layer's recomputed
    activations (T · a_layer) if larger."""
    emb = c.model.vocab * c.model.hidden * c.param_bytes
    if c.recomputes:
        return max(emb, c.tokens * _saved_per_token(c.model, c.dtype, c.seq, c.checkpointing)[1])
    return emb


@lru_cache(maxsize=1024)
def _saved_per_token(model: ModelConfig, dtype: str, seq: int, checkpointing: str) -> tuple[int, int]:
    """(`layers_kept_bytes_per_token` + `final_saved_bytes_per_token`, `activation_bytes_per_token_layer`). They
    read the model, the dtype, the sequence (a windowed layer's mask) and the checkpointing mode alone, so they are
    counted once per such setting (cached: `plan` estimates thousands of micro-batches and methods at each)."""
    c = TrainConfig(model=model, dtype=dtype, seq=seq, checkpointing=checkpointing)
    return layers_kept_bytes_per_token(c) + final_saved_bytes_per_token(c), activation_bytes_per_token_layer(c)


def logits_bytes(c: TrainConfig) -> int:
    """logits_loss at its peak, in backward through cross-entropy, by loss kind (`subprof.modes`; `plan.loss`).
    full: transformers upcasts the logits to fp32 (`logits.float()`), log_softmax saves its fp32 output (4V per
    token); backward holds that output, the incoming fp32 gradient and the fp32 input gradient at once: 12·V bytes
    per token (the bf16 logits themselves are freed once `loss = model(...).loss` drops the output). The forward
    peak (bf16 + fp32 logits + log_softmax output, 10·V) is lower. Final-logit soft-capping (Gemma 2:
    cap · tanh(logits / cap)) keeps the tanh's output in the compute dtype until its backward: b_c·V more."""
    if c.loss == "full":
        softcap = compute_bytes(c) if c.model.final_logit_softcap else 0
        return (cal.LOGITS_BYTES_PER_VOCAB_TOKEN + softcap) * c.model.vocab * c.tokens
    return loss_kind_bytes(c)


def autocast_cache_bytes(c: TrainConfig) -> int:
    """mixed precision only: bf16 copies of the matmul weights that autocast makes and backward keeps (2 B · the
    weights of every linear layer, lm_head included). A checkpointed layer keeps none: its casts are redone in the
    recompute (`full`, `every:K`: the checkpointed layers; `selective` saves no cast, so every layer)."""
    if c.dtype != "mixed":
        return 0
    m = c.model
    recast = m.layers if c.checkpointing == "selective" else c.recomputed_layers
    return 2 * (m.projected_params * (m.layers - recast) // m.layers + m.vocab * m.hidden)


# ------------------------------------------------------------------------------------------------- estimate


@lru_cache(maxsize=4096)
def _token_independent(model: ModelConfig, method: str, rank: int | None, state_bits: int, layerwise: bool,
                       dtype: str, options: tuple) -> tuple[int, int, int, int, int, int, bool]:
    """The terms that do not depend on batch, sequence or checkpointing, and whether the method refreshes a
    projection with a declared workspace (`estimate`'s note) (cached: `plan` asks for them often)."""
    c = TrainConfig(model=model, method=method, rank=rank, state_bits=state_bits, layerwise=layerwise, dtype=dtype,
                    method_options=dict(options))
    states, workspace = _kept(model, method, rank, state_bits, dtype, options)
    solver_note = c.spec.project and bool(c.spec.layout_for(c.method_options).workspace)
    return (weight_bytes(c), gradient_bytes(c), states["optimizer_states"], states["projection_matrices"],
            workspace, step_temporary_bytes(c), solver_note)


@lru_cache(maxsize=4096)
def _kept(model: ModelConfig, method: str, rank: int | None, state_bits: int, dtype: str,
          options: tuple) -> tuple[dict[str, int], int]:
    """States and refresh workspace, which per-layer updates do not change (cached once for both)."""
    c = TrainConfig(model=model, method=method, rank=rank, state_bits=state_bits, dtype=dtype,
                    method_options=dict(options))
    return state_bytes(c), refresh_workspace_bytes(c)


def estimate(c: TrainConfig, calibration: Calibration | None = None) -> Estimate:
    """The breakdown by component and phase, and the predicted peaks. Every term is one formula above; the GPU-side
    terms come from `calibration` (default: the H100 reference fit, `calibration.DEFAULT`)."""
    calib = calibration or cal.DEFAULT
    w, _, s, p, ws, tmp, solver_note = _token_independent(c.model, c.method, c.rank, c.state_bits, c.layerwise,
                                                          c.dtype, tuple(sorted(c.method_options.items())))
    g = gradient_bytes(c)
    act = activation_bytes(c)
    logit = logits_bytes(c)
    cast = autocast_cache_bytes(c)
    runtime = calib.cuda_runtime_allocated_bytes

    kept = {"weights": w, "optimizer_states": s, "projection_matrices": p, "cuda_runtime": runtime}
    # Backward peaks either where it starts (all saved activations + the cross-entropy peak) or where it ends
    # (every gradient + the last transients). With gradient accumulation the gradients of earlier micro-batches
    # stay alive through the later ones' forward and backward. Per-layer updates free each gradient in its hook,
    # and the hook's step/refresh transients for one weight (plus that weight's gradient) meet the saved
    # activations — on the last micro-batch, next to every accumulated gradient, when accumulating.
    start = {**kept, "activations": act, "logits_loss": logit, "autocast_cache": cast,
             "gradients": g if c.accumulation > 1 else 0}
    end = {**kept, "gradients": g, "autocast_cache": cast, "activations": backward_end_bytes(c)}
    if c.layerwise:
        inside = max(tmp, ws)
        if c.accumulation > 1:
            start["optimizer_temporaries"] = inside
        elif g + inside > logit:
            start.update(logits_loss=0, gradients=g, optimizer_temporaries=inside)
        end = {}
    phases = {
        "model_built": {"weights": w},
        "forward_backward": max(start, end, key=lambda d: sum(d.values())),
        "optimizer_step": {} if c.layerwise else {**kept, "gradients": g, "optimizer_temporaries": tmp},
        "projection_refresh": {**kept, "gradients": g, "projection_workspace": ws}
        if c.spec.project and not c.layerwise else {},
    }
    totals = {name: sum(parts.values()) for name, parts in phases.items()}
    peak_phase = max(totals, key=totals.get)
    peak = totals[peak_phase]
    components = {
        "weights": w, "gradients": g, "optimizer_states": s, "projection_matrices": p, "projection_workspace": ws,
        "activations": act, "logits_loss": logit, "optimizer_temporaries": tmp, "autocast_cache": cast,
        "cuda_runtime": runtime,
    }
    reserved = calib.reserved_bytes(peak, logit)
    used = calib.device_used_bytes(peak, logit)
    notes = []
    if solver_note:
        notes.append("projection_workspace counts tensors torch allocates; a GPU SVD also takes solver workspace "
                     "that traces cannot see")
    return Estimate(config=c, components=components, phases=phases, peak_phase=peak_phase,
                    peak_allocated_bytes=peak, reserved_bytes=reserved, device_used_bytes=used, notes=notes,
                    calibration=calib.source)
