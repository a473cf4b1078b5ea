"""GPT-2 small (124M) shapes, bf16 compute, for accelerators: 12 layers, 12 heads, d_model 768, seq 1024.

Reads the synthetic source unless told otherwise, e.g. a prepared TFDS corpus:
--config.data.source=tfds:lm1b:train --config.data.tfds_data_dir=DIR. On 8 GPUs:
--config.parallel.mesh="(-1,1,1)" (data parallel) or "(1,-1,1)" (FSDP).
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.model.update(vocab_size=50304, max_len=1024, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12,
                     d_ff=3072, compute_dtype="bfloat16", param_dtype="float32")
    cfg.data.update(seq_len=1024, batch_size=512, markov_alphabet=4096, eval_batches=8)
    cfg.optim.update(lr=6e-4, schedule="warmup_cosine", warmup_steps=700, weight_decay=0.1, grad_accum=1)
    cfg.train.update(steps=19_000, eval_every=500, log_every=50, checkpoint_every=1000)
    return cfg
