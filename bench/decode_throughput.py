"""Decode tokens/s: gptjax's jitted KV-cache `generate` vs HF transformers `generate` (PyTorch), CPU, fp32.

One randomly initialised GPT2LMHeadModel (GPT-2 small shapes by default) is saved and imported into
gptjax with gptjax.interop, so both sides run the same weights. Greedy decoding of NEW tokens after a
PROMPT-token prompt, every row decoding all NEW tokens (no stop token), at batch 1 and batch 8. The
two sides alternate in rounds, one full generate call each, after a warm-up call each; a side's figure
is B * NEW / its median call time. gptjax's compile time (tracing, lowering and XLA compilation of its
first call, from jax.monitoring's compile events) is reported separately. The peer runs with whichever of 1 thread and torch's default is faster here (on a loaded
2-core machine, torch's 2 OpenMP threads spin against each other and run ~5x slower than 1 thread).
Also reported: how many greedy tokens the two sides agree on (fp32 rounding may flip a
near-tie of a random model's logits, after which the continuations differ). Prefill and per-token
latency are reported apart: prefill_ms is the median of a call generating one token, and per_token_ms
(full call - that) / (NEW - 1). Prints one JSON line per batch size; the ratio is gptjax / peer tokens/s.

  pip install torch==2.13.0 && pip install -e '.[bench]'
  python bench/decode_throughput.py [--rounds 3] [--batches 1,8] [--layers 12]
"""

import argparse
import json
import tempfile

import jax
import numpy as np

from gptjax.interop.hf import load_hf
from gptjax.sample.generate import generate
from gptjax.sample.strategies import Strategy
from timing import fastest_threads, timed

VOCAB, POSITIONS, D, HEADS = 50257, 1024, 768, 12
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def build_models(layers: int):
    """(HF model, gptjax model config, gptjax params) with the same random weights."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=D, n_layer=layers, n_head=HEADS)
    model = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        model_cfg, params = load_hf(directory)
    return model, model_cfg, params


def compile_seconds(call) -> tuple[float, object]:
    """(seconds jax spent tracing and compiling during `call`, its result)."""
    spent = []

    def listener(event, duration, **_):
        if event in COMPILE_EVENTS:
            spent.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        out = call()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return sum(spent), out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    import torch

    default_threads = torch.get_num_threads()
    hf, model_cfg, params = build_models(args.layers)
    for batch in (int(b) for b in args.batches.split(",")):
        prompts_BxP = np.random.default_rng(batch).integers(7, VOCAB, (batch, args.prompt))

        def ours(prompts_BxP=prompts_BxP, new=args.new):
            completions = generate(model_cfg, params, prompts_BxP.tolist(), max_new_tokens=new,
                                   strategy=Strategy(temperature=0.0), stop_tokens=())
            return np.array([c.tokens for c in completions])

        def peer(prompts_BxP=prompts_BxP, new=args.new):
            input_ids = torch.from_numpy(prompts_BxP)
            with torch.inference_mode():
                out = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
            return out[:, args.prompt:].numpy()

        compile_s, ours_tokens = compile_seconds(ours)
        ours(new=1)  # compiles the one-token loop used for the prefill latency
        peer_threads = fastest_threads(peer, default_threads)
        _, peer_tokens = timed(peer)
        ours_times, peer_times, ours_prefill, peer_prefill = [], [], [], []
        for _ in range(args.rounds):
            ours_times.append(timed(ours)[0])
            peer_times.append(timed(peer)[0])
            ours_prefill.append(timed(lambda: ours(new=1))[0])
            peer_prefill.append(timed(lambda: peer(new=1))[0])
        ours_s, peer_s = np.median(ours_times), np.median(peer_times)
        latency = {side: {"prefill_ms": round(1e3 * np.median(prefill), 1),
                          "per_token_ms": round(1e3 * (np.median(full) - np.median(prefill)) / (args.new - 1), 2)}
                   for side, full, prefill in (("gptjax", ours_times, ours_prefill), ("peer", peer_times, peer_prefill))}
        agree = (ours_tokens == peer_tokens).cumprod(axis=1).sum(axis=1)  # leading tokens equal, per row
        tokens = batch * args.new
        print(json.dumps({
            "name": f"decode_throughput_b{batch}", "value": round(tokens / ours_s, 1), "unit": "tokens/s",
            "peer": round(tokens / peer_s, 1),
            "peer_name": f"HF GPT2LMHeadModel.generate, torch {torch.__version__} ({peer_threads} threads)",
            "ratio": round(peer_s / ours_s, 3), "compile_s": round(compile_s, 1),
            "shape": {"batch": batch, "prompt": args.prompt, "new": args.new, "layers": args.layers, "d_model": D,
                      "vocab": VOCAB},
            "latency": latency, "greedy_tokens_agreeing": int(agree.min()), "jax": jax.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
