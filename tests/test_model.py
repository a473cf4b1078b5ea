"""The decoder's options, one behaviour each, on tiny shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from gptjax.model.build import abstract_model, init_params
from gptjax.model.kv_cache import KVCache, empty_caches
from gptjax.model.layers import make_norm
from gptjax.model.transformer import Block, Transformer
from gptjax.train.flops import param_counts


def build(**overrides):
    m = tiny_config(**overrides).model
    with nnx.use_eager_sharding(False):
        model = Transformer(m, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    return m, graphdef, nnx.to_pure_dict(params)


def logits_of(graphdef, params, tokens, **kw):
    return nnx.merge(graphdef, params)(tokens, **kw)


TOKENS = jnp.array(np.random.default_rng(0).integers(0, 33, (2, 12)), jnp.int32)

OPTION_SETS = [
    {},
    dict(positional="sinusoidal"),
    dict(positional="rope"),
    dict(norm="rmsnorm"),
    dict(norm_position="post"),
    dict(activation="relu"),
    dict(activation="swiglu"),
    dict(n_kv_heads=2),
    dict(n_kv_heads=1, qk_norm=True),
    dict(tie_embeddings=False, use_bias=False),
    dict(scan_layers=True, remat=True),
    dict(scalar_head=True),
]


@pytest.mark.parametrize("overrides", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_causal_and_param_count_for_each_option(overrides):
    m, graphdef, params = build(**overrides)
    logits = logits_of(graphdef, params, TOKENS)
    assert logits.shape == (2, 12, m.vocab_size)
    assert bool(jnp.isfinite(logits).all())
    changed = TOKENS.at[:, 7].set((TOKENS[:, 7] + 1) % 33)
    logits2 = logits_of(graphdef, params, changed)
    np.testing.assert_allclose(logits[:, :7], logits2[:, :7], atol=1e-5)  # the past cannot see the future
    assert float(jnp.abs(logits[:, 7:] - logits2[:, 7:]).max()) > 1e-4
    assert sum(x.size for x in jax.tree.leaves(params)) == param_counts(m)["total"]


def test_every_param_has_logical_axis_names():
    for overrides in ({}, dict(scan_layers=True, qk_norm=True, tie_embeddings=False, scalar_head=True)):
        with nnx.use_eager_sharding(False):
            model = nnx.eval_shape(lambda: Transformer(tiny_config(**overrides).model, rngs=nnx.Rngs(0)))
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            names = var.get_metadata()["out_sharding"]
            assert names is not None and len(names) == var.get_value().ndim, (path, names)
            if overrides and "blocks" in path:
                assert names[0] == "layers"


def test_rope_depends_only_on_relative_position():
    for positional, invariant in (("rope", True), ("learned", False), ("sinusoidal", False)):
        _, graphdef, params = build(positional=positional)
        positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
        a = logits_of(graphdef, params, TOKENS, positions_BxT=positions)
        b = logits_of(graphdef, params, TOKENS, positions_BxT=positions + 5)
        assert np.allclose(a, b, atol=1e-4) == invariant, positional


def test_sinusoidal_and_rope_have_no_position_params():
    learned = param_counts(tiny_config().model)["total"]
    for positional in ("sinusoidal", "rope"):
        m, _, params = build(positional=positional)
        assert "pos_embed" not in params
        assert sum(x.size for x in jax.tree.leaves(params)) == learned - m.max_len * m.d_model


def test_layernorm_centres_rmsnorm_does_not():
    x = jax.random.normal(jax.random.key(1), (4, 32)) + 3.0
    for norm, centred in (("layernorm", True), ("rmsnorm", False)):
        with nnx.use_eager_sharding(False):
            y = make_norm(32, tiny_config(norm=norm).model, nnx.Rngs(0))(x)
        np.testing.assert_allclose(jnp.sqrt((y**2).mean(-1)) if not centred else y.std(-1), 1.0, atol=1e-3)
        assert (abs(float(y.mean(-1).max())) < 1e-4) == centred


def test_post_norm_normalises_the_residual_stream_pre_norm_does_not():
    x = 5.0 * jax.random.normal(jax.random.key(2), (2, 12, 32))
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    for placement, normalised in (("pre", False), ("post", True)):
        with nnx.use_eager_sharding(False):
            block = Block(tiny_config(norm_position=placement).model, nnx.Rngs(0))
        y, cache = block(x, positions)
        assert cache is None  # training: no KV cache in, none out
        assert np.allclose(y.std(-1), 1.0, atol=1e-2) == normalised


@pytest.mark.parametrize("activation", ["gelu", "relu", "swiglu"])
def test_mlp_activation_matches_formula(activation):
    m = tiny_config(activation=activation).model
    with nnx.use_eager_sharding(False):
        mlp = Block(m, nnx.Rngs(0)).mlp
    x = jax.random.normal(jax.random.key(3), (3, 32))
    up = x @ mlp.up.kernel[...] + mlp.up.bias[...]
    if activation == "gelu":
        h = 0.5 * up * (1 + jnp.tanh(jnp.sqrt(2 / jnp.pi) * (up + 0.044715 * up**3)))
    elif activation == "relu":
        h = jnp.maximum(up, 0)
    else:
        gate = x @ mlp.gate.kernel[...] + mlp.gate.bias[...]
        h = gate * jax.nn.sigmoid(gate) * up
    np.testing.assert_allclose(mlp(x), h @ mlp.down.kernel[...] + mlp.down.bias[...], atol=1e-5)


def test_grouped_query_attention_equals_mha_with_shared_kv_heads():
    m_gqa, graphdef_gqa, params_gqa = build(n_kv_heads=2)
    _, graphdef_mha, params_mha = build()
    H, group = m_gqa.d_model // m_gqa.n_heads, m_gqa.n_heads // 2
    assert params_gqa["blocks"][0]["attn"]["key"]["kernel"].shape == (32, 2 * H)
    params_mha = jax.tree.map(lambda x: x, params_gqa | {"blocks": jax.tree.map(lambda x: x, params_gqa["blocks"])})
    for i in range(2):
        for proj in ("key", "value"):
            p = params_gqa["blocks"][i]["attn"][proj]
            kernel = jnp.repeat(p["kernel"].reshape(32, 2, H), group, axis=1).reshape(32, -1)
            bias = jnp.repeat(p["bias"].reshape(2, H), group, axis=0).reshape(-1)
            params_mha["blocks"][i]["attn"][proj] = {"kernel": kernel, "bias": bias}
    np.testing.assert_allclose(logits_of(graphdef_gqa, params_gqa, TOKENS),
                               logits_of(graphdef_mha, params_mha, TOKENS), atol=1e-5)


def test_qk_norm_makes_attention_invariant_to_query_scale():
    for qk_norm in (True, False):
        _, graphdef, params = build(qk_norm=qk_norm)
        scaled = jax.tree.map(lambda x: x, params)
        for block in scaled["blocks"].values():
            block["attn"]["query"] = jax.tree.map(lambda w: 20.0 * w, block["attn"]["query"])
        same = np.allclose(logits_of(graphdef, params, TOKENS), logits_of(graphdef, scaled, TOKENS), atol=1e-4)
        assert same == qk_norm


def test_tied_head_reuses_token_embedding_untied_has_its_own():
    m, graphdef, params = build()
    model = nnx.merge(graphdef, params)
    hidden = model.hidden(TOKENS)
    np.testing.assert_allclose(model(TOKENS), hidden @ params["token_embed"]["embedding"].T, atol=1e-5)
    m_untied, _, params_untied = build(tie_embeddings=False)
    assert params_untied["lm_head"]["kernel"].shape == (m.d_model, m.vocab_size)
    assert param_counts(m_untied)["total"] - param_counts(m)["total"] == m.d_model * m.vocab_size


def test_dropout_is_random_with_a_key_and_off_without():
    _, graphdef, params = build(dropout=0.3)
    clean = logits_of(graphdef, params, TOKENS)
    a = logits_of(graphdef, params, TOKENS, dropout_key=jax.random.key(0))
    b = logits_of(graphdef, params, TOKENS, dropout_key=jax.random.key(0))
    c = logits_of(graphdef, params, TOKENS, dropout_key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, clean)
    _, graphdef0, params0 = build(dropout=0.0)
    np.testing.assert_array_equal(logits_of(graphdef0, params0, TOKENS, dropout_key=jax.random.key(0)),
                                  logits_of(graphdef0, params0, TOKENS))


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32_logits():
    _, graphdef32, params = build()
    _, graphdef16, params16 = build(compute_dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params16))
    logits16 = logits_of(graphdef16, params, TOKENS)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits_of(graphdef32, params, TOKENS), atol=5e-2)


def test_bf16_logits_are_the_readout_accumulated_in_fp32_not_rounded_to_bf16():
    """The LM head's product of bf16 operands is kept in float32: equal to the float32 product of the same
    bf16-rounded hidden states and readout, far inside bf16's rounding (~4e-3 relative)."""
    _, graphdef16, params = build(compute_dtype="bfloat16")
    model = nnx.merge(graphdef16, params)
    x_BxTxD = model.readout_input(model.hidden(TOKENS))
    B, T, D = x_BxTxD.shape
    expected = (x_BxTxD.astype(jnp.float32).reshape(B * T, D) @ model.readout_DxV().astype(jnp.float32))
    np.testing.assert_allclose(model(TOKENS), expected.reshape(B, T, -1), rtol=1e-5, atol=1e-6)


