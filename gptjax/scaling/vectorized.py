"""Train K models that share every shape at once: one `jax.vmap`-ped, jitted step over stacked parameters.

This is what makes per-scale learning-rate sweeps affordable: K small models cost little more than one
on hardware that one small model cannot fill. Members differ in peak learning rate and init seed; all
read the same batches (data order from `cfg.seed`), so member k is the run `gptjax.train.loop.train`
would do with `optim.lr = lr_k` and `seed = seed_k` (when seed_k == cfg.seed), up to float rounding.

A member whose loss or norms become non-finite is marked diverged at that step; the others go on.
Workdir: checkpoints/ (stacked state + meta, resumed on rerun), metrics.jsonl and tensorboard/ (split
"train/m<k>" per member, "eval" with one loss per member), tokenizer.json.
"""

import math
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from gptjax.config import validate
from gptjax.data.pipeline import make_streams
from gptjax.train.checkpoint import Checkpointer, check_compatible, optimizer_identity
from gptjax.train.loop import MAX_EPOCHS_BEFORE_WARNING, data_identity, json_config
from gptjax.train.metrics import MetricsWriter
from gptjax.train.optim import make_optimizer
from gptjax.train.state import abstract_model, initial_state
from gptjax.train.step import make_eval_step, make_train_step


class MemberLR(NamedTuple):
    lr: jax.Array  # this member's peak learning rate; a (K,) vector once stacked


def scale_by_member_lr(initial_lr) -> optax.GradientTransformation:
    """Multiplies updates by the learning rate kept in the optimizer state. `initial_lr` only seeds
    `init`; `update` reads the state, so a vmapped state carries one learning rate per member."""

    def init(params):
        del params
        return MemberLR(jnp.asarray(initial_lr, jnp.float32))

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.lr.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def unit_optim(cfg):
    """`cfg.optim` with a unit peak learning rate: the members' own rates scale it (optim.lr is unused)."""
    unit = cfg.optim.copy_and_resolve_references()
    unit.lr = 1.0
    return unit


def member_optimizer(cfg, lr):
    """AdamW as configured but with a unit peak learning rate, then scaled by `lr` from the state.
    AdamW's update (Adam direction + decoupled decay) is linear in the learning rate, so this equals
    `make_optimizer` with `optim.lr = lr`. Returns (optimizer, unit schedule)."""
    tx, unit_schedule = make_optimizer(unit_optim(cfg), cfg.train.steps, cfg.model)
    return optax.chain(tx, scale_by_member_lr(lr)), unit_schedule


def _init_members(cfg):
    """(seeds_K, lrs_K) -> the stacked train state; member k is the state `train` starts from."""
    return jax.vmap(lambda seed, lr: initial_state(cfg.model, member_optimizer(cfg, lr)[0], seed))


def _member_arrays(members):
    seeds = jnp.asarray([int(m["seed"]) for m in members], jnp.uint32)
    lrs = jnp.asarray([float(m["lr"]) for m in members], jnp.float32)
    return seeds, lrs


def init_group(cfg, members: list[dict]) -> dict:
    """The stacked train state of `members` ({"lr", "seed"}): every leaf gains a leading (K,) axis."""
    return jax.jit(_init_members(cfg))(*_member_arrays(members))


def abstract_group(cfg, members: list[dict]) -> dict:
    """Shapes of `init_group`'s state on the default device: the target of a checkpoint restore."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(_init_members(cfg), *_member_arrays(members))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), shapes)


def group_train_step(cfg):
    """(stacked state, batch_BxT1) -> (state, metrics with a (K,) axis): one step of every member on
    the same batch; jit it with `donate_argnums=0`. Metrics' "lr" is the unit schedule (times the
    member's lr for the actual value)."""
    optimizer, unit_schedule = member_optimizer(cfg, 1.0)  # the lr in the state is what counts
    graphdef = nnx.graphdef(abstract_model(cfg.model))
    step_fn = make_train_step(graphdef, optimizer, unit_schedule, grad_accum=cfg.optim.grad_accum,
                              dropout=cfg.model.dropout)
    return jax.vmap(step_fn, in_axes=(0, None))


