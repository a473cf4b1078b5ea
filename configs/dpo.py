"""DPO (or IPO) on preference pairs, from the configs/sft.py run; a minute or two on CPU.

python -m gptjax.main --config=configs/dpo.py --workdir=/tmp/gptjax/dpo
python -m gptjax.main --config=configs/dpo.py --config.dpo.loss=ipo --workdir=/tmp/gptjax/ipo
Default data: the arithmetic task's pairs (the right answer over a near miss). The reference (the SFT
model) scores every response once before training. eval_margin / eval_accuracy are the held-out
implicit-reward margin and the share of pairs it orders right. Your own data: --config.align.data=prefs.jsonl,
e.g. the output of mode=label (RLAIF).
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.mode = "dpo"
    cfg.align.update(task="arithmetic", init_from="/tmp/gptjax/sft", num_examples=400, val_fraction=0.1, batch_size=32)
    cfg.dpo.update(beta=0.1, loss="sigmoid", label_smoothing=0.0)
    cfg.optim.update(lr=1e-4, schedule="warmup_cosine", warmup_steps=10, weight_decay=0.0)
    cfg.train.update(steps=150, eval_every=50, log_every=10, checkpoint_every=50)
    return cfg
