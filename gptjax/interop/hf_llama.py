"""HF transformers Llama-family checkpoints <-> gptjax: Llama 2 / 3 / 3.1, Mistral, Qwen2 / 2.5 and Qwen3.

The family is gptjax with RoPE (rotate-half, as HF stores q/k: no permutation), pre-norm RMSNorm, SwiGLU
(`down(silu(gate(x)) * up(x))`), grouped-query attention scaled by 1/sqrt(head_dim), and what sets the
members apart, each a model option:
  Llama 3.1    rope scaling "llama3" (model.rope_scaling and its factors); some Llamas: attention and MLP
               biases (model.use_bias), a head_dim other than hidden / heads (model.head_dim)
  Mistral      a sliding window: exact on sequences no longer than it, so max_len is capped at the window
  Qwen2 / 2.5  biases on the q/k/v projections only (model.qkv_bias)
  Qwen3        RMSNorm on each head's query and key before RoPE (model.qk_norm), head_dim set apart
and everywhere the RMSNorm epsilon (model.norm_eps), rope theta (model.rope_base) and tied or untied heads.
A sliding window on the layers is exact on sequences no longer than it: the import caps model.max_len there.
HF Linear weights are [out, in]; gptjax kernels [in, out]: every kernel is transposed.

`model_config(hf)` and `hf_config(cfg)` map the config both ways; `tensor_names(cfg)` maps each gptjax
parameter to its HF tensor. Settings with no gptjax equivalent (another activation, YaRN or dynamic rope
scaling, an attention-only bias, ...) are refused by name.
"""

from gptjax.config import default_config
from gptjax.interop.errors import InteropError
from gptjax.model.layers import head_dim

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ROPE_TYPES = {"default": "none", "linear": "linear", "llama3": "llama3"}
# Buffers some checkpoints store that gptjax recomputes.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# gptjax path inside a block -> HF name inside `model.layers.{i}.`
LAYER_NAMES = {
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("attn", "query", "kernel"): "self_attn.q_proj.weight",
    ("attn", "query", "bias"): "self_attn.q_proj.bias",
    ("attn", "key", "kernel"): "self_attn.k_proj.weight",
    ("attn", "key", "bias"): "self_attn.k_proj.bias",
    ("attn", "value", "kernel"): "self_attn.v_proj.weight",
    ("attn", "value", "bias"): "self_attn.v_proj.bias",
    ("attn", "out", "kernel"): "self_attn.o_proj.weight",
    ("attn", "out", "bias"): "self_attn.o_proj.bias",
    ("attn", "query_norm", "scale"): "self_attn.q_norm.weight",
    ("attn", "key_norm", "scale"): "self_attn.k_norm.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
    ("mlp", "gate", "kernel"): "mlp.gate_proj.weight",
    ("mlp", "gate", "bias"): "mlp.gate_proj.bias",
    ("mlp", "up", "kernel"): "mlp.up_proj.weight",
    ("mlp", "up", "bias"): "mlp.up_proj.bias",
    ("mlp", "down", "kernel"): "mlp.down_proj.weight",
    ("mlp", "down", "bias"): "mlp.down_proj.bias",
}
TOP_NAMES = {
    ("token_embed", "embedding"): "model.embed_tokens.weight",
    ("final_norm", "scale"): "model.norm.weight",
    ("lm_head", "kernel"): "lm_head.weight",
}


def tensor_names(param_paths) -> dict:
    """{gptjax param path: (HF tensor name, transposed)} for the paths of an unstacked (scan_layers=False)
    model: blocks' paths are ("blocks", i, ...)."""
    names = {}
    for path in param_paths:
        if path[0] == "blocks":
            name = f"model.layers.{path[1]}." + LAYER_NAMES[tuple(path[2:])]
        else:
            name = TOP_NAMES[tuple(path)]
        names[path] = (name, path[-1] == "kernel")
    return names


