"""Causal multi-head / grouped-query self-attention with optional QK-norm and RoPE.

In training the module is parameters only; while decoding, each call is also given the layer's
key/value cache (model/kv_cache.py) and returns it updated."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from gptjax.model.attend import attend, causal_mask, head_major
from gptjax.model.flash_attention import DEFAULT_BLOCK as FLASH_BLOCK
from gptjax.model.flash_attention import blocked_causal_attention
from gptjax.model.kv_cache import cached_attention
from gptjax.model.layers import Dense, apply_rope, head_dim, make_norm, rope_inv_freq
from gptjax.model.mup import attention_scale


def einsum_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale=None):
    """Causal self-attention through the one core (attend.py): numerically the same as
    `jax.nn.dot_product_attention(..., is_causal=True)` but ~1.5x faster forward+backward on XLA:CPU for
    short sequences, since in head-major layout the batched matmuls and the softmax run on contiguous
    (T, T) tiles. `scale` multiplies the logits; None means 1/sqrt(H)."""
    mask_1xTxT = causal_mask(q_BxTxNxH.shape[1])
    return attend(q_BxTxNxH, head_major(k_BxTxKxH), head_major(v_BxTxKxH), mask_1xTxT, scale)


# cuDNN's fused flash attention: half-precision inputs, head dims that are multiples of 8 up to 128
# (the limits jax.nn.dot_product_attention checks for implementation="cudnn").
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128
CUDNN_MIN_CAPABILITY = 8.0  # Ampere: a Colab T4 (7.5) takes XLA's kernel


def choose_attention_kernel(requested: str, backend: str, dtype, head_dim: int, gpu_capability: float = 0.0,
                            seq_len: int = 0) -> str:
    """The causal-attention kernel for `model.attention` = `requested` on this backend, decided by explicit
    checks rather than by trying a kernel at trace time. On CPU: "blocked" (flash_attention.py) for
    sequences longer than one block, where skipping the blocks above the diagonal pays, else "einsum";
    "cudnn" on an Ampere or newer GPU (compute capability >= 8.0) where its dtype and head-dim limits hold,
    else "xla". Raises ValueError when a requested "cudnn" cannot run."""
    cudnn_ok = (backend == "gpu" and gpu_capability >= CUDNN_MIN_CAPABILITY and jnp.dtype(dtype) in CUDNN_DTYPES
                and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM)
    if requested == "cudnn" and not cudnn_ok:
        raise ValueError(f"model.attention='cudnn' needs a GPU of compute capability >= {CUDNN_MIN_CAPABILITY}, "
                         f"bf16/fp16 compute and a head dim that is a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}; got "
                         f"backend {backend} (capability {gpu_capability}), {jnp.dtype(dtype).name}, head dim "
                         f"{head_dim}. Use model.attention='auto'.")
    if requested != "auto":
        return requested
    if backend == "cpu":
        return "blocked" if seq_len > FLASH_BLOCK else "einsum"
    return "cudnn" if cudnn_ok else "xla"


@functools.lru_cache(maxsize=None)
def _log_kernel_once(kernel: str, backend: str, dtype_name: str, head_dim: int) -> None:
    logging.info("attention kernel: %s (backend %s, %s, head dim %d)", kernel, backend, dtype_name, head_dim)


def causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale=None, kernel: str = "auto"):
    """Causal self-attention with logits scaled by `scale` (None: 1/sqrt(H)) through `kernel` (see
    `choose_attention_kernel`); all handle K < N (GQA). "blocked" is flash_attention.py's kernel for
    XLA:CPU; "cudnn" is the fused flash kernel, which `jax.nn.dot_product_attention` uses only when
    asked (its default is XLA)."""
    backend, head_dim = jax.default_backend(), q_BxTxNxH.shape[-1]
    capability = float(getattr(jax.devices()[0], "compute_capability", 0) or 0) if backend == "gpu" else 0.0
    kernel = choose_attention_kernel(kernel, backend, q_BxTxNxH.dtype, head_dim, capability, q_BxTxNxH.shape[1])
    _log_kernel_once(kernel, backend, jnp.dtype(q_BxTxNxH.dtype).name, head_dim)
    if kernel == "einsum":
        return einsum_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale)
    if kernel == "blocked":
        return blocked_causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale)
    return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale=scale, is_causal=True,
                                        implementation="cudnn" if kernel == "cudnn" else None)


class Attention(nnx.Module):
    """Causal self-attention; N query heads share K key/value heads (K = N is plain MHA)."""

    def __init__(self, cfg, rngs, std, resid_std, rules: tuple = ()):
        self.n_heads, self.n_kv_heads, self.rules = cfg.n_heads, cfg.n_kv_heads, rules
        self.head_dim = head_dim(cfg)
        self.scale = attention_scale(cfg)
        self.positional = cfg.positional
        # a tuple: an array attribute would be taken for model state
        self.rope_inv_freq = tuple(rope_inv_freq(self.head_dim, cfg).tolist()) if cfg.positional == "rope" else ()
        D, NH, KH = cfg.d_model, cfg.n_heads * self.head_dim, cfg.n_kv_heads * self.head_dim
        dense = dict(cfg=cfg, rngs=rngs)
        qkv_bias = cfg.use_bias or cfg.get("qkv_bias", False)
        self.query = Dense(D, NH, ("embed", "heads"), std=std, use_bias=qkv_bias, name="query", **dense)
        self.key = Dense(D, KH, ("embed", "kv_heads"), std=std, use_bias=qkv_bias, name="key", **dense)
        self.value = Dense(D, KH, ("embed", "kv_heads"), std=std, use_bias=qkv_bias, name="value", **dense)
        self.out = Dense(NH, D, ("heads", "embed"), std=resid_std, use_bias=cfg.use_bias, name="out", **dense)
        if cfg.qk_norm:
            self.query_norm = make_norm(self.head_dim, cfg, rngs, names=("head_dim",))
            self.key_norm = make_norm(self.head_dim, cfg, rngs, names=("head_dim",))
        else:
            self.query_norm = self.key_norm = None
        self.kernel = cfg.get("attention", "auto")  # configs saved before model.attention existed: "auto"

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        """(y_BxTxD, cache): in training `cache` is None and stays None; while decoding these T tokens
        also attend to the cached ones, and the cache comes back with their keys and values written."""
        B, T, _ = x_BxTxD.shape
        N, K, H = self.n_heads, self.n_kv_heads, self.head_dim
        q_BxTxNxH = self.query(x_BxTxD).reshape(B, T, N, H)
        k_BxTxKxH = self.key(x_BxTxD).reshape(B, T, K, H)
        v_BxTxKxH = self.value(x_BxTxD).reshape(B, T, K, H)
        if self.query_norm is not None:
            q_BxTxNxH, k_BxTxKxH = self.query_norm(q_BxTxNxH), self.key_norm(k_BxTxKxH)
        if self.positional == "rope":
            inv_freq_H2 = np.asarray(self.rope_inv_freq, np.float32)
            q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, inv_freq_H2)
            k_BxTxKxH = apply_rope(k_BxTxKxH, positions_BxT, inv_freq_H2)
        if cache is None:
            out_BxTxNxH = causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, self.scale, self.kernel)
        else:
            out_BxTxNxH, cache = cached_attention(cache, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, self.scale, self.rules)
        return self.out(out_BxTxNxH.reshape(B, T, N * H)), cache
