"""AdamW with warmup+cosine / WSD / constant schedules, clipping, a weight-decay mask, and per-parameter-group
learning rates (μP's 1/m on hidden kernels, `model.embed_lr_mult` on the others)."""

import jax
import optax

from gptjax.model import mup
from gptjax.model.param_kind import EMBEDDING, HIDDEN, KINDS, READOUT, param_kinds


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
    """True where weight decay applies (model/param_kind.py): hidden kernels always; embeddings and
    readouts (one table when tied) only with `decay_embeddings`; biases and norm scales never."""
    decayed = {HIDDEN} | ({EMBEDDING, READOUT} if decay_embeddings else set())
    return jax.tree.map(lambda kind: kind in decayed, param_kinds(params))


def per_kind_adamw(o, schedule: optax.Schedule, model_cfg, decay_mask) -> optax.GradientTransformation:
    """optax.adamw's chain (Adam direction -> decoupled weight decay -> learning rate) with a per-kind
    factor (`mup.adam_lr_multiplier`: 1/m on hidden kernels under μP, `model.embed_lr_mult` on every
    other kind) applied to the Adam direction.

    The decay is added after that factor, so every decayed weight still shrinks by lr * weight_decay
    per step at every width, as under SP; the `mup` package's MuAdamW keeps lr * weight_decay
    width-independent the same way (it multiplies weight_decay by m where it divides lr by m).
    """
    per_kind = optax.multi_transform(
        {kind: optax.scale(mup.adam_lr_multiplier(model_cfg, kind)) for kind in KINDS}, param_kinds)
    return optax.chain(
        optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
        per_kind,
        optax.add_decayed_weights(o.weight_decay, decay_mask),
        optax.scale_by_learning_rate(schedule),
    )


def make_optimizer(o, total_steps: int, model_cfg=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer for `config.optim` and its learning-rate schedule (optim.lr's; each parameter kind's
    rate is it times `mup.adam_lr_multiplier`). `model_cfg` (config.model) selects those per-kind rates
    when its parametrization is "mup" or its `embed_lr_mult` is not 1; without it every parameter follows
    the schedule."""
    schedule = make_schedule(o, total_steps)

    def decay_mask(params):
        return weight_decay_mask(params, o.decay_embeddings)

    if model_cfg is not None and (mup.is_mup(model_cfg) or mup.embed_lr_mult(model_cfg) != 1.0):
        adamw = per_kind_adamw(o, schedule, model_cfg, decay_mask)
    else:
        adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask)
    clip = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
    return optax.chain(*clip, adamw), schedule
