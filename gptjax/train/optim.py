"""AdamW with warmup+cosine / WSD / constant schedules, clipping and a weight-decay mask."""

import jax
import optax


def make_schedule(o, total_steps: int) -> optax.Schedule:
    """Learning rate per step for `config.optim` over `total_steps` steps."""
    warmup = optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1))
    final_lr = o.lr * o.min_lr_ratio
    if o.schedule == "constant":
        after = optax.constant_schedule(o.lr)
    elif o.schedule == "warmup_cosine":
        after = optax.cosine_decay_schedule(o.lr, max(total_steps - o.warmup_steps, 1), alpha=o.min_lr_ratio)
    else:  # "wsd": warmup, stable at lr, then a linear decay over the last wsd_decay_fraction of steps
        decay_steps = max(int(round(total_steps * o.wsd_decay_fraction)), 1)
        stable_steps = max(total_steps - o.warmup_steps - decay_steps, 0)
        after = optax.join_schedules(
            [optax.constant_schedule(o.lr), optax.linear_schedule(o.lr, final_lr, decay_steps)], [stable_steps]
        )
    return optax.join_schedules([warmup, after], [o.warmup_steps])


def weight_decay_mask(params, decay_embeddings: bool):
    """True where weight decay applies: dense kernels, and embeddings only if configured.

    Decided by the parameter's name, not its rank, because scanned layers add a leading axis
    that makes biases and norm scales 2-D.
    """

    def decays(path, _):
        name = path[-1].key
        return name == "kernel" or (name == "embedding" and decay_embeddings)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(o, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer for `config.optim` and its learning-rate schedule."""
    schedule = make_schedule(o, total_steps)
    adamw = optax.adamw(
        schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
        mask=lambda params: weight_decay_mask(params, o.decay_embeddings),
    )
    clip = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
    return optax.chain(*clip, adamw), schedule
