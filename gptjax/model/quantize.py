"""Weight-only int8 quantization of kernels: symmetric, one float32 scale per output column.

scale = max |w| over the column / 127, q = round(w / scale). A Dense built with `model.kernel_quant="int8"`
(layers.py) multiplies by q and then by the scale. Used for sampling (gptjax/sample/quantize.py) and under LoRA
adapters (align.quantize_base, QLoRA-style).
"""

import jax.numpy as jnp
from flax import traverse_util

INT8_MAX = 127


def is_quantized(path) -> bool:
    """Whether `model.kernel_quant="int8"` stores the param at `path` as int8: the kernels of named Dense layers
    (the projections, an untied LM head); a scalar head's stays float."""
    return path[-1] == "kernel" and path[0] != "scalar_head"


def quantize_kernel(kernel_IxO):
    """(int8 kernel, float32 scale per output column) of a kernel [..., in, out] (a leading layer axis kept)."""
    scale_O = jnp.max(jnp.abs(kernel_IxO.astype(jnp.float32)), axis=-2) / INT8_MAX
    scale_O = jnp.where(scale_O > 0, scale_O, 1.0)  # an all-zero column (e.g. a zero-initialised head)
    q_IxO = jnp.clip(jnp.round(kernel_IxO.astype(jnp.float32) / scale_O[..., None, :]), -INT8_MAX, INT8_MAX)
    return q_IxO.astype(jnp.int8), scale_O


def quantize_params(params) -> dict:
    """`params` with every quantized kernel as int8 and its `kernel_scale` beside it."""
    flat = dict(traverse_util.flatten_dict(params))
    for path in [p for p in flat if is_quantized(p)]:
        flat[path], flat[path[:-1] + ("kernel_scale",)] = quantize_kernel(flat[path])
    return traverse_util.unflatten_dict(flat)


def quantization_rounded(params) -> dict:
    """`params` with every kernel int8 storage would hold replaced by what it holds, dequantized (float)."""
    flat = dict(traverse_util.flatten_dict(params))
    for path in [p for p in flat if is_quantized(p)]:
        q, scale = quantize_kernel(flat[path])
        flat[path] = (q.astype(jnp.float32) * scale[..., None, :]).astype(flat[path].dtype)
    return traverse_util.unflatten_dict(flat)
