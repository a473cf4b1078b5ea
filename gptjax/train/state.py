"""The training state: a plain pytree {params, opt_state, step, rng}, created already sharded."""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.model.build import abstract_model, init_params, model_graphdef
from gptjax.parallel.mesh import param_shardings, replicated


def params_shardings(model_cfg, mesh, rules) -> dict:
    """NamedShardings of a `model_cfg` network's params, by their logical axes."""
    _, abstract = nnx.split(abstract_model(model_cfg), nnx.Param)
    return param_shardings(abstract, mesh, rules)


def abstract_params(model_cfg, mesh, rules) -> dict:
    """ShapeDtypeStructs of the params carrying their target shardings (restore targets)."""
    shapes = jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))
    return placed(shapes, params_shardings(model_cfg, mesh, rules))


def placed(shapes, shardings):
    """`shapes` (a pytree of arrays or ShapeDtypeStructs) as ShapeDtypeStructs carrying `shardings`."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def opt_state_shardings(params, abstract_opt_state, mesh):
    """Shardings of an optimizer state over params sharded as `params`: Adam's moments (subtrees shaped exactly
    like the params) like them, everything else (counts) replicated, being tiny."""
    params_def = jax.tree.structure(params)

    def is_params_like(x):
        return jax.tree.structure(x) == params_def

    return jax.tree.map(lambda x: params if is_params_like(x) else replicated(mesh), abstract_opt_state,
                        is_leaf=is_params_like)


def state_shardings(model_cfg, mesh, rules, abstract_state):
    """Shardings of the train state: params by their logical axes, Adam moments like their params."""
    params = params_shardings(model_cfg, mesh, rules)
    return dict(params=params, opt_state=opt_state_shardings(params, abstract_state["opt_state"], mesh),
                step=replicated(mesh), rng=replicated(mesh))


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """How to build the train state without building it: restoring a checkpoint needs only
    `abstract` (shapes + target shardings), a fresh run calls `initialize()`."""

    graphdef: nnx.GraphDef
    init: Callable[[], dict]  # () -> state; pure, jitted by `initialize`
    shardings: dict
    abstract: dict  # jax.ShapeDtypeStruct leaves carrying their target sharding

    def initialize(self) -> dict:
        return jax.jit(self.init, out_shardings=self.shardings)()


def initial_state(model_cfg, optimizer, seed) -> dict:
    """A fresh train state derived from `seed` (an int, or a traced one under `jax.vmap`)."""
    params_key, rng_key = jax.random.split(jax.random.key(seed))
    params = init_params(model_cfg, params_key)
    return dict(
        params=params,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(rng_key),  # raw uint32 key: checkpointable by orbax
    )


def state_spec(model_cfg, optimizer, mesh, rules, seed: int) -> StateSpec:
    def init():
        return initial_state(model_cfg, optimizer, seed)

    abstract = jax.eval_shape(init)
    shardings = state_shardings(model_cfg, mesh, rules, abstract)
    return StateSpec(model_graphdef(model_cfg, rules), init, shardings, placed(abstract, shardings))


def create_train_state(model_cfg, optimizer, mesh, rules, seed: int):
    """A freshly initialised, sharded train state: returns (graphdef, state, shardings)."""
    spec = state_spec(model_cfg, optimizer, mesh, rules, seed)
    return spec.graphdef, spec.initialize(), spec.shardings
