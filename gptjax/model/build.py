"""Building the network from its config without a mesh: its graphdef, or freshly initialised params.

Both switch NNX's eager sharding off, so they work with no mesh set and under `jax.vmap` (K members
of a sweep group); the caller places the arrays (`jax.jit(..., out_shardings=...)`).
"""

import functools

import jax
import ml_collections
from flax import nnx

from gptjax.model.transformer import Transformer
from gptjax.parallel.mesh import as_rules


def abstract_model(model_cfg, rules: tuple = ()) -> Transformer:
    """The model with shapes only (no memory); its graphdef is what `nnx.merge` needs. `rules`: the
    logical-axis rules its activations are constrained by under a mesh (() = none)."""
    graphdefs = []

    def build():  # jax.eval_shape, not nnx.eval_shape: that one places each variable on the current mesh
        graphdef, state = nnx.split(Transformer(model_cfg, rngs=nnx.Rngs(0), rules=rules))
        graphdefs.append(graphdef)
        return state

    with nnx.use_eager_sharding(False):
        state = jax.eval_shape(build)
    return nnx.merge(graphdefs[0], state)


def init_params(model_cfg, key) -> dict:
    """Freshly initialised parameters as a pure nested dict of arrays."""
    with nnx.use_eager_sharding(False):
        model = Transformer(model_cfg, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@functools.lru_cache(maxsize=16)
def _graphdef(model_items: tuple, rules: tuple) -> nnx.GraphDef:
    return nnx.graphdef(abstract_model(ml_collections.ConfigDict(dict(model_items)), rules))


def model_graphdef(model_cfg, rules: tuple = ()) -> nnx.GraphDef:
    """The graphdef `nnx.merge(graphdef, params)` needs for params of a `model_cfg` model (cached), its
    activations and KV caches sharding-constrained by the logical-axis `rules` (cfg.parallel.rules)."""
    return _graphdef(tuple(sorted(dict(model_cfg.items()).items())), as_rules(rules))
