"""μP learning-rate transfer on the embedded Shakespeare corpus: does the best learning rate stay put
as the model widens?

For each width (d_model, with 4 heads and d_ff = 4 d_model) and each parametrization (SP, and μP with
the narrowest width as its base), trains one 2-layer decoder per learning rate of a log2-spaced grid,
all of them together under jax.vmap (gptjax.scaling.vectorized.train_group), and records the
held-out loss. Writes results.json and lr_transfer.png next to this file.

python experiments/mup_transfer/run.py [--workdir=/tmp/gptjax/mup_transfer] [--steps=100]
(about 10 minutes on a 2-core CPU; a rerun with the same arguments reuses the finished groups.)
"""

import argparse
import json
import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gptjax.config import default_config  # noqa: E402
from gptjax.scaling.vectorized import train_group  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WIDTHS = (32, 64, 128, 256)
LEARNING_RATES = tuple(2.0**e for e in range(-12, -4))  # 2.4e-4 .. 3.1e-2
PARAMETRIZATIONS = ("sp", "mup")


def experiment_config(parametrization: str, width: int, steps: int, base_width: int, cache_dir: str):
    cfg = default_config()
    cfg.model.update(vocab_size=512, max_len=64, d_model=width, n_layers=2, n_heads=4, n_kv_heads=4,
                     d_ff=4 * width, parametrization=parametrization, mup_base_width=base_width)
    cfg.data.update(source="shakespeare", seq_len=64, batch_size=16, val_fraction=0.1, eval_batches=8,
                    cache_dir=cache_dir)
    cfg.optim.update(schedule="warmup_cosine", warmup_steps=max(steps // 10, 1), min_lr_ratio=0.1,
                     weight_decay=0.1, clip_norm=1.0)
    cfg.train.update(steps=steps, eval_every=steps, log_every=max(steps // 5, 1), checkpoint_every=steps,
                     progress_bar=False)
    cfg.parallel.update(num_devices=1, mesh=(1, 1, 1))
    return cfg


def optimum_log2_lr(lrs, losses) -> float:
    """log2 of the loss-minimising learning rate: the vertex of a parabola in log2(lr) through the
    grid's best point and its two neighbours (the best grid point itself when it lies on the edge or
    a neighbour diverged)."""
    x, y = np.log2(np.asarray(lrs)), np.asarray(losses, float)
    best = int(np.nanargmin(y))
    if best in (0, len(y) - 1) or not np.isfinite(y[best - 1 : best + 2]).all():
        return float(x[best])
    a, b, _ = np.polyfit(x[best - 1 : best + 2], y[best - 1 : best + 2], 2)
    return float(-b / (2 * a)) if a > 0 else float(x[best])


def plot(results, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(WIDTHS)))
    for ax, parametrization in zip(axes, PARAMETRIZATIONS):
        for color, width in zip(colors, WIDTHS):
            runs = [r for r in results if r["parametrization"] == parametrization and r["d_model"] == width]
            lrs = [r["lr"] for r in runs]
            losses = [math.nan if r["eval_loss"] is None else r["eval_loss"] for r in runs]
            ax.plot(lrs, losses, "o-", color=color, label=f"d_model={width}")
            best = 2.0 ** optimum_log2_lr(lrs, losses)
            ax.axvline(best, color=color, linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("peak learning rate")
        ax.set_title("SP" if parametrization == "sp" else f"μP (base d_model={WIDTHS[0]})")
        ax.grid(alpha=0.3)
    finite = [r["eval_loss"] for r in results if r["eval_loss"] is not None]
    axes[0].set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 1.5))
    axes[0].set_ylabel("held-out loss (nats/token)")
    axes[1].legend()
    fig.suptitle("Learning-rate sweeps across widths: dotted lines mark each width's optimum")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/gptjax/mup_transfer")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default=HERE, help="where results.json and lr_transfer.png go")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    cache_dir = os.path.join(args.workdir, "cache")
    members = [{"lr": lr, "seed": 0} for lr in LEARNING_RATES]
    results, optima, start = [], {}, time.perf_counter()
    for parametrization in PARAMETRIZATIONS:
        for width in WIDTHS:
            cfg = experiment_config(parametrization, width, args.steps, WIDTHS[0], cache_dir)
            group = train_group(cfg, members, os.path.join(args.workdir, f"{parametrization}_d{width}"))
            losses = [r["eval_loss"] for r in group]  # nan where diverged
            for r in group:
                ok = r["status"] == "ok"  # JSON has no NaN: a diverged run's losses are null
                results.append(dict(parametrization=parametrization, d_model=width, lr=r["lr"],
                                    eval_loss=r["eval_loss"] if ok else None,
                                    train_loss=r["train_loss"] if ok else None, status=r["status"],
                                    reason=r["reason"]))
            optima.setdefault(parametrization, {})[str(width)] = 2.0 ** optimum_log2_lr(LEARNING_RATES, losses)
            print(f"{parametrization} d_model={width}: best lr {optima[parametrization][str(width)]:.2e}, "
                  f"min eval loss {np.nanmin(losses):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    summary = dict(
        widths=WIDTHS, learning_rates=LEARNING_RATES, base_width=WIDTHS[0], steps=args.steps,
        tokens_per_run=args.steps * cfg.data.batch_size * cfg.data.seq_len,
        config_of_last_group=json.loads(cfg.to_json()),  # the others differ in d_model, d_ff, parametrization
        optimum_lr=optima,
        optimum_shift_log2={p: math.log2(optima[p][str(WIDTHS[-1])] / optima[p][str(WIDTHS[0])])
                            for p in PARAMETRIZATIONS},
        wall_seconds=time.perf_counter() - start,
        runs=results,
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(results, os.path.join(args.out, "lr_transfer.png"))
    print(json.dumps({k: summary[k] for k in ("optimum_lr", "optimum_shift_log2", "wall_seconds")}))


if __name__ == "__main__":
    main()
