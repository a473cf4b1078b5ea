"""GPT-2-124M training MFU on an accelerator: seq 1024, bf16 compute, fp32 params, AdamW.

Uses configs/gpt2_124m.py shapes on all visible devices (data parallel by default) with random
tokens, times `--steps` jitted steps after compilation, and reports MFU from the per-device peak
table in gptjax/train/flops.py (PaLM accounting: 6N + LM head + attention).

  python bench/gpu_mfu.py [--batch_per_device 16] [--steps 20] [--mesh "-1,1,1"] [--remat]
  python bench/gpu_mfu.py --smoke   # the same path on a 2-layer, 64-wide, 128-token model (CPU test)
"""

import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

from configs.gpt2_124m import get_config
from gptjax.train import flops
from gptjax.train.loop import seconds_per_train_step


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_per_device", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--mesh", default="-1,1,1")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, for checking the script on CPU")
    args = parser.parse_args(argv)

    cfg = get_config()
    if args.smoke:
        cfg.model.update(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, d_ff=256, max_len=128)
        cfg.data.seq_len = 128
    cfg.model.remat = args.remat
    cfg.parallel.mesh = tuple(int(x) for x in args.mesh.split(","))
    batch = args.batch_per_device * jax.device_count()
    seq = cfg.data.seq_len
    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (batch, seq + 1)).astype(np.int32)
    seconds = seconds_per_train_step(cfg, tokens, args.steps)

    device = jax.devices()[0]
    tokens_per_sec = batch * seq / seconds
    per_token = flops.flops_per_token(cfg.model, seq)["with_attention"]
    peak = (flops.device_peak_flops(device.device_kind) or float("nan")) * jax.device_count()
    print(json.dumps({"name": "gpu_mfu_gpt2_124m" + ("_smoke" if args.smoke else ""), "value": round(flops.mfu(tokens_per_sec, per_token, peak), 4),
                      "unit": "MFU", "peer": None, "ratio": None, "tokens_per_sec": round(tokens_per_sec),
                      "step_seconds": round(seconds, 4), "device": device.device_kind,
                      "devices": jax.device_count(), "batch": batch, "remat": args.remat, "jax": jax.__version__}))


if __name__ == "__main__":
    main()
