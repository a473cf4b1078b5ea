"""What every post-training stage shares: its tokenizer and starting network, sharded placement, the
optimizer, batching helpers, and `run_stage`, which puts a stage on the one resumable loop (train/loop.py).

A stage's checkpoint (WORKDIR/checkpoints/<step>/) holds orbax items: `params` (the network the
stage produces, the same pure-dict layout as pretraining's params), `train` (optimizer state and
whatever else the stage needs to resume) and `meta` (JSON: stage, step, config, the network's model
config, tokenizer hash, identity, optimizer identity). Any later stage or `mode=sample` restores only `params`.
Each step's data and randomness are functions of (seed, step), so rerunning resumes exactly.
"""

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gptjax.align import lora as align_lora
from gptjax.align.data import SPLIT_RULE
from gptjax.data.tokenizer import Tokenizer, train_tokenizer
from gptjax.model import lora
from gptjax.model.build import init_params
from gptjax.parallel.mesh import replicated, to_device, to_host
from gptjax.sample.quantize import quantize_int8
from gptjax.train.checkpoint import CheckpointError, Checkpointer, check_optimizer, optimizer_identity
from gptjax.train.loop import Task, fit, json_config
from gptjax.train.members import Members
from gptjax.train.network import Network, load_network, workdir_tokenizer
from gptjax.train.optim import make_optimizer
from gptjax.train.state import opt_state_shardings, params_shardings, placed, state_shardings
from gptjax.train.xla_options import training_compiler_options


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


def with_adapters(cfg, model_cfg, params, mesh, rules) -> tuple[ml_collections.ConfigDict, dict]:
    """(model config, params) with align.lora_* adapters added (fresh: the network is unchanged at step 0);
    as they are when align.lora_rank is 0."""
    if not cfg.align.lora_rank:
        return model_cfg, params
    lora_cfg = align_lora.lora_model_cfg(cfg.align, model_cfg)
    if cfg.align.quantize_base == "int8":  # QLoRA-style: the frozen kernels int8, the adapters float
        lora_cfg.kernel_quant = "int8"
        params = quantize_int8(model_cfg, params, mesh, rules)[1]
    return lora_cfg, lora.combine(params, align_lora.fresh_adapters(lora_cfg, jax.random.key(cfg.seed + 2), mesh, rules))


@dataclasses.dataclass
class Optimizer:
    """optax optimizer of a stage with the shardings of its state."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule
    shardings: object  # of tx.init(params)


def stage_optimizer(cfg, model_cfg, mesh, rules, updates_per_step: int = 1) -> Optimizer:
    """The stage's optimizer; its schedule spans train.steps * updates_per_step updates (RL makes
    rl.epochs * rl.minibatches per step). Under LoRA it holds state for the trainable leaves only."""
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps * updates_per_step, model_cfg)
    if model_cfg.get("lora_rank", 0):
        trainable = lora.split(params_shardings(model_cfg, mesh, rules))[0]
        abstract = jax.eval_shape(lambda: tx.init(lora.split(init_params(model_cfg, jax.random.key(0)))[0]))
        return Optimizer(tx, schedule, opt_state_shardings(trainable, abstract, mesh))
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


def full_batches(items: list, batch_size: int):
    """Yields (chunk, n): consecutive `batch_size` chunks of `items`, the last topped up by repeating its
    final item (one compiled shape, divisible by the batch shards); only chunk[:n] are real."""
    for first in range(0, len(items), batch_size):
        chunk = items[first:first + batch_size]
        yield chunk + [chunk[-1]] * (batch_size - len(chunk)), len(chunk)


def bucket(length: int, max_len: int, multiple: int = 16) -> int:
    """`length` rounded up to a multiple (fewer compiled shapes), at most max_len."""
    return min(-(-length // multiple) * multiple, max_len)


def stage_identity(cfg, **more) -> dict:
    """What a resumed run must share with the one that wrote the checkpoint: the start, the data and its
    split, and the seed every batch and sample derives from (plus the stage's own `more`)."""
    a = cfg.align
    return dict(init_from=a.init_from, data=a.data or f"task:{a.task}", num_examples=a.num_examples,
                val_fraction=a.val_fraction, split=SPLIT_RULE, split_seed=a.split_seed, batch_size=a.batch_size,
                seed=cfg.seed, **more)


REQUIRED_IDENTITY_KEYS = ("split",)  # a checkpoint without them was split another way: not resumable


def _check_resumable(meta: dict, name: str, model_cfg, tokenizer_hash: str, identity: dict, directory: str) -> None:
    if meta.get("stage") != name:
        raise CheckpointError(f"{directory} holds a {meta.get('stage', 'pretrain')!r} checkpoint, not {name!r}; "
                              "use a fresh --workdir for each stage")
    saved = meta.get("identity", {})  # a key it lacks was added since the checkpoint was written: unknown
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in identity.items()
             if (k in saved or k in REQUIRED_IDENTITY_KEYS) and saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"{directory} was written by a different {name} run ({'; '.join(diffs[:3])}); rerun "
                              "with the config that wrote it, or use a fresh --workdir")
    if meta.get("model") != model_cfg.to_dict():
        raise CheckpointError(f"{directory} holds a network of another shape than the one this run starts from "
                              "(did align.init_from's run change?); use a fresh --workdir")
    if meta.get("tokenizer_hash") != tokenizer_hash:
        raise CheckpointError(f"{directory} was written with tokenizer {meta.get('tokenizer_hash')}, not "
                              f"{tokenizer_hash}; restore that run's tokenizer.json or use a fresh --workdir")


