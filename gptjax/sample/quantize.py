"""Weight-only int8 quantization of a trained network for sampling (`sample.quantize=int8`).

Every dense kernel (attention and MLP projections, an untied LM head) becomes int8 with one float32 scale per
output column, symmetric: scale = max |w| over the column / 127, q = round(w / scale). The model built with
`model.kernel_quant="int8"` multiplies by the int8 kernel and then by the scale (model/layers.py Dense), so the
float kernels are not kept. Embeddings, norms and biases stay as they are: the token embedding is also the
tied LM head and is read a row at a time, and the small vectors cost little.
"""

import jax
import jax.numpy as jnp
from flax import traverse_util

from gptjax.train.state import params_shardings

INT8_MAX = 127


def quantize_kernel(kernel_IxO):
    """(int8 kernel, float32 scale per output column) of a kernel [..., in, out] (a leading layer axis kept)."""
    scale_O = jnp.max(jnp.abs(kernel_IxO.astype(jnp.float32)), axis=-2) / INT8_MAX
    scale_O = jnp.where(scale_O > 0, scale_O, 1.0)  # an all-zero column (e.g. a zero-initialised head)
    q_IxO = jnp.clip(jnp.round(kernel_IxO.astype(jnp.float32) / scale_O[..., None, :]), -INT8_MAX, INT8_MAX)
    return q_IxO.astype(jnp.int8), scale_O


def quantize_int8(model_cfg, params, mesh, rules):
    """(the int8 model config, its params placed on `mesh` by `rules`) of a float network."""
    qcfg = model_cfg.copy_and_resolve_references()
    qcfg.kernel_quant = "int8"

    def convert(params):
        flat = dict(traverse_util.flatten_dict(params))
        for path in [p for p in flat if p[-1] == "kernel"]:
            flat[path], flat[path[:-1] + ("kernel_scale",)] = quantize_kernel(flat[path])
        return traverse_util.unflatten_dict(flat)

    return qcfg, jax.jit(convert, out_shardings=params_shardings(qcfg, mesh, rules))(params)


def params_bytes(params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
