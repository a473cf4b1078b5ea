"""Building the network from its config without a mesh: its graphdef, or freshly initialised params.

Both switch NNX's eager sharding off, so they work with no mesh set and under `jax.vmap` (K members
of a sweep group); the caller places the arrays (`jax.jit(..., out_shardings=...)`).
"""

import functools

import ml_collections
from flax import nnx

from gptjax.model.transformer import Transformer


def abstract_model(model_cfg) -> Transformer:
    """The model with shapes only (no memory); its graphdef is what `nnx.merge` needs."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))


def init_params(model_cfg, key) -> dict:
    """Freshly initialised parameters as a pure nested dict of arrays."""
    with nnx.use_eager_sharding(False):
        model = Transformer(model_cfg, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@functools.lru_cache(maxsize=16)
def _graphdef(model_items: tuple) -> nnx.GraphDef:
    return nnx.graphdef(abstract_model(ml_collections.ConfigDict(dict(model_items))))


def model_graphdef(model_cfg) -> nnx.GraphDef:
    """The graphdef `nnx.merge(graphdef, params)` needs for params of a `model_cfg` model (cached)."""
    return _graphdef(tuple(sorted(dict(model_cfg.items()).items())))