def run_stage(cfg, workdir: str, name: str, model_cfg, tokenizer: Tokenizer, *, fresh: Callable[[], dict],
              abstract: dict, step: Callable[[dict, int], tuple[dict, dict]],
              evaluate: Callable[[dict], dict] | None = None, identity: dict,
              extra_meta: Callable[[dict], dict] | None = None) -> dict:
    """Trains a stage on the one resumable loop (`train.loop.fit`) for cfg.train.steps steps and returns
    its final metrics. Its state is `items` ({"params": the network it produces, "train": the rest}, each
    an orbax item of the checkpoint); `fresh()` builds them at step 0, `abstract` are their restore targets;
    `step(items, step)` trains one step; `evaluate(items)` scores held-out data (also at step 0: the
    "before" of every comparison). A checkpoint resumes only a run with the same `identity`, network,
    tokenizer and optimizer; `extra_meta(items)` adds JSON to each checkpoint's meta."""
    optimizer = optimizer_identity(cfg.optim, cfg.train.steps)  # what the `train` item's optimizer state belongs to

    def restore(checkpointer: Checkpointer, s: int) -> dict:
        meta = checkpointer.restore_meta(s)
        _check_resumable(meta, name, model_cfg, tokenizer.hash, identity, checkpointer.directory)
        check_optimizer(meta, optimizer, checkpointer.directory, cfg.train.allow_steps_change)
        return checkpointer.restore_items(s, abstract)

    def save(checkpointer: Checkpointer, s: int, items: dict) -> None:
        extra = extra_meta(items) if extra_meta else {}
        if model_cfg.get("lora_rank", 0):  # the frozen base is read from there (train/network.py)
            extra["lora_base"] = os.path.abspath(cfg.align.init_from)
        checkpointer.save_items(s, items, dict(stage=name, step=s, config=json_config(cfg), model=model_cfg.to_dict(),
                                               tokenizer_hash=tokenizer.hash, identity=identity,
                                               optimizer_identity=optimizer, **extra))

    task = Task(name, Members.solo(cfg), fresh, restore, save, step,
                (lambda items: [evaluate(items)]) if evaluate else None,
                hint="Lower optim.lr or the RL/DPO coefficients.", evaluate_first=True)
    return dict(fit(cfg, workdir, task)[0], step=cfg.train.steps)


def param_norm(params):
    return optax.tree.norm(params)


