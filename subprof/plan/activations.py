"""What one decoder layer saves for backward, per token, read off the family's declarations in `ModelConfig`
(`catalog.FAMILIES`: norms per layer, q/k norms, the RMSNorm's fp32 weight product, fused q/k/v, sliding windows,
the attention implementation and its logit soft-capping). Pure Python, no torch.

Every term is a tensor autograd keeps, found by walking the backward graph of the real transformers class (5.25,
torch 2.14) and counting each saved storage once (tensors that share a storage — a view, a chunk of a fused
projection — count once), for LLaMA, Qwen3, Gemma 1/2/3, Phi-3, OLMo 2/3 and Mistral, varying h, q, kv, I, H, KV
and S; the committed traced steps (`profiles/measured/families_trace.sh`) hold the whole model to it.

Element sizes: b_c the compute dtype (what a matmul or attention outputs: 2 under bf16 and autocast, 4 in fp32),
b_r the residual stream's (2 in pure bf16, 4 under mixed and fp32).
"""

from __future__ import annotations

from subprof.config import TrainConfig


def compute_bytes(c: TrainConfig) -> int:
    """b_c: bytes of one element a matmul or attention outputs: bf16 under pure bf16 and autocast, fp32 in fp32."""
    return 4 if c.dtype == "fp32" else 2


def residual_bytes(c: TrainConfig) -> int:
    """b_r: bytes of one element of the residual stream (a checkpointed layer's saved input): bf16 in pure bf16, fp32
    otherwise (mixed keeps an fp32 residual under autocast)."""
    return 2 if c.dtype == "bf16" else 4


def norm_saved_bytes(c: TrainConfig, width: int, rows: int, input_bytes: int) -> int:
    """One RMSNorm over `width` values per token in `rows` groups: its fp32 input (4·width: the upcast, or the input
    itself when it is fp32), the fp32 1/rms per group (4·rows) and the normalised tensor the weight product keeps —
    cast back to the input dtype first (LLaMA: `weight * x.to(dtype)`, input_bytes·width) or in fp32 where the family
    multiplies its weight in fp32 (`ModelConfig.norm_fp32_weight`: Gemma's `x · (1 + w)`, OLMo 2/3; 4·width)."""
    kept = 4 if c.model.norm_fp32_weight else input_bytes
    return 4 * width + 4 * rows + kept * width


def linear_input_bytes(c: TrainConfig) -> int:
    """The inputs the matmuls reading the residual width keep: in pure bf16 and fp32 one tensor per group (q/k/v
    read one norm output, gate/up another: 2 · b_c · h); under autocast every linear keeps its own bf16 cast
    (2h each: LLaMA's q, k, v, gate, up 10h; Phi-3's fused qkv_proj and gate_up_proj 4h)."""
    h, m = c.model.hidden, c.model
    if c.dtype == "mixed":
        linears = (1 if m.fused_qkv else 3) + (1 if m.fused_gate_up else 2)
        return 2 * h * linears
    return 2 * compute_bytes(c) * h


def masked_attention(c: TrainConfig) -> bool:
    """Whether windowed layers get an explicit mask: transformers lets sdpa use `is_causal` only while the sequence
    is shorter than the window (`masking_utils._ignore_causal_mask_sdpa`); from S ≥ window on it passes the mask."""
    w = c.model.sliding_window
    return c.model.attention == "sdpa" and bool(c.model.window_layers) and w is not None and c.seq >= w


