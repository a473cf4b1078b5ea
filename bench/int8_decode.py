"""Weight-only int8 sampling vs float32: decode tokens/s, parameter memory and greedy agreement, CPU.

A trained network (the newest checkpoint of --workdir; by default configs/pretrain_shakespeare.py is trained for
--steps steps into a temporary directory first: a random network's near-uniform logits would flip under any
rounding) decodes greedily in float32 and after `gptjax.sample.quantize.quantize_int8` (every dense kernel
int8 with a per-column scale; embeddings stay float32), from 8 lines of the plays as prompts. The two alternate in rounds, one full
`generate` call each after a warm-up call each; a side's tokens/s is B * NEW / its median call time. Memory: the
bytes of each side's params. Agreement: on the float model's own greedy text (prompt + continuation), the share of positions
where the int8 model's argmax next token is the float model's (teacher-forced, so one flip does not count twice), and the share of free greedy tokens equal
up to each row's first difference. Prints one JSON line.

  python bench/int8_decode.py [--rounds 3] [--batch 8] [--new 64] [--workdir W | --steps 600]
"""

import argparse
import json
import os
import platform
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.config import load_config
from gptjax.model.build import abstract_model
from gptjax.parallel.mesh import make_mesh
from gptjax.sample.generate import generate
from gptjax.sample.quantize import params_bytes, quantize_int8
from gptjax.sample.strategies import Strategy
from gptjax.train.loop import train
from gptjax.train.network import load_network
from timing import timed


PROMPTS = ["ROMEO:", "JULIET:", "KING LEAR:", "HAMLET:", "First Citizen:", "MACBETH:", "OTHELLO:", "PORTIA:"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    cfg = load_config("../configs/pretrain_shakespeare.py" if os.path.isdir("../configs") else "configs/pretrain_shakespeare.py")
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    cfg.train.update(progress_bar=False, steps=args.steps, eval_every=args.steps, checkpoint_every=args.steps)
    workdir = args.workdir or tempfile.mkdtemp(prefix="gptjax_int8_bench_")
    if not args.workdir:
        train(cfg, workdir)
    mesh, rules = make_mesh(cfg.parallel), tuple(cfg.parallel.rules)
    network = load_network(workdir, mesh, rules)
    qcfg, qparams = quantize_int8(network.model_cfg, network.params, mesh, rules)
    prompts = [[network.tokenizer.bos_id] + network.tokenizer.encode(text) for text in PROMPTS[:args.batch]]
    sides = {"float32": (network.model_cfg, network.params), "int8": (qcfg, qparams)}

    def run(side):
        model_cfg, p = sides[side]
        out = generate(model_cfg, p, prompts, max_new_tokens=args.new, strategy=Strategy(temperature=0.0),
                       stop_tokens=())
        return [c.tokens for c in out]

    outputs = {side: run(side) for side in sides}  # warm-up: compiles
    times = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side in sides:
            times[side].append(timed(lambda: run(side))[0])
    # the float model's own greedy text: its argmax there is the next token by construction; int8's is compared
    rows = [p + o for p, o in zip(prompts, outputs["float32"])]
    text = jnp.asarray([row[:min(map(len, rows))] for row in rows])
    argmax = {side: jnp.argmax(nnx.merge(nnx.graphdef(abstract_model(c)), p)(text), -1) for side, (c, p) in sides.items()}
    prefix = []
    for a, b in zip(outputs["float32"], outputs["int8"]):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        prefix.append(same / len(a))
    tokens_per_s = {side: args.batch * args.new / float(np.median(t)) for side, t in times.items()}
    print(json.dumps(dict(
        bench="int8_decode", workdir_step=network.step, batch=args.batch, new_tokens=args.new, rounds=args.rounds, jax=jax.__version__,
        cpu=platform.processor() or platform.machine(),
        tokens_per_s={k: round(v, 1) for k, v in tokens_per_s.items()},
        speed_ratio_int8_over_float32=round(tokens_per_s["int8"] / tokens_per_s["float32"], 3),
        params_mb={side: round(params_bytes(p) / 2**20, 2) for side, (_, p) in sides.items()},
        teacher_forced_argmax_agreement=round(float(jnp.mean(argmax["int8"] == argmax["float32"])), 4),
        free_greedy_agreement_until_first_difference=round(float(np.mean(prefix)), 4))))


if __name__ == "__main__":
    main()
