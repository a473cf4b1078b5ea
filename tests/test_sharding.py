"""Data / FSDP / tensor parallel on 8 fake CPU devices: same numbers as one device, really sharded."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import tiny_config
from gptjax.parallel.mesh import logical_to_spec, make_mesh, to_device
from gptjax.train.loop import sharded_train_step

# Its module-scoped fixtures are built once: under pytest-xdist (--dist loadgroup) the module stays on one worker.
pytestmark = pytest.mark.xdist_group("test_sharding")

STEPS = 5


def sharded_run(mesh_shape, num_devices, grad_accum=1):
    cfg = tiny_config(vocab_size=64, d_model=64, n_heads=8, n_kv_heads=8, d_ff=128)
    cfg.data.batch_size = 16
    cfg.parallel.update(mesh=mesh_shape, num_devices=num_devices)
    cfg.optim.grad_accum = grad_accum
    mesh = make_mesh(cfg.parallel)
    batches = np.random.default_rng(0).integers(0, 57, (STEPS, 16, 17)).astype(np.int32)
    with jax.set_mesh(mesh):
        step, state, data = sharded_train_step(cfg, mesh)
        losses = []
        for batch in batches:
            state, metrics = step(state, to_device(batch, data, process_rows=True))
            losses.append(float(metrics["loss"]))
    return np.array(losses), state


@pytest.fixture(scope="module")
def single_device_losses():
    return sharded_run((1, 1, 1), 1)[0]


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)])
def test_sharded_training_matches_one_device(mesh_shape, single_device_losses):
    losses, state = sharded_run(mesh_shape, 8)
    np.testing.assert_allclose(losses, single_device_losses, rtol=1e-5)
    assert losses[-1] < losses[0]  # it trains

    data, fsdp, tensor = mesh_shape
    params = state["params"]
    up = params["blocks"][0]["mlp"]["up"]["kernel"]  # (embed, mlp) -> (fsdp, tensor)
    assert up.sharding.spec == P("fsdp", "tensor")
    assert up.addressable_shards[0].data.shape == (64 // fsdp, 128 // tensor)
    embedding = params["token_embed"]["embedding"]  # (vocab, embed) -> (tensor, fsdp)
    assert embedding.sharding.spec == P("tensor", "fsdp")
    assert embedding.addressable_shards[0].data.shape == (64 // tensor, 64 // fsdp)
    query = params["blocks"][1]["attn"]["query"]["kernel"]  # (embed, heads)
    assert query.addressable_shards[0].data.shape == (64 // fsdp, 64 // tensor)
    # Adam's moments are sharded like their parameters.
    mu = state["opt_state"][1][0].mu["blocks"][0]["mlp"]["up"]["kernel"]
    assert mu.sharding.spec == up.sharding.spec


def test_gradient_accumulation_on_a_sharded_batch_matches_one_device(single_device_losses):
    losses, _ = sharded_run((8, 1, 1), 8, grad_accum=2)
    np.testing.assert_allclose(losses, single_device_losses, rtol=1e-5)


def test_logical_to_spec_uses_each_mesh_axis_once():
    rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"))
    assert logical_to_spec(("batch", None, "embed"), rules) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")
    assert logical_to_spec(("unknown",), rules) == P(None)


def test_multi_host_flag_initializes_jax_distributed(monkeypatch):
    from gptjax.parallel import mesh as mesh_lib

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **k: calls.append(k))
    cfg = tiny_config()
    mesh_lib.maybe_initialize_distributed(cfg.parallel)
    assert calls == []
    cfg.parallel.multi_host = True
    mesh_lib.maybe_initialize_distributed(cfg.parallel)  # auto-detection: nothing given
    cfg.parallel.update(coordinator="localhost:1234", num_processes=2, process_id=1)  # as gptjax.launch sets them
    mesh_lib.maybe_initialize_distributed(cfg.parallel)
    assert calls == [dict(coordinator_address=None, num_processes=None, process_id=None),
                     dict(coordinator_address="localhost:1234", num_processes=2, process_id=1)]


def test_activations_are_constrained_by_the_rules_the_model_was_built_with():
    """The logical-axis rules reach the model explicitly (`model_graphdef(model_cfg, rules)`), not through a
    context: with none set, a forward pass on replicated params and tokens gives batch-sharded hidden states
    under rules that shard the batch, and replicated ones (nothing constrained) without rules."""
    from flax import nnx

    from gptjax.model.build import init_params, model_graphdef
    from gptjax.parallel.mesh import replicated

    cfg = tiny_config(vocab_size=64, d_model=64, n_heads=8, n_kv_heads=8, d_ff=128)
    cfg.parallel.update(mesh=(4, 2, 1), num_devices=8)
    mesh, rules = make_mesh(cfg.parallel), tuple(cfg.parallel.rules)
    with jax.set_mesh(mesh):
        params = jax.device_put(init_params(cfg.model, jax.random.key(0)), replicated(mesh))
        tokens_BxT = jax.device_put(np.zeros((8, 16), np.int32), replicated(mesh))

        def hidden(graphdef):
            return jax.jit(lambda p, t: nnx.merge(graphdef, p).hidden(t))(params, tokens_BxT)

        constrained, free = hidden(model_graphdef(cfg.model, rules)), hidden(model_graphdef(cfg.model))
    assert constrained.sharding.shard_shape(constrained.shape) == (1, 16, 64)  # 8 rows over data*fsdp = 8
    assert free.sharding.is_fully_replicated
    np.testing.assert_allclose(np.asarray(constrained), np.asarray(free), rtol=1e-5, atol=1e-6)
