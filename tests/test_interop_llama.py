"""HF Llama / Mistral / Qwen2 / Qwen3 <-> gptjax: logits to fp32 tolerance, greedy continuations, exports that
transformers reloads, sharded and bf16 checkpoints, an import sharded over 8 devices, clear refusals."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from gptjax.model.build import abstract_model, init_params
from gptjax.parallel.mesh import make_mesh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gptjax.config.interop import EXPORT_MODEL_TYPES  # noqa: E402
from gptjax.interop.errors import InteropError  # noqa: E402
from gptjax.interop.hf import MODEL_TYPES, load_hf, save_hf  # noqa: E402
from gptjax.sample.generate import generate  # noqa: E402
from gptjax.sample.strategies import Strategy  # noqa: E402

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0)
# Each family with the options that set it apart. llama3 rope scaling: with head dim 8 and theta 500 the
# wavelengths are 6.3, 29.7, 140 and 664 positions; an original context of 32 keeps the first, interpolates the
# second (between 32 / high_freq_factor = 16 and 32 / low_freq_factor = 32) and divides the last two.
FAMILIES = {
    "llama31": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=2.0,
                          original_max_position_embeddings=32))),
    "llama_bias_headdim": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        attention_bias=True, mlp_bias=True, head_dim=16, rope_scaling=dict(rope_type="linear", factor=2.0))),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(sliding_window=48)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(head_dim=16, attention_bias=False)),
}


def hf_model(path, family, **overrides):
    """A randomly initialised small model of `family` saved in `path` (float32 safetensors)."""
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    config = config_cls(**{**COMMON, **extra, **overrides})
    model = model_cls(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or dropped tensor shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def tokens(T=40):
    return np.random.default_rng(0).integers(0, VOCAB, (2, T))


def hf_logits(model, tokens_BxT):
    with torch.no_grad():
        return model(torch.from_numpy(tokens_BxT)).logits.float().numpy()


def gptjax_logits(model_cfg, params, tokens_BxT):
    return np.asarray(nnx.merge(nnx.graphdef(abstract_model(model_cfg)), params)(jnp.asarray(tokens_BxT)))


@pytest.mark.parametrize("family", FAMILIES)
def test_import_matches_logits_and_greedy_continuations(tmp_path, family):
    model = hf_model(tmp_path / "hf", family)
    model_cfg, params = load_hf(tmp_path / "hf")
    np.testing.assert_allclose(gptjax_logits(model_cfg, params, tokens()), hf_logits(model, tokens()),
                               atol=2e-5, rtol=1e-4)
    prompt = tokens(8)[0]
    with torch.no_grad():
        hf_greedy = model.generate(torch.from_numpy(prompt[None]), attention_mask=torch.ones(1, 8, dtype=torch.long),
                                   max_new_tokens=12, min_new_tokens=12, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)[0, 8:].tolist()
    ours = generate(model_cfg, params, [prompt.tolist()], max_new_tokens=12, strategy=Strategy(temperature=0.0),
                    stop_tokens=())[0].tokens
    assert ours == hf_greedy


def test_family_options_are_mapped(tmp_path):
    hf_model(tmp_path / "l", "llama31")
    cfg, _ = load_hf(tmp_path / "l")
    assert (cfg.rope_scaling, cfg.rope_scaling_factor, cfg.rope_original_max_len) == ("llama3", 4.0, 32)
    assert (cfg.positional, cfg.norm, cfg.activation, cfg.n_kv_heads, cfg.tie_embeddings) == (
        "rope", "rmsnorm", "swiglu", 2, False)
    hf_model(tmp_path / "m", "mistral")
    assert load_hf(tmp_path / "m")[0].max_len == 48  # capped at the window, where it equals dense attention
    hf_model(tmp_path / "q2", "qwen2")
    cfg, _ = load_hf(tmp_path / "q2")
    assert (cfg.qkv_bias, cfg.use_bias, cfg.tie_embeddings) == (True, False, True)
    hf_model(tmp_path / "q3", "qwen3")
    cfg, _ = load_hf(tmp_path / "q3")
    assert (cfg.qk_norm, cfg.head_dim, cfg.d_model) == (True, 16, 32)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_in_transformers_with_the_same_logits(tmp_path, family):
    model = hf_model(tmp_path / "hf", family)
    model_cfg, params = load_hf(tmp_path / "hf", scan_layers=family == "qwen3")
    written = save_hf(model_cfg, params, tmp_path / "out", model_type="mistral" if family == "mistral" else "auto")
    assert written == {"llama31": "llama", "llama_bias_headdim": "llama", "mistral": "mistral", "qwen2": "qwen2",
                       "qwen3": "qwen3"}[family]
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    T = model_cfg.max_len  # the Mistral export has no window: equal up to the imported max_len
    np.testing.assert_allclose(hf_logits(again, tokens(T)), hf_logits(model, tokens(T)), atol=2e-5, rtol=1e-4)
    _, back = load_hf(tmp_path / "out", scan_layers=family == "qwen3")
    jax.tree.map(np.testing.assert_array_equal, back, params)


def test_gptjax_trained_model_exports_as_llama(tmp_path):
    model_cfg = tiny_config(vocab_size=VOCAB, positional="rope", norm="rmsnorm", activation="swiglu", use_bias=False,
                            n_kv_heads=2, tie_embeddings=False, norm_eps=1e-6).model
    params = init_params(model_cfg, jax.random.key(1))
    assert save_hf(model_cfg, params, tmp_path / "out", token_ids={"bos": 0, "eos": 1, "pad": 2}) == "llama"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert (hf.config.eos_token_id, hf.config.rms_norm_eps) == (1, 1e-6)
    np.testing.assert_allclose(hf_logits(hf, tokens(16)), gptjax_logits(model_cfg, params, tokens(16)),
                               atol=2e-5, rtol=1e-4)


def test_sharded_index_and_bf16_checkpoints_import(tmp_path):
    model = hf_model(tmp_path / "hf", "llama31")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    _, params = load_hf(tmp_path / "hf")
    _, sharded = load_hf(tmp_path / "sharded")
    jax.tree.map(np.testing.assert_array_equal, sharded, params)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    cfg, bf16 = load_hf(tmp_path / "bf16", param_dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
    # bit-exact: the bf16 values gptjax read are the ones torch holds
    np.testing.assert_array_equal(
        np.asarray(bf16["token_embed"]["embedding"], np.float32),
        model.model.embed_tokens.weight.detach().float().numpy())
    # and a bf16 export, split into shards with an index, writes the same values back
    save_hf(cfg, bf16, tmp_path / "bf16_out", shard_bytes=20_000)
    assert (tmp_path / "bf16_out" / "model.safetensors.index.json").exists()
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16_out", dtype=torch.bfloat16)
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_import_onto_eight_devices_equals_one(tmp_path):
    model = hf_model(tmp_path / "hf", "qwen3", vocab_size=96)  # divisible by the 2-way tensor axis
    cfg = tiny_config()
    cfg.parallel.update(num_devices=8, mesh=(2, 2, 2))
    mesh, rules = make_mesh(cfg.parallel), cfg.parallel.rules
    model_cfg, sharded = load_hf(tmp_path / "hf", mesh, rules)
    kernel = sharded["blocks"][0]["mlp"]["up"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    assert kernel.addressable_shards[0].data.size < kernel.size  # each device holds a slice, not the tensor
    _, single = load_hf(tmp_path / "hf")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), sharded, single)
    with jax.set_mesh(mesh):
        np.testing.assert_allclose(gptjax_logits(model_cfg, sharded, tokens() % 96), hf_logits(model, tokens() % 96),
                                   atol=2e-5, rtol=1e-4)
    with pytest.raises(InteropError, match="vocab_size=97.*does not divide onto the mesh"):  # a clear line, not XLA's
        load_hf(hf_model(tmp_path / "odd", "qwen3") and tmp_path / "odd", mesh, rules)


@pytest.mark.parametrize("family, override, match", [
    ("llama31", dict(hidden_act="gelu"), "hidden_act='gelu'"),
    ("llama31", dict(rope_scaling=dict(rope_type="yarn", factor=2.0)), "rope type 'yarn'"),
    ("llama31", dict(attention_bias=True), "attention_bias=True, mlp_bias=False"),
])
def test_unsupported_hf_config_is_refused(tmp_path, family, override, match):
    hf_model(tmp_path / "hf", family, **override)
    with pytest.raises(InteropError, match=match):
        load_hf(tmp_path / "hf")


def test_mismatched_or_missing_files_are_refused(tmp_path):
    hf_model(tmp_path / "hf", "llama31")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    with pytest.raises(InteropError, match="has shape"):
        load_hf(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))
    with pytest.raises(InteropError, match="model_type='falcon' cannot be imported"):
        load_hf(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InteropError, match="neither model.safetensors nor"):
        load_hf(tmp_path / "hf")


def test_damaged_weights_and_reexports_are_refused_in_one_line(tmp_path):
    assert EXPORT_MODEL_TYPES == ("auto", *MODEL_TYPES)  # the config's choices are the families interop has
    hf_model(tmp_path / "hf", "qwen2")
    weights = tmp_path / "hf" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])  # a download cut short
    with pytest.raises(InteropError, match="not a readable safetensors file .*spans bytes"):
        load_hf(tmp_path / "hf")
    weights.write_bytes((10**12).to_bytes(8, "little") + data[8:])  # a header length past the end of the file
    with pytest.raises(InteropError, match="not a readable safetensors file"):
        load_hf(tmp_path / "hf")
    weights.write_bytes(data)
    cfg, params = load_hf(tmp_path / "hf")
    save_hf(cfg, params, tmp_path / "out")
    with pytest.raises(InteropError, match="already holds safetensors weights"):
        save_hf(cfg, params, tmp_path / "out")


@pytest.mark.parametrize("override, model_type, match", [
    (dict(positional="learned"), "llama", "model.positional='learned'"),
    (dict(positional="rope", norm="rmsnorm", activation="swiglu", use_bias=False), "qwen3", "always applies QK-norm"),
    (dict(positional="rope", norm="rmsnorm", activation="swiglu", use_bias=False), "qwen2", "always has q/k/v biases"),
    (dict(positional="rope", norm="rmsnorm", activation="swiglu", use_bias=False, qk_norm=True), "qwen2", "qwen3"),
    (dict(positional="rope", norm="rmsnorm", activation="swiglu", use_bias=True), "qwen2", "use_bias"),
])
def test_unrepresentable_model_is_refused_by_name(tmp_path, override, model_type, match):
    model_cfg = tiny_config(**override).model
    with pytest.raises(InteropError, match=match):
        save_hf(model_cfg, init_params(model_cfg, jax.random.key(0)), tmp_path / "out", model_type=model_type)
    assert not (tmp_path / "out").exists()
