"""Timing helpers shared by the benchmark scripts (imported as `timing`: bench/ is on sys.path when a
script in it runs)."""

import time

import jax
from flax import nnx

from gptjax.parallel.mesh import make_mesh
from gptjax.train.loop import sharded_train_step


def seconds_per_train_step(cfg, batch_np, steps: int, warmup: int = 3) -> float:
    """Mean wall seconds of one jitted, sharded training step of `cfg` on the batch `batch_np`, after
    compilation and `warmup` steps. Steps are dispatched back to back and waited for once at the end,
    as in a training loop."""
    mesh = make_mesh(cfg.parallel)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(tuple(cfg.parallel.rules)):
        step, state, data = sharded_train_step(cfg, mesh)
        batch = jax.device_put(batch_np, data)
        for _ in range(warmup):
            state, metrics = step(state, batch)
        metrics["loss"].block_until_ready()
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch)
        metrics["loss"].block_until_ready()
        return (time.perf_counter() - start) / steps


def timed(call) -> tuple[float, object]:
    """(wall seconds, result) of `call()`."""
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def fastest_threads(peer, default_threads: int) -> int:
    """Sets torch to the faster of 1 thread and `default_threads` (one timed call each); returns it."""
    import torch

    times = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        times[threads] = timed(peer)[0]
    best = min(times, key=times.get)
    torch.set_num_threads(best)
    return best
