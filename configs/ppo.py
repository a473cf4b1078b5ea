"""PPO (InstructGPT-style: value model, per-token KL penalty in the reward, GAE, clipped losses), minutes on CPU.

python -m gptjax.main --config=configs/ppo.py --workdir=/tmp/gptjax/ppo
  arithmetic: the exact-answer reward, from the configs/sft.py run (compare configs/grpo.py).
python -m gptjax.main --config=configs/ppo.py:shakespeare --workdir=/tmp/gptjax/ppo_shakespeare
  RLHF: the configs/reward.py reward model's score at <|eos|>, from the configs/sft.py:shakespeare run;
  gold_reward logs the task's programmatic judge of the same samples (the RM is its proxy).
Options: rl.value_model=shared (value head on the policy trunk), rl.adaptive_kl=True (Ziegler's
controller toward rl.kl_target), rl.kl_estimator=k3, rl.ptx_coef>0 (mix in the SFT loss).
"""

from gptjax.config import default_config


def get_config(task: str = "arithmetic"):
    cfg = default_config()
    cfg.mode = "ppo"
    cfg.rl.update(kl_coef=0.05, kl_estimator="k1", kl_in_reward=True, gamma=1.0, lam=0.95, clip=0.2, value_clip=0.2,
                  vf_coef=0.1, epochs=2, minibatches=2, value_model="separate")
    cfg.optim.update(lr=1e-4, schedule="constant", warmup_steps=5, weight_decay=0.0)
    cfg.train.update(steps=1000, eval_every=100, log_every=10, checkpoint_every=250)
    if task == "arithmetic":
        cfg.align.update(task="arithmetic", init_from="/tmp/gptjax/sft", num_examples=400, val_fraction=0.1,
                         batch_size=8)
        cfg.rl.update(group_size=8, max_new_tokens=4)
    elif task == "shakespeare":
        cfg.align.update(task="shakespeare", init_from="/tmp/gptjax/sft_shakespeare", reward_model="/tmp/gptjax/reward",
                         num_examples=2000, batch_size=8)
        cfg.rl.update(group_size=4, max_new_tokens=24)
        cfg.optim.lr = 3e-4
        cfg.train.update(steps=200, eval_every=50, checkpoint_every=50)
    else:
        raise ValueError(f"configs/ppo.py:{task}: unknown task; use arithmetic or shakespeare")
    return cfg
