"""μP (gptjax/model/mup.py): the coordinate check, equality with SP at the base width, the per-kind
Adam learning rates (and `model.embed_lr_mult`), the zero-initialised readout, weight decay, sharding of
the optimizer state, and config errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from gptjax.config import ConfigError, validate
from gptjax.model import mup, param_kind
from gptjax.model.attention import einsum_attention
from gptjax.model.build import abstract_model, init_params
from gptjax.parallel.mesh import make_mesh
from gptjax.scaling import plan
from gptjax.train.optim import make_optimizer
from gptjax.train.state import create_train_state
from gptjax.train.step import make_train_step

BASE = 32


def mup_config(width, parametrization="mup", **model_overrides):
    """tiny_config at `width` (d_ff = 4 width, 4 heads) with μP's base width 32."""
    return tiny_config(d_model=width, d_ff=4 * width, vocab_size=64, parametrization=parametrization,
                       mup_base_width=BASE, **model_overrides)


def fresh_state(cfg, optimizer, seed=0):
    params = jax.jit(lambda key: init_params(cfg.model, key))(jax.random.key(seed))
    return dict(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32),
                rng=jax.random.key_data(jax.random.key(1)))


def train(cfg, batches):
    """Runs one jitted train step per batch; returns (graphdef, initial params, final params)."""
    graphdef = nnx.graphdef(abstract_model(cfg.model))
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps, cfg.model)
    step = jax.jit(make_train_step(graphdef, optimizer, schedule))
    state = fresh_state(cfg, optimizer)
    params0 = state["params"]
    for batch in batches:
        state, _ = step(state, batch)
    return graphdef, params0, state["params"]


def batches_of(n, vocab=64, shape=(8, 17), seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(7, vocab, (n, *shape)), jnp.int32)


def coordinate_changes(parametrization, width, lr=3e-3, steps=3):
    """Mean |Δx| after `steps` Adam steps of the embedding output, each block's output and the logits,
    on a fixed probe batch (the "coord check" of Tensor Programs V / the mup package)."""
    cfg = mup_config(width, parametrization)
    cfg.optim.update(lr=lr, schedule="constant", warmup_steps=0, clip_norm=0.0, weight_decay=0.0)
    cfg.train.steps = steps
    batches = batches_of(steps)
    graphdef, params0, params = train(cfg, batches)

    @jax.jit
    def activations(params, tokens_BxT):
        model = nnx.merge(graphdef, params)
        positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
        x_BxTxD = model.token_embed(tokens_BxT) + model.pos_embed(positions_BxT)
        out = {"embed": x_BxTxD}
        for i, block in enumerate(model.blocks):
            x_BxTxD, _ = block(x_BxTxD, positions_BxT)
            out[f"block{i}"] = x_BxTxD
        out["logits"] = model.logits(model.final_norm(x_BxTxD))
        return out

    probe = batches[0, :, :-1]
    before, after = activations(params0, probe), activations(params, probe)
    return {name: float(jnp.abs(after[name] - before[name]).mean()) for name in before}


@pytest.mark.slow
def test_coordinate_check_mup_is_flat_in_width_sp_grows():
    widths = (32, 64, 128, 256)
    sizes = {p: {w: coordinate_changes(p, w) for w in widths} for p in ("sp", "mup")}
    for name in ("embed", "block0", "block1", "logits"):
        mup_sizes = np.array([sizes["mup"][w][name] for w in widths])
        # μP: every activation moves by the same amount at every width (measured spread <= 1.4x).
        assert mup_sizes.max() / mup_sizes.min() < 2.0, (name, mup_sizes)
    sp_growth = {name: sizes["sp"][256][name] / sizes["sp"][32][name] for name in ("block0", "block1", "logits")}
    # SP with one Adam LR: the residual stream moves ~width times more (measured 27x, 23x) and the
    # logits ~5x more at 8x the width.
    assert sp_growth["block0"] > 8 and sp_growth["block1"] > 8, sp_growth
    assert sp_growth["logits"] > 3, sp_growth


