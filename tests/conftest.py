"""Test setup: 8 fake CPU devices (set before jax is imported) so sharding is tested on CPU."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A persistent compilation cache shared by this session's tests and the subprocesses they start (jax reads
# these variables at import): compilation dominates the suite, and many tests compile the same tiny
# programs. A fresh directory per session, so no result depends on an earlier run's cache.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gptjax-test-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
if os.environ.get("PYTEST_XDIST_WORKER"):  # one directory per worker: no two test processes write one entry at once
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(os.environ["JAX_COMPILATION_CACHE_DIR"],
                                                           os.environ["PYTEST_XDIST_WORKER"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from gptjax.config import default_config  # noqa: E402


def tiny_config(**model_overrides):
    """A small, fast config on one device; tests override what they exercise."""
    cfg = default_config()
    cfg.model.update(vocab_size=40, max_len=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=64)
    cfg.model.update(model_overrides)
    cfg.data.update(seq_len=16, batch_size=8, eval_batches=2)
    cfg.optim.update(warmup_steps=2)
    cfg.train.update(steps=10, eval_every=5, log_every=1, checkpoint_every=5, cpu_peak_flops=1e11, progress_bar=False)
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    return cfg


@pytest.fixture
def cfg():
    return tiny_config()
