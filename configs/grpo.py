"""GRPO (or RLOO) on the embedded arithmetic task's exact-answer reward, from the configs/sft.py run; ~5 min on CPU.

python -m gptjax.main --config=configs/grpo.py --workdir=/tmp/gptjax/grpo
python -m gptjax.main --config=configs/grpo.py --config.mode=rloo --workdir=/tmp/gptjax/rloo
python -m gptjax.main --config=configs/grpo.py --config.rl.advantage=dr_grpo --workdir=/tmp/gptjax/dr_grpo
Each step samples rl.group_size answers to each of align.batch_size problems; eval_reward is the greedy
accuracy on the held-out problems. KL to the SFT model: k3 as a loss term (rl.kl_in_reward=False).
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.mode = "grpo"
    cfg.align.update(task="arithmetic", init_from="/tmp/gptjax/sft", num_examples=400, val_fraction=0.1, batch_size=8)
    cfg.rl.update(group_size=8, max_new_tokens=4, temperature=1.0, kl_coef=0.01, kl_estimator="k3", kl_in_reward=False,
                  epochs=1, minibatches=2, clip=0.2)
    cfg.optim.update(lr=1e-4, schedule="constant", warmup_steps=5, weight_decay=0.0)
    cfg.train.update(steps=1000, eval_every=100, log_every=10, checkpoint_every=250)
    return cfg
