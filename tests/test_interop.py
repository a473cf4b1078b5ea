"""HF transformers GPT-2 <-> gptjax: same logits both ways, exact round trips, clear refusals."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from gptjax.model.build import abstract_model, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gptjax.interop.errors import InteropError  # noqa: E402
from gptjax.interop.hf import load_hf, save_hf  # noqa: E402

VOCAB, POSITIONS = 61, 24


def hf_model(tmp_path, **overrides):
    """A randomly initialised small GPT2LMHeadModel saved as safetensors in tmp_path/hf."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=32, n_layer=3, n_head=4,
                                     n_inner=48, **overrides)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or dropped tensor shows in the logits
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, (2, 17))


def hf_logits(model, tokens_BxT):
    with torch.no_grad():
        return model(torch.from_numpy(tokens_BxT)).logits.numpy()


def gptjax_logits(model_cfg, params, tokens_BxT):
    return np.asarray(nnx.merge(nnx.graphdef(abstract_model(model_cfg)), params)(jnp.asarray(tokens_BxT)))


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("tied", [True, False])
def test_import_matches_hf_logits(tmp_path, scan_layers, tied):
    # an epsilon other than the default, so a fixed epsilon in gptjax's norms would show in the logits
    model, directory = hf_model(tmp_path, tie_word_embeddings=tied, layer_norm_epsilon=1e-2)
    model_cfg, params = load_hf(directory, scan_layers=scan_layers)
    assert (model_cfg.d_model, model_cfg.n_layers, model_cfg.d_ff, model_cfg.max_len) == (32, 3, 48, POSITIONS)
    assert model_cfg.tie_embeddings == tied and model_cfg.scan_layers == scan_layers
    np.testing.assert_allclose(gptjax_logits(model_cfg, params, tokens()), hf_logits(model, tokens()), atol=1e-4)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_export_loads_in_transformers_and_round_trips(tmp_path, scan_layers):
    model_cfg = tiny_config(vocab_size=VOCAB, max_len=POSITIONS, scan_layers=scan_layers).model
    params = init_params(model_cfg, jax.random.key(1))
    assert save_hf(model_cfg, params, tmp_path / "out") == "gpt2"
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(hf_logits(hf, tokens()), gptjax_logits(model_cfg, params, tokens()), atol=1e-4)
    _, back = load_hf(tmp_path / "out", scan_layers=scan_layers)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, back, params)


def test_hf_checkpoint_round_trips_bit_exactly(tmp_path):
    model, directory = hf_model(tmp_path)
    model_cfg, params = load_hf(directory)
    save_hf(model_cfg, params, tmp_path / "again")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "again")
    for (name, p), (name2, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert name == name2
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("override, match", [
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(activation_function="gelu"), "activation_function='gelu'"),
])
def test_unsupported_hf_config_is_refused(tmp_path, override, match):
    _, directory = hf_model(tmp_path, **override)
    with pytest.raises(InteropError, match=match):
        load_hf(directory)


def test_config_that_does_not_match_weights_is_refused(tmp_path):
    _, directory = hf_model(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "n_layer": 2}))
    with pytest.raises(InteropError, match="does not use"):
        load_hf(directory)
    (directory / "config.json").write_text(json.dumps({**config, "n_inner": 64}))
    with pytest.raises(InteropError, match="has shape"):
        load_hf(directory)


@pytest.mark.parametrize("override, match", [
    (dict(positional="rope"), "model.positional='rope'"),
    (dict(activation="swiglu"), "model.activation='swiglu'"),
    (dict(n_kv_heads=2), "grouped-query"),
    (dict(norm="rmsnorm"), "model.norm='rmsnorm'"),
])
def test_unrepresentable_gptjax_model_is_refused(tmp_path, override, match):
    model_cfg = tiny_config(**override).model
    with pytest.raises(InteropError, match=match):
        save_hf(model_cfg, init_params(model_cfg, jax.random.key(0)), tmp_path / "out", model_type="gpt2")
    assert not (tmp_path / "out").exists()