def attention_saved_bytes(c: TrainConfig, masked: bool) -> int:
    """Attention's saved tensors per token, by the implementation the family trains with.
    sdpa without a mask (`is_causal`, grouped-query kept): q, k, v and the kernel's fp32 logsumexp, b_c·(q + 2kv) +
    4H; the output is o_proj's input (counted there). Phi-3's v is a view of its fused qkv output, so the whole
    storage stays, b_c·(q + 2kv) instead of b_c·kv, and the kernel output is a separate tensor (b_c·q).
    sdpa with a mask (windowed layers, S ≥ window): k and v repeated to all H heads (`repeat_kv`: b_c·q each; with
    one key/value head the repeat is a view and k, v keep their own storage), and the mask itself, (B, 1, S, S) in the
    compute dtype (b_c·S per token).
    eager (Gemma 2, whose soft-capped scores have no sdpa path): q and the repeated k, v, the fp32 softmax (4·H·S)
    and its cast to the compute dtype (b_c·H·S, none in fp32: the same tensor), and with attention logit
    soft-capping the tanh's output (b_c·H·S)."""
    m, b = c.model, compute_bytes(c)
    q, kv, heads, S = m.q_dim, m.kv_dim, m.heads, c.seq
    v = q + 2 * kv if m.fused_qkv else kv  # the storage v lives in: Phi-3's is the whole fused output
    fused_out = b * q if m.fused_qkv else 0
    repeated = m.kv_heads > 1 and (masked or m.attention == "eager")
    k_v = 2 * b * q if repeated else b * (kv + v)
    if m.attention == "eager":
        scores = 4 + (b if b == 2 else 0) + (b if m.attn_logit_softcap else 0)
        return b * q + k_v + scores * heads * S
    return b * q + k_v + (b * S if masked else 0) + fused_out + 4 * heads


def qk_norm_saved_bytes(c: TrainConfig) -> int:
    """Qwen3, Gemma 3 (per head: H and KV groups) and OLMo 2/3 (over the whole projection: one group each) normalise
    q and k after their projections (`norm_saved_bytes` over q and kv, input in the compute dtype)."""
    m = c.model
    if not m.q_norm:
        return 0
    b = compute_bytes(c)
    return (norm_saved_bytes(c, m.q_dim, m.q_dim // m.q_norm, b)
            + norm_saved_bytes(c, m.kv_dim, m.kv_dim // m.k_norm, b))


def layer_saved_bytes_per_token(c: TrainConfig, masked: bool = False) -> int:
    """Bytes one decoder layer saves per token: its `layer_norms` norms (`norm_saved_bytes`, input b_r), the linear
    inputs (`linear_input_bytes`; o_proj's b_c·q, down_proj's b_c·I), the q/k norms, attention
    (`attention_saved_bytes`), and the gated MLP's gate, up, activation outputs (3·b_c·I; Phi-3's gate_up output is
    one storage of the same size; GELU-tanh keeps its input as SiLU does).
    LLaMA in bf16: 16h + 4q + 4kv + 8I + 4H + 8."""
    m, b = c.model, compute_bytes(c)
    norms = m.layer_norms * norm_saved_bytes(c, m.hidden, 1, residual_bytes(c))
    linear = linear_input_bytes(c) + b * m.q_dim + b * m.intermediate
    return norms + linear + qk_norm_saved_bytes(c) + attention_saved_bytes(c, masked) + 3 * b * m.intermediate


def masked_layers(c: TrainConfig) -> int:
    """Decoder layers whose attention gets an explicit mask (`masked_attention`): the windowed ones, or none."""
    return c.model.window_layers if masked_attention(c) else 0


def all_layers_saved_bytes_per_token(c: TrainConfig) -> int:
    """Σ over the decoder layers of `layer_saved_bytes_per_token`: masked windowed layers and the others."""
    k = masked_layers(c)
    return k * layer_saved_bytes_per_token(c, True) + (c.model.layers - k) * layer_saved_bytes_per_token(c, False)


def largest_layer_saved_bytes_per_token(c: TrainConfig) -> int:
    """The layer that saves the most (what one recomputed layer holds at once)."""
    return max(layer_saved_bytes_per_token(c, masked) for masked in {False, masked_layers(c) > 0})


def final_saved_bytes_per_token(c: TrainConfig) -> int:
    """Outside the layers: the final norm (as a layer norm), lm_head's input (b_r·h) and 8 B of token ids and labels
    (bf16: 8h + 12, mixed and fp32: 12h + 12 for LLaMA, as fitted on its traces)."""
    m = c.model
    return norm_saved_bytes(c, m.hidden, 1, residual_bytes(c)) + residual_bytes(c) * m.hidden + 8
