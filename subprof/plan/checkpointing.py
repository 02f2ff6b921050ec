"""What activation checkpointing saves and recomputes per decoder layer (`subprof.modes`), for the memory model
(`plan.memory.activation_bytes`) and the throughput model (`plan.throughput.train_flops_per_token`). Pure Python.

Selective checkpointing follows torchtitan's op-level policy (`subprof.measure.model.selective_context`, the code the
trace runs): in each layer's forward the matmuls are counted in order (q, k, v, o, gate, up, down for LLaMA: the
order of `ModelConfig.linear_shapes`) and the outputs of the 1st, 3rd, 5th, … are saved (q, v, gate, down), the 2nd,
4th, … recomputed (k, o, up); a projection with a bias runs as `addmm`, which the policy neither counts nor saves;
attention's outputs (the kernel output and its fp32 logsumexp) are saved; every other op (norms, rotary, SiLU,
products, casts) is recomputed in backward.
"""

from __future__ import annotations

from collections import Counter

from subprof.config import TrainConfig
from subprof.plan.activations import compute_bytes


def layer_matmuls(c: TrainConfig) -> list[tuple[int, int]]:
    """(output features, input features) of one decoder layer's matmuls in forward order."""
    return [(s.m, s.n) for s in c.model.linear_shapes()]


def _biased(c: TrainConfig, name: str) -> bool:
    """Whether the projection `name` has a bias (`attention_bias`: q, k, v, o; Qwen2's `qkv_bias`: q, k, v;
    `mlp_bias`: gate, up, down): torch runs it as `addmm`, which the policy's save list does not hold."""
    m, short = c.model, name.split(".")[-1]
    if short in ("q_proj", "k_proj", "v_proj", "qkv_proj"):
        return m.attention_bias or m.qkv_bias
    return m.attention_bias if short == "o_proj" else m.mlp_bias


def policy_matmuls(c: TrainConfig) -> list[tuple[int, int]]:
    """The layer's matmuls the policy counts (`aten.mm`: the projections without a bias), in forward order."""
    return [(s.m, s.n) for s in c.model.linear_shapes() if not _biased(c, s.name)]


def saved_matmuls(c: TrainConfig) -> list[tuple[int, int]]:
    """The matmuls whose output selective checkpointing saves: the 1st, 3rd, 5th, … `aten.mm` of the layer."""
    return policy_matmuls(c)[::2]


def selective_saved_bytes_per_token(c: TrainConfig) -> int:
    """Per token and layer, what the selective policy saves besides the layer's input: the saved matmul outputs
    (b_c · Σ out) + the sdpa kernel's output (b_c · q) and logsumexp (4 · H), b_c the compute dtype's bytes. Eager
    attention (Gemma 2) runs no sdpa op: the policy recomputes it."""
    b = compute_bytes(c)
    attention = b * c.model.q_dim + 4 * c.model.heads if c.model.attention == "sdpa" else 0
    return b * sum(out for out, _ in saved_matmuls(c)) + attention


def recompute_flops_per_token(c: TrainConfig) -> float:
    """Forward FLOPs per token repeated in backward: `full` and `every:K` rerun the forward of each checkpointed
    layer (its matmuls, 2 · Σ m·n, and attention scores, 4 · S · q, as `ModelConfig.forward_flops_per_token`); `selective` reruns only the matmuls whose
    output it did not save (2 · Σ m·n over the 2nd, 4th, … matmul) — attention is saved; none without
    checkpointing. lm_head is never recomputed."""
    if not c.recomputes:
        return 0.0
    if c.checkpointing == "selective":
        recomputed = Counter(layer_matmuls(c)) - Counter(saved_matmuls(c))  # biased ones included
        return float(c.model.layers * 2 * sum(m * n * k for (m, n), k in recomputed.items()))
    m = c.model
    per_layer = (m.forward_flops_per_token(c.seq) - 2 * m.vocab * m.hidden) / m.layers  # windows included
    return c.recomputed_layers * per_layer
