"""Pure training and evaluation steps: `train_step(state, batch) -> (state, metrics)`."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gptjax.model.fused_cross_entropy import fused_cross_entropy
from gptjax.parallel.mesh import constrain


def lm_loss(params, graphdef, batch_BxT1, dropout_key=None):
    """Loss of the model `nnx.merge(graphdef, params)` predicting batch[:, 1:] from batch[:, :-1]; the LM
    head and the cross-entropy run fused in chunks (model/fused_cross_entropy.py), so the B x T x V
    logits are never all held, in the forward or the backward pass."""
    model = nnx.merge(graphdef, params)
    x_BxTxD = model.readout_input(model.hidden(batch_BxT1[:, :-1], dropout_key=dropout_key))
    return fused_cross_entropy(x_BxTxD, model.readout_DxV(), batch_BxT1[:, 1:])


def make_train_step(graphdef, optimizer, schedule, *, grad_accum: int = 1, dropout: float = 0.0, rules: tuple = ()):
    """Builds the pure step. With grad_accum > 1 the batch is split into that many microbatches whose
    gradients are averaged before one optimizer update (same result, less activation memory), each
    microbatch kept spread over the batch shards by the logical-axis `rules`."""
    grad_fn = jax.value_and_grad(lm_loss)

    def train_step(state, batch_BxT1):
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        params = state["params"]
        if grad_accum == 1:
            loss, grads = grad_fn(params, graphdef, batch_BxT1, step_key if dropout else None)
        else:
            # Microbatch a takes rows a, a+A, a+2A, ...: each microbatch stays spread over every
            # batch shard instead of living on 1/A of the devices.
            micro_AxMxT1 = batch_BxT1.reshape(-1, grad_accum, batch_BxT1.shape[-1]).swapaxes(0, 1)
            micro_AxMxT1 = constrain(micro_AxMxT1, (None, "batch", None), rules)

            def accumulate(carry, inputs):
                micro, index = inputs
                key = jax.random.fold_in(step_key, index) if dropout else None
                loss, grads = grad_fn(params, graphdef, micro, key)
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
            (loss, grads), _ = jax.lax.scan(accumulate, zeros, (micro_AxMxT1, jnp.arange(grad_accum)))
            loss, grads = jax.tree.map(lambda x: x / grad_accum, (loss, grads))
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        metrics = dict(
            loss=loss,
            grad_norm=optax.tree.norm(grads),
            param_norm=optax.tree.norm(params),  # checked finite before any checkpoint is written
            lr=schedule(state["step"]),
        )
        new_state = dict(params=params, opt_state=opt_state, step=state["step"] + 1, rng=state["rng"])
        return new_state, metrics

    return train_step


def make_eval_step(graphdef):
    """(params, batch) -> mean loss over the batch, no dropout."""

    def eval_step(params, batch_BxT1):
        return lm_loss(params, graphdef, batch_BxT1)

    return eval_step
