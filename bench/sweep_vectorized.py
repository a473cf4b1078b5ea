"""Vectorized sweep training: K tiny models trained together under jax.vmap vs one after another.

Both sides train the same K models (one shape, K learning rates) on the same batch, jitted, on this
CPU. "Sequential" runs the single-model jitted step K times per round; "vectorized" runs the vmapped
step (the member axis of gptjax/train/members.py, as `train_group` trains it) once. Throughput = model-tokens/s summed over the K models after
compilation; compile time is reported separately (the sequential side compiles once too, shapes being
equal). Goal (issue 4): >= 3x at K=8.
A second line times what a sweep does end to end on synthetic data: `train_group` on all K learning
rates (one compile, one data stream, one checkpoint per save) vs `train` once per learning rate, each
for --run_steps steps with the sweep's eval/checkpoint cadence.

  python bench/sweep_vectorized.py [--members 8] [--steps 30] [--d_model 32] [--n_layers 2] [--run_steps 200]
"""

import argparse
import json
import tempfile
import time

import jax
import numpy as np

from gptjax.config import default_config
from gptjax.parallel.mesh import make_mesh
from gptjax.scaling.vectorized import train_group
from gptjax.train.loop import sharded_train_step, train
from gptjax.train.members import Members


def seconds_per_round(step, states, batch, steps: int) -> float:
    """Mean seconds to advance every state in `states` by one step (after warmup)."""
    for i, state in enumerate(states):
        states[i], metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        for i, state in enumerate(states):
            states[i], metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--d_model", type=int, default=32)
    parser.add_argument("--n_layers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--run_steps", type=int, default=200)
    args = parser.parse_args()
    cfg = default_config()
    D = args.d_model
    cfg.model.update(vocab_size=384, max_len=args.seq_len, d_model=D, n_layers=args.n_layers, n_heads=max(D // 16, 1),
                     n_kv_heads=max(D // 16, 1), d_ff=4 * D)
    cfg.data.update(seq_len=args.seq_len, batch_size=args.batch_size)
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    members = [{"lr": lr, "seed": 0} for lr in np.geomspace(1e-3, 3e-2, args.members)]
    batch_np = np.random.default_rng(0).integers(7, 384, (args.batch_size, args.seq_len + 1)).astype(np.int32)

    timings = {}
    mesh = make_mesh(cfg.parallel)
    with jax.set_mesh(mesh):
        for name, groups in (("sequential", [[m] for m in members]), ("vectorized", [members])):
            built = [sharded_train_step(cfg, mesh, Members.group(g)) for g in groups]
            step, batch = built[0][0], jax.device_put(batch_np, built[0][2])  # the lr is in each state
            states = [state for _, state, _ in built]
            start = time.perf_counter()
            jax.block_until_ready(step.lower(states[0], batch).compile())
            compile_seconds = time.perf_counter() - start
            timings[name] = (seconds_per_round(step, states, batch, args.steps), compile_seconds)

    model_tokens = args.members * args.batch_size * args.seq_len
    value = model_tokens / timings["vectorized"][0]
    peer = model_tokens / timings["sequential"][0]
    print(json.dumps({
        "name": "sweep_vectorized_throughput", "value": round(value), "unit": "model-tokens/s",
        "peer": round(peer), "peer_name": f"the same {args.members} models one after another (jitted)",
        "ratio": round(value / peer, 2), "members": args.members, "d_model": D, "n_layers": args.n_layers,
        "batch": [args.batch_size, args.seq_len], "compile_seconds": {k: round(v[1], 2) for k, v in timings.items()},
        "jax": jax.__version__, "backend": jax.default_backend(),
    }))
    print(json.dumps(end_to_end(cfg, members, args.run_steps)))


def end_to_end(cfg, members, steps: int) -> dict:
    """Wall seconds of a K-learning-rate sweep of one shape: vectorized vs one run per learning rate."""
    cfg = cfg.copy_and_resolve_references()
    cfg.data.update(source="synthetic:markov", markov_alphabet=64)
    cfg.train.update(steps=steps, eval_every=steps // 4, log_every=steps // 20, checkpoint_every=steps // 2,
                     progress_bar=False, cpu_peak_flops=1e11)
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    start = time.perf_counter()
    train_group(cfg, members, tempfile.mkdtemp(prefix="gptjax-bench-group-"))
    vectorized = time.perf_counter() - start
    start = time.perf_counter()
    for member in members:
        solo = cfg.copy_and_resolve_references()
        solo.optim.lr = member["lr"]
        train(solo, tempfile.mkdtemp(prefix="gptjax-bench-solo-"))
    sequential = time.perf_counter() - start
    return {"name": "sweep_vectorized_end_to_end", "value": round(vectorized, 1), "unit": "s",
            "peer": round(sequential, 1), "peer_name": f"train() once per learning rate ({len(members)} runs)",
            "ratio": round(sequential / vectorized, 2), "steps": steps}


if __name__ == "__main__":
    main()
