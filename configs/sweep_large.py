"""A scaling sweep for accelerators: budgets 1e17..1e19 FLOPs on a TFDS text corpus (C4 English).

python -m gptjax.main --config=configs/sweep_large.py --workdir=/shared/sweeps/large \
    --config.data.tfds_data_dir=DIR            # a prepared c4/en (ArrayRecord), see README "Data"
Five IsoFLOP profiles of five depth-family models (d_model = 64 * n_layers, 64-dim heads, seq 1024)
from ~9M to ~800M compute parameters, each at three learning rates (sequential trials, each sharded
FSDP over all devices). On a cluster, run `--config.sweep.mode=plan` once, then one job per trial with
`--config.sweep.trial_index=K` (K < the trial count it prints), then `--config.sweep.mode=fit`.
Validated and planned in the tests; not run there.
"""

from gptjax.config import default_config


def get_config():
    cfg = default_config()
    cfg.mode = "sweep"
    cfg.model.update(vocab_size=32768, max_len=1024, positional="rope", norm="rmsnorm", activation="gelu",
                     use_bias=False, compute_dtype="bfloat16", param_dtype="float32", scan_layers=True)
    cfg.data.update(source="tfds:c4/en:train", tfds_text_key="text", val_fraction=0.001, seq_len=1024,
                    batch_size=256, eval_batches=16)
    cfg.optim.update(schedule="warmup_cosine", weight_decay=0.1, min_lr_ratio=0.1, b2=0.95)
    cfg.train.update(progress_bar=False, max_to_keep=1)
    cfg.parallel.update(mesh=(1, -1, 1))  # FSDP over every device
    cfg.sweep.update(
        budgets=(1e17, 3e17, 1e18, 3e18, 1e19),
        family="depth",
        depths=(2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 18, 20, 24),
        width_per_layer=64,
        head_dim=64,
        sizes_per_budget=5,
        size_spread=10.0,
        learning_rates=(1e-3, 2e-3, 4e-3),
        vectorize=False,
        min_steps=500,
        target_flops=1e21,
        n_bootstrap=500,
    )
    return cfg
