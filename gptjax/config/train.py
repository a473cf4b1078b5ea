"""The `optim` and `train` sections of the config: keys, defaults and the rules they must meet."""

import importlib.util

import ml_collections

from gptjax.config.base import RL_MODES, check_choice, fail

SCHEDULES = ("warmup_cosine", "wsd", "constant")


def optim_defaults() -> ml_collections.ConfigDict:
    """The optimizer (optim.py): AdamW, its schedule, clipping and accumulation."""
    return ml_collections.ConfigDict(
        dict(
            lr=3e-3,
            schedule="warmup_cosine",
            warmup_steps=20,
            min_lr_ratio=0.1,  # final LR of cosine/WSD as a fraction of lr
            wsd_decay_fraction=0.2,  # WSD: last fraction of steps decays linearly
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            decay_embeddings=False,
            clip_norm=1.0,  # 0 disables clipping
            grad_accum=1,  # microbatches per step; batch_size must divide by it
        )
    )


def train_defaults() -> ml_collections.ConfigDict:
    """The loop (loop.py): steps and the log / eval / checkpoint cadence."""
    return ml_collections.ConfigDict(
        dict(
            steps=200,
            eval_every=50,
            log_every=10,
            checkpoint_every=100,
            max_to_keep=3,
            cpu_peak_flops=0.0,  # 0 = measure once with a matmul calibration
            progress_bar=True,  # tqdm when stderr is a terminal
            show_steps=True,  # False: no bar and no per-interval lines (sweep workers: their parent reports)
            # Resuming a checkpoint written for another train.steps moves the LR schedule's horizon
            # (warmup/cosine/WSD are laid out over train.steps), so it is refused unless this is True;
            # then it resumes with a warning. Other optim changes are always refused on resume.
            allow_steps_change=False,
            # (first, last): a jax.profiler trace of those steps in WORKDIR/profile (TensorBoard's profile
            # plugin reads it; each process writes its own); () = none
            profile_steps=(),
            # a Weights & Biases project to log the metrics to as well (process 0; needs `pip install wandb`;
            # WANDB_MODE=offline keeps the run on disk); "" = off
            wandb_project="",
            # lm-eval tasks (comma-separated) scored at every evaluation, with the `evaluate` section's settings;
            # "" = off. Needs the eval extra and a text source; sweeps record each trial's final scores.
            eval_tasks="",
        )
    )


def validate_optim(cfg) -> None:
    o, steps, batch_size = cfg.optim, cfg.train.steps, cfg.data.batch_size
    if not o.lr > 0:
        fail("optim.lr", o.lr, "must be > 0")
    check_choice(cfg, "optim.schedule", SCHEDULES)
    # The schedule counts optimizer updates: RL makes rl.epochs * rl.minibatches of them per step.
    if cfg.mode in RL_MODES:
        per_step = max(cfg.rl.epochs, 1) * max(cfg.rl.minibatches, 1)  # (< 1 is reported by _validate_align)
        updates, unit = steps * per_step, "updates (train.steps * rl.epochs * rl.minibatches)"
    else:
        updates, unit = steps, "train.steps"
    if o.warmup_steps < 0 or o.warmup_steps > updates:
        fail("optim.warmup_steps", o.warmup_steps, f"must be in [0, {updates}], the run's {unit}")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        fail("optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    if not 0.0 < o.wsd_decay_fraction <= 1.0:
        fail("optim.wsd_decay_fraction", o.wsd_decay_fraction, "must be in (0, 1]")
    if o.weight_decay < 0 or o.clip_norm < 0:
        fail("optim.weight_decay/clip_norm", (o.weight_decay, o.clip_norm), "must be >= 0")
    if o.grad_accum < 1 or batch_size % o.grad_accum:
        fail("optim.grad_accum", o.grad_accum, f"must be >= 1 and divide data.batch_size={batch_size}")


def validate_train(t) -> None:
    for key in ("steps", "eval_every", "log_every", "checkpoint_every", "max_to_keep"):
        if t[key] <= 0:
            fail(f"train.{key}", t[key], "must be positive")
    profile = tuple(t.profile_steps)
    if profile and not (len(profile) == 2 and 1 <= profile[0] <= profile[1] <= t.steps):
        fail("train.profile_steps", profile, f"must be () or (first, last) with 1 <= first <= last <= {t.steps}")
    if t.wandb_project and importlib.util.find_spec("wandb") is None:
        fail("train.wandb_project", t.wandb_project, "needs the wandb package: pip install wandb (or leave it empty)")
