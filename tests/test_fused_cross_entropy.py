"""The LM head fused with the cross-entropy in chunks (gptjax/model/fused_cross_entropy.py): the same
loss and gradients as the plain logits path, and no B x T x V array saved for the backward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from conftest import tiny_config
from gptjax.model.build import abstract_model, init_params
from gptjax.model.fused_cross_entropy import fused_cross_entropy
from gptjax.train.step import lm_loss


def inputs(B, T, D, V, dtype=jnp.float32):
    a, b, c = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(a, (B, T, D), dtype), jax.random.normal(b, (D, V), dtype) * 0.3,
            jax.random.randint(c, (B, T), 0, V))


def plain_loss(x, w, targets):
    logits = jnp.dot(x.reshape(-1, x.shape[-1]), w, preferred_element_type=jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets.reshape(-1)).mean()


@pytest.mark.parametrize("T,chunk", [(12, 4), (13, 5), (8, 64)])  # even chunks, a ragged last one, one chunk
def test_loss_and_gradients_equal_the_plain_path(T, chunk):
    x, w, targets = inputs(3, T, 16, 70)
    fused = lambda x, w: fused_cross_entropy(x, w, targets, chunk)  # noqa: E731
    np.testing.assert_allclose(fused(x, w), plain_loss(x, w, targets), rtol=1e-6)
    for got, want in zip(jax.grad(fused, (0, 1))(x, w), jax.grad(lambda x, w: plain_loss(x, w, targets), (0, 1))(x, w)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # a scaled cotangent reaches both gradients (backward multiplies the saved ones by it)
    _, vjp = jax.vjp(fused, x, w)
    dx, dw = vjp(jnp.float32(3.0))
    np.testing.assert_allclose(dx, 3 * jax.grad(fused)(x, w), rtol=1e-6)


def test_bfloat16_inputs_give_float32_statistics():
    x, w, targets = inputs(2, 16, 32, 90, jnp.bfloat16)
    loss = fused_cross_entropy(x, w, targets, chunk=8)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, plain_loss(x, w, targets), rtol=1e-5)
    dx, dw = jax.grad(lambda x, w: fused_cross_entropy(x, w, targets, 8), (0, 1))(x, w)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16


def test_no_per_position_logits_are_saved_for_backward(capsys):
    B, T, D, V = 2, 32, 8, 300
    x, w, targets = inputs(B, T, D, V)
    print_saved_residuals(lambda x, w: fused_cross_entropy(x, w, targets, 8), x, w)
    fused = capsys.readouterr().out
    print_saved_residuals(lambda x, w: plain_loss(x, w, targets), x, w)
    plain = capsys.readouterr().out
    assert f"f32[{B * T},{V}]" in plain  # the plain path keeps the softmax of every position
    assert f",{V}]" not in fused.replace(f"[{D},{V}]", "")  # only the D x V readout gradient


@pytest.mark.parametrize("tie", [True, False])
def test_the_training_loss_equals_cross_entropy_of_the_models_logits(tie):
    cfg = tiny_config(tie_embeddings=tie, parametrization="mup", mup_base_width=16).model  # output_mult != 1
    params = init_params(cfg, jax.random.key(1))
    graphdef = nnx.graphdef(abstract_model(cfg))
    batch = jax.random.randint(jax.random.key(2), (4, 17), 0, cfg.vocab_size)

    def via_logits(params):
        logits = nnx.merge(graphdef, params)(batch[:, :-1]).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    np.testing.assert_allclose(lm_loss(params, graphdef, batch), via_logits(params), rtol=1e-6)
    grads = jax.grad(lm_loss)(params, graphdef, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, jax.grad(via_logits)(params))


def test_a_weight_mask_gives_the_masked_mean_and_its_gradients():
    """SFT's loss: cross-entropy on the masked (assistant) positions only, averaged over them; masked-out
    positions add nothing to the loss or the gradients, and an all-zero mask gives 0, not nan."""
    x, w, targets = inputs(3, 13, 16, 70)
    weights = (jax.random.uniform(jax.random.key(1), (3, 13)) < 0.4).astype(jnp.float32)

    def plain(x, w):
        logits = jnp.dot(x.reshape(-1, x.shape[-1]), w, preferred_element_type=jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets.reshape(-1))
        return jnp.sum(ce * weights.reshape(-1)) / jnp.sum(weights)

    fused = lambda x, w: fused_cross_entropy(x, w, targets, 5, weights_BxT=weights)  # noqa: E731
    np.testing.assert_allclose(fused(x, w), plain(x, w), rtol=1e-6)
    for got, want in zip(jax.grad(fused, (0, 1))(x, w), jax.grad(plain, (0, 1))(x, w)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert float(jnp.abs(jax.grad(fused)(x, w)[weights == 0]).max()) == 0.0  # masked rows get no gradient
    zero = fused_cross_entropy(x, w, targets, 5, weights_BxT=jnp.zeros((3, 13)))
    assert float(zero) == 0.0