@pytest.mark.parametrize("overrides", [
    pytest.param({}, id="tied"),
    pytest.param(dict(scan_layers=True, tie_embeddings=False), id="scan,untied", marks=pytest.mark.slow),
    pytest.param(dict(tie_embeddings=False, readout_zero_init=True, embed_lr_mult=4.0), id="zero readout,embed lr x4"),
])
def test_mup_at_the_base_width_is_sp_exactly(overrides):
    """Every μP rule is the identity at m = 1: same init, forward, and AdamW (decay, clipping, warmup),
    with the zero readout and the embedding lr multiplier off (their defaults) or on (they act alike)."""
    batches = batches_of(3)
    runs = {}
    for p in ("sp", "mup"):
        cfg = mup_config(BASE, p, **overrides)
        cfg.train.steps = 3
        graphdef, params0, params = train(cfg, batches)
        runs[p] = params0, params, nnx.merge(graphdef, params)(batches[0, :, :-1])
    for sp_tree, mup_tree in zip(runs["sp"], runs["mup"]):
        for a, b in zip(jax.tree.leaves(sp_tree), jax.tree.leaves(mup_tree)):
            np.testing.assert_array_equal(a, b)


def test_mup_rules_at_four_times_the_base_width():
    cfg = mup_config(4 * BASE, scalar_head=True).model  # m = 4, head dim 32 (base head dim 8)
    assert mup.width_mult(cfg) == 4.0
    assert mup.hidden_init_std(cfg) == pytest.approx(cfg.init_std / 2)
    assert mup.attention_scale(cfg) == pytest.approx(1 / 32 * math.sqrt(8))  # sqrt(H_base) / H
    assert mup.output_multiplier(cfg) == 0.25
    sp = mup_config(4 * BASE, "sp").model
    assert (mup.width_mult(sp), mup.hidden_init_std(sp), mup.output_multiplier(sp)) == (1.0, sp.init_std, 1.0)
    assert mup.attention_scale(sp) == 32**-0.5

    params = init_params(cfg, jax.random.key(0))
    block = params["blocks"][0]
    hidden_std, resid_std = cfg.init_std / 2, cfg.init_std / 2 / math.sqrt(2 * cfg.n_layers)
    for kernel, std in [(block["attn"]["query"]["kernel"], hidden_std), (block["mlp"]["up"]["kernel"], hidden_std),
                        (block["mlp"]["down"]["kernel"], resid_std), (block["attn"]["out"]["kernel"], resid_std),
                        (params["token_embed"]["embedding"], cfg.init_std),
                        (params["pos_embed"]["embedding"], cfg.init_std)]:
        assert float(jnp.std(kernel)) == pytest.approx(std, rel=0.1)

    # Both readouts (the tied LM head, the scalar head) see their input scaled by 1/m; attention uses
    # the μP scale.
    model = nnx.merge(nnx.graphdef(abstract_model(cfg)), params)
    x_BxTxD = jax.random.normal(jax.random.key(1), (2, 3, cfg.d_model))
    expected = x_BxTxD @ params["token_embed"]["embedding"].T / 4
    np.testing.assert_allclose(model.logits(x_BxTxD), expected, rtol=1e-5, atol=1e-6)
    tokens_BxT = jnp.array([[7, 8, 9], [10, 11, 12]])
    expected = (model.hidden(tokens_BxT) / 4 @ params["scalar_head"]["kernel"])[..., 0]
    np.testing.assert_allclose(model.scalar(tokens_BxT), expected, rtol=1e-5, atol=1e-6)
    assert model.blocks[0].attn.scale == mup.attention_scale(cfg)


def test_sweep_family_under_mup_keeps_the_base_attention_scale_at_every_width():
    # A sweep family fixes the head dim and grows n_heads with width. μP's sqrt(H_base)/H is then SP's
    # 1/sqrt(H) at every width; deriving H_base as mup_base_width / n_heads instead would shrink the
    # logits like 1/sqrt(m) (to 1/sqrt(8 * 8) at m = 8) for no reason.
    cfg = tiny_config(parametrization="mup", mup_base_width=16)
    cfg.sweep.update(family="depth", depths=(1, 2, 4, 8), width_per_layer=16, head_dim=8)
    widths, scales = [], []
    for shape in plan.family_shapes(cfg.sweep):
        model_cfg = plan.model_config(cfg.model, shape)
        widths.append(mup.width_mult(model_cfg))
        scales.append(abstract_model(model_cfg).blocks[0].attn.scale)
    assert widths == [1.0, 2.0, 4.0, 8.0]
    assert scales == pytest.approx([8**-0.5] * 4)