def _rope(hf: dict, where: str) -> dict:
    """gptjax's rope keys from either transformers layout: v5's `rope_parameters` or v4's `rope_theta` +
    `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if not params.get("rope_type") or params.get("rope_type") == "default":
        params = {**params, **scaling}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise InteropError(f"{where}: rope type {rope_type!r} has no gptjax equivalent; supported: "
                           f"{', '.join(ROPE_TYPES)}")
    out = dict(rope_base=float(theta), rope_scaling=ROPE_TYPES[rope_type])
    if rope_type != "default":
        out["rope_scaling_factor"] = float(params["factor"])
    if rope_type == "llama3":
        out.update(rope_low_freq_factor=float(params["low_freq_factor"]),
                   rope_high_freq_factor=float(params["high_freq_factor"]),
                   rope_original_max_len=int(params["original_max_position_embeddings"]))
    return out


def model_config(hf: dict, where: str):
    """The gptjax model config equivalent to the HF config dict `hf` (read from `where`), or InteropError."""
    model_type = hf.get("model_type")
    if hf.get("hidden_act", "silu") != "silu":
        raise InteropError(f"{where}: hidden_act={hf['hidden_act']!r}; gptjax's SwiGLU needs 'silu'")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    H = hf.get("head_dim") or d_model // n_heads
    use_bias = qkv_bias = False
    if model_type == "qwen2":
        qkv_bias = True
    elif hf.get("attention_bias", False) or hf.get("mlp_bias", False):
        if model_type != "llama" or not (hf.get("attention_bias") and hf.get("mlp_bias")):
            raise InteropError(f"{where}: attention_bias={hf.get('attention_bias')}, mlp_bias={hf.get('mlp_bias')}: "
                               "gptjax biases either every projection (model.use_bias) or q/k/v only "
                               "(model.qkv_bias, Qwen2), not this combination")
        use_bias = True
    max_len = hf.get("max_position_embeddings", 2048)
    window = hf.get("sliding_window")
    if window and (model_type == "mistral" or hf.get("use_sliding_window", False)):
        # Within the window, sliding-window attention is dense attention.
        max_len = min(max_len, window)
    cfg = default_config().model
    cfg.update(
        vocab_size=hf["vocab_size"], max_len=max_len, d_model=d_model, n_layers=hf["num_hidden_layers"],
        n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=0 if H * n_heads == d_model else H, d_ff=hf["intermediate_size"],
        positional="rope", norm="rmsnorm", norm_position="pre", activation="swiglu",
        qk_norm=model_type == "qwen3", use_bias=use_bias, qkv_bias=qkv_bias,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout=0.0, scalar_head=False, init_std=hf.get("initializer_range", 0.02), parametrization="sp",
        **_rope(hf, where),
    )
    return cfg


def export_model_type(cfg, requested: str) -> str:
    """The HF model_type a gptjax model exports as: `requested`, or with "auto" the one its options need
    (qwen3 for QK-norm, qwen2 for q/k/v-only biases, llama otherwise)."""
    needed = "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias and not cfg.use_bias else "llama"
    if requested == "auto":
        return needed
    if needed != "llama" and requested != needed:
        raise InteropError(f"hf.model_type={requested!r} cannot hold this model "
                           f"({'model.qk_norm' if cfg.qk_norm else 'model.qkv_bias'}); use {needed!r} or 'auto'")
    if cfg.use_bias and requested != "llama":
        raise InteropError(f"hf.model_type={requested!r} has no biases for model.use_bias=True; use 'llama'")
    # transformers would make up what the family has and the model lacks (unit QK-norms still normalise)
    if requested == "qwen3" and not cfg.qk_norm:
        raise InteropError("hf.model_type='qwen3' always applies QK-norm, which this model (model.qk_norm=False) "
                           "lacks; use 'llama' or 'auto'")
    if requested == "qwen2" and not cfg.qkv_bias:
        raise InteropError("hf.model_type='qwen2' always has q/k/v biases, which this model (model.qkv_bias=False) "
                           "lacks; use 'llama' or 'auto'")
    return requested


def check_exportable(cfg) -> None:
    required = dict(positional="rope", norm="rmsnorm", norm_position="pre", activation="swiglu",
                    scalar_head=False, parametrization="sp")
    for key, value in required.items():
        if cfg[key] != value:
            raise InteropError(f"model.{key}={cfg[key]!r} cannot be represented as a Llama-family model, which "
                               f"needs model.{key}={value!r}")
    if cfg.qk_norm and (cfg.use_bias or cfg.qkv_bias):
        raise InteropError("model.qk_norm with biases cannot be represented as Qwen3; set model.use_bias=False "
                           "and model.qkv_bias=False")


def hf_config(cfg, model_type: str, token_ids: dict) -> dict:
    """The config.json of `cfg` as `model_type`; `token_ids`: bos/eos/pad token ids (None where absent)."""
    H = head_dim(cfg)
    rope = {"rope_type": {v: k for k, v in ROPE_TYPES.items()}[cfg.rope_scaling], "rope_theta": cfg.rope_base}
    if cfg.rope_scaling != "none":
        rope["factor"] = cfg.rope_scaling_factor
    if cfg.rope_scaling == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_len)
    out = {
        "model_type": model_type,
        "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                           "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": H, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling
        "rope_parameters": rope, "rope_theta": cfg.rope_base,
        "rope_scaling": None if cfg.rope_scaling == "none" else {**rope, "type": rope["rope_type"]},
        "attention_dropout": 0.0, "use_cache": True, "dtype": cfg.param_dtype,
        "bos_token_id": token_ids.get("bos"), "eos_token_id": token_ids.get("eos"),
        "pad_token_id": token_ids.get("pad"),
    }
    if model_type in ("llama", "qwen3"):
        out["attention_bias"] = bool(cfg.use_bias)
    if model_type == "llama":
        out["mlp_bias"] = bool(cfg.use_bias)
    if model_type in ("mistral", "qwen2", "qwen3"):
        out["sliding_window"] = None
        out["use_sliding_window"] = False
    return out
