"""Weight-only int8 quantization of a trained network for sampling (`sample.quantize=int8`).

Every dense kernel (attention and MLP projections, an untied LM head) becomes int8 with one float32 scale per
output column (gptjax/model/quantize.py). The model built with `model.kernel_quant="int8"` multiplies by the int8
kernel and then by the scale (model/layers.py Dense), so the float kernels are not kept. Embeddings, norms and
biases stay as they are: the token embedding is also the tied LM head and is read a row at a time, and the small
vectors cost little.
"""

import jax

from gptjax.model.quantize import quantize_params
from gptjax.train.state import params_shardings


def quantize_int8(model_cfg, params, mesh, rules):
    """(the int8 model config, its params placed on `mesh` by `rules`) of a float network."""
    qcfg = model_cfg.copy_and_resolve_references()
    qcfg.kernel_quant = "int8"
    return qcfg, jax.jit(quantize_params, out_shardings=params_shardings(qcfg, mesh, rules))(params)


def params_bytes(params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
