"""Device mesh from config, logical-axis rules, and the sharding helpers the rest of gptjax uses.

Parameters carry logical axis names (`nnx.with_partitioning(init, ('embed', 'mlp'))`); the rules
table in `config.parallel.rules` maps each logical name to mesh axes, MaxText style. Activations are
constrained with `constrain(x, names, rules)` at block boundaries, the rules passed explicitly (a
model holds the ones it was built with: `model_graphdef(model_cfg, rules)`), never read from a context.
"""

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from gptjax.config.parallel import MESH_AXES, resolve_mesh_shape


def maybe_initialize_distributed(parallel_cfg) -> None:
    """Joins the multi-process job when the config asks for it: with parallel.coordinator (and the
    process count and id, as gptjax.launch passes them), else by jax's auto-detection (TPU pods, SLURM,
    Kubernetes; JAX_COORDINATOR_ADDRESS). CPU devices of different processes talk over gloo."""
    p = parallel_cfg
    if not p.multi_host or jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=p.coordinator or None,
                               num_processes=p.num_processes if p.num_processes > 0 else None,
                               process_id=p.process_id if p.process_id >= 0 else None)


def make_mesh(parallel_cfg) -> jax.sharding.Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over the first `num_devices` devices (-1 = all)."""
    devices = jax.devices()
    n = len(devices) if parallel_cfg.num_devices == -1 else parallel_cfg.num_devices
    shape = resolve_mesh_shape(parallel_cfg.mesh, n)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices[:n])


def logical_to_spec(names, rules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once per spec."""
    table = dict(rules)
    used, spec = set(), []
    for name in names or ():
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def _logical_names(variable):
    return variable.get_metadata().get("out_sharding")


def param_shardings(abstract_params, mesh, rules):
    """NamedShardings for an (abstract) `nnx.State` of params, as a pure dict like `to_pure_dict`."""
    specs = jax.tree.map(
        lambda v: NamedSharding(mesh, logical_to_spec(_logical_names(v), rules)),
        abstract_params,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return nnx.to_pure_dict(specs)


def batch_sharding(mesh, rules, ndim: int = 2) -> NamedSharding:
    """Sharding of a (B, ...) batch: batch dim over the batch rule's axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def as_rules(rules) -> tuple:
    """Logical-axis rules (cfg.parallel.rules, which a JSON round trip turns into lists) as hashable tuples:
    a model built with them keeps them in its graphdef."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def constrain(x, names, rules):
    """`with_sharding_constraint` of x by logical `names` under the logical-axis `rules`, passed explicitly
    (a model holds the ones it was built with). A no-op without rules, or when no mesh is set (e.g.
    single-device tests or models vmapped by a sweep)."""
    if not rules or jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


def process_0s(value: int) -> int:
    """Process 0's `value` on every process (a collective): for a decision read from shared files, which every
    process must take alike (another host may see a file late, or a writer may change it between two reads)."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def on_every_process(flag: bool) -> bool:
    """Whether `flag` holds on every process (a collective)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.all(multihost_utils.process_allgather(np.array([flag]))))


def sync_processes(name: str) -> None:
    """Waits until every process of the job reaches this point (nothing to wait for on one process): after
    process 0 writes a shared file that the others read next."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# The two host <-> device paths. In a multi-process job every process runs the same program: data comes onto
# devices with to_device, as this process's rows of a batch (a training batch each process reads its own part
# of) or as host arrays every process holds in full (prompts, rollouts, preference batches), and comes back with
# to_host, which gathers what lives on other processes' devices (a collective: every process calls it at the
# same point, as they all run the same code).


def to_device(tree, shardings, process_rows: bool = False):
    """Host arrays as global arrays on `shardings` (one sharding, or a tree of them matching `tree`). Every
    process holds each array in full (the same values), or with `process_rows` only its own rows of the batch
    (the global batch is then every process's rows together). Each process places its own devices' slices, so
    nothing is sent between hosts (`jax.device_put` would gather and compare the whole tree across them)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def place(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, None if process_rows else x.shape)

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: place(x, shardings), tree)
    return jax.tree.map(place, tree, shardings)


def to_host(tree):
    """Numpy copies of the (global) arrays in `tree` on every process, gathered from the other processes'
    devices where an array is sharded over them; other leaves are left as they are (as `jax.device_get`)."""
    def get(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)
