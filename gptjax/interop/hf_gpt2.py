"""HF transformers GPT-2 checkpoints <-> gptjax: `load_gpt2(dir)` and `save_gpt2(cfg, params, dir)`.

A checkpoint directory is what `GPT2LMHeadModel.save_pretrained` writes: config.json and
model.safetensors. Both directions read and write those two files directly (json + safetensors), so
neither needs torch or transformers at run time, and nothing is ever downloaded.

GPT-2 is gptjax with: learned positions, pre-norm LayerNorm (eps 1e-5) with biases, tanh-approximated
GELU ("gelu_new"), multi-head attention (n_kv_heads = n_heads) scaled by 1/sqrt(head_dim), and the LM
head tied to the token embedding (or a separate bias-free head when `tie_word_embeddings` is false).
GPT-2's Conv1D stores kernels as [in, out], as gptjax's Dense does; its fused c_attn kernel [D, 3D]
holds the query, key and value kernels side by side, each head-major (head n in columns n*H..n*H+H),
which is the order gptjax's reshape to (N, H) expects. `reorder_and_upcast_attn` only changes rounding
(where half-precision scores are upcast), so it imports; flags that change the function
(`scale_attn_by_inverse_layer_idx`, cross-attention, an erf GELU, another LayerNorm epsilon) are refused.
"""

import json
import math
import operator
import os

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import default_config
from gptjax.data.tokenizer import SPECIAL_TOKENS
from gptjax.model.build import abstract_model

try:
    from safetensors.flax import load_file, save_file
except ImportError as e:  # the optional extra
    raise ImportError("gptjax.interop needs safetensors; install the extra: pip install 'gptjax[interop]'") from e

GPTJAX_NORM_EPS = 1e-5  # gptjax/model/layers.py make_norm's fixed epsilon
# GPT-2 activation names -> gptjax's; "gelu_new" and "gelu_pytorch_tanh" are the same tanh approximation
# that gptjax's "gelu" computes. The exact (erf) "gelu" is not.
ACTIVATIONS_FROM_HF = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
ACTIVATIONS_TO_HF = {"gelu": "gelu_new", "relu": "relu"}
# Non-parameter buffers older GPT-2 checkpoints store (causal-mask constants); gptjax rebuilds them.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
PREFIX = "transformer."
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class InteropError(ValueError):
    """A checkpoint or config that cannot be converted; the message names it and the fix."""


def load_gpt2(directory: str, scan_layers: bool = False):
    """Reads a transformers GPT-2 checkpoint directory into gptjax.

    Returns `(model_cfg, params)`: `model_cfg` a gptjax `config.model` ConfigDict and `params` the pure
    nested dict of float32 arrays that `nnx.merge(nnx.graphdef(abstract_model(model_cfg)), params)`
    takes. With `scan_layers=True` the block parameters are stacked on a leading L axis (for
    `model.scan_layers=True`). Dropout is set to 0 (inference); set `model.dropout` to fine-tune.
    """
    hf = _read_config(directory)
    model_cfg = _model_config(hf, directory)
    model_cfg.scan_layers = scan_layers
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        raise InteropError(f"{weights_path} does not exist; save the model with "
                           "save_pretrained(dir, safe_serialization=True) to get model.safetensors")
    tensors = {k.removeprefix(PREFIX): v.astype(jnp.float32) for k, v in load_file(weights_path).items()
               if not k.endswith(IGNORED_SUFFIXES)}
    params = _params_from_hf(tensors, model_cfg, weights_path)
    return model_cfg, params


