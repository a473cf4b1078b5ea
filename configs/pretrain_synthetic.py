"""Tiny decoder on a synthetic order-1 Markov chain with a known entropy rate; ~25 s on CPU.

python -m gptjax.main --config=configs/pretrain_synthetic.py --workdir=/tmp/gptjax/synthetic
The final JSON line reports eval_loss next to entropy_rate (the best achievable loss).
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.model.update(vocab_size=64, max_len=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=256)
    cfg.data.update(source="synthetic:markov", seq_len=64, batch_size=32, markov_order=1, markov_concentration=0.1)
    cfg.optim.update(lr=3e-3, schedule="warmup_cosine", warmup_steps=30, weight_decay=0.0)
    cfg.train.update(steps=300, eval_every=100, log_every=25, checkpoint_every=100)
    return cfg
