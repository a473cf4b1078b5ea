"""Blocked (flash-style) causal attention (gptjax/model/flash_attention.py) against the reference
`jax.nn.dot_product_attention`: values and gradients, MHA and GQA, RoPE, key padding, ragged blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config import default_config
from gptjax.model.flash_attention import blocked_causal_attention
from gptjax.model.layers import apply_rope, rope_inv_freq


def qkv(B, T, N, K, H, dtype=jnp.float32, seed=0):
    a, b, c = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(a, (B, T, N, H), dtype), jax.random.normal(b, (B, T, K, H), dtype),
            jax.random.normal(c, (B, T, K, H), dtype))


def reference(q, k, v, scale, kv_valid=None):
    T = q.shape[1]
    mask = jnp.tril(jnp.ones((T, T), bool))[None, None]
    if kv_valid is not None:
        mask = mask & kv_valid[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, scale=scale, mask=mask)


def weighted_sum(fn):
    """A scalar whose gradient reaches every output element with a different weight."""
    return lambda q, k, v: (fn(q, k, v) * jnp.cos(jnp.arange(q.shape[-1]))).sum()


@pytest.mark.parametrize("B,T,N,K,H,block", [
    (2, 64, 4, 4, 8, 16),  # MHA, T a multiple of the block
    (2, 50, 4, 2, 8, 16),  # GQA, a ragged last block
    (1, 37, 6, 1, 16, 8),  # multi-query, many blocks
    (2, 24, 2, 2, 8, 128),  # one block holding everything
])
def test_values_and_gradients_match_the_reference(B, T, N, K, H, block):
    q, k, v = qkv(B, T, N, K, H)
    np.testing.assert_allclose(blocked_causal_attention(q, k, v, 0.3, block=block), reference(q, k, v, 0.3),
                               atol=2e-6)
    grads = jax.grad(weighted_sum(lambda q, k, v: blocked_causal_attention(q, k, v, 0.3, block=block)),
                     argnums=(0, 1, 2))(q, k, v)
    expected = jax.grad(weighted_sum(lambda q, k, v: reference(q, k, v, 0.3)), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_rope_inputs_and_the_default_scale():
    q, k, v = qkv(2, 40, 4, 2, 16)
    positions = jnp.broadcast_to(jnp.arange(40), (2, 40))
    inv_freq = rope_inv_freq(q.shape[-1], default_config().model)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    np.testing.assert_allclose(blocked_causal_attention(q, k, v, block=16), reference(q, k, v, 16**-0.5), atol=2e-6)


def test_padded_keys_are_hidden_in_values_and_gradients():
    q, k, v = qkv(2, 48, 4, 2, 8)
    valid = jnp.arange(48)[None, :] < jnp.array([[48], [29]])  # row 1: 19 pads at the end
    fn = lambda q, k, v: blocked_causal_attention(q, k, v, 0.5, kv_valid_BxT=valid, block=16)  # noqa: E731
    np.testing.assert_allclose(fn(q, k, v), reference(q, k, v, 0.5, valid), atol=2e-6)
    dq, dk, dv = jax.grad(weighted_sum(fn), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(weighted_sum(lambda q, k, v: reference(q, k, v, 0.5, valid)), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip((dq, dk, dv), ref):
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert not np.any(dk[1, 29:]) and not np.any(dv[1, 29:])  # nothing flows into padded keys


def test_bfloat16_inputs_keep_float32_statistics():
    q, k, v = qkv(1, 64, 2, 2, 32, jnp.bfloat16)
    out = blocked_causal_attention(q, k, v, block=16)
    assert out.dtype == jnp.bfloat16
    want = reference(*(x.astype(jnp.float32) for x in (q, k, v)), 32**-0.5)
    np.testing.assert_allclose(out.astype(jnp.float32), want, atol=3e-2)
