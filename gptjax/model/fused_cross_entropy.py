"""Next-token cross-entropy fused with the LM head, in chunks of positions: the B x T x V logits never
exist at once.

The loss is a scalar, so its backward pass needs only d(loss)/d(logits) = (softmax - onehot) / count,
which is known as soon as a chunk's logits are: the forward pass of the custom VJP turns each chunk's
logits straight into the chunk's gradients with respect to the hidden states and the readout matrix
and drops them. Backward then only scales those gradients by the incoming cotangent. Nothing of size
V per position is kept for backward (the plain path keeps B*T*V float32 logits, 67 MB at B*T = 2048,
V = 8192), and no logit is computed twice (as `jax.checkpoint` per chunk would). Liger-Kernel's fused
linear cross-entropy does the same on GPUs.

Chunks run along the time axis, so every chunk keeps all B rows and stays sharded over the batch axes
like the activations; the readout matrix may be sharded over vocab. Logits and statistics are float32
whatever the compute dtype; the mean is over all B*T positions.
"""

import functools

import jax
import jax.numpy as jnp

CHUNK_POSITIONS = 64  # time steps per chunk: B * 64 rows of V logits at a time


def _chunks(T: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, T)) for start in range(0, T, chunk)]


def _chunk_logits(x_BxCxD, w_DxV):
    B, C, D = x_BxCxD.shape
    return jnp.dot(x_BxCxD.reshape(B * C, D), w_DxV, preferred_element_type=jnp.float32)  # 2-D: fast on CPU


def _chunk_loss_sum(logits_RxV, targets_R):
    lse_R = jax.nn.logsumexp(logits_RxV, axis=-1)
    return jnp.sum(lse_R - jnp.take_along_axis(logits_RxV, targets_R[:, None], axis=-1)[:, 0]), lse_R


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _loss(x_BxTxD, w_DxV, targets_BxT, chunk):
    B, T, _ = x_BxTxD.shape
    total = jnp.zeros((), jnp.float32)
    for start, stop in _chunks(T, chunk):
        logits_RxV = _chunk_logits(x_BxTxD[:, start:stop], w_DxV)
        total = total + _chunk_loss_sum(logits_RxV, targets_BxT[:, start:stop].reshape(-1))[0]
    return total / (B * T)


def _loss_fwd(x_BxTxD, w_DxV, targets_BxT, chunk):
    B, T, D = x_BxTxD.shape
    total = jnp.zeros((), jnp.float32)
    dw_DxV = jnp.zeros(w_DxV.shape, jnp.float32)
    dx_chunks = []
    for start, stop in _chunks(T, chunk):
        x_BxCxD = x_BxTxD[:, start:stop]
        logits_RxV = _chunk_logits(x_BxCxD, w_DxV)
        targets_R = targets_BxT[:, start:stop].reshape(-1)
        loss_sum, lse_R = _chunk_loss_sum(logits_RxV, targets_R)
        total = total + loss_sum
        # d(mean loss)/d(logits) = (softmax - onehot) / (B*T)
        d_logits_RxV = jnp.exp(logits_RxV - lse_R[:, None])
        d_logits_RxV = d_logits_RxV.at[jnp.arange(targets_R.shape[0]), targets_R].add(-1.0) / (B * T)
        d_logits_RxV = d_logits_RxV.astype(w_DxV.dtype)
        dx_chunks.append(jnp.dot(d_logits_RxV, w_DxV.T, preferred_element_type=jnp.float32)
                         .reshape(B, stop - start, D))
        dw_DxV = dw_DxV + jnp.dot(x_BxCxD.reshape(-1, D).T, d_logits_RxV, preferred_element_type=jnp.float32)
    dx_BxTxD = jnp.concatenate(dx_chunks, axis=1).astype(x_BxTxD.dtype)
    return total / (B * T), (dx_BxTxD, dw_DxV.astype(w_DxV.dtype), targets_BxT)


def _loss_bwd(chunk, residuals, g):
    dx_BxTxD, dw_DxV, targets_BxT = residuals
    zero_targets = jnp.zeros(targets_BxT.shape, jax.dtypes.float0)  # integer input: no gradient
    return (g * dx_BxTxD).astype(dx_BxTxD.dtype), (g * dw_DxV).astype(dw_DxV.dtype), zero_targets


_loss.defvjp(_loss_fwd, _loss_bwd)


def fused_cross_entropy(x_BxTxD, w_DxV, targets_BxT, chunk: int = CHUNK_POSITIONS):
    """Mean cross-entropy (nats) of the logits x_BxTxD @ w_DxV against targets_BxT, equal to
    `optax.softmax_cross_entropy_with_integer_labels` on the full logits up to float rounding, with
    gradients for x and w and no B x T x V array kept (see the module docstring)."""
    return _loss(x_BxTxD, w_DxV, targets_BxT.astype(jnp.int32), int(chunk))
