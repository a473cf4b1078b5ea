"""A key/value cache for incremental decoding, attached to a model's attention layers while sampling.

Slots, not positions: the cache holds S slots per row. A batch of prompts is left-padded to a common
length P, so slot s is the same step for every row and row b's real tokens start at its own slot
start_B[b]. Prefill writes slots 0..P-1 in one call; each decode step writes the next slot. A query in
slot q sees the slots start_B <= s <= q, and its position (learned / sinusoidal / RoPE) is q - start_B,
so every row's positions start at 0 at its first real token, as in training.

The cache is `nnx.Cache` state of a `KVCache` module set as `Attention.kv_cache`; with scan_layers the
one stacked attention gets caches stacked on a leading layer axis, which `nnx.scan` slices and restacks
like the parameters. Used functionally: `nnx.state(model, nnx.Cache)` is the pytree a jitted decode
loop carries, and `nnx.update(model, cache)` puts it back after `nnx.merge(graphdef, params)`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.model.attention import Attention, masked_attention
from gptjax.parallel.mesh import constrain

# Under a mesh a cache is sharded like the activations that fill it: rows over the batch axes, KV heads
# over the tensor axis (a replicated cache would hold every row's keys on every device).
CACHE_NAMES = ("batch", None, "kv_heads", "head_dim")


class KVCache(nnx.Module):
    """Keys and values of S slots for one attention layer (or a stack of them), plus the next slot to
    write (`index`) and each row's first real slot (`start_B`)."""

    def __init__(self, k_BxSxKxH, v_BxSxKxH, index, start_B):
        self.k_BxSxKxH = nnx.Cache(k_BxSxKxH)
        self.v_BxSxKxH = nnx.Cache(v_BxSxKxH)
        self.index = nnx.Cache(index)
        self.start_B = nnx.Cache(start_B)

    def attend(self, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale=None):
        """Writes the T new keys/values at the next T slots and attends from their queries to every
        slot they may see, logits scaled by `scale` (the layer's; None = 1/sqrt(H)): out_BxTxNxH."""
        T, index = q_BxTxNxH.shape[1], self.index[...]
        k_cache = self.k_BxSxKxH[...]
        k_BxSxKxH = jax.lax.dynamic_update_slice(k_cache, k_BxTxKxH.astype(k_cache.dtype), (0, index, 0, 0))
        v_BxSxKxH = jax.lax.dynamic_update_slice(self.v_BxSxKxH[...], v_BxTxKxH.astype(k_cache.dtype),
                                                 (0, index, 0, 0))
        self.k_BxSxKxH.set_value(constrain(k_BxSxKxH, CACHE_NAMES))
        self.v_BxSxKxH.set_value(constrain(v_BxSxKxH, CACHE_NAMES))
        self.index.set_value(index + T)
        slot_1x1xS = jnp.arange(k_BxSxKxH.shape[1])[None, None, :]
        query_slot_1xTx1 = (index + jnp.arange(T))[None, :, None]
        real_Bx1xS = slot_1x1xS >= self.start_B[...][:, None, None]
        # A pad's query sees only itself: its output is never read, but an all-hidden row would be NaN.
        mask_BxTxS = ((slot_1x1xS <= query_slot_1xTx1) & real_Bx1xS) | (slot_1x1xS == query_slot_1xTx1)
        return masked_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS, scale)


def _attention_layers(model) -> list:
    return [module for _, module in nnx.iter_modules(model) if isinstance(module, Attention)]


def attach_kv_caches(model, start_B, length: int) -> None:
    """Gives every attention layer of the Transformer `model` an empty cache of `length` slots for
    len(start_B) rows whose real tokens start at slots start_B; the model then decodes incrementally."""
    lead = (model.n_layers,) if model.scan_layers else ()  # stacked layers: one cache per layer, stacked
    B = start_B.shape[0]
    for attention in _attention_layers(model):
        shape = lead + (B, length, attention.n_kv_heads, attention.head_dim)
        names = ("layers",) * len(lead) + CACHE_NAMES
        cache = KVCache(constrain(jnp.zeros(shape, model.compute_dtype), names),
                        constrain(jnp.zeros(shape, model.compute_dtype), names),
                        jnp.zeros(lead, jnp.int32), jnp.broadcast_to(start_B.astype(jnp.int32), lead + (B,)))
        attention.kv_cache = nnx.data(cache)  # the attribute was None (static) when the model was built


def select_cache_rows(model, rows_R) -> None:
    """Replaces every cache's rows by rows `rows_R` of it (beam search: children inherit their parent's
    keys and values; repeats allowed, so R may differ from B)."""
    for attention in _attention_layers(model):
        cache = attention.kv_cache
        for name, batch_axis in (("k_BxSxKxH", -4), ("v_BxSxKxH", -4), ("start_B", -1)):
            variable = getattr(cache, name)
            variable.set_value(jnp.take(variable[...], rows_R, axis=batch_axis))


def cache_positions(start_B, first_slot, T: int):
    """positions_BxT of the tokens written to slots first_slot..first_slot+T-1 (pads get 0)."""
    return jnp.maximum(first_slot + jnp.arange(T)[None, :] - start_B[:, None], 0)
