"""Building blocks of the decoder: 2-D dense layers, norms, MLP, positions, dropout.

Every parameter carries logical axis names (see gptjax/parallel/mesh.py for the rules).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def partitioned(init, names):
    return nnx.with_partitioning(init, names)


class Dense(nnx.Linear):
    """`nnx.Linear` over the last axis, computed on a 2-D `(rows, d_in)` view of the input.

    XLA:CPU runs the backward pass of 3-D dense contractions ~2.5x slower than the same matmul on
    2-D arrays (an MLP's forward + backward: 79 ms vs 29 ms on 2 cores); the reshape costs nothing on
    TPU/GPU. `std=0` initialises the kernel to exact zeros (μP's zero readout).

    With `model.lora_rank` = r > 0 and its `name` among `model.lora_targets` it carries a LoRA adapter (Hu et al.
    2021): y = x W + (x A) B * lora_alpha / r, A [in, r] Gaussian, B [r, out] zero, so the adapted layer starts
    equal to W's. Post-training trains only A and B (gptjax/align/lora.py).

    With `model.kernel_quant="int8"` (weight-only quantization for sampling: gptjax/sample/quantize.py fills
    it) the kernel is int8 with a float32 scale per output column, `kernel_scale`; since that scale commutes
    with the matmul, y = (x @ int8 kernel) * scale, and no float copy of the kernel is kept between calls.
    """

    def __init__(self, d_in, d_out, names, *, std, use_bias, cfg, rngs, name: str = ""):
        super().__init__(
            d_in,
            d_out,
            use_bias=use_bias,
            dtype=DTYPES[cfg.compute_dtype],
            param_dtype=DTYPES[cfg.param_dtype],
            kernel_init=partitioned(nnx.initializers.normal(std) if std else nnx.initializers.zeros_init(), names),
            bias_init=partitioned(nnx.initializers.zeros_init(), names[1:]),
            rngs=rngs,
        )

        rank = cfg.get("lora_rank", 0)
        self.lora_scale = cfg.get("lora_alpha", 0.0) / rank if rank and name in lora_targets(cfg) else 0.0
        if self.lora_scale:
            self.lora_a = nnx.Param(partitioned(nnx.initializers.normal(d_in**-0.5), (names[0], None))(
                rngs.params(), (d_in, rank), DTYPES[cfg.param_dtype]))
            self.lora_b = nnx.Param(partitioned(nnx.initializers.zeros_init(), (None, names[1]))(
                rngs.params(), (rank, d_out), DTYPES[cfg.param_dtype]))
        # the projections and an untied LM head; a scalar head (unnamed) stays float, as it trains under LoRA
        self.int8 = cfg.get("kernel_quant", "none") == "int8" and bool(name)
        if self.int8:
            self.kernel = nnx.Param(partitioned(nnx.initializers.zeros_init(), names)(rngs.params(), (d_in, d_out),
                                                                                      jnp.int8))
            self.kernel_scale = nnx.Param(partitioned(nnx.initializers.ones_init(), names[1:])(
                rngs.params(), (d_out,), jnp.float32))

    def dequantized_kernel(self):
        """The kernel in the compute dtype (an int8 one times its scales), for the LM head's direct reads."""
        kernel = self.kernel[...].astype(self.dtype)
        return kernel * self.kernel_scale[...].astype(self.dtype) if self.int8 else kernel

    def __call__(self, x_ND):
        x_2d = x_ND.reshape(-1, x_ND.shape[-1])
        if self.int8:
            y_2d = jnp.dot(x_2d.astype(self.dtype), self.kernel[...].astype(self.dtype),
                           preferred_element_type=jnp.float32) * self.kernel_scale[...]
            if self.bias is not None:
                y_2d = y_2d + self.bias[...]
            y_2d = y_2d.astype(self.dtype)
        else:
            y_2d = super().__call__(x_2d)
        if self.lora_scale:
            x_RxI = x_2d.astype(self.dtype)
            y_2d = y_2d + (x_RxI @ self.lora_a[...].astype(self.dtype)) @ self.lora_b[...].astype(self.dtype) * self.lora_scale
        return y_2d.reshape(*x_ND.shape[:-1], y_2d.shape[-1])


def lora_targets(cfg) -> tuple[str, ...]:
    """The Dense names `model.lora_targets` (comma-separated) puts adapters on."""
    return tuple(t.strip() for t in cfg.get("lora_targets", "").split(",") if t.strip())


def head_dim(cfg) -> int:
    """The per-head width H: `model.head_dim`, or d_model / n_heads when that is 0."""
    return cfg.get("head_dim", 0) or cfg.d_model // cfg.n_heads


def make_norm(dim, cfg, rngs, names=("embed",)):
    """LayerNorm or RMSNorm over the last axis, per `cfg.norm`, with `cfg.norm_eps`; statistics in float32."""
    common = dict(
        epsilon=cfg.get("norm_eps", 1e-5),
        dtype=DTYPES[cfg.compute_dtype],
        param_dtype=DTYPES[cfg.param_dtype],
        scale_init=partitioned(nnx.initializers.ones_init(), names),
        rngs=rngs,
    )
    if cfg.norm == "rmsnorm":
        return nnx.RMSNorm(dim, **common)
    return nnx.LayerNorm(
        dim, use_bias=cfg.use_bias, bias_init=partitioned(nnx.initializers.zeros_init(), names), **common
    )


class MLP(nnx.Module):
    """Position-wise feed-forward: D -> F -> D with GELU, ReLU, or SwiGLU (gated, F wide)."""

    def __init__(self, cfg, rngs, std, resid_std):
        bias = cfg.use_bias
        self.activation = cfg.activation
        self.up = Dense(cfg.d_model, cfg.d_ff, ("embed", "mlp"), std=std, use_bias=bias, cfg=cfg, rngs=rngs, name="up")
        if cfg.activation == "swiglu":
            self.gate = Dense(cfg.d_model, cfg.d_ff, ("embed", "mlp"), std=std, use_bias=bias, cfg=cfg, rngs=rngs,
                              name="gate")
        self.down = Dense(cfg.d_ff, cfg.d_model, ("mlp", "embed"), std=resid_std, use_bias=bias, cfg=cfg, rngs=rngs,
                          name="down")

    def __call__(self, x_BxTxD):
        gate_BxTxF = self.gate(x_BxTxD) if self.activation == "swiglu" else None
        return _activate_and_project(self.activation, self.up(x_BxTxD), gate_BxTxF, self.down)


def _activation(name, h_BxTxF, gate_BxTxF):
    if name == "swiglu":
        return jax.nn.silu(gate_BxTxF) * h_BxTxF
    if name == "gelu":
        return jax.nn.gelu(h_BxTxF, approximate=True)  # GPT-2's "gelu_new"
    return jax.nn.relu(h_BxTxF)


def _activate_and_project(name, h_BxTxF, gate_BxTxF, down):
    """down(activation(h)), with the activation recomputed in the backward pass: only the pre-activations
    are kept for it, not the activation's output and its intermediates (tanh for GELU), each as large as h.
    Elementwise work is cheap to redo; on XLA:CPU every saved byte is also a page faulted in each step.
    `down` is inside the checkpoint because its backward needs its input, the activation's output: outside,
    that output would be saved for it. Its matmul is not redone (its output is no residual)."""

    @jax.checkpoint
    def run(h_BxTxF, gate_BxTxF, down):
        return down(_activation(name, h_BxTxF, gate_BxTxF))

    return run(h_BxTxF, gate_BxTxF, down)


def sinusoidal_positions(positions_BxT, dim, dtype):
    """Fixed sin/cos position encodings of Vaswani et al., shape (B, T, dim)."""
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    angles_BxTxD2 = positions_BxT[..., None].astype(jnp.float32) * inv_freq
    return jnp.concatenate([jnp.sin(angles_BxTxD2), jnp.cos(angles_BxTxD2)], axis=-1).astype(dtype)


def rope_inv_freq(head_dim: int, cfg) -> np.ndarray:
    """RoPE's H/2 angular frequencies base^(-2i/H), rescaled per `cfg.rope_scaling` (config/model.py): a
    static float32 array, so it folds into the compiled program. "llama3" is Llama 3.1's rule: frequencies
    whose wavelength exceeds original_max_len / low_freq_factor are divided by the factor, those shorter
    than original_max_len / high_freq_factor are kept, and the band between is interpolated."""
    inv_freq = 1.0 / (cfg.rope_base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    scaling, factor = cfg.get("rope_scaling", "none"), cfg.get("rope_scaling_factor", 1.0)
    if scaling == "linear":
        inv_freq = inv_freq / factor
    elif scaling == "llama3":
        low, high, original = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max_len
        wavelen = 2 * math.pi / inv_freq
        smooth = np.clip((original / wavelen - low) / (high - low), 0.0, 1.0)  # 0: divided; 1: kept
        inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return inv_freq.astype(np.float32)


def apply_rope(x_BxTxNxH, positions_BxT, inv_freq_H2):
    """Rotary position embedding (rotate-half form, as HF Llama) on the head dim, at frequencies
    `inv_freq_H2` (`rope_inv_freq`)."""
    angles_BxTx1xH2 = (positions_BxT[..., None].astype(jnp.float32) * inv_freq_H2)[:, :, None, :]
    sin, cos = jnp.sin(angles_BxTx1xH2), jnp.cos(angles_BxTx1xH2)
    x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BxTxNxH.dtype)


def dropout(x, rate, key):
    """Inverted dropout; identity when `key` is None (evaluation) or the rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
