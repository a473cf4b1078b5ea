"""RL trainer throughput by phase (PPO and GRPO), and its rollout decoder vs HF transformers `generate`, CPU, fp32.

Part 1: a small fresh model (GPT-2-expressible: learned positions, pre-LayerNorm, gelu, tied embeddings,
n_kv_heads = n_heads) is SFT'd briefly on the embedded arithmetic task (gptjax.align.sft), then
gptjax.align.rl runs --steps steps of PPO (separate value model, 2 epochs x 2 minibatches, configs/ppo.py)
and of GRPO (1 epoch x 2 minibatches, KL as a k3 loss term, configs/grpo.py) from it, each with
align.batch_size=--prompts prompts x rl.group_size=--group completions of rl.max_new_tokens=--new tokens.
The trainer times each step's phases itself (rollout = the jitted KV-cache `generate` + layout; score =
the scoring forward passes + rewards + advantages; train = the clipped updates) and logs them in
WORKDIR/metrics.jsonl; step 1 pays the compilation, so the figures are the medians over steps 2.. .
The SFT is kept short on purpose (--sft_steps): a well-trained arithmetic policy answers in ~4 tokens and
stops, which would make the decode loop exit early; throughput does not depend on what is learned. The
decode loop runs until every row has stopped, so while any row is still live (eos_fraction < 1) it
computes all R x N slots; the trainer's rollout_tokens_per_sec counts tokens up to each row's <|eos|>.

Part 2: the same SFT weights exported with gptjax.interop.hf.save_hf and loaded into
GPT2LMHeadModel (max_abs_logit_diff checks they compute the same function). Three calls of one batch
shape -- R = prompts x group rows, a P = 16-token prompt (the trainer's prompt bucket), --new tokens
sampled at temperature 1 with no top-k / top-p -- alternate in rounds after a warm-up call each:
  rollout:  the trainer's rollout phase, `sample_rollouts` exactly as rl.py calls it (its first batch of
            task prompts x group, left-padded to P, EOS stops, tokenizer decoding, the layout; sharded
            params in the mesh). With the short SFT no row stops (rollout_eos_fraction), so it decodes
            all R x N tokens;
  generate: bare `generate` (the function sample_rollouts calls) on the peer's exact inputs, no stop token;
  peer:     HF `generate(do_sample=True, top_k=0, min_new_tokens=max_new_tokens)` on R rows of P random ids.
A side's figure is R * new / its median call time. Timing these side by side in one window matters:
this machine is shared, and figures taken minutes apart (e.g. the trainer's logged rollout_seconds vs a
later peer run) differ by up to 2x from load alone. The peer runs with the faster of 1 thread and
torch's default (see bench/decode_throughput.py).

Prints one JSON line: value = the rollout phase's tokens/s, peer = HF, ratio = ours / peer; detail:
bare generate's tokens/s and ratio, every call's seconds, and the PPO / GRPO phase breakdown ("phases").

  pip install torch==2.13.0 && pip install -e '.[bench,interop]'
  python bench/rl_throughput.py [--steps 3] [--rounds 3] [--d_model 256 --layers 4 --new 48]
"""

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.align.rl import rl, task_prompts
from gptjax.align.rollout import sample_rollouts
from gptjax.align.sft import sft
from gptjax.align.stage import bucket
from gptjax.align.tasks import get_task
from gptjax.config import default_config, validate
from gptjax.interop.hf import save_hf
from gptjax.parallel.mesh import make_mesh
from gptjax.model.build import model_graphdef
from gptjax.sample.generate import PROMPT_BUCKET, generate
from gptjax.sample.strategies import Strategy
from gptjax.train.network import load_network
from timing import fastest_threads, timed

PHASES = ("rollout", "score", "train")


def base_config(args, mode: str):
    cfg = default_config()
    cfg.mode = mode
    cfg.model.update(vocab_size=320, max_len=PROMPT_BUCKET + args.new, d_model=args.d_model, n_layers=args.layers,
                     n_heads=args.heads, n_kv_heads=args.heads, d_ff=4 * args.d_model, positional="learned",
                     norm="layernorm", activation="gelu", tie_embeddings=True, dropout=0.0)
    # few examples: the (untimed) evals at step 0 and at the end decode the held-out prompts
    cfg.align.update(task="arithmetic", num_examples=max(4 * args.prompts, 40), val_fraction=0.1,
                     batch_size=args.prompts)
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    cfg.train.update(progress_bar=False, cpu_peak_flops=1e11)
    return cfg


