"""The training step's CPU compiler options: they must reach XLA and shrink the step's temporary memory."""

import jax
import numpy as np

import gptjax.train.loop as loop
from gptjax.parallel.mesh import make_mesh
from gptjax.train.xla_options import training_compiler_options
from tests.conftest import tiny_config


def _train_step_temp_bytes(cfg, compiler_options):
    mesh = make_mesh(cfg.parallel)
    with jax.set_mesh(mesh):
        step, state, data = loop.sharded_train_step(cfg, mesh)
        batch = jax.device_put(np.zeros((cfg.data.batch_size, cfg.data.seq_len + 1), np.int32), data)
        compiled = step.lower(state, batch).compile(compiler_options=compiler_options)
        return compiled.memory_analysis().temp_size_in_bytes


def test_cpu_train_step_uses_the_memory_optimized_schedule():
    cfg = tiny_config(n_layers=6, d_model=64, d_ff=256, max_len=128)
    cfg.data.update(seq_len=128, batch_size=8)
    options = training_compiler_options(make_mesh(cfg.parallel))
    assert options, "CPU training should set compiler options"
    # The option must be one XLA acts on (an unknown or ignored name would leave the memory unchanged).
    default = _train_step_temp_bytes(cfg, {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_DEFAULT"})
    tuned = _train_step_temp_bytes(cfg, options)
    assert tuned < 0.95 * default, (tuned, default)
    # ... and jit_train_step passes it: compiling without overrides gives the tuned figure.
    assert _train_step_temp_bytes(cfg, None) == tuned
