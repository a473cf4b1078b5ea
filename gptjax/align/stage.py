"""What every post-training stage shares: reading a trained network from a workdir, the tokenizer,
sharded placement, and the resumable loop with checkpoints, metrics and the NaN guard.

A stage's checkpoint (WORKDIR/checkpoints/<step>/) holds orbax items: `params` (the network the
stage produces, the same pure-dict layout as pretraining's params), `train` (optimizer state and
whatever else the stage needs to resume) and `meta` (JSON: stage, step, config, the network's model
config, tokenizer hash, identity, optimizer identity). Any later stage or `mode=sample` restores only `params`.
Each step's data and randomness are functions of (seed, step), so rerunning resumes exactly.
"""

import dataclasses
import math
import os
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
import optax

from gptjax.align.data import SPLIT_RULE
from gptjax.atomic import write_json_atomic
from gptjax.data.tokenizer import Tokenizer, train_tokenizer
from gptjax.model.build import init_params
from gptjax.train.checkpoint import CheckpointError, Checkpointer, check_optimizer, optimizer_identity
from gptjax.train.loop import TrainingDivergedError, json_config
from gptjax.train.metrics import MetricsWriter
from gptjax.train.network import Network, load_network, workdir_tokenizer
from gptjax.train.optim import make_optimizer
from gptjax.train.state import params_shardings, state_shardings


class AlignError(ValueError):
    """A post-training input that cannot be used (checkpoint, tokenizer, reward model); names it and the fix."""


def check_same_vocabulary(policy: Network, other: Network, what: str) -> None:
    """A reference or reward model must read the policy's tokens: same tokenizer, same vocabulary size."""
    if other.tokenizer.hash != policy.tokenizer.hash or other.model_cfg.vocab_size != policy.model_cfg.vocab_size:
        raise AlignError(
            f"{what}={other.workdir!r} was built with tokenizer {other.tokenizer.hash} and vocab_size "
            f"{other.model_cfg.vocab_size}, the policy ({policy.workdir}) with {policy.tokenizer.hash} and "
            f"{policy.model_cfg.vocab_size}; train it from the same SFT/pretraining run so both read the same tokens")


def start_tokenizer(cfg, workdir: str, texts: Callable[[], list[str]]) -> Tokenizer:
    """The tokenizer of a stage: the one already in `workdir` (a resumed run), the init_from run's, or
    (fresh model, init_from "") one trained on `texts()` with config.model.vocab_size ids."""
    saved = os.path.join(workdir, "tokenizer.json")
    if os.path.isfile(saved):
        return workdir_tokenizer(workdir)
    if cfg.align.init_from:
        tokenizer = workdir_tokenizer(cfg.align.init_from)
    else:
        tokenizer = train_tokenizer(texts(), cfg.model.vocab_size)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tokenizer.save(saved)
    return tokenizer


def starting_network(cfg, tokenizer: Tokenizer, mesh, rules) -> Network:
    """The network a stage starts from: align.init_from's checkpoint, or a fresh config.model network."""
    if cfg.align.init_from:
        trained = load_network(cfg.align.init_from, mesh, rules, what="align.init_from")
        if trained.tokenizer.hash != tokenizer.hash:
            raise AlignError(f"align.init_from={cfg.align.init_from!r} uses tokenizer {trained.tokenizer.hash}, but "
                             f"this workdir's tokenizer.json is {tokenizer.hash}; use a fresh --workdir for another "
                             "init_from")
        return trained
    model_cfg = ml_collections.ConfigDict(cfg.model.to_dict())
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise AlignError(f"the tokenizer has {tokenizer.vocab_size} ids but model.vocab_size={model_cfg.vocab_size}")
    # Initialised under jit straight onto the shardings: no whole unsharded copy on one device first.
    init = jax.jit(lambda: init_params(model_cfg, jax.random.key(cfg.seed)),
                   out_shardings=params_shardings(model_cfg, mesh, rules))
    return Network(model_cfg, init(), tokenizer, 0, {}, "")


def with_scalar_head(trained: Network, key, mesh, rules) -> tuple[ml_collections.ConfigDict, dict]:
    """(model config, params) of `trained`'s network with a scalar head (reward / value models); a fresh
    head (zero-mean, init_std) is added unless the network already has one."""
    model_cfg = ml_collections.ConfigDict({**trained.model_cfg.to_dict(), "scalar_head": True})
    if trained.model_cfg.scalar_head:
        return model_cfg, trained.params
    # Only the head is computed: under jit the rest of the network's initialisation is dead code.
    head = jax.jit(lambda: init_params(model_cfg, key)["scalar_head"],
                   out_shardings=params_shardings(model_cfg, mesh, rules)["scalar_head"])()
    return model_cfg, {**trained.params, "scalar_head": head}