def sft_config(args):
    cfg = base_config(args, "sft")
    cfg.align.batch_size = 32
    cfg.optim.update(lr=3e-3, schedule="constant", warmup_steps=0, weight_decay=0.1)
    cfg.train.update(steps=args.sft_steps, eval_every=args.sft_steps, log_every=args.sft_steps,
                     checkpoint_every=args.sft_steps)
    validate(cfg)
    return cfg


def rl_config(args, mode: str, sft_dir: str):
    cfg = base_config(args, mode)
    cfg.align.init_from = sft_dir
    cfg.rl.update(group_size=args.group, max_new_tokens=args.new, temperature=1.0, top_p=1.0)
    if mode == "ppo":  # configs/ppo.py
        cfg.rl.update(kl_coef=0.05, kl_estimator="k1", kl_in_reward=True, gamma=1.0, lam=0.95, clip=0.2,
                      value_clip=0.2, vf_coef=0.1, epochs=2, minibatches=2, value_model="separate")
        cfg.optim.update(lr=3e-4, schedule="constant", warmup_steps=0, weight_decay=0.0)
    else:  # configs/grpo.py
        cfg.rl.update(kl_coef=0.01, kl_estimator="k3", kl_in_reward=False, epochs=1, minibatches=2, clip=0.2)
        cfg.optim.update(lr=1e-4, schedule="constant", warmup_steps=0, weight_decay=0.0)
    cfg.train.update(steps=args.steps, eval_every=10**6, log_every=1, checkpoint_every=10**6)
    validate(cfg)
    return cfg


def train_rows(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["step"])


def rl_phases(args, mode: str, sft_dir: str, workdir: str) -> dict:
    cfg = rl_config(args, mode, sft_dir)
    rl(cfg, workdir)
    rows = train_rows(workdir)[1:]  # step 1 compiles

    def median(key):
        return float(np.median([r[key] for r in rows]))

    out = {"steps_measured": [r["step"] for r in rows]}
    for phase in PHASES:
        out[f"{phase}_s"] = round(median(f"{phase}_seconds"), 3)
        out[f"{phase}_tokens_per_sec"] = round(median(f"{phase}_tokens_per_sec"), 1)
    out["step_s"] = round(median("step_seconds"), 3)
    out["response_length"] = round(median("response_length"), 2)
    out["eos_fraction"] = round(median("eos_fraction"), 3)
    out.update(epochs=cfg.rl.epochs, minibatches=cfg.rl.minibatches)
    return out


