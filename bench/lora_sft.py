"""LoRA-SFT vs full SFT on the same network: trainable parameters, the update step's memory and time, CPU.

One randomly initialised Llama-shaped network (RoPE, RMSNorm, SwiGLU; d_model 512, 6 layers, vocab 4096; 512
tokens per step: batch 4 x 128) takes SFT update steps (`align.stage.make_update_step` on `align.sft.sft_loss`,
AdamW) two ways: every weight trained, and rank-16 LoRA on every projection (align.lora_rank=16: the frozen base
passed to the jitted step as an argument, the optimizer holding state for the adapters only). Memory: XLA's
`memory_analysis()` of each compiled step (arguments + outputs + temporaries, bytes) and the optimizer state's
bytes. Time: the median of --steps steps after a warm-up, the two sides alternating. Prints one JSON line.

  python bench/lora_sft.py [--steps 10] [--rank 16]
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.align.lora import fresh_adapters, lora_model_cfg
from gptjax.align.sft import sft_loss
from gptjax.align.stage import make_update_step
from gptjax.config import default_config
from gptjax.model import lora
from gptjax.model.build import init_params, model_graphdef
from gptjax.parallel.mesh import make_mesh
from gptjax.sample.quantize import params_bytes
from gptjax.train.optim import make_optimizer
from timing import timed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    cfg = default_config()
    cfg.model.update(vocab_size=4096, max_len=128, d_model=512, n_layers=6, n_heads=8, n_kv_heads=8, d_ff=1536,
                     positional="rope", norm="rmsnorm", activation="swiglu", use_bias=False, tie_embeddings=False)
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    cfg.align.update(lora_rank=args.rank, lora_alpha=2.0 * args.rank)
    mesh, rules = make_mesh(cfg.parallel), tuple(cfg.parallel.rules)
    base = init_params(cfg.model, jax.random.key(0))
    lora_cfg = lora_model_cfg(cfg.align, cfg.model)
    adapters = fresh_adapters(lora_cfg, jax.random.key(1), mesh, rules)
    rng = np.random.default_rng(0)
    batch = dict(tokens_BxL=jnp.asarray(rng.integers(0, 4096, (4, 128)), jnp.int32),
                 mask_BxL=jnp.asarray(rng.random((4, 128)) < 0.5))
    tx, schedule = make_optimizer(cfg.optim, 1000, cfg.model)

    full_loss = lambda p, b: sft_loss(p, b, graphdef=model_graphdef(cfg.model))  # noqa: E731
    full_step = jax.jit(make_update_step(full_loss, tx, schedule), donate_argnums=0)
    own = jax.tree.map(jnp.copy, base)  # the full step donates its params; the LoRA side keeps reading `base`
    full_items = dict(params=own, train=dict(opt_state=tx.init(own), opt_state_step=jnp.zeros((), jnp.int32)))

    def lora_update(items, batch, frozen):
        loss = lambda p, b: sft_loss(lora.combine(frozen, p), b, graphdef=model_graphdef(lora_cfg))  # noqa: E731
        return make_update_step(loss, tx, schedule)(items, batch)

    lora_step = jax.jit(lora_update, donate_argnums=0)
    lora_items = dict(params=adapters, train=dict(opt_state=tx.init(adapters), opt_state_step=jnp.zeros((), jnp.int32)))
    sides = {"full": [full_step, full_items, ()], "lora": [lora_step, lora_items, (base,)]}
    memory = {}
    for name, (step, items, extra) in sides.items():
        analysis = step.lower(items, batch, *extra).compile().memory_analysis()
        memory[name] = dict(step_mb=round((analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                                           + analysis.temp_size_in_bytes) / 2**20, 1),
                            temp_mb=round(analysis.temp_size_in_bytes / 2**20, 1),
                            optimizer_state_mb=round(params_bytes(items["train"]["opt_state"]) / 2**20, 1))
        sides[name][1], _ = step(items, batch, *extra)  # warm-up (compiles)
    times = {name: [] for name in sides}
    for _ in range(args.steps):
        for name, side in sides.items():
            step, items, extra = side
            seconds, (side[1], metrics) = timed(lambda: jax.block_until_ready(step(items, batch, *extra)))
            times[name].append(seconds)
    trainable = {"full": sum(x.size for x in jax.tree.leaves(base)),
                 "lora": sum(x.size for x in jax.tree.leaves(adapters))}
    print(json.dumps(dict(
        bench="lora_sft", rank=args.rank, steps=args.steps, jax=jax.__version__, tokens_per_step=512,
        trainable_params=trainable, trainable_fraction=round(trainable["lora"] / trainable["full"], 4),
        step_ms={name: round(1000 * float(np.median(t)), 1) for name, t in times.items()},
        memory=memory)))


if __name__ == "__main__":
    main()
