"""Parameter counts and training FLOPs per token, from the config alone.

Three accountings of training FLOPs per token (forward + backward = 3x forward):
  total_6n       6 N, N = every parameter (embeddings and an untied head included): C = 6ND.
  nonembed_6n    6 N', N' = parameters outside the token/position embeddings and the untied head
                 (Kaplan et al. 2020).
  with_attention 6 N' + 6 D V (the LM-head matmul, tied or not) + 12 L T D_attn (attention
                 scores and the weighted sum over T keys; PaLM's MFU accounting, Chowdhery et al. 2022).
"""

import math

from gptjax.model.layers import head_dim


def param_counts(m) -> dict:
    """Parameter counts of the model `m` (config.model): total, embedding, head, non_embedding."""
    H = head_dim(m)
    D, F, NH, KH = m.d_model, m.d_ff, m.n_heads * H, m.n_kv_heads * H
    bias = 1 if m.use_bias else 0
    qkv_bias = 1 if m.use_bias or m.get("qkv_bias", False) else 0

    def norm(dim):
        return dim * (2 if m.norm == "layernorm" and m.use_bias else 1)

    attention = D * NH + 2 * D * KH + NH * D + qkv_bias * (NH + 2 * KH) + bias * D
    if m.qk_norm:
        attention += 2 * norm(H)
    n_up = 2 if m.activation == "swiglu" else 1
    mlp = n_up * (D * F + bias * F) + F * D + bias * D
    block = attention + mlp + 2 * norm(D)
    embedding = m.vocab_size * D + (m.max_len * D if m.positional == "learned" else 0)
    head = 0 if m.tie_embeddings else D * m.vocab_size
    final_norm = norm(D) if m.norm_position == "pre" else 0
    scalar_head = D if m.scalar_head else 0
    non_embedding = m.n_layers * block + final_norm + scalar_head
    return dict(total=non_embedding + embedding + head, embedding=embedding, head=head, non_embedding=non_embedding)


def flops_per_token(m, seq_len: int) -> dict:
    """Training FLOPs per token under the three accountings in this module's docstring."""
    counts = param_counts(m)
    d_attn = m.n_heads * head_dim(m)
    nonembed = 6 * counts["non_embedding"]
    return dict(
        total_6n=6 * counts["total"],
        nonembed_6n=nonembed,
        with_attention=nonembed + 6 * m.d_model * m.vocab_size + 12 * m.n_layers * seq_len * d_attn,
    )


# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity), matched against device_kind.
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
)


def device_peak_flops(device_kind: str) -> float | None:
    """Peak FLOP/s of one accelerator from the table, or None if unknown (e.g. CPU)."""
    for name, peak in PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def measure_cpu_peak_flops(size: int = 1024, repeats: int = 10) -> float:
    """FLOP/s of float32 matmuls on this host (all cores): the CPU's practical peak."""
    import time

    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = matmul(a)
    out.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def mfu(tokens_per_sec: float, flops_per_tok: float, peak_flops_total: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all devices used."""
    return tokens_per_sec * flops_per_tok / peak_flops_total if peak_flops_total > 0 else math.nan
