"""LoRA post-training (Hu et al. 2021): rank-r adapters on a frozen trained network.

A stage with align.lora_rank = r > 0 builds its network with adapters (model.lora_* keys: A Gaussian, B zero,
so it starts equal to the init_from network) and trains only the `trainable` leaves: the adapters and, for a
reward model, its new scalar head. The frozen base is passed to each jitted step as an argument and never
copied or checkpointed again: a stage checkpoint holds the trainable leaves, and its meta names the base
workdir (`lora_base`). `load_network` of such a run reads the base, adds the adapters into its kernels
(W + alpha / r * A B, `merged`) and returns a plain network, so sampling, evaluation, later stages and export
see one set of weights.
"""

import jax
import ml_collections
from flax import traverse_util

from gptjax.model.build import init_params
from gptjax.model.lora import ADAPTERS
from gptjax.train.state import params_shardings


def lora_model_cfg(align_cfg, model_cfg) -> ml_collections.ConfigDict:
    """`model_cfg` with align.lora_* adapters (unchanged when align.lora_rank is 0)."""
    out = ml_collections.ConfigDict(model_cfg.to_dict())
    if align_cfg.lora_rank:
        out.update(lora_rank=align_cfg.lora_rank, lora_alpha=float(align_cfg.lora_alpha),
                   lora_targets=align_cfg.lora_targets)
    return out


def fresh_adapters(model_cfg, key, mesh, rules) -> dict:
    """Initial adapters of a LoRA `model_cfg`, initialised under jit straight onto their shardings."""
    def adapters(tree):
        return traverse_util.unflatten_dict({p: x for p, x in traverse_util.flatten_dict(tree).items()
                                             if p[-1] in ADAPTERS})

    return jax.jit(lambda: adapters(init_params(model_cfg, key)),
                   out_shardings=adapters(params_shardings(model_cfg, mesh, rules)))()
