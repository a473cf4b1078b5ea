"""Sweep workers: one process training a sweep group vs `--workers` processes each training one at once.

What `sweep.n_workers` buys on a CPU host: the main job's groups (a two-layer decoder, three learning rates
under jax.vmap, batch 32 x 64 tokens) are trained for --steps steps by one process (the peer: the in-process
sweep, XLA's threads over every core) and by --workers spawned processes started together (each its own
group, as `sweep.n_workers` runs trials). Throughput = model-tokens/s summed over every member of every
process, after compilation.

  python bench/sweep_workers.py [--workers 2] [--d_model 12] [--steps 100]
"""

import argparse
import json
import multiprocessing
import time


def timed_group(d_model: int, steps: int, start=None, out=None) -> float:
    """Seconds per step of the main job's group step at width `d_model` (after 3 warm-up steps); waits on
    the barrier `start` before timing when given, and puts the result on `out`."""
    import jax
    import numpy as np

    from gptjax.config import default_config
    from gptjax.parallel.mesh import make_mesh
    from gptjax.train.loop import sharded_train_step
    from gptjax.train.members import Members

    cfg = default_config()
    cfg.model.update(vocab_size=384, max_len=64, d_model=d_model, n_layers=2, n_heads=d_model // 4,
                     n_kv_heads=d_model // 4, d_ff=4 * d_model, positional="learned")
    cfg.data.update(seq_len=64, batch_size=32)
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    cfg.train.steps = 1000
    members = Members.group([{"lr": lr, "seed": 0} for lr in (8e-3, 2e-2, 5e-2)])
    mesh = make_mesh(cfg.parallel)
    with jax.set_mesh(mesh):
        step, state, data = sharded_train_step(cfg, mesh, members)
        batch = jax.device_put(np.random.default_rng(0).integers(0, 384, (32, 65), dtype=np.int32), data)
        for _ in range(3):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        if start is not None:
            start.wait()
        begin = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - begin) / steps
    if out is not None:
        out.put(seconds)
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--d_model", type=int, default=12)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    tokens = 3 * 32 * 64  # per group step: 3 members x batch 32 x 64 tokens
    context = multiprocessing.get_context("spawn")

    def in_processes(n: int) -> list[float]:
        start, out = context.Barrier(n), context.Queue()
        processes = [context.Process(target=timed_group, args=(args.d_model, args.steps, start, out))
                     for _ in range(n)]
        for p in processes:
            p.start()
        seconds = [out.get() for _ in processes]
        for p in processes:
            p.join()
        return seconds

    one = in_processes(1)[0]
    many = in_processes(args.workers)
    value, peer = sum(tokens / s for s in many), tokens / one
    print(json.dumps({"name": "sweep_workers_throughput", "value": round(value), "unit": "model-tokens/s",
                      "peer": round(peer), "peer_name": "one process (XLA threads over every core)",
                      "ratio": round(value / peer, 3), "workers": args.workers, "d_model": args.d_model,
                      "ms_per_step": {"one": round(1e3 * one, 1), "each_worker": [round(1e3 * s, 1) for s in many]},
                      "jax": __import__("jax").__version__}))


if __name__ == "__main__":
    main()