def make_update_step(loss_fn, tx, schedule, count_name: str | None = None):
    """(items, batch) -> (items, metrics): one optimizer update on `loss_fn(params, batch) -> (loss,
    (metrics, weight))`; the batch's `weight` is logged as `count_name` when given."""

    def update(items, batch):
        params, train = items["params"], items["train"]
        (loss, (metrics, weight)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, train["opt_state"], params)
        params = optax.apply_updates(params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), param_norm=param_norm(params),
                       lr=schedule(train["opt_state_step"]))
        if count_name:
            metrics[count_name] = weight
        return dict(params=params, train=dict(opt_state=opt_state, opt_state_step=train["opt_state_step"] + 1)), metrics

    return update


def supervised_stage(cfg, workdir: str, mesh, name: str, model_cfg, tokenizer: Tokenizer, init: dict, *, loss_fn,
                     to_batch: Callable[[list, int], dict], batch_shardings: dict, train_set: list, val_set: list,
                     identity: dict, count_name: str | None = None, extra_meta=None) -> dict:
    """A stage that is a loss over batches of examples (SFT, reward, DPO) on the one loop, from params `init`.

    `loss_fn(params, batch) -> (loss, (metrics, weight))`: `weight` is the batch's normaliser (target
    tokens, pair weights), by which eval averages its chunks. `to_batch(examples, n)` -> host arrays of
    align.batch_size examples of which only the first n count (the rest, filler, weigh 0). Each step's
    examples come from `epoch_batch`; eval covers `val_set` once."""
    rules, B = tuple(cfg.parallel.rules), cfg.align.batch_size
    opt = stage_optimizer(cfg, model_cfg, mesh, rules)
    shardings = params_shardings(model_cfg, mesh, rules)
    # LoRA: the items train the adapters (and a reward model's head); the frozen rest is an argument of each
    # jitted call, never copied into the items or checkpointed. Without LoRA `frozen` is empty.
    trained, frozen_shardings = lora.split(shardings) if model_cfg.get("lora_rank", 0) else (shardings, {})
    trained_init, frozen = lora.split(init) if model_cfg.get("lora_rank", 0) else (init, {})
    item_shardings = dict(params=trained, train=dict(opt_state=opt.shardings, opt_state_step=replicated(mesh)))

    def full_loss(frozen):
        return lambda params, batch: loss_fn(lora.combine(frozen, params), batch)

    update = jax.jit(lambda items, batch, frozen: make_update_step(full_loss(frozen), opt.tx, opt.schedule,
                                                                   count_name)(items, batch),
                     in_shardings=(item_shardings, batch_shardings, frozen_shardings),
                     out_shardings=(item_shardings, None), donate_argnums=0,
                     compiler_options=training_compiler_options(mesh))
    eval_fn = jax.jit(lambda params, batch, frozen: full_loss(frozen)(params, batch))

    def fresh():
        return dict(params=trained_init, train=dict(opt_state=init_opt_state(opt, trained_init),
                                                    opt_state_step=jnp.zeros((), jnp.int32)))

    def step(items, s):
        examples = [train_set[i] for i in epoch_batch(len(train_set), B, cfg.seed, s)]
        return update(items, to_device(to_batch(examples, B), batch_shardings), frozen)

    def evaluate(items) -> dict:
        sums, total = {}, 0.0
        for chunk, n in full_batches(val_set, B):
            loss, (metrics, weight) = to_host(eval_fn(items["params"], to_device(to_batch(chunk, n), batch_shardings),
                                                      frozen))
            weight = float(weight)
            for key, value in dict(metrics, loss=loss).items():
                sums[key] = sums.get(key, 0.0) + float(value) * weight
            total += weight
        return {key: value / max(total, 1e-12) for key, value in sums.items()}

    def meta_of(items) -> dict:  # extra_meta sees the whole network, also under LoRA
        return extra_meta(dict(items, params=lora.combine(frozen, items["params"])))

    return run_stage(cfg, workdir, name, model_cfg, tokenizer, fresh=fresh,
                     abstract=placed(jax.eval_shape(fresh), item_shardings), step=step, evaluate=evaluate,
                     identity=identity, extra_meta=meta_of if extra_meta else None)
