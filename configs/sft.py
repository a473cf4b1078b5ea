"""Supervised fine-tuning on chat demonstrations (mode=sft), a few minutes on CPU.

python -m gptjax.main --config=configs/sft.py --workdir=/tmp/gptjax/sft
  arithmetic: "What is 13+4?" -> "17" (400 problems, 10% held out), a fresh small model and tokenizer;
  the start of the GRPO / PPO / RLOO / DPO runs (configs/grpo.py, configs/dpo.py).
python -m gptjax.main --config=configs/sft.py:shakespeare --workdir=/tmp/gptjax/sft_shakespeare
  Shakespeare continuations, starting from the configs/pretrain_shakespeare.py run in /tmp/gptjax/shakespeare;
  the start of the reward model and PPO-RLHF (configs/reward.py, configs/ppo.py).
Your own data: --config.align.data=demos.jsonl ({"messages": [{"role", "content"}, ...]} per line).
"""

from gptjax.config import default_config


def get_config(task: str = "arithmetic"):
    cfg = default_config()
    cfg.mode = "sft"
    cfg.train.update(eval_every=100, log_every=20, checkpoint_every=100)
    if task == "arithmetic":
        cfg.model.update(vocab_size=320, max_len=32, d_model=128, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=512)
        cfg.align.update(task="arithmetic", num_examples=400, val_fraction=0.1, batch_size=32)
        cfg.optim.update(lr=3e-3, schedule="warmup_cosine", warmup_steps=20, weight_decay=0.1)
        cfg.train.update(steps=300)
    elif task == "shakespeare":  # the network and tokenizer come from the pretraining run
        cfg.align.update(task="shakespeare", init_from="/tmp/gptjax/shakespeare", num_examples=2000, batch_size=32)
        cfg.optim.update(lr=1e-3, schedule="warmup_cosine", warmup_steps=20, weight_decay=0.1)
        cfg.train.update(steps=200)
    else:
        raise ValueError(f"configs/sft.py:{task}: unknown task; use arithmetic or shakespeare")
    return cfg