def save_gpt2(model_cfg, params, directory: str, bos_token_id: int = SPECIAL_TOKENS.index("<|bos|>"),
              eos_token_id: int = SPECIAL_TOKENS.index("<|eos|>")) -> None:
    """Writes gptjax `params` of `model_cfg` as a GPT-2 checkpoint that
    `GPT2LMHeadModel.from_pretrained(directory)` loads; raises InteropError for a model GPT-2 cannot
    represent. The token ids default to gptjax's reserved <|bos|> / <|eos|> ids."""
    _check_exportable(model_cfg)
    os.makedirs(directory, exist_ok=True)
    tensors = _params_to_hf(model_cfg, params)
    # transformers refuses safetensors files whose metadata does not name a framework it knows.
    save_file({PREFIX + k if k != "lm_head.weight" else k: v for k, v in tensors.items()},
              os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(_hf_config(model_cfg, bos_token_id, eos_token_id), f, indent=2)


def _read_config(directory):
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise InteropError(f"{path} does not exist; point at a directory written by save_pretrained")
    with open(path) as f:
        return json.load(f)


def _model_config(hf: dict, directory: str):
    """The gptjax model config equivalent to the HF config dict `hf`, or InteropError naming what differs."""
    where = os.path.join(directory, CONFIG_FILE)
    if hf.get("model_type") != "gpt2":
        raise InteropError(f"{where}: model_type={hf.get('model_type')!r}; only GPT-2 checkpoints (model_type "
                           "'gpt2') can be imported")
    unsupported = {
        "scale_attn_by_inverse_layer_idx": (False, "gptjax scales attention by 1/sqrt(head_dim) in every layer"),
        "scale_attn_weights": (True, "gptjax always scales attention scores by 1/sqrt(head_dim)"),
        "add_cross_attention": (False, "gptjax is decoder-only"),
    }
    for key, (supported, why) in unsupported.items():
        if hf.get(key, supported) != supported:
            raise InteropError(f"{where}: {key}={hf[key]!r} cannot be imported ({why}); only {key}={supported} is")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS_FROM_HF:
        raise InteropError(f"{where}: activation_function={activation!r} has no gptjax equivalent; supported: "
                           f"{', '.join(ACTIVATIONS_FROM_HF)}")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not math.isclose(eps, GPTJAX_NORM_EPS, rel_tol=1e-6):
        raise InteropError(f"{where}: layer_norm_epsilon={eps} differs from gptjax's fixed LayerNorm epsilon "
                           f"{GPTJAX_NORM_EPS}; only checkpoints with layer_norm_epsilon={GPTJAX_NORM_EPS} import exactly")
    d_model, n_heads = hf.get("n_embd", 768), hf.get("n_head", 12)
    if d_model % n_heads:
        raise InteropError(f"{where}: n_head={n_heads} must divide n_embd={d_model}")
    cfg = default_config().model
    cfg.update(
        vocab_size=hf.get("vocab_size", 50257), max_len=hf.get("n_positions", 1024), d_model=d_model,
        n_layers=hf.get("n_layer", 12), n_heads=n_heads, n_kv_heads=n_heads,
        d_ff=hf.get("n_inner") or 4 * d_model, positional="learned", norm="layernorm", norm_position="pre",
        activation=ACTIVATIONS_FROM_HF[activation], qk_norm=False, use_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True), dropout=0.0, param_dtype="float32",
        compute_dtype="float32", scalar_head=False, init_std=hf.get("initializer_range", 0.02),
        parametrization="sp",
    )
    return cfg


def _layer_params(take, i: int, d_model: int) -> dict:
    """gptjax Block params of layer `i`; `take(name)` gives the HF tensor (name without 'transformer.')."""
    h = f"h.{i}."
    qkv_kernel_Dx3D, qkv_bias_3D = take(h + "attn.c_attn.weight"), take(h + "attn.c_attn.bias")
    attn = {
        name: {"kernel": qkv_kernel_Dx3D[:, j * d_model:(j + 1) * d_model],
               "bias": qkv_bias_3D[j * d_model:(j + 1) * d_model]}
        for j, name in enumerate(("query", "key", "value"))
    }
    attn["out"] = {"kernel": take(h + "attn.c_proj.weight"), "bias": take(h + "attn.c_proj.bias")}
    return {
        "attn_norm": {"scale": take(h + "ln_1.weight"), "bias": take(h + "ln_1.bias")},
        "attn": attn,
        "mlp_norm": {"scale": take(h + "ln_2.weight"), "bias": take(h + "ln_2.bias")},
        "mlp": {"up": {"kernel": take(h + "mlp.c_fc.weight"), "bias": take(h + "mlp.c_fc.bias")},
                "down": {"kernel": take(h + "mlp.c_proj.weight"), "bias": take(h + "mlp.c_proj.bias")}},
    }


