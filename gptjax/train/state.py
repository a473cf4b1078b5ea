"""The training state: a plain pytree {params, opt_state, step, rng}, created already sharded."""

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.model.transformer import Transformer
from gptjax.parallel.mesh import param_shardings, replicated


def abstract_model(model_cfg) -> Transformer:
    """The model with shapes only (no memory); its graphdef is what `nnx.merge` needs."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))


def init_params(model_cfg, key) -> dict:
    """Freshly initialised parameters as a pure nested dict of arrays."""
    with nnx.use_eager_sharding(False):
        model = Transformer(model_cfg, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def state_shardings(model_cfg, mesh, rules, abstract_state):
    """Shardings of the train state: params by their logical axes, Adam moments like their params."""
    _, abstract_params = nnx.split(abstract_model(model_cfg), nnx.Param)
    params = param_shardings(abstract_params, mesh, rules)
    # Adam's moments are subtrees shaped exactly like the params; everything else (counts) is tiny.
    params_def = jax.tree.structure(params)

    def is_params_like(x):
        return jax.tree.structure(x) == params_def

    opt_state = jax.tree.map(
        lambda x: params if is_params_like(x) else replicated(mesh), abstract_state["opt_state"], is_leaf=is_params_like
    )
    return dict(params=params, opt_state=opt_state, step=replicated(mesh), rng=replicated(mesh))


def make_init_fn(model_cfg, optimizer, seed: int):
    """() -> train state; jit it with the shardings from `state_shardings`."""

    def init():
        params_key, rng_key = jax.random.split(jax.random.key(seed))
        params = init_params(model_cfg, params_key)
        return dict(
            params=params,
            opt_state=optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            rng=jax.random.key_data(rng_key),  # raw uint32 key: checkpointable by orbax
        )

    return init


def create_train_state(model_cfg, optimizer, mesh, rules, seed: int):
    """Returns (graphdef, state, shardings, abstract_state_with_shardings)."""
    graphdef = nnx.graphdef(abstract_model(model_cfg))
    init = make_init_fn(model_cfg, optimizer, seed)
    abstract = jax.eval_shape(init)
    shardings = state_shardings(model_cfg, mesh, rules, abstract)
    state = jax.jit(init, out_shardings=shardings)()
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return graphdef, state, shardings, abstract
