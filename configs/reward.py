"""A Bradley–Terry reward model on preference pairs (mode=reward), a few minutes on CPU.

python -m gptjax.main --config=configs/reward.py --workdir=/tmp/gptjax/reward
  Shakespeare continuations labelled by the task's gold reward (warm, varied, not overlong), from the
  configs/sft.py:shakespeare run; the reward model configs/ppo.py:shakespeare and best-of-N
  (mode=sample with sample.scorer) optimise against.
python -m gptjax.main --config=configs/reward.py:arithmetic --workdir=/tmp/gptjax/reward_arithmetic
  right answers over near misses, from the configs/sft.py run.
Your own data: --config.align.data=prefs.jsonl ({"prompt","chosen","rejected"} or {"prompt","responses","ranking"}).
eval_accuracy is the held-out pairwise accuracy.
"""

from gptjax.config import default_config


def get_config(task: str = "shakespeare"):
    cfg = default_config()
    cfg.mode = "reward"
    cfg.optim.update(lr=3e-4, schedule="warmup_cosine", warmup_steps=20, weight_decay=0.0)
    cfg.train.update(steps=300, eval_every=100, log_every=20, checkpoint_every=100)
    if task == "shakespeare":
        cfg.align.update(task="shakespeare", init_from="/tmp/gptjax/sft_shakespeare", num_examples=4000, batch_size=32)
    elif task == "arithmetic":
        cfg.align.update(task="arithmetic", init_from="/tmp/gptjax/sft", num_examples=400, val_fraction=0.1,
                         batch_size=32)
    else:
        raise ValueError(f"configs/reward.py:{task}: unknown task; use shakespeare or arithmetic")
    return cfg
