"""Training-step tokens/s: gptjax vs HF transformers GPT2LMHeadModel (PyTorch), CPU, fp32, AdamW.

Same shapes for both (d_model 384, 6 layers, 6 heads, seq 256, batch 8, vocab 8192), in this one
process. The two alternate in rounds (a few steps of each per round) so that load from elsewhere on
the machine hits both alike; each side's figure is the median step time over all rounds. Prints one
JSON line; the ratio is gptjax / peer tokens/s.

`--memory` instead runs each side alone in a fresh process for --steps steps and reports both peak
resident set sizes (the process's ru_maxrss: runtime, weights, optimizer state and the step's peak).

  pip install torch==2.13.0 && pip install -e '.[bench]'
  python bench/train_throughput.py [--rounds 6 --steps 5]
  python bench/train_throughput.py --memory [--steps 5]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import jax
import numpy as np

from gptjax.config import default_config
from gptjax.parallel.mesh import make_mesh
from gptjax.train.loop import sharded_train_step

D, LAYERS, HEADS, SEQ, BATCH, VOCAB = 384, 6, 6, 256, 8, 8192


def bench_config():
    cfg = default_config()
    cfg.model.update(vocab_size=VOCAB, max_len=SEQ, d_model=D, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=HEADS,
                     d_ff=4 * D, dropout=0.0)
    cfg.data.update(seq_len=SEQ, batch_size=BATCH)
    cfg.optim.update(lr=3e-4, warmup_steps=0, weight_decay=0.1, clip_norm=1.0)
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    return cfg


def time_steps(run_step, steps: int) -> list[float]:
    """Wall seconds of each of `steps` calls of `run_step` (which must block until done)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - start)
    return times


def gptjax_step(batches):
    """A blocking training step of gptjax on the bench shapes, compiled and warmed up."""
    cfg = bench_config()
    mesh = make_mesh(cfg.parallel)
    with jax.set_mesh(mesh):
        step, state, data = sharded_train_step(cfg, mesh)
        holder = {"state": state, "i": 0}

    def run_step():
        with jax.set_mesh(mesh):
            batch = jax.device_put(batches[holder["i"] % len(batches)], data)
            holder["state"], metrics = step(holder["state"], batch)
            metrics["loss"].block_until_ready()
        holder["i"] += 1

    time_steps(run_step, 3)
    return run_step


def torch_step(batches) -> tuple[object, str]:
    """A training step of HF GPT2LMHeadModel with torch AdamW, warmed up, and the peer's name."""
    import torch
    import transformers

    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=D, n_layer=LAYERS, n_head=HEADS,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    holder = {"i": 0}

    def run_step():
        batch = torch.from_numpy(batches[holder["i"] % len(batches)]).long()
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        holder["i"] += 1

    time_steps(run_step, 3)
    return run_step, f"torch {torch.__version__} ({torch.get_num_threads()} threads)"


def peak_rss_mb(side: str, steps: int) -> float:
    """Peak RSS (MiB) of a fresh process that builds `side` ("gptjax" | "peer") and runs `steps` steps."""
    out = subprocess.run([sys.executable, __file__, "--only", side, "--steps", str(steps)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="steps of each side per round")
    parser.add_argument("--memory", action="store_true", help="report both sides' peak RSS instead")
    parser.add_argument("--only", choices=("gptjax", "peer"), help=argparse.SUPPRESS)  # a --memory child
    args = parser.parse_args()
    batches = np.random.default_rng(0).integers(0, VOCAB - 7, (4, BATCH, SEQ + 1)).astype(np.int32)
    if args.only:
        run_step = gptjax_step(batches) if args.only == "gptjax" else torch_step(batches)[0]
        time_steps(run_step, args.steps)
        print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    if args.memory:
        ours, peer = peak_rss_mb("gptjax", args.steps), peak_rss_mb("peer", args.steps)
        print(json.dumps({"name": "train_peak_rss", "value": round(ours), "unit": "MiB", "peer": round(peer),
                          "peer_name": "HF GPT2LMHeadModel + torch AdamW", "ratio": round(ours / peer, 3),
                          "jax": jax.__version__}))
        return
    ours_step = gptjax_step(batches)
    peer_step, peer_name = torch_step(batches)
    ours_times, peer_times = [], []
    for _ in range(args.rounds):
        ours_times += time_steps(ours_step, args.steps)
        peer_times += time_steps(peer_step, args.steps)
    tokens = BATCH * SEQ
    ours, peer = tokens / np.median(ours_times), tokens / np.median(peer_times)
    print(json.dumps({"name": "train_throughput", "value": round(ours, 1), "unit": "tokens/s",
                      "peer": round(peer, 1), "peer_name": f"HF GPT2LMHeadModel, {peer_name}",
                      "ratio": round(ours / peer, 3), "jax": jax.__version__}))


if __name__ == "__main__":
    main()