def _params_from_hf(tensors: dict, cfg, weights_path: str) -> dict:
    used = set()  # so that leftover tensors can be named

    def take(key):
        if key not in tensors:
            raise InteropError(f"{weights_path} lacks the tensor {key!r} that a GPT-2 with config.json's "
                               "shapes needs; the file does not match its config")
        used.add(key)
        return tensors[key]

    layers = [_layer_params(take, i, cfg.d_model) for i in range(cfg.n_layers)]
    params = {
        "token_embed": {"embedding": take("wte.weight")},
        "pos_embed": {"embedding": take("wpe.weight")},
        "final_norm": {"scale": take("ln_f.weight"), "bias": take("ln_f.bias")},
    }
    if cfg.tie_embeddings:
        used.add("lm_head.weight")  # some checkpoints store the tied copy too
    else:
        params["lm_head"] = {"kernel": take("lm_head.weight").T}
    if cfg.scan_layers:  # nnx.scan's layout: every block leaf stacked on a leading L axis
        params["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    else:
        params["blocks"] = dict(enumerate(layers))
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise InteropError(f"{weights_path} has tensors a GPT-2 of this config does not use ({unexpected[:4]}...); "
                           "its config.json does not describe it")
    _check_shapes(params, cfg, weights_path)
    return params


def _check_shapes(params: dict, cfg, weights_path: str) -> None:
    """Compares against the shapes gptjax builds for `cfg`, so a mismatch fails here, not inside nnx.merge."""
    expected = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
    got = jax.tree.map(lambda x: tuple(x.shape), params)
    want = jax.tree.map(lambda x: tuple(x.shape), expected)
    if got != want:
        raise InteropError(f"{weights_path}: tensor shapes do not match the GPT-2 that config.json describes "
                           "(vocab_size, n_positions, n_embd, n_inner, n_layer); fix config.json to match the weights")


def _check_exportable(cfg) -> None:
    required = {
        "positional": "learned", "norm": "layernorm", "norm_position": "pre", "qk_norm": False,
        "use_bias": True, "scalar_head": False, "parametrization": "sp",
    }
    for key, value in required.items():
        if cfg[key] != value:
            raise InteropError(f"model.{key}={cfg[key]!r} cannot be represented as GPT-2, which needs "
                               f"model.{key}={value!r}")
    if cfg.activation not in ACTIVATIONS_TO_HF:
        raise InteropError(f"model.activation={cfg.activation!r} cannot be represented as GPT-2; use one of "
                           f"{', '.join(ACTIVATIONS_TO_HF)}")
    if cfg.n_kv_heads != cfg.n_heads:
        raise InteropError(f"model.n_kv_heads={cfg.n_kv_heads} cannot be represented as GPT-2, which has no "
                           f"grouped-query attention; needs n_kv_heads = n_heads = {cfg.n_heads}")


def _params_to_hf(cfg, params: dict) -> dict:
    """HF tensor names (without the 'transformer.' prefix, except lm_head) -> arrays."""
    blocks = params["blocks"]
    if cfg.scan_layers:
        layers = [jax.tree.map(operator.itemgetter(i), blocks) for i in range(cfg.n_layers)]
    else:
        layers = [blocks[i] for i in range(cfg.n_layers)]
    t = {
        "wte.weight": params["token_embed"]["embedding"],
        "wpe.weight": params["pos_embed"]["embedding"],
        "ln_f.weight": params["final_norm"]["scale"],
        "ln_f.bias": params["final_norm"]["bias"],
    }
    for i, layer in enumerate(layers):
        h, attn = f"h.{i}.", layer["attn"]
        qkv = [attn[name] for name in ("query", "key", "value")]
        t[h + "attn.c_attn.weight"] = jnp.concatenate([p["kernel"] for p in qkv], axis=1)
        t[h + "attn.c_attn.bias"] = jnp.concatenate([p["bias"] for p in qkv])
        t[h + "attn.c_proj.weight"], t[h + "attn.c_proj.bias"] = attn["out"]["kernel"], attn["out"]["bias"]
        t[h + "ln_1.weight"], t[h + "ln_1.bias"] = layer["attn_norm"]["scale"], layer["attn_norm"]["bias"]
        t[h + "ln_2.weight"], t[h + "ln_2.bias"] = layer["mlp_norm"]["scale"], layer["mlp_norm"]["bias"]
        t[h + "mlp.c_fc.weight"], t[h + "mlp.c_fc.bias"] = layer["mlp"]["up"]["kernel"], layer["mlp"]["up"]["bias"]
        t[h + "mlp.c_proj.weight"], t[h + "mlp.c_proj.bias"] = (layer["mlp"]["down"]["kernel"],
                                                               layer["mlp"]["down"]["bias"])
    if not cfg.tie_embeddings:
        t["lm_head.weight"] = params["lm_head"]["kernel"].T
    return t


def _hf_config(cfg, bos_token_id: int, eos_token_id: int) -> dict:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "activation_function": ACTIVATIONS_TO_HF[cfg.activation],
        "layer_norm_epsilon": GPTJAX_NORM_EPS,
        "initializer_range": cfg.init_std,
        # gptjax's one dropout rate acts where GPT-2's residual and embedding dropouts do; it has none on
        # attention probabilities.
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": cfg.param_dtype,
    }