@dataclasses.dataclass
class Optimizer:
    """optax optimizer of a stage with the shardings of its state."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule
    shardings: object  # of tx.init(params)


def stage_optimizer(cfg, model_cfg, mesh, rules, updates_per_step: int = 1) -> Optimizer:
    """The stage's optimizer; its schedule spans train.steps * updates_per_step updates (RL makes
    rl.epochs * rl.minibatches per step)."""
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps * updates_per_step, model_cfg)
    abstract = jax.eval_shape(lambda: tx.init(init_params(model_cfg, jax.random.key(0))))
    shardings = state_shardings(model_cfg, mesh, rules, {"opt_state": abstract})["opt_state"]
    return Optimizer(tx, schedule, shardings)


def init_opt_state(opt: Optimizer, params):
    return jax.jit(opt.tx.init, out_shardings=opt.shardings)(params)


def epoch_batch(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the `batch_size` examples of `step` (1-based) out of n: epochs of seeded permutations,
    so every example is seen once per epoch and the batch of a step never depends on earlier steps."""
    positions = (step - 1) * batch_size + np.arange(batch_size)
    epochs = positions // n
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng((seed, int(epoch))).permutation(n)
        out[epochs == epoch] = perm[positions[epochs == epoch] % n]
    return out


def pad_rows(rows, length: int, pad_id: int, dtype=np.int32) -> np.ndarray:
    """rows (lists) right-padded with `pad_id` to `length` columns."""
    out = np.full((len(rows), length), pad_id, dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def full_batches(items: list, batch_size: int):
    """Yields (chunk, n): consecutive `batch_size` chunks of `items`, the last topped up by repeating its
    final item (one compiled shape, divisible by the batch shards); only chunk[:n] are real."""
    for first in range(0, len(items), batch_size):
        chunk = items[first:first + batch_size]
        yield chunk + [chunk[-1]] * (batch_size - len(chunk)), len(chunk)


def bucket(length: int, max_len: int, multiple: int = 16) -> int:
    """`length` rounded up to a multiple (fewer compiled shapes), at most max_len."""
    return min(-(-length // multiple) * multiple, max_len)


def param_norm(params):
    return optax.tree.norm(params)


def stage_identity(cfg, **more) -> dict:
    """What a resumed run must share with the one that wrote the checkpoint: the start, the data and its
    split, and the seed every batch and sample derives from (plus the stage's own `more`)."""
    a = cfg.align
    return dict(init_from=a.init_from, data=a.data or f"task:{a.task}", num_examples=a.num_examples,
                val_fraction=a.val_fraction, split=SPLIT_RULE, split_seed=a.split_seed, batch_size=a.batch_size,
                seed=cfg.seed, **more)


REQUIRED_IDENTITY_KEYS = ("split",)  # a checkpoint without them was split another way: not resumable


@dataclasses.dataclass
class StageSpec:
    """How a stage plugs into `run_stage`."""

    name: str  # the mode: sft, reward, ppo, ...
    model_cfg: ml_collections.ConfigDict  # of the network saved as `params`
    tokenizer: Tokenizer
    fresh: Callable[[], dict]  # () -> items {"params": ..., "train": ...} at step 0
    abstract: dict  # items as ShapeDtypeStructs with target shardings (restore targets)
    step: Callable[[dict, int], tuple[dict, dict]]  # (items, step) -> (items, metrics of device or host scalars)
    evaluate: Callable[[dict], dict] | None = None  # items -> eval metrics (host floats)
    identity: dict = dataclasses.field(default_factory=dict)  # must match on resume (data, init, references)
    guard: tuple = ("loss", "param_norm")  # metrics that must stay finite (the NaN guard)
    extra_meta: Callable[[dict], dict] | None = None  # items -> more JSON for each checkpoint's meta


def _check_resumable(meta: dict, spec: StageSpec, tokenizer_hash: str, directory: str) -> None:
    if meta.get("stage") != spec.name:
        raise CheckpointError(f"{directory} holds a {meta.get('stage', 'pretrain')!r} checkpoint, not {spec.name!r}; "
                              "use a fresh --workdir for each stage")
    saved = meta.get("identity", {})  # a key it lacks was added since the checkpoint was written: unknown
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in spec.identity.items()
             if (k in saved or k in REQUIRED_IDENTITY_KEYS) and saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"{directory} was written by a different {spec.name} run ({'; '.join(diffs[:3])}); rerun "
                              "with the config that wrote it, or use a fresh --workdir")
    if meta.get("model") != spec.model_cfg.to_dict():
        raise CheckpointError(f"{directory} holds a network of another shape than the one this run starts from "
                              "(did align.init_from's run change?); use a fresh --workdir")
    if meta.get("tokenizer_hash") != tokenizer_hash:
        raise CheckpointError(f"{directory} was written with tokenizer {meta.get('tokenizer_hash')}, not "
                              f"{tokenizer_hash}; restore that run's tokenizer.json or use a fresh --workdir")


def run_stage(cfg, workdir: str, spec: StageSpec) -> dict:
    """Trains `spec` for cfg.train.steps steps, resuming from the latest checkpoint in `workdir`.
    Logs every train.log_every steps (JSONL, TensorBoard, progress bar), evaluates every eval_every,
    checkpoints every checkpoint_every and at the end; a non-finite guarded metric stops the run
    before it is saved, keeping the last good checkpoint. Returns the final metrics."""
    t = cfg.train
    write_json_atomic(os.path.join(workdir, "config.json"), json_config(cfg))
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), t.max_to_keep)
    optimizer = optimizer_identity(cfg.optim, t.steps)  # what the `train` item's optimizer state belongs to

    def restore(step):
        meta = checkpointer.restore_meta(step)
        _check_resumable(meta, spec, spec.tokenizer.hash, checkpointer.directory)
        check_optimizer(meta, optimizer, checkpointer.directory, t.allow_steps_change)
        return checkpointer.restore_items(step, spec.abstract)

    found = checkpointer.restore_to_resume(restore)
    items, start = (spec.fresh(), 0) if found is None else (found[1], found[0])
    writer = MetricsWriter(workdir, t.steps, start, t.progress_bar, enabled=jax.process_index() == 0,
                           display=t.show_steps)
    final, pending = {}, []

    def meta_for(step):
        extra = spec.extra_meta(items) if spec.extra_meta else {}
        return dict(stage=spec.name, step=step, config=json_config(cfg), model=spec.model_cfg.to_dict(),
                    tokenizer_hash=spec.tokenizer.hash, identity=spec.identity, optimizer_identity=optimizer, **extra)

    def flush():
        for s, row in zip([s for s, _ in pending], jax.device_get([m for _, m in pending])):
            row = {k: float(v) for k, v in row.items()}
            bad = [k for k in spec.guard if k in row and not math.isfinite(row[k])]
            if bad:
                checkpointer.wait()
                last_good = checkpointer.latest_step()
                kept = (f"Last good checkpoint: step {last_good} in {checkpointer.directory} (kept intact)."
                        if last_good else "No checkpoint had been written yet.")
                raise TrainingDivergedError(f"{bad[0]} became {row[bad[0]]} at step {s} of {spec.name}; training "
                                            f"stopped. {kept} Lower optim.lr or the RL/DPO coefficients.")
            writer.write(s, "train", row)
            final.update(row)
        pending.clear()

    try:
        if start == 0 and spec.evaluate:  # the starting network's score: the "before" of every comparison
            writer.write(0, "eval", spec.evaluate(items))
        for step in range(start + 1, t.steps + 1):
            clock = time.perf_counter()
            items, metrics = spec.step(items, step)
            metrics = dict(metrics, step_seconds=time.perf_counter() - clock)
            pending.append((step, metrics))
            is_last = step == t.steps
            checkpoint_now = step % t.checkpoint_every == 0 or is_last
            if step % t.log_every == 0 or checkpoint_now or step % t.eval_every == 0:
                flush()
            writer.advance(1)
            if spec.evaluate and (step % t.eval_every == 0 or is_last):
                result = spec.evaluate(items)
                writer.write(step, "eval", result)
                final.update({f"eval_{k}": v for k, v in result.items()})
            if checkpoint_now:
                checkpointer.save_items(step, items, meta_for(step))
        if spec.evaluate and not any(k.startswith("eval_") for k in final):  # rerun of a finished run
            final.update({f"eval_{k}": v for k, v in spec.evaluate(items).items()})
    finally:
        writer.close()
        checkpointer.close()
    final["step"] = t.steps
    return final
