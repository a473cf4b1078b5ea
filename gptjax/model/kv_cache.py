"""An explicit key/value cache for incremental decoding: plain pytrees passed to the model and returned.

Slots, not positions: the cache holds S slots per row. A batch of prompts is left-padded to a common
length P, so slot s is the same step for every row and row b's real tokens start at its own slot
start_B[b]. Prefill writes slots 0..P-1 in one call; each decode step writes the next slot. A query in
slot q sees the slots start_B <= s <= q, and its position (learned / sinusoidal / RoPE) is q - start_B,
so every row's positions start at 0 at its first real token, as in training.

Each attention layer has one `KVCache`; `Transformer.decode(tokens_BxT, positions_BxT, caches)` returns
(x_BxTxD, caches) with the T tokens' keys and values written. `caches` is a list of L caches, or with
scan_layers one KVCache whose fields are stacked on a leading layer axis, which the scan slices and
restacks like the stacked parameters. Nothing is stored on the model (training's forward has no cache
and the model no state but its parameters), so a jitted decode loop carries the caches like any other
arrays and can donate them.

Storage is head-major, (B, K, S, H): attention over the cache contracts the contiguous (S, H) tile of
each row and KV head, so a decode step reads the cache as stored; only the step's own T new keys are
transposed. (Stored (B, S, K, H), as jax.nn.dot_product_attention takes it, the whole cache was
transposed to head-major inside every step.)
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gptjax.model.attend import attend, head_major
from gptjax.parallel.mesh import constrain

# Under a mesh a cache is sharded like the activations that fill it: rows over the batch axes, KV heads
# over the tensor axis (a replicated cache would hold every row's keys on every device).
CACHE_NAMES = ("batch", "kv_heads", None, "head_dim")


class KVCache(NamedTuple):
    """One attention layer's keys and values in S slots, each row's first real slot, and the next slot
    to write (with stacked layers every field has a leading L axis)."""

    k_BxKxSxH: jax.Array
    v_BxKxSxH: jax.Array
    start_B: jax.Array  # int32
    index: jax.Array  # int32 scalar: the first slot the next call writes


def empty_caches(model, start_B, length: int):
    """Caches of `length` empty slots for len(start_B) rows of the Transformer `model`, whose real tokens
    will start at slots start_B: a list of L KVCaches, or under scan_layers one stacked KVCache."""
    attention = (model.blocks if model.scan_layers else model.blocks[0]).attn
    lead = (model.n_layers,) if model.scan_layers else ()
    shape = lead + (start_B.shape[0], attention.n_kv_heads, length, attention.head_dim)
    names = ("layers",) * len(lead) + CACHE_NAMES

    def empty():
        return KVCache(constrain(jnp.zeros(shape, model.compute_dtype), names, model.rules),
                       constrain(jnp.zeros(shape, model.compute_dtype), names, model.rules),
                       jnp.broadcast_to(start_B.astype(jnp.int32), lead + start_B.shape), jnp.zeros(lead, jnp.int32))

    return empty() if model.scan_layers else [empty() for _ in range(model.n_layers)]


def visible_slots(start_B, index, T: int, S: int):
    """mask_BxTxS: which of S slots the queries written at slots index..index+T-1 may see."""
    slot_1x1xS = jnp.arange(S)[None, None, :]
    query_slot_1xTx1 = (index + jnp.arange(T))[None, :, None]
    real_Bx1xS = slot_1x1xS >= start_B[:, None, None]
    # A pad's query sees only itself: its output is never read, but an all-hidden row would be NaN.
    return ((slot_1x1xS <= query_slot_1xTx1) & real_Bx1xS) | (slot_1x1xS == query_slot_1xTx1)


def _written(cache_BxKxSxH, new_BxTxKxH, index, rules):
    new_BxKxTxH = head_major(new_BxTxKxH).astype(cache_BxKxSxH.dtype)  # T new slots only
    return constrain(jax.lax.dynamic_update_slice(cache_BxKxSxH, new_BxKxTxH, (0, 0, index, 0)), CACHE_NAMES, rules)


def cached_attention(cache: KVCache, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale=None, rules: tuple = ()):
    """Writes the T new keys/values at the cache's next T slots and attends from their queries to every
    slot they may see, logits scaled by `scale` (the layer's; None = 1/sqrt(H)): (out_BxTxNxH, the
    updated cache, sharding-constrained by the logical-axis `rules`)."""
    T = q_BxTxNxH.shape[1]
    k_BxKxSxH = _written(cache.k_BxKxSxH, k_BxTxKxH, cache.index, rules)
    v_BxKxSxH = _written(cache.v_BxKxSxH, v_BxTxKxH, cache.index, rules)
    mask_BxTxS = visible_slots(cache.start_B, cache.index, T, k_BxKxSxH.shape[2])
    out_BxTxNxH = attend(q_BxTxNxH, k_BxKxSxH, v_BxKxSxH, mask_BxTxS, scale)
    return out_BxTxNxH, KVCache(k_BxKxSxH, v_BxKxSxH, cache.start_B, cache.index + T)


def select_rows(caches, rows_R):
    """`caches` (a list or a stacked KVCache) with each replaced by its rows `rows_R` (beam search:
    children inherit their parent's keys and values; repeats allowed, so R may differ from B)."""

    def select(cache):
        return cache._replace(k_BxKxSxH=jnp.take(cache.k_BxKxSxH, rows_R, axis=-4),
                              v_BxKxSxH=jnp.take(cache.v_BxKxSxH, rows_R, axis=-4),
                              start_B=jnp.take(cache.start_B, rows_R, axis=-1))

    return jax.tree.map(select, caches, is_leaf=lambda x: isinstance(x, KVCache))


def cache_positions(start_B, first_slot, T: int):
    """positions_BxT of the tokens written to slots first_slot..first_slot+T-1 (pads get 0)."""
    return jnp.maximum(first_slot + jnp.arange(T)[None, :] - start_B[:, None], 0)