def rollout_vs_hf(args, sft_dir: str, tmp: str) -> dict:
    """Alternates three calls of one rollout batch shape: the trainer's rollout phase (`sample_rollouts`
    as rl.py calls it: task prompts, EOS stops, tokenizer, sharded params in the mesh), bare `generate`
    on the peer's exact inputs, and the peer."""
    import torch
    import transformers

    cfg = rl_config(args, "grpo", sft_dir)
    mesh, rules = make_mesh(cfg.parallel), tuple(cfg.parallel.rules)
    trained = load_network(sft_dir, mesh, rules, what="bench sft")
    model_cfg, params = trained.model_cfg, jax.device_get(trained.params)
    hf_dir = os.path.join(tmp, "hf_gpt2")
    save_hf(model_cfg, params, hf_dir)
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    R, P, N = args.prompts * args.group, PROMPT_BUCKET, args.new
    train_prompts, val_prompts = task_prompts(cfg, get_task(cfg.align.task), trained.tokenizer, model_cfg.max_len)
    rows = [train_prompts.tokens[i] for i in np.repeat(np.arange(args.prompts), args.group)]
    length = bucket(max(map(len, train_prompts.tokens + val_prompts.tokens)) + N, model_cfg.max_len)
    assert max(map(len, rows)) <= P, "task prompts wider than one prompt bucket"
    prompts_RxP = np.random.default_rng(0).integers(7, model_cfg.vocab_size, (R, P))
    counter = iter(range(10**6))
    stopped = []

    def rollout():
        with jax.set_mesh(mesh):
            ro = sample_rollouts(model_cfg, trained.params, rows, jax.random.key(next(counter)), max_new_tokens=N,
                                 strategy=Strategy(temperature=1.0, top_p=1.0), length=length,
                                 tokenizer=trained.tokenizer)
        stopped.append(float(ro.stopped_R.mean()))
        return ro.response_RxE

    def ours():
        keys = jax.random.split(jax.random.key(next(counter)), R)  # as sample_rollouts: one key per row
        completions = generate(model_cfg, params, prompts_RxP.tolist(), max_new_tokens=N,
                               strategy=Strategy(temperature=1.0), seed=keys, stop_tokens=())
        return np.array([c.tokens for c in completions])

    def peer():
        input_ids = torch.from_numpy(prompts_RxP)
        with torch.inference_mode():
            out = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=N,
                              min_new_tokens=N, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              use_cache=True, pad_token_id=0)
        return out[:, P:].numpy()

    model = nnx.merge(model_graphdef(model_cfg), params)  # the same function? next-token logits, once
    ours_logits = np.asarray(model.logits(model.hidden(jnp.asarray(prompts_RxP[:4]))))
    with torch.inference_mode():
        peer_logits = hf(torch.from_numpy(prompts_RxP[:4])).logits.numpy()
    default_threads = torch.get_num_threads()
    rollout()  # warm-ups; gptjax compiles here
    ours_tokens, peer_tokens = ours(), peer()
    assert ours_tokens.shape == peer_tokens.shape == (R, N), (ours_tokens.shape, peer_tokens.shape)
    peer_threads = fastest_threads(peer, default_threads)
    times = {"rollout": [], "generate": [], "peer": []}
    for _ in range(args.rounds):
        for side, call in (("rollout", rollout), ("generate", ours), ("peer", peer)):
            times[side].append(timed(call)[0])
    median = {side: float(np.median(t)) for side, t in times.items()}
    return dict(rollout=R * N / median["rollout"], generate=R * N / median["generate"], peer=R * N / median["peer"],
                call_s={side: [round(x, 3) for x in t] for side, t in times.items()},
                rollout_eos_fraction=max(stopped), peer_threads=peer_threads,
                max_abs_logit_diff=float(np.abs(ours_logits - peer_logits).max()),
                shape=dict(rows=R, prompts=args.prompts, group=args.group, prompt=P, new=N, d_model=args.d_model,
                           layers=args.layers, heads=args.heads, d_ff=4 * args.d_model, vocab=model_cfg.vocab_size),
                torch=torch.__version__, transformers=transformers.__version__)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3, help="RL steps per mode; step 1 (compile) is dropped")
    parser.add_argument("--rounds", type=int, default=3, help="alternating generate calls per side")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new", type=int, default=48)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--sft_steps", type=int, default=2)
    parser.add_argument("--modes", default="ppo,grpo")
    parser.add_argument("--workdir", default="", help="default: a temporary directory, removed at the end")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2: step 1 pays the compilation and is not measured")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        os.makedirs(root, exist_ok=True)
        sft_dir = os.path.join(root, "sft")
        sft(sft_config(args), sft_dir)
        phases = {mode: rl_phases(args, mode, sft_dir, os.path.join(root, f"{mode}_{time.time_ns()}"))
                  for mode in args.modes.split(",")}
        versus = rollout_vs_hf(args, sft_dir, tmp)
    print(json.dumps({
        "name": "rl_throughput", "value": round(versus["rollout"], 1), "unit": "tokens/s",
        "value_name": "rollout phase (sample_rollouts as rl.py calls it), R x N tokens per second",
        "peer": round(versus["peer"], 1),
        "peer_name": f"HF GPT2LMHeadModel.generate(do_sample=True), torch {versus['torch']} "
                     f"({versus['peer_threads']} threads)",
        "ratio": round(versus["rollout"] / versus["peer"], 3),
        "generate_tokens_per_sec": round(versus["generate"], 1),
        "generate_ratio": round(versus["generate"] / versus["peer"], 3),
        "call_s": versus["call_s"], "rollout_eos_fraction": versus["rollout_eos_fraction"],
        "max_abs_logit_diff": versus["max_abs_logit_diff"], "shape": versus["shape"], "phases": phases,
        "jax": jax.__version__, "transformers": versus["transformers"],
    }), flush=True)


if __name__ == "__main__":
    main()