def _loss_and_grads(graphdef, params):
    def loss(p):
        return nnx.merge(graphdef, p)(TOKENS).astype(jnp.float32).std()

    return jax.jit(jax.value_and_grad(loss))(params)


def test_remat_gives_identical_loss_and_grads():
    _, graphdef, params = build()
    _, graphdef_remat, _ = build(remat=True)
    (l1, g1), (l2, g2) = _loss_and_grads(graphdef, params), _loss_and_grads(graphdef_remat, params)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)


def test_scan_over_layers_matches_the_unrolled_stack():
    _, graphdef, params = build()
    _, graphdef_scan, params_scan = build(scan_layers=True)
    blocks = [params["blocks"][i] for i in range(2)]
    stacked = params | {"blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}
    assert jax.tree.structure(stacked) == jax.tree.structure(params_scan)
    np.testing.assert_allclose(logits_of(graphdef_scan, stacked, TOKENS), logits_of(graphdef, params, TOKENS), atol=1e-5)


def test_scalar_head_reads_the_shared_trunk():
    _, graphdef, params = build(scalar_head=True)
    model = nnx.merge(graphdef, params)
    values = model.scalar(TOKENS)
    assert values.shape == (2, 12)
    np.testing.assert_allclose(values, (model.hidden(TOKENS) @ params["scalar_head"]["kernel"])[..., 0], atol=1e-5)
    _, graphdef_plain, params_plain = build()
    with pytest.raises(ValueError, match="scalar_head=True"):
        nnx.merge(graphdef_plain, params_plain).scalar(TOKENS)


def test_the_model_holds_nothing_but_parameters():
    for overrides in ({}, dict(scan_layers=True, qk_norm=True, scalar_head=True)):
        with nnx.use_eager_sharding(False):
            model = Transformer(tiny_config(**overrides).model, rngs=nnx.Rngs(0))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        assert jax.tree.leaves(params) and not jax.tree.leaves(rest)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decoding_in_chunks_with_kv_caches_equals_the_full_forward(scan_layers):
    _, graphdef, params = build(scan_layers=scan_layers, positional="rope", n_kv_heads=2)
    model = nnx.merge(graphdef, params)
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    caches = empty_caches(model, jnp.zeros(2, jnp.int32), 12)
    chunks = []
    for lo, hi in ((0, 7), (7, 8), (8, 12)):  # a prefill, one decode step, then several tokens at once
        x, caches = model.decode(TOKENS[:, lo:hi], positions[:, lo:hi], caches)
        chunks.append(x)
    np.testing.assert_allclose(jnp.concatenate(chunks, axis=1), model.hidden(TOKENS), atol=1e-5)
    if scan_layers:  # one cache stacked on a leading layer axis
        assert isinstance(caches, KVCache) and caches.k_BxKxSxH.shape == (2, 2, 2, 12, 8)
        assert caches.index.tolist() == [12, 12]
    else:
        assert [c.index for c in caches] == [12, 12] and caches[0].k_BxKxSxH.shape == (2, 2, 12, 8)


def test_init_params_is_deterministic_per_key():
    m = tiny_config().model
    a, b = init_params(m, jax.random.key(0)), init_params(m, jax.random.key(0))
    c = init_params(m, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(a["token_embed"]["embedding"], c["token_embed"]["embedding"])


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cpu_einsum_attention_equals_jax_dot_product_attention(n_kv_heads):
    from gptjax.model.attention import einsum_attention

    kq, kk, kv = jax.random.split(jax.random.key(4), 3)
    q = jax.random.normal(kq, (2, 9, 4, 8))
    k, v = jax.random.normal(kk, (2, 9, n_kv_heads, 8)), jax.random.normal(kv, (2, 9, n_kv_heads, 8))
    expected = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(einsum_attention(q, k, v), expected, atol=1e-5)
    grads = jax.grad(lambda *a: (einsum_attention(*a) ** 2).sum(), argnums=(0, 1, 2))(q, k, v)
    expected_grads = jax.grad(lambda *a: (jax.nn.dot_product_attention(*a, is_causal=True) ** 2).sum(),
                              argnums=(0, 1, 2))(q, k, v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), grads, expected_grads)


@pytest.mark.parametrize("requested,backend,dtype,head_dim,capability,kernel", [
    ("auto", "cpu", jnp.bfloat16, 64, 0.0, "einsum"),  # sequences of one block (seq_len 0 here)
    ("auto", "gpu", jnp.bfloat16, 64, 9.0, "cudnn"),
    ("auto", "gpu", jnp.bfloat16, 64, 7.5, "xla"),  # a T4: older than Ampere
    ("auto", "gpu", jnp.float32, 64, 9.0, "xla"),  # cuDNN's flash kernel is half precision only
    ("auto", "gpu", jnp.bfloat16, 76, 9.0, "xla"),  # head dim not a multiple of 8
    ("auto", "gpu", jnp.bfloat16, 256, 9.0, "xla"),  # above its head-dim limit
    ("auto", "tpu", jnp.bfloat16, 64, 0.0, "xla"),
    ("xla", "cpu", jnp.float32, 64, 0.0, "xla"),  # an explicit choice wins
])
def test_attention_kernel_is_chosen_by_explicit_checks(requested, backend, dtype, head_dim, capability, kernel):
    from gptjax.model.attention import choose_attention_kernel

    assert choose_attention_kernel(requested, backend, dtype, head_dim, capability) == kernel


def test_cpu_takes_the_blocked_kernel_beyond_one_block():
    from gptjax.model.attention import FLASH_BLOCK, choose_attention_kernel

    assert choose_attention_kernel("auto", "cpu", jnp.float32, 64, seq_len=FLASH_BLOCK) == "einsum"
    assert choose_attention_kernel("auto", "cpu", jnp.float32, 64, seq_len=FLASH_BLOCK + 1) == "blocked"
    assert choose_attention_kernel("auto", "gpu", jnp.bfloat16, 64, 9.0, seq_len=4096) == "cudnn"


def test_model_attention_blocked_matches_einsum_in_the_model():
    tokens_BxT = jax.random.randint(jax.random.key(0), (2, 40), 0, 40)
    out = {}
    for kernel in ("einsum", "blocked"):
        cfg = tiny_config(attention=kernel, n_kv_heads=2, max_len=64).model
        params = init_params(cfg, jax.random.key(1))
        model_loss = lambda p: (nnx.merge(nnx.graphdef(abstract_model(cfg)), p)(tokens_BxT) ** 2).mean()  # noqa: E731
        out[kernel] = (model_loss(params), jax.grad(model_loss)(params))
    np.testing.assert_allclose(out["blocked"][0], out["einsum"][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), out["blocked"][1], out["einsum"][1])


def test_requesting_cudnn_where_it_cannot_run_is_a_clear_error():
    from gptjax.model.attention import choose_attention_kernel

    with pytest.raises(ValueError, match="model.attention='cudnn' needs a GPU.*got backend cpu"):
        choose_attention_kernel("cudnn", "cpu", jnp.bfloat16, 64)


def test_model_attention_xla_matches_the_cpu_einsum_kernel():
    tokens_BxT = jax.random.randint(jax.random.key(0), (2, 12), 0, 40)
    logits = {}
    for kernel in ("auto", "xla"):
        cfg = tiny_config(attention=kernel, n_kv_heads=2).model
        logits[kernel] = nnx.merge(nnx.graphdef(abstract_model(cfg)), init_params(cfg, jax.random.key(1)))(tokens_BxT)
    np.testing.assert_allclose(logits["auto"], logits["xla"], atol=1e-5)


def test_einsum_attention_scores_accumulate_in_float32():
    from gptjax.model.attention import einsum_attention

    # Scores 128 and 128.125: bf16 (step 1 at 128) rounds both to 128 and splits the attention evenly;
    # accumulated in float32, key 1 gets sigmoid(0.125) = 0.531 of it.
    q = jnp.full((1, 2, 1, 8), 16, jnp.bfloat16)
    k = jnp.ones((1, 2, 1, 8), jnp.bfloat16).at[0, 1, 0, 0].set(1 + 2**-7)
    v = jnp.asarray([[0.0] * 8, [1.0] * 8], jnp.bfloat16)[None, :, None]
    out = einsum_attention(q, k, v, scale=1.0)[0, 1, 0, 0]
    exact = jax.nn.sigmoid(jnp.float32(0.125))
    assert abs(float(out) - float(exact)) < 0.02, (float(out), float(exact))
