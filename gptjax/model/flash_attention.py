"""Blocked causal attention with an online softmax and a recomputing backward pass (FlashAttention's
algorithm, Dao et al. 2022, written in jax.numpy for XLA:CPU).

Queries and keys are cut into blocks of `block` positions. Query block i visits key blocks j <= i only
(the blocks above the diagonal are all masked, so they are skipped: about half the work of a full T x T
attention), keeping a running max and sum of exponentials per query (online softmax), so no T x S score
matrix is ever formed. The custom VJP stores only the output and the per-query log-sum-exp and
recomputes each block's probabilities in the backward pass, instead of keeping the T x T probabilities
of the forward pass alive for it.

Layout: heads-major (B, K, Q, T, H) inside, where query head n = k * Q + i uses KV head k, as in
`jax.nn.dot_product_attention`; scores and statistics in float32 whatever the compute dtype. An
optional `kv_valid_BxS` mask hides keys (padding); every query must still see at least one key, which
causal self-attention guarantees for any row whose first token is real.
"""

import functools

import jax
import jax.numpy as jnp

from gptjax.model.attend import grouped_queries, head_major, logit_scale, ungrouped

DEFAULT_BLOCK = 128


def _blocks(T: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, T)) for start in range(0, T, block)]


def _block_scores(q_blk, k_blk, scale, q_start, k_start, kv_valid_blk):
    """float32 scores (B, K, Q, tq, tk) of one block pair, -inf where the key is later or invalid."""
    s = jnp.einsum("bkgqh,bksh->bkgqs", q_blk, k_blk, preferred_element_type=jnp.float32) * scale
    q_pos = q_start + jnp.arange(q_blk.shape[3])[:, None]
    k_pos = k_start + jnp.arange(k_blk.shape[2])[None, :]
    visible = k_pos <= q_pos
    if kv_valid_blk is not None:
        visible = visible & kv_valid_blk[:, None, None, None, :]
    return jnp.where(visible, s, -jnp.inf)


def _forward(q, k, v, kv_valid, scale, block):
    """(out (B, K, Q, T, H) in v's dtype, lse (B, K, Q, T) float32)."""
    T = q.shape[3]
    outs, lses = [], []
    for q_start, q_stop in _blocks(T, block):
        q_blk = q[:, :, :, q_start:q_stop]
        m = jnp.full(q_blk.shape[:4], -jnp.inf, jnp.float32)
        l = jnp.zeros(q_blk.shape[:4], jnp.float32)
        acc = jnp.zeros(q_blk.shape, jnp.float32)
        for k_start, k_stop in _blocks(q_stop, block):  # key blocks up to the diagonal
            valid = None if kv_valid is None else kv_valid[:, k_start:k_stop]
            s = _block_scores(q_blk, k[:, :, k_start:k_stop], scale, q_start, k_start, valid)
            m_new = jnp.maximum(m, s.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row that has seen no key yet
            p = jnp.exp(s - m_safe[..., None])
            correction = jnp.exp(jnp.where(jnp.isfinite(m), m - m_safe, -jnp.inf))
            l = l * correction + p.sum(-1)
            acc = acc * correction[..., None] + jnp.einsum("bkgqs,bksh->bkgqh", p.astype(v.dtype),
                                                           v[:, :, k_start:k_stop],
                                                           preferred_element_type=jnp.float32)
            m = m_new
        outs.append((acc / l[..., None]).astype(v.dtype))
        lses.append(m + jnp.log(l))
    return jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)


def _backward(q, k, v, kv_valid, scale, block, out, lse, d_out):
    """Gradients (dq, dk, dv) in the head-major layout, each block's probabilities recomputed from lse."""
    T = q.shape[3]
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # (B, K, Q, T)
    dq_blocks, dk_blocks, dv_blocks = [], {}, {}  # dk/dv: per key block, summed over the query blocks
    for q_start, q_stop in _blocks(T, block):
        q_blk, do_blk = q[:, :, :, q_start:q_stop], d_out[:, :, :, q_start:q_stop]
        lse_blk, delta_blk = lse[:, :, :, q_start:q_stop], delta[:, :, :, q_start:q_stop]
        dq_blk = jnp.zeros(q_blk.shape, jnp.float32)
        for k_start, k_stop in _blocks(q_stop, block):
            k_blk, v_blk = k[:, :, k_start:k_stop], v[:, :, k_start:k_stop]
            valid = None if kv_valid is None else kv_valid[:, k_start:k_stop]
            p = jnp.exp(_block_scores(q_blk, k_blk, scale, q_start, k_start, valid) - lse_blk[..., None])
            dv_part = jnp.einsum("bkgqs,bkgqh->bksh", p.astype(do_blk.dtype), do_blk, preferred_element_type=jnp.float32)
            dv_blocks[k_start] = dv_blocks[k_start] + dv_part if k_start in dv_blocks else dv_part
            dp = jnp.einsum("bkgqh,bksh->bkgqs", do_blk, v_blk, preferred_element_type=jnp.float32)
            ds = (p * (dp - delta_blk[..., None]) * scale).astype(q.dtype)
            dq_blk = dq_blk + jnp.einsum("bkgqs,bksh->bkgqh", ds, k_blk, preferred_element_type=jnp.float32)
            dk_part = jnp.einsum("bkgqs,bkgqh->bksh", ds, q_blk, preferred_element_type=jnp.float32)
            dk_blocks[k_start] = dk_blocks[k_start] + dk_part if k_start in dk_blocks else dk_part
        dq_blocks.append(dq_blk)
    dk = jnp.concatenate([dk_blocks[s] for s, _ in _blocks(T, block)], axis=2)
    dv = jnp.concatenate([dv_blocks[s] for s, _ in _blocks(T, block)], axis=2)
    return jnp.concatenate(dq_blocks, axis=3).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, kv_valid, scale, block):
    return _forward(q, k, v, kv_valid, scale, block)[0]


def _attention_fwd(q, k, v, kv_valid, scale, block):
    out, lse = _forward(q, k, v, kv_valid, scale, block)
    return out, (q, k, v, kv_valid, out, lse)


def _attention_bwd(scale, block, residuals, d_out):
    q, k, v, kv_valid, out, lse = residuals
    dq, dk, dv = _backward(q, k, v, kv_valid, scale, block, out, lse, d_out)
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def blocked_causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale=None, kv_valid_BxT=None,
                             block: int = DEFAULT_BLOCK):
    """Causal self-attention out_BxTxNxH (K KV heads shared by N // K query heads each), equal to
    `jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True)` (with `kv_valid_BxT` as a key
    mask) up to float rounding, computed block by block (see the module docstring). `scale` multiplies
    the logits; None means 1/sqrt(H)."""
    scale = float(logit_scale(scale, q_BxTxNxH.shape[-1]))
    q = grouped_queries(q_BxTxNxH, k_BxTxKxH.shape[2])
    out_BxKxQxTxH = _attention(q, head_major(k_BxTxKxH), head_major(v_BxTxKxH), kv_valid_BxT, scale, int(block))
    return ungrouped(out_BxKxQxTxH)