def train_group(cfg, members: list[dict], workdir: str) -> list[dict]:
    """Trains one model per member ({"lr": float, "seed": int}) of the shapes in `cfg`, together.

    Rerunning with the same arguments resumes from the latest checkpoint in `workdir` (a finished
    group is only re-evaluated). Returns one dict per member: lr, seed, status ("ok" | "diverged"),
    reason, eval_loss (and eval_bits_per_byte for text), train_loss, steps, tokens, tokens_per_sec,
    wall_seconds (shared by the group), compile_seconds, group_size, epochs.
    """
    if not members:
        raise ValueError("train_group needs at least one member {'lr': ..., 'seed': ...}")
    for m in members:
        if not float(m["lr"]) > 0:
            raise ValueError(f"member {m}: lr must be > 0")
    validate(cfg, workdir)
    os.makedirs(workdir, exist_ok=True)
    start_time = time.perf_counter()
    t = cfg.train
    K = len(members)
    data = make_streams(cfg, workdir)
    graphdef = nnx.graphdef(abstract_model(cfg.model))

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), t.max_to_keep)
    identity = dict(data_identity(cfg, data), members=[[float(m["lr"]), int(m["seed"])] for m in members])
    optimizer = optimizer_identity(unit_optim(cfg), t.steps)  # the members' rates are in `identity`
    diverged: dict[int, str] = {}  # member index -> reason
    latest = checkpointer.latest_step()
    if latest is None:
        state = init_group(cfg, members)
    else:
        meta = checkpointer.restore_meta(latest)
        check_compatible(meta, json_config(cfg)["model"], identity, data.tokenizer_hash, checkpointer.directory,
                         optimizer=optimizer, allow_steps_change=t.allow_steps_change)
        state = checkpointer.restore_state(latest, abstract_group(cfg, members))
        data.train.set_state(meta["data_state"])
        diverged = {int(k): v for k, v in meta["diverged"].items()}

    compile_start = time.perf_counter()
    train_step = jax.jit(group_train_step(cfg), donate_argnums=0).lower(
        state, data.val_batches[0]).compile()
    eval_step = jax.jit(jax.vmap(make_eval_step(graphdef), in_axes=(0, None)))
    compile_seconds = time.perf_counter() - compile_start

    start_step = int(jax.device_get(state["step"])[0])
    writer = MetricsWriter(workdir, t.steps, start_step, t.progress_bar)
    lrs = np.asarray([float(m["lr"]) for m in members])
    pending = []
    train_loss = np.full(K, np.nan)
    eval_result = {}
    train_seconds = 0.0

    def flush(step):
        for s, metrics in zip([s for s, _ in pending], jax.device_get([m for _, m in pending])):
            for k in range(K):
                row = {name: float(values[k]) for name, values in metrics.items()}
                if k in diverged:
                    continue
                bad = [name for name in ("loss", "grad_norm", "param_norm") if not math.isfinite(row[name])]
                if bad:
                    diverged[k] = f"{bad[0]} became {row[bad[0]]} at step {s}"
                    logging.warning("member %d (lr=%g): %s; the other members go on", k, lrs[k], diverged[k])
                    continue
                row["lr"] *= lrs[k]  # the step reports the unit schedule
                train_loss[k] = row["loss"]
                writer.write(s, f"train/m{k}", row)
        writer.advance(step - pending[0][0] + 1)
        pending.clear()

    def evaluate():
        losses_NxK = jax.device_get([eval_step(state["params"], b) for b in data.val_batches])
        loss_K = np.mean(np.asarray(losses_NxK), axis=0)
        result = {"loss": loss_K}
        if data.tokens_per_byte is not None:
            result["bits_per_byte"] = loss_K / math.log(2) * data.tokens_per_byte
        return result

    try:
        clock = time.perf_counter()
        for step in range(start_step + 1, t.steps + 1):
            state, metrics = train_step(state, next(data.train))
            pending.append((step, metrics))
            is_last = step == t.steps
            checkpoint_now = step % t.checkpoint_every == 0 or is_last
            if step % t.log_every == 0 or checkpoint_now or step % t.eval_every == 0:
                flush(step)
                if len(diverged) == K:
                    logging.warning("every member diverged by step %d; stopping the group", step)
                    break
            if step % t.eval_every == 0 or is_last:
                train_seconds += time.perf_counter() - clock
                eval_result = evaluate()
                writer.write(step, "eval", {f"{name}_m{k}": float(v[k]) for name, v in eval_result.items()
                                            for k in range(K)})
                clock = time.perf_counter()
            if data.batches_per_epoch and step == int(MAX_EPOCHS_BEFORE_WARNING * data.batches_per_epoch) + 1:
                logging.warning("step %d: past %d epochs over the training text", step, MAX_EPOCHS_BEFORE_WARNING)
            if checkpoint_now:
                meta = dict(step=step, config=json_config(cfg), data_state=data.train.get_state(),
                            data_identity=identity, tokenizer_hash=data.tokenizer_hash, optimizer_identity=optimizer,
                            diverged={str(k): v for k, v in diverged.items()})
                checkpointer.save(step, state, meta)
        if not eval_result:  # a rerun of a finished group (nothing to train) or an all-diverged break
            eval_result = evaluate()
    finally:
        writer.close()
        checkpointer.close()

    steps_run = t.steps - start_step
    tokens = t.steps * cfg.data.batch_size * cfg.data.seq_len
    tokens_per_sec = steps_run * cfg.data.batch_size * cfg.data.seq_len / train_seconds if train_seconds else math.nan
    results = []
    for k, m in enumerate(members):
        ok = k not in diverged
        result = dict(lr=float(m["lr"]), seed=int(m["seed"]), status="ok" if ok else "diverged",
                      reason=diverged.get(k, ""), steps=t.steps, tokens=tokens,
                      train_loss=float(train_loss[k]) if ok else math.nan,
                      tokens_per_sec=tokens_per_sec, wall_seconds=time.perf_counter() - start_time,
                      compile_seconds=compile_seconds, group_size=K,
                      epochs=t.steps / data.batches_per_epoch if data.batches_per_epoch else None)
        for name, values in eval_result.items():
            result[f"eval_{name}"] = float(values[k]) if ok else math.nan
        results.append(result)
    return results

