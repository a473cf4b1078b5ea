"""Parameter kinds (gptjax/model/param_kind.py) on the real model trees, and the two things that read
them: the weight-decay mask and μP's per-kind Adam learning rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from gptjax.model.param_kind import EMBEDDING, HIDDEN, READOUT, VECTOR, UnknownParameterError, param_kind, param_kinds
from gptjax.train.optim import make_optimizer, weight_decay_mask
from gptjax.model.build import init_params

HIDDEN_KERNELS = {("attn", "query"), ("attn", "key"), ("attn", "value"), ("attn", "out"), ("mlp", "up"),
                  ("mlp", "down")}


def model_config(**overrides):
    return tiny_config(qk_norm=True, tie_embeddings=False, scalar_head=True, positional="learned", **overrides).model


def kinds_by_name(model_cfg) -> dict[str, str]:
    params = jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))
    return {jax.tree_util.keystr(path): kind for path, kind in jax.tree_util.tree_leaves_with_path(param_kinds(params))}


def expected_kind(name: str) -> str:
    parts = [p.strip("[]'") for p in name.split("][")]
    if parts[-1] in ("scale", "bias"):
        return VECTOR
    if parts[0] in ("token_embed", "pos_embed"):
        return EMBEDDING
    if parts[0] in ("lm_head", "scalar_head"):
        return READOUT
    assert tuple(parts[-3:-1]) in HIDDEN_KERNELS, name
    return HIDDEN


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_parameter_of_the_real_model_has_its_kind(scan_layers):
    kinds = kinds_by_name(model_config(scan_layers=scan_layers))
    assert kinds == {name: expected_kind(name) for name in kinds}
    n_blocks = 1 if scan_layers else 2  # scanned: one stacked block, every leaf with a layers axis
    assert sum(kind == HIDDEN for kind in kinds.values()) == len(HIDDEN_KERNELS) * n_blocks
    assert [n for n, k in kinds.items() if k == READOUT] == ["['lm_head']['kernel']", "['scalar_head']['kernel']"]
    qk_norms = [n for n in kinds if "query_norm" in n or "key_norm" in n]
    assert qk_norms and all(kinds[n] == VECTOR for n in qk_norms)  # inside the blocks, yet never decayed


def test_an_unclassified_parameter_is_an_error():
    with pytest.raises(UnknownParameterError, match="adapter/lora_a"):
        param_kind([jax.tree_util.DictKey("adapter"), jax.tree_util.DictKey("lora_a")])


def decay_step(model_cfg, decay_embeddings):
    """One AdamW update with zero gradients (only the decoupled decay acts), lr 1e-2, wd 0.1."""
    cfg = tiny_config()
    cfg.optim.update(lr=1e-2, schedule="constant", warmup_steps=0, clip_norm=0.0, weight_decay=0.1,
                     decay_embeddings=decay_embeddings)
    params = init_params(model_cfg, jax.random.key(0))
    optimizer, _ = make_optimizer(cfg.optim, 10, model_cfg)
    updates, _ = optimizer.update(jax.tree.map(jnp.zeros_like, params), optimizer.init(params), params)
    return params, updates


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_tied_and_untied_readouts_are_regularised_alike(decay_embeddings):
    """The readout matrix shrinks by the same lr * wd whether it is the token embedding (tied) or lm_head."""
    tied, tied_updates = decay_step(tiny_config(tie_embeddings=True).model, decay_embeddings)
    untied, untied_updates = decay_step(tiny_config(tie_embeddings=False).model, decay_embeddings)
    rate = 1e-3 if decay_embeddings else 0.0
    np.testing.assert_allclose(tied_updates["token_embed"]["embedding"], -rate * tied["token_embed"]["embedding"],
                               rtol=1e-6)
    np.testing.assert_allclose(untied_updates["lm_head"]["kernel"], -rate * untied["lm_head"]["kernel"], rtol=1e-6)
    query = untied["blocks"][0]["attn"]["query"]["kernel"]  # hidden kernels decay either way
    np.testing.assert_allclose(untied_updates["blocks"][0]["attn"]["query"]["kernel"], -1e-3 * query, rtol=1e-6)


def test_weight_decay_mask_of_the_scanned_model_follows_the_kinds():
    params = jax.eval_shape(lambda: init_params(model_config(scan_layers=True), jax.random.key(0)))
    mask = weight_decay_mask(params, decay_embeddings=False)
    assert mask["blocks"]["mlp"]["up"]["kernel"] and mask["blocks"]["attn"]["out"]["kernel"]
    assert not mask["blocks"]["attn"]["query_norm"]["scale"] and not mask["blocks"]["mlp"]["up"]["bias"]
    assert not mask["lm_head"]["kernel"] and not mask["scalar_head"]["kernel"] and not mask["pos_embed"]["embedding"]
    assert weight_decay_mask(params, decay_embeddings=True)["lm_head"]["kernel"]
