"""The main job: a scaling-law sweep on the embedded Shakespeare corpus, 4.5–6.5 minutes on a quiet 2-core CPU.

python -m gptjax.main --config=configs/sweep.py --workdir=/tmp/gptjax/sweep
Four IsoFLOP profiles (1e10 .. 3.2e11 training FLOPs, 1.5 decades) of four model sizes each from a
depth family (d_model = 8 * n_layers, 8-dim heads, 384-id BPE, 64-token windows, batch 16), each
model trained at three learning rates together under jax.vmap: 48 models. Then fits loss vs compute
(frontier, IsoFLOP parabolas, the parametric L(N, D) with bootstrap intervals), backtests on the
largest budget, and recommends N, D, learning rate and predicted loss at sweep.target_flops (1e13). Outputs in the workdir: plan.json,
results.jsonl, fits.json, report.md, plots/.
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.mode = "sweep"
    cfg.model.update(vocab_size=384, max_len=64, positional="learned")
    cfg.data.update(source="shakespeare", seq_len=64, batch_size=16, val_fraction=0.1, eval_batches=8)
    cfg.optim.update(schedule="warmup_cosine", weight_decay=0.1, min_lr_ratio=0.1)
    cfg.train.update(progress_bar=True)
    cfg.sweep.update(
        budgets=(1e10, 3.2e10, 1e11, 3.2e11),
        family="depth",
        depths=(1, 2, 3, 4, 5, 6, 7, 8),
        width_per_layer=8,
        head_dim=8,
        sizes_per_budget=4,
        size_spread=8.0,
        learning_rates=(6e-3, 1.5e-2, 4e-2),
        target_flops=1e13,
    )
    return cfg
