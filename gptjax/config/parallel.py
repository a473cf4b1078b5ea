"""The `parallel` section of the config: the mesh and the logical-axis rules, their defaults and checks."""

import math

import ml_collections

from gptjax.config.base import fail

MESH_AXES = ("data", "fsdp", "tensor")

# MaxText-style logical-axis rules: parameter/activation axis name -> mesh axes (or None = replicated).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("positions", None),
    ("head_dim", None),
    ("scalar", None),
)


def defaults() -> ml_collections.ConfigDict:
    """The device mesh and the rules mapping logical axes onto it (mesh.py)."""
    return ml_collections.ConfigDict(
        dict(
            mesh=(-1, 1, 1),  # (data, fsdp, tensor); one -1 takes the rest of the devices
            num_devices=-1,  # -1 = all visible devices
            rules=DEFAULT_RULES,
            multi_host=False,  # call jax.distributed.initialize() first (gptjax.launch sets the next three)
            coordinator="",  # "host:port" of process 0; "" = auto-detection (TPU pods, SLURM, Kubernetes)
            num_processes=0,  # 0 = auto-detected; with a coordinator, the job's process count
            process_id=-1,  # -1 = auto-detected; with a coordinator, this process's id in [0, num_processes)
        )
    )


def mesh_batch_shards(mesh, num_devices: int) -> int:
    """data * fsdp: how many ways the batch dimension is split."""
    shape = resolve_mesh_shape(mesh, num_devices)
    return shape[0] * shape[1]


def rule_axes(rules, logical: str) -> tuple[str, ...]:
    """The mesh axes that `rules` maps the logical axis `logical` to (() when replicated)."""
    axes = dict(rules).get(logical)
    return (axes,) if isinstance(axes, str) else tuple(axes or ())


def resolve_mesh_shape(mesh, num_devices: int) -> tuple[int, ...]:
    """Replaces the one -1 in `mesh` by what makes the product equal `num_devices`."""
    mesh = tuple(int(m) for m in mesh)
    if len(mesh) != len(MESH_AXES):
        fail("parallel.mesh", mesh, f"must have {len(MESH_AXES)} sizes for axes {MESH_AXES}")
    if mesh.count(-1) > 1:
        fail("parallel.mesh", mesh, "at most one size may be -1")
    if any(m == 0 or m < -1 for m in mesh):
        fail("parallel.mesh", mesh, "sizes must be positive, or -1 for 'the rest'")
    known = math.prod(m for m in mesh if m != -1)
    if -1 in mesh:
        if num_devices % known:
            fail("parallel.mesh", mesh, f"the fixed sizes must divide the device count {num_devices}")
        mesh = tuple(num_devices // known if m == -1 else m for m in mesh)
    if math.prod(mesh) != num_devices:
        fail("parallel.mesh", mesh, f"product {math.prod(mesh)} must equal the device count {num_devices}")
    return mesh


def validate_processes(p) -> None:
    """The multi-process keys: a coordinator needs the process count and this process's id."""
    if p.coordinator and not p.multi_host:
        fail("parallel.coordinator", p.coordinator, "is read only with parallel.multi_host=True")
    if p.coordinator and (p.num_processes < 1 or not 0 <= p.process_id < p.num_processes):
        fail("parallel.coordinator", p.coordinator, "needs parallel.num_processes >= 1 and parallel.process_id in "
             f"[0, num_processes) (got {p.num_processes}, {p.process_id}); gptjax.launch sets all three")


def validate(cfg, device_count: int | None, process_count: int | None) -> tuple[int, ...]:
    """Device and process counts, the mesh and the rules; returns the resolved mesh shape."""
    d, p, grad_accum = cfg.data, cfg.parallel, cfg.optim.grad_accum
    validate_processes(p)
    if device_count is None or process_count is None:
        import jax  # deferred: validation of everything else needs no backend

        device_count = jax.device_count() if device_count is None else device_count
        process_count = jax.process_count() if process_count is None else process_count
    if process_count > 1 and p.num_devices != -1:
        fail("parallel.num_devices", p.num_devices, "must be -1 in a multi-process job (every host feeds its devices)")
    if process_count > 1 and (d.batch_size % process_count or mesh_batch_shards(p.mesh, device_count) % process_count):
        fail("data.batch_size", d.batch_size, f"and the data*fsdp mesh size must divide by the {process_count} "
              "processes, each of which feeds its own rows of the batch")
    num_devices = device_count if p.num_devices == -1 else p.num_devices
    if not 0 < num_devices <= device_count:
        fail("parallel.num_devices", p.num_devices, f"must be -1 or in [1, {device_count}] (visible devices)")
    mesh = resolve_mesh_shape(p.mesh, num_devices)
    batch_shards = mesh[0] * mesh[1]
    if (d.batch_size // grad_accum) % batch_shards:
        fail("data.batch_size", d.batch_size,
              f"each microbatch ({d.batch_size // grad_accum}) must divide by data*fsdp={batch_shards}")
    rule_names = [name for name, _ in p.rules]
    for name, axes in p.rules:
        for axis in (axes,) if isinstance(axes, str) else (axes or ()):
            if axis not in MESH_AXES:
                fail("parallel.rules", name, f"maps to unknown mesh axis {axis!r}; mesh axes are {MESH_AXES}")
    for needed in ("batch", "embed", "mlp", "heads", "kv_heads", "vocab"):
        if needed not in rule_names:
            fail("parallel.rules", rule_names, f"needs a rule for logical axis {needed!r}")
    return mesh


def validate_heads_fit_mesh(m, p, mesh) -> None:
    """Attention splits heads across the axes their rule names; a head cannot be split between devices.
    Fewer KV heads than shards is grouped-query attention's usual case: each KV head is then computed on
    shards / n_kv_heads devices."""
    for key, logical in (("n_heads", "heads"), ("n_kv_heads", "kv_heads")):
        axes = rule_axes(p.rules, logical)
        shards = math.prod(mesh[MESH_AXES.index(axis)] for axis in axes)
        if m[key] % shards and not (logical == "kv_heads" and shards % m[key] == 0):
            fail(f"model.{key}", m[key], f"must divide by {shards}, the size of the mesh axes {axes} that "
                  f"parallel.rules shards {logical!r} over (parallel.mesh={tuple(p.mesh)})"
                  + (f", or divide {shards}" if logical == "kv_heads" else "")
                  + f"; pick a mesh whose {'*'.join(axes)} size fits model.{key}, or change the rule")
