"""HF transformers GPT-2 checkpoints <-> gptjax: the config both ways and the tensors' names and layout.
gptjax/interop/hf.py reads and writes the files (the same path as the Llama family's).

GPT-2 is gptjax with: learned positions, pre-norm LayerNorm (layer_norm_epsilon) with biases, tanh-approximated
GELU ("gelu_new"), multi-head attention (n_kv_heads = n_heads) scaled by 1/sqrt(head_dim), and the LM
head tied to the token embedding (or a separate bias-free head when `tie_word_embeddings` is false).
GPT-2's Conv1D stores kernels as [in, out], as gptjax's Dense does; its fused c_attn kernel [D, 3D]
holds the query, key and value kernels side by side, each head-major (head n in columns n*H..n*H+H),
which is the order gptjax's reshape to (N, H) expects. `reorder_and_upcast_attn` only changes rounding
(where half-precision scores are upcast), so it imports; flags that change the function
(`scale_attn_by_inverse_layer_idx`, cross-attention, an erf GELU) are refused.
"""

import numpy as np

from gptjax.config import default_config
from gptjax.interop.errors import InteropError

GPT2_NORM_EPS = 1e-5  # what transformers' GPT-2 checkpoints use; gptjax's model.norm_eps takes any
# GPT-2 activation names -> gptjax's; "gelu_new" and "gelu_pytorch_tanh" are the same tanh approximation
# that gptjax's "gelu" computes. The exact (erf) "gelu" is not.
ACTIVATIONS_FROM_HF = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
ACTIVATIONS_TO_HF = {"gelu": "gelu_new", "relu": "relu"}
# Non-parameter buffers older GPT-2 checkpoints store (causal-mask constants); gptjax rebuilds them.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
PREFIX = "transformer."


def model_config(hf: dict, where: str):
    """The gptjax model config equivalent to the HF config dict `hf` (read from `where`), or InteropError."""
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
        parametrization="sp", norm_eps=float(hf.get("layer_norm_epsilon", GPT2_NORM_EPS)),
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


def params_from_tensors(take, cfg) -> dict:
    """The unstacked gptjax params ({"blocks": {i: ...}, ...}) of `cfg`; `take(name)` gives the HF tensor
    (name without 'transformer.', as numpy) and fails for a missing one."""
    layers = [_layer_params(take, i, cfg.d_model) for i in range(cfg.n_layers)]
    params = {
        "token_embed": {"embedding": take("wte.weight")},
        "pos_embed": {"embedding": take("wpe.weight")},
        "final_norm": {"scale": take("ln_f.weight"), "bias": take("ln_f.bias")},
        "blocks": dict(enumerate(layers)),
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": take("lm_head.weight").T}
    return params


def check_exportable(cfg) -> None:
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
    if cfg.get("head_dim", 0) and cfg.head_dim * cfg.n_heads != cfg.d_model:
        raise InteropError(f"model.head_dim={cfg.head_dim} cannot be represented as GPT-2, whose heads split "
                           f"n_embd={cfg.d_model} into n_head={cfg.n_heads}; needs head_dim=0")
    if cfg.n_kv_heads != cfg.n_heads:
        raise InteropError(f"model.n_kv_heads={cfg.n_kv_heads} cannot be represented as GPT-2, which has no "
                           f"grouped-query attention; needs n_kv_heads = n_heads = {cfg.n_heads}")


def tensors_from_params(cfg, params: dict) -> dict:
    """HF tensor names (with the 'transformer.' prefix, lm_head without) -> numpy arrays, from unstacked
    numpy `params`."""
    layers = [params["blocks"][i] for i in range(cfg.n_layers)]
    t = {
        "wte.weight": params["token_embed"]["embedding"],
        "wpe.weight": params["pos_embed"]["embedding"],
        "ln_f.weight": params["final_norm"]["scale"],
        "ln_f.bias": params["final_norm"]["bias"],
    }
    for i, layer in enumerate(layers):
        h, attn = f"h.{i}.", layer["attn"]
        qkv = [attn[name] for name in ("query", "key", "value")]
        t[h + "attn.c_attn.weight"] = np.concatenate([p["kernel"] for p in qkv], axis=1)
        t[h + "attn.c_attn.bias"] = np.concatenate([p["bias"] for p in qkv])
        t[h + "attn.c_proj.weight"], t[h + "attn.c_proj.bias"] = attn["out"]["kernel"], attn["out"]["bias"]
        t[h + "ln_1.weight"], t[h + "ln_1.bias"] = layer["attn_norm"]["scale"], layer["attn_norm"]["bias"]
        t[h + "ln_2.weight"], t[h + "ln_2.bias"] = layer["mlp_norm"]["scale"], layer["mlp_norm"]["bias"]
        t[h + "mlp.c_fc.weight"], t[h + "mlp.c_fc.bias"] = layer["mlp"]["up"]["kernel"], layer["mlp"]["up"]["bias"]
        t[h + "mlp.c_proj.weight"], t[h + "mlp.c_proj.bias"] = (layer["mlp"]["down"]["kernel"],
                                                               layer["mlp"]["down"]["bias"])
    t = {PREFIX + k: v for k, v in t.items()}
    if not cfg.tie_embeddings:
        t["lm_head.weight"] = params["lm_head"]["kernel"].T
    return t


def hf_config(cfg, token_ids: dict) -> dict:
    """The config.json of `cfg`; `token_ids`: bos/eos token ids."""
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
        "layer_norm_epsilon": cfg.norm_eps,
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
        "bos_token_id": token_ids.get("bos"),
        "eos_token_id": token_ids.get("eos"),
        "dtype": cfg.param_dtype,
    }
