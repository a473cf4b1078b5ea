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
whatever the compute dtype; the mean is over all B*T positions, or weighted by a loss mask.
"""

import functools

import jax
import jax.numpy as jnp

CHUNK_POSITIONS = 64  # time steps per chunk: B * 64 rows of V logits at a time


def _time_chunks(a_BxT, chunk: int):
    """(a_UxBxC..., tail_BxC...): the U = T // chunk whole chunks of `a` along time, stacked on a leading axis
    for `lax.scan`, and the T mod chunk positions left over (maybe none)."""
    B, T = a_BxT.shape[:2]
    n = T // chunk
    whole = a_BxT[:, :n * chunk].reshape(B, n, chunk, *a_BxT.shape[2:]).swapaxes(0, 1)
    return whole, a_BxT[:, n * chunk:]


def _chunk_logits(x_BxCxD, w_DxV):
    B, C, D = x_BxCxD.shape
    return jnp.dot(x_BxCxD.reshape(B * C, D), w_DxV, preferred_element_type=jnp.float32)  # 2-D: fast on CPU


def _chunk_loss_sum(x_BxCxD, w_DxV, targets_BxC, weights_BxC):
    """(weighted summed cross-entropy of the chunk, its logits_RxV, their lse_R) with R = B*C rows."""
    logits_RxV = _chunk_logits(x_BxCxD, w_DxV)
    lse_R = jax.nn.logsumexp(logits_RxV, axis=-1)
    target_logits_R = jnp.take_along_axis(logits_RxV, targets_BxC.reshape(-1, 1), axis=-1)[:, 0]
    return jnp.sum((lse_R - target_logits_R) * weights_BxC.reshape(-1)), logits_RxV, lse_R


def _chunk_loss_and_grads(x_BxCxD, w_DxV, targets_BxC, weights_BxC, total_weight):
    """(summed loss, d(mean loss)/dx_BxCxD, the chunk's share of d(mean loss)/dw_DxV) for one chunk."""
    B, C, D = x_BxCxD.shape
    loss_sum, logits_RxV, lse_R = _chunk_loss_sum(x_BxCxD, w_DxV, targets_BxC, weights_BxC)
    targets_R = targets_BxC.reshape(-1)
    # d(mean loss)/d(logits) = weight * (softmax - onehot) / total weight
    d_logits_RxV = jnp.exp(logits_RxV - lse_R[:, None])
    d_logits_RxV = d_logits_RxV.at[jnp.arange(B * C), targets_R].add(-1.0)
    d_logits_RxV = (d_logits_RxV * weights_BxC.reshape(-1, 1) / total_weight).astype(w_DxV.dtype)
    dx_BxCxD = jnp.dot(d_logits_RxV, w_DxV.T, preferred_element_type=jnp.float32).reshape(B, C, D)
    dw_DxV = jnp.dot(x_BxCxD.reshape(-1, D).T, d_logits_RxV, preferred_element_type=jnp.float32)
    return loss_sum, dx_BxCxD, dw_DxV


def _fold_time_chunks(step, carry, chunk: int, *arrays_BxT):
    """Folds `carry, out_BxC... = step(carry, *chunks_BxC)` over time chunks of `arrays_BxT` (all B x T
    leading): the whole chunks under `lax.scan`, then the T mod chunk positions left over. Returns the last
    carry and the outputs joined along time (None where `step` outputs None).

    `lax.scan` runs the chunks one after another: XLA:CPU schedules the chunks of an unrolled loop side by
    side, which kept every chunk's B*C x V logits alive at once (4 x 16 MB at the bench shapes)."""
    B = arrays_BxT[0].shape[0]
    whole, tails = zip(*(_time_chunks(a, chunk) for a in arrays_BxT))
    carry, out_UxBxC = jax.lax.scan(lambda c, xs: step(c, *xs), carry, whole)
    outs = [] if out_UxBxC is None else [out_UxBxC.swapaxes(0, 1).reshape(B, -1, *out_UxBxC.shape[3:])]
    if tails[0].shape[1]:
        carry, out_tail = step(carry, *tails)
        outs += [] if out_tail is None else [out_tail]
    return carry, jnp.concatenate(outs, axis=1) if outs else None


def _total_weight(weights_BxT):
    return jnp.maximum(jnp.sum(weights_BxT), 1.0)  # an all-zero mask averages to 0, not nan


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _loss(x_BxTxD, w_DxV, targets_BxT, weights_BxT, chunk):
    def add_chunk(total, x_BxCxD, targets_BxC, weights_BxC):
        return total + _chunk_loss_sum(x_BxCxD, w_DxV, targets_BxC, weights_BxC)[0], None

    total, _ = _fold_time_chunks(add_chunk, jnp.zeros((), jnp.float32), chunk, x_BxTxD, targets_BxT, weights_BxT)
    return total / _total_weight(weights_BxT)


def _loss_fwd(x_BxTxD, w_DxV, targets_BxT, weights_BxT, chunk):
    total_weight = _total_weight(weights_BxT)

    def add_chunk(carry, x_BxCxD, targets_BxC, weights_BxC):
        total, dw_DxV = carry
        loss_sum, dx_BxCxD, dw_part = _chunk_loss_and_grads(x_BxCxD, w_DxV, targets_BxC, weights_BxC, total_weight)
        return (total + loss_sum, dw_DxV + dw_part), dx_BxCxD

    zeros = (jnp.zeros((), jnp.float32), jnp.zeros(w_DxV.shape, jnp.float32))
    (total, dw_DxV), dx_BxTxD = _fold_time_chunks(add_chunk, zeros, chunk, x_BxTxD, targets_BxT, weights_BxT)
    residuals = (dx_BxTxD.astype(x_BxTxD.dtype), dw_DxV.astype(w_DxV.dtype), targets_BxT, weights_BxT)
    return total / total_weight, residuals


def _loss_bwd(chunk, residuals, g):
    dx_BxTxD, dw_DxV, targets_BxT, weights_BxT = residuals
    zero_targets = jnp.zeros(targets_BxT.shape, jax.dtypes.float0)  # integer input: no gradient
    # The weights are a mask: no gradient flows to them.
    return ((g * dx_BxTxD).astype(dx_BxTxD.dtype), (g * dw_DxV).astype(dw_DxV.dtype), zero_targets,
            jnp.zeros_like(weights_BxT))


_loss.defvjp(_loss_fwd, _loss_bwd)


def fused_cross_entropy(x_BxTxD, w_DxV, targets_BxT, chunk: int = CHUNK_POSITIONS, weights_BxT=None):
    """Mean cross-entropy (nats) of the logits x_BxTxD @ w_DxV against targets_BxT, equal to
    `optax.softmax_cross_entropy_with_integer_labels` on the full logits up to float rounding, with
    gradients for x and w and no B x T x V array kept (see the module docstring). With `weights_BxT` (a
    loss mask: SFT's assistant tokens) it is the weighted mean sum(weight * ce) / max(sum(weight), 1)."""
    if weights_BxT is None:
        weights_BxT = jnp.ones(targets_BxT.shape, jnp.float32)
    return _loss(x_BxTxD, w_DxV, targets_BxT.astype(jnp.int32), weights_BxT.astype(jnp.float32), int(chunk))