def test_attention_scale_reaches_both_attention_paths():
    q, k, v = (jax.random.normal(key, (2, 6, 4, 8)) for key in jax.random.split(jax.random.key(0), 3))
    expected = jax.nn.dot_product_attention(q, k, v, scale=1 / 8, is_causal=True)
    np.testing.assert_allclose(einsum_attention(q, k, v, 1 / 8), expected, atol=1e-5)
    assert float(jnp.abs(einsum_attention(q, k, v) - expected).max()) > 1e-3  # the default 1/sqrt(8) differs


def random_signs_like(params, seed):
    """+-1 gradients: Adam's first step is then exactly lr * multiplier * sign (|g| >> eps)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.rademacher(key, x.shape, jnp.float32)
                                        for key, x in zip(keys, leaves)])


def test_adam_learning_rate_of_each_parameter_kind():
    """Adam's first step moves every entry by lr * multiplier: lr/m on hidden kernels, lr on
    embeddings, readout, biases and norms. Scanned layers: every block parameter has a layers axis."""
    cfg = mup_config(4 * BASE, tie_embeddings=False, scan_layers=True)
    cfg.optim.update(lr=1e-2, schedule="constant", warmup_steps=0, clip_norm=0.0, weight_decay=0.0)
    params = init_params(cfg.model, jax.random.key(0))
    grads = random_signs_like(params, 1)
    optimizer, _ = make_optimizer(cfg.optim, 10, cfg.model)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    blocks = updates["blocks"]
    for update, lr in [(blocks["attn"]["query"]["kernel"], 1e-2 / 4), (blocks["attn"]["out"]["kernel"], 1e-2 / 4),
                       (blocks["mlp"]["down"]["kernel"], 1e-2 / 4), (blocks["mlp"]["up"]["bias"], 1e-2),
                       (blocks["attn_norm"]["scale"], 1e-2), (updates["token_embed"]["embedding"], 1e-2),
                       (updates["pos_embed"]["embedding"], 1e-2), (updates["lm_head"]["kernel"], 1e-2),
                       (updates["final_norm"]["bias"], 1e-2)]:
        np.testing.assert_allclose(np.abs(update), lr, rtol=1e-3)

    sp_optimizer, _ = make_optimizer(cfg.optim, 10)  # the two-argument form is SP: lr everywhere
    sp_updates, _ = sp_optimizer.update(grads, sp_optimizer.init(params), params)
    np.testing.assert_allclose(np.abs(sp_updates["blocks"]["attn"]["query"]["kernel"]), 1e-2, rtol=1e-3)


@pytest.mark.parametrize("parametrization", ["mup", "sp"])
def test_embed_lr_mult_scales_only_the_embedding_and_vector_updates(parametrization):
    """Adam's first step with +-1 gradients: `embed_lr_mult` = 3 triples the update of embeddings, the
    untied readout, biases and norm scales, and leaves every hidden kernel's update as it was."""
    updates = {}
    for mult in (1.0, 3.0):
        cfg = mup_config(4 * BASE, parametrization, tie_embeddings=False, scan_layers=True, embed_lr_mult=mult)
        cfg.optim.update(lr=1e-2, schedule="constant", warmup_steps=0, clip_norm=0.0, weight_decay=0.0)
        params = init_params(cfg.model, jax.random.key(0))
        optimizer, _ = make_optimizer(cfg.optim, 10, cfg.model)
        updates[mult], _ = optimizer.update(random_signs_like(params, 1), optimizer.init(params), params)
    kinds = param_kind.param_kinds(params)
    seen = set()
    for kind, one, three in zip(jax.tree.leaves(kinds), jax.tree.leaves(updates[1.0]), jax.tree.leaves(updates[3.0])):
        factor = 1.0 if kind == param_kind.HIDDEN else 3.0
        np.testing.assert_allclose(three, factor * one, rtol=1e-5, err_msg=kind)
        seen.add(kind)
    assert seen == set(param_kind.KINDS)
    hidden_lr = 1e-2 / 4 if parametrization == "mup" else 1e-2
    np.testing.assert_allclose(np.abs(updates[3.0]["blocks"]["mlp"]["up"]["kernel"]), hidden_lr, rtol=1e-3)
    np.testing.assert_allclose(np.abs(updates[3.0]["token_embed"]["embedding"]), 3e-2, rtol=1e-3)


