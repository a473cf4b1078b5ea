"""Data throughput: BPE tokenization MB/s, and pipeline batches/s against the training step's rate.

For configs/pretrain_shakespeare.py: tokenizes the embedded corpus with its trained tokenizer (MB/s
of UTF-8 text), times `--batches` batches from the grain window pipeline, and times the jitted training
step on the same shapes; the ratio is pipeline batches/s over training steps/s (goal >= 10).

  python bench/data_throughput.py [--batches 500] [--cache_dir /tmp/gptjax-bench-cache]
"""

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from configs.pretrain_shakespeare import get_config
from gptjax.data.pipeline import make_streams
from gptjax.data.sources import shakespeare
from gptjax.data.tokenizer import Tokenizer
from gptjax.train.loop import seconds_per_train_step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "gptjax-bench-cache"))
    args = parser.parse_args()
    cfg = get_config()
    cfg.data.cache_dir = args.cache_dir
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    workdir = tempfile.mkdtemp(prefix="gptjax-bench-")
    streams = make_streams(cfg, workdir)  # trains/loads the tokenizer and fills the cache

    tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer.json"))
    plays = shakespeare()
    texts = [plays[i] for i in range(len(plays))]
    start = time.perf_counter()
    tokenizer.encode_batch(texts)
    tokenize_mb_per_s = sum(len(t.encode("utf-8")) for t in texts) / 1e6 / (time.perf_counter() - start)

    next(streams.train)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(streams.train)
    batches_per_s = args.batches / (time.perf_counter() - start)

    batch = next(streams.train)
    steps_per_s = 1.0 / seconds_per_train_step(cfg, batch, args.steps, warmup=2)

    print(json.dumps({"name": "data_throughput", "value": round(batches_per_s, 1), "unit": "batches/s",
                      "peer": round(steps_per_s, 2), "peer_name": "training steps/s, pretrain_shakespeare, CPU",
                      "ratio": round(batches_per_s / steps_per_s, 1), "tokenize_mb_per_s": round(tokenize_mb_per_s, 2),
                      "batch": list(np.shape(batch)), "jax": jax.__version__}))


if __name__ == "__main__":
    main()
