"""The `model` section of the config: its keys and defaults, and the rules they must meet."""

import ml_collections

from gptjax.config.base import check_choice, fail
from gptjax.data.tokenizer import NUM_SPECIAL_TOKENS

PARAMETRIZATIONS = ("sp", "mup")
POSITIONAL = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu", "relu", "swiglu")
ROPE_SCALINGS = ("none", "linear", "llama3")  # model/layers.py rope_inv_freq
KERNEL_QUANTS = ("none", "int8")  # model/layers.py Dense
LORA_TARGETS = ("query", "key", "value", "out", "gate", "up", "down")  # the Dense layers a LoRA adapter can sit on
DTYPES = ("float32", "bfloat16")
ATTENTION_KERNELS = ("auto", "blocked", "einsum", "xla", "cudnn")  # model/attention.py choose_attention_kernel


def defaults() -> ml_collections.ConfigDict:
    """The network (the decoder in transformer.py); a post-training stage reads its own from init_from."""
    return ml_collections.ConfigDict(
        dict(
            vocab_size=64,
            max_len=128,
            d_model=64,
            n_layers=2,
            n_heads=4,
            n_kv_heads=4,  # < n_heads gives grouped-query attention
            head_dim=0,  # per-head width; 0 = d_model / n_heads (Qwen3 and some Llamas set it apart)
            d_ff=256,
            positional="learned",
            norm="layernorm",
            norm_position="pre",
            activation="gelu",
            qk_norm=False,
            use_bias=True,  # biases on every dense layer and LayerNorm
            qkv_bias=False,  # biases on the query/key/value projections even without use_bias (Qwen2)
            norm_eps=1e-5,  # the epsilon of every LayerNorm / RMSNorm
            tie_embeddings=True,
            dropout=0.0,
            param_dtype="float32",
            compute_dtype="float32",
            # causal attention kernel: "auto" = einsum on CPU, cuDNN on GPU where it applies, else XLA
            attention="auto",
            remat=False,
            scan_layers=False,
            scalar_head=False,
            init_std=0.02,
            rope_base=10000.0,
            # RoPE context extension: "linear" divides every frequency by the factor; "llama3" (Llama 3.1)
            # divides only the low frequencies (wavelengths beyond original_max_len / low_freq_factor), keeps
            # the high ones (below original_max_len / high_freq_factor) and blends those between.
            rope_scaling="none",
            rope_scaling_factor=1.0,
            rope_low_freq_factor=1.0,
            rope_high_freq_factor=4.0,
            rope_original_max_len=8192,
            parametrization="sp",  # "sp" (standard) or "mup" (maximal update parametrization, model/mup.py)
            mup_base_width=64,  # muP: the d_model whose init and learning rates the others transfer from
            # muP: the base model's head dim, for its attention scale; 0 = mup_base_width / n_heads (n_heads
            # fixed across widths). Sweeps, whose family fixes sweep.head_dim and grows n_heads, set it.
            mup_base_head_dim=0,
            # Adam lr of embeddings, readout, biases and norm scales relative to optim.lr (the hidden kernels'
            # at the base width), under sp and mup alike: Tensor Programs V tunes this ratio at the base width.
            embed_lr_mult=1.0,
            readout_zero_init=False,  # start the untied LM head at zero (needs tie_embeddings=False)
            # "int8": dense kernels stored as int8 with a per-column scale; set by sample.quantize on a trained
            # network (gptjax/sample/quantize.py), not for training
            kernel_quant="none",
            # LoRA adapters (set by a post-training stage from align.lora_*: gptjax/align/lora.py), 0 = none
            lora_rank=0,
            lora_alpha=16.0,
            lora_targets="query,key,value,out,gate,up,down",
        )
    )


def validate(cfg) -> None:
    m = cfg.model
    for key in ("vocab_size", "max_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
        if m[key] <= 0:
            fail(f"model.{key}", m[key], "must be a positive integer")
    if m.head_dim < 0:
        fail("model.head_dim", m.head_dim, "must be a positive per-head width, or 0 for d_model / n_heads")
    if not m.head_dim and m.d_model % m.n_heads:
        fail("model.n_heads", m.n_heads, f"must divide model.d_model={m.d_model} (or set model.head_dim)")
    if m.n_heads % m.n_kv_heads:
        fail("model.n_kv_heads", m.n_kv_heads, f"must divide model.n_heads={m.n_heads}")
    for key, choices in (("positional", POSITIONAL), ("norm", NORMS), ("norm_position", NORM_POSITIONS),
                         ("activation", ACTIVATIONS), ("param_dtype", DTYPES), ("compute_dtype", DTYPES),
                         ("attention", ATTENTION_KERNELS), ("parametrization", PARAMETRIZATIONS),
                         ("rope_scaling", ROPE_SCALINGS), ("kernel_quant", KERNEL_QUANTS)):
        check_choice(cfg, f"model.{key}", choices)
    head_dim = m.head_dim or m.d_model // m.n_heads
    if m.positional == "rope" and head_dim % 2:
        fail("model.positional", m.positional, f"RoPE needs an even head dim, got {head_dim}")
    if not 0.0 < m.norm_eps < 1.0:
        fail("model.norm_eps", m.norm_eps, "must be a small positive number (e.g. 1e-5, or 1e-6 as in Llama)")
    if m.rope_scaling != "none":
        if m.positional != "rope":
            fail("model.rope_scaling", m.rope_scaling, "rescales RoPE; it needs model.positional='rope'")
        if not m.rope_scaling_factor >= 1.0:
            fail("model.rope_scaling_factor", m.rope_scaling_factor, "must be >= 1 (the context extension factor)")
        if m.rope_scaling == "llama3" and not (0 < m.rope_low_freq_factor < m.rope_high_freq_factor
                                                and m.rope_original_max_len > 0):
            fail("model.rope_low_freq_factor", m.rope_low_freq_factor,
                 "llama3 rope scaling needs 0 < rope_low_freq_factor < rope_high_freq_factor and "
                 "rope_original_max_len > 0")
    if not 0.0 <= m.dropout < 1.0:
        fail("model.dropout", m.dropout, "must be in [0, 1)")
    if m.vocab_size <= NUM_SPECIAL_TOKENS:
        fail("model.vocab_size", m.vocab_size,
              f"must exceed the {NUM_SPECIAL_TOKENS} reserved special tokens")
    if m.parametrization == "mup" and m.mup_base_width <= 0:
        fail("model.mup_base_width", m.mup_base_width,
              "must be a positive integer: the d_model of the base model that muP transfers from")
    if m.mup_base_head_dim < 0:
        fail("model.mup_base_head_dim", m.mup_base_head_dim,
              "must be the base model's head dim (> 0), or 0 for mup_base_width / n_heads")
    if not (isinstance(m.embed_lr_mult, (int, float)) and 0 < m.embed_lr_mult < float("inf")):
        fail("model.embed_lr_mult", m.embed_lr_mult,
              "must be a positive finite factor on optim.lr for embeddings, readout, biases and norms (1 = off)")
    if m.readout_zero_init and m.tie_embeddings:
        fail("model.readout_zero_init", m.readout_zero_init,
              "zero-initialises the LM head, which is the token embedding when tied; set model.tie_embeddings=False")