@pytest.mark.parametrize("parametrization", ["mup", "sp"])
def test_zero_readout_starts_with_zero_logits(parametrization):
    """`readout_zero_init`: the untied LM head is exactly zero at init, so every logit is 0 (a uniform
    next-token distribution) at every width; the trunk keeps its random init. Without it they are not."""
    tokens_BxT = batches_of(1)[0, :, :-1]
    for zero in (True, False):
        cfg = mup_config(4 * BASE, parametrization, tie_embeddings=False, readout_zero_init=zero).model
        params = init_params(cfg, jax.random.key(0))
        logits = nnx.merge(nnx.graphdef(abstract_model(cfg)), params)(tokens_BxT)
        assert bool(jnp.all(params["lm_head"]["kernel"] == 0)) == zero
        assert bool(jnp.all(logits == 0)) == zero
        assert float(jnp.std(params["token_embed"]["embedding"])) == pytest.approx(cfg.init_std, rel=0.1)


def test_only_hidden_kernels_get_the_width_scaled_learning_rate():
    """The kinds themselves are tested on the real trees in test_param_kind.py."""
    model_cfg = mup_config(4 * BASE).model
    assert mup.adam_lr_multiplier(model_cfg, param_kind.HIDDEN) == 0.25
    for kind in (param_kind.EMBEDDING, param_kind.READOUT, param_kind.VECTOR):
        assert mup.adam_lr_multiplier(model_cfg, kind) == 1.0


def test_weight_decay_is_lr_times_wd_on_kernels_at_every_width():
    """With zero gradients only the decoupled decay acts: -lr * wd * p on every kernel (hidden ones too,
    not divided by m), nothing on embeddings, biases and norms."""
    cfg = mup_config(4 * BASE, scan_layers=True)
    cfg.optim.update(lr=1e-2, schedule="constant", warmup_steps=0, clip_norm=0.0, weight_decay=0.1)
    params = init_params(cfg.model, jax.random.key(0))
    optimizer, _ = make_optimizer(cfg.optim, 10, cfg.model)
    updates, _ = optimizer.update(jax.tree.map(jnp.zeros_like, params), optimizer.init(params), params)
    query = params["blocks"]["attn"]["query"]["kernel"]
    np.testing.assert_allclose(updates["blocks"]["attn"]["query"]["kernel"], -1e-3 * query, rtol=1e-6)
    for zero in (updates["blocks"]["attn"]["query"]["bias"], updates["blocks"]["mlp_norm"]["scale"],
                 updates["token_embed"]["embedding"]):
        assert not np.any(zero)


def test_mup_optimizer_state_is_sharded_like_the_params():
    """μP's per-group scaling is stateless, so Adam's moments keep the params' tree and shardings."""
    cfg = mup_config(64, n_heads=8, n_kv_heads=8)
    cfg.parallel.update(mesh=(2, 2, 2), num_devices=8)
    mesh = make_mesh(cfg.parallel)
    optimizer, _ = make_optimizer(cfg.optim, 10, cfg.model)
    with jax.set_mesh(mesh):
        _, state, _ = create_train_state(cfg.model, optimizer, mesh, cfg.parallel.rules, seed=0)
    up = state["params"]["blocks"][0]["mlp"]["up"]["kernel"]
    adam_state = state["opt_state"][1][0]
    mu = adam_state.mu["blocks"][0]["mlp"]["up"]["kernel"]
    assert mu.sharding.spec == up.sharding.spec and up.addressable_shards[0].data.shape == (32, 128)


@pytest.mark.parametrize("key,value,words", [
    ("parametrization", "ntk", ["model.parametrization='ntk'", "sp, mup"]),
    ("mup_base_width", 0, ["model.mup_base_width=0", "positive"]),
    ("mup_base_width", -64, ["model.mup_base_width=-64"]),
    ("mup_base_head_dim", -8, ["model.mup_base_head_dim=-8", "head dim"]),
    ("embed_lr_mult", 0.0, ["model.embed_lr_mult=0.0", "positive"]),
    ("embed_lr_mult", float("nan"), ["model.embed_lr_mult=nan"]),
    ("readout_zero_init", True, ["model.readout_zero_init=True", "tie_embeddings=False"]),
])
def test_bad_mup_config_is_a_config_error(key, value, words):
    cfg = mup_config(64)
    validate(cfg, device_count=8)  # the valid μP config passes
    cfg.model[key] = value
    with pytest.raises(ConfigError) as err:
        validate(cfg, device_count=8)
    for word in words:
        assert word in str(err.value)
