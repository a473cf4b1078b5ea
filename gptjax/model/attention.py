"""Causal multi-head / grouped-query self-attention with optional QK-norm and RoPE."""

import jax
from flax import nnx

from gptjax.model.layers import Dense, apply_rope, make_norm


class Attention(nnx.Module):
    """Causal self-attention; N query heads share K key/value heads (K = N is plain MHA).

    The score computation is `jax.nn.dot_product_attention`, which lowers to the cuDNN flash
    kernel on GPUs and to plain XLA elsewhere; it handles K < N (GQA) itself.
    """

    def __init__(self, cfg, rngs, resid_std):
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.positional, self.rope_base = cfg.positional, cfg.rope_base
        D, NH, KH = cfg.d_model, cfg.n_heads * self.head_dim, cfg.n_kv_heads * self.head_dim
        dense = dict(use_bias=cfg.use_bias, cfg=cfg, rngs=rngs)
        self.query = Dense(D, NH, ("embed", "heads"), std=cfg.init_std, **dense)
        self.key = Dense(D, KH, ("embed", "kv_heads"), std=cfg.init_std, **dense)
        self.value = Dense(D, KH, ("embed", "kv_heads"), std=cfg.init_std, **dense)
        self.out = Dense(NH, D, ("heads", "embed"), std=resid_std, **dense)
        if cfg.qk_norm:
            self.query_norm = make_norm(self.head_dim, cfg, rngs, names=("head_dim",))
            self.key_norm = make_norm(self.head_dim, cfg, rngs, names=("head_dim",))
        else:
            self.query_norm = self.key_norm = None

    def __call__(self, x_BxTxD, positions_BxT):
        B, T, _ = x_BxTxD.shape
        N, K, H = self.n_heads, self.n_kv_heads, self.head_dim
        q_BxTxNxH = self.query(x_BxTxD).reshape(B, T, N, H)
        k_BxTxKxH = self.key(x_BxTxD).reshape(B, T, K, H)
        v_BxTxKxH = self.value(x_BxTxD).reshape(B, T, K, H)
        if self.query_norm is not None:
            q_BxTxNxH, k_BxTxKxH = self.query_norm(q_BxTxNxH), self.key_norm(k_BxTxKxH)
        if self.positional == "rope":
            q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, self.rope_base)
            k_BxTxKxH = apply_rope(k_BxTxKxH, positions_BxT, self.rope_base)
        out_BxTxNxH = jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, is_causal=True)
        return self.out(out_BxTxNxH.reshape(B, T, N * H))
