"""The one resumable training loop and evaluation, importable from a notebook: `train(cfg, workdir)`.

`fit(cfg, workdir, task)` trains any `Task`: resume from the newest readable checkpoint, the step,
eval and checkpoint cadence, the NaN guard, metrics rows and the progress display live here once.
Pretraining is a task of `Members` (members.py): one model (`train`), or a sweep group of K models of
one shape trained at once (`gptjax.scaling.vectorized.train_group`); every post-training stage is a
task too (`gptjax.align.stage.run_stage`: SFT, reward and DPO are a loss and a batch source, RL a
rollout source and a loss).

Workdir layout:
  config.json          the resolved config of the latest run
  metrics.jsonl        train/eval rows (see metrics.py); a group writes split "train/m<k>" per member
                       and eval rows with loss_m<k> (bits_per_byte_m<k>) per member
  tensorboard/         TensorBoard event files
  checkpoints/<step>/  orbax checkpoints (state + meta; a group's state has the member axis)
Rerunning the same command resumes from the latest checkpoint, data order included.
"""

import dataclasses
import functools
import json
import math
import os
import time
import zlib
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from gptjax.atomic import write_json_atomic
from gptjax.config import create_workdir, validate
from gptjax.data.cache import SPLIT_RULE
from gptjax.data.pipeline import DataStreams, make_streams
from gptjax.model.build import model_graphdef
from gptjax.parallel.mesh import batch_sharding, make_mesh, replicated, to_device, to_host
from gptjax.train import flops
from gptjax.train.checkpoint import CheckpointError, Checkpointer, check_compatible
from gptjax.train.members import Members
from gptjax.train.metrics import MetricsWriter
from gptjax.train.network import load_network
from gptjax.train.preemption import Preempted, PreemptionWatch
from gptjax.train.state import StateSpec, params_shardings
from gptjax.train.step import make_eval_step, make_train_step
from gptjax.train.xla_options import training_compiler_options

MAX_EPOCHS_BEFORE_WARNING = 4


class TrainingDivergedError(RuntimeError):
    """The loss or parameters became non-finite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Task:
    """What the one resumable loop (`fit`) trains: pretraining or a sweep group (`pretraining_task`), or a
    post-training stage (`gptjax.align.stage.run_stage`). The loop owns resume, step and eval cadence, the
    NaN guard, metrics rows and checkpoint cadence; a task says how to build, restore, step, evaluate and
    save its state (any pytree)."""

    name: str  # "pretrain" or the stage's mode; names the run in errors
    members: Members  # one model, or a group's K members (a row per member, the guard per member)
    fresh: Callable[[], Any]  # the state at step 0
    restore: Callable[[Checkpointer, int], Any]  # the state at a checkpoint step; CheckpointError if not resumable
    save: Callable[[Checkpointer, int, Any], None]  # starts the checkpoint of (step, state)
    step: Callable[[Any, int], tuple[Any, dict]]  # (state, step) -> (state, metrics: device arrays or host numbers)
    evaluate: Callable[[Any], list[dict]] | None = None  # state -> each member's eval metrics (host floats)
    guard: tuple = ("loss", "param_norm")  # metrics that must stay finite
    hint: str = "Lower optim.lr or raise optim.warmup_steps."  # the fix a divergence error names
    tokens_per_step: int = 0  # each member's; with flops_per_token, rows get tokens_per_sec and mfu
    flops_per_token: float = 0.0
    peak_flops: float = math.nan
    evaluate_first: bool = False  # an eval row at step 0: the starting network's score
    diverged: dict = dataclasses.field(default_factory=dict)  # member -> reason; save/restore carry it


def json_config(cfg) -> dict:
    return json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as they come back from JSON


def data_identity(cfg, data: DataStreams) -> dict:
    """What a checkpoint's data position is relative to: resuming needs the same stream. Text streams
    also name the document-split rule, so a checkpoint from before data/cache.py's current split (whose
    iterator position indexes other documents) is refused instead of resumed on the wrong text."""
    d = cfg.data
    keys = ("source", "seq_len", "batch_size", "val_fraction", "split_seed", "keep_markup", "text_split",
            "markov_order", "markov_concentration", "markov_alphabet")
    identity = {**{k: d[k] for k in keys}, "seed": cfg.seed, "corpus_fingerprint": data.fingerprint}
    if data.fingerprint is not None:
        identity["document_split"] = SPLIT_RULE
    return identity


def run_in_mesh(fn, cfg, workdir: str):
    """Runs fn(cfg, workdir, mesh) with the config's mesh set (the logical-axis rules are passed explicitly)."""
    validate(cfg, workdir)
    create_workdir(workdir)
    mesh = make_mesh(cfg.parallel)
    with jax.set_mesh(mesh):
        return fn(cfg, workdir, mesh)


def jit_train_step(cfg, mesh, members: Members, spec: StateSpec, optimizer, schedule):
    """The members' train step, jitted with the state and batch shardings; it donates the state."""
    step_fn = make_train_step(spec.graphdef, optimizer, schedule, grad_accum=cfg.optim.grad_accum,
                              dropout=cfg.model.dropout, rules=tuple(cfg.parallel.rules))
    return jax.jit(members.train_step(step_fn),
                   in_shardings=(spec.shardings, batch_sharding(mesh, tuple(cfg.parallel.rules))),
                   out_shardings=(spec.shardings, replicated(mesh)), donate_argnums=0,
                   compiler_options=training_compiler_options(mesh))


def sharded_train_step(cfg, mesh, members: Members | None = None):
    """(jitted train step, fresh sharded state, batch sharding) for `cfg` on `mesh` (one model, or
    `members`), for benchmarks, tests and notebooks that drive steps themselves. Call inside
    `jax.set_mesh(mesh)`; the step donates the state."""
    members = members or Members.solo(cfg)
    optimizer, schedule = members.optimizer(cfg)
    spec = members.state_spec(cfg, optimizer, mesh, tuple(cfg.parallel.rules))
    step = jit_train_step(cfg, mesh, members, spec, optimizer, schedule)
    return step, spec.initialize(), batch_sharding(mesh, tuple(cfg.parallel.rules))


def seconds_per_train_step(cfg, batch_np, steps: int, warmup: int = 3) -> float:
    """Mean wall seconds of one jitted, sharded training step of `cfg` on the batch `batch_np`, after
    compilation and `warmup` steps. Steps are dispatched back to back and waited for once at the end,
    as in a training loop. For benchmarks and notebooks."""
    mesh = make_mesh(cfg.parallel)
    with jax.set_mesh(mesh):
        step, state, data = sharded_train_step(cfg, mesh)
        batch = to_device(batch_np, data)  # the whole batch, held by this process (benchmarks run on one)
        for _ in range(warmup):
            state, metrics = step(state, batch)
        metrics["loss"].block_until_ready()
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch)
        metrics["loss"].block_until_ready()
        return (time.perf_counter() - start) / steps


def peak_flops_total(cfg, mesh) -> float:
    """Peak FLOP/s of all devices in the mesh: the table for accelerators, calibration on CPU."""
    device = mesh.devices.flat[0]
    if device.platform == "cpu":
        return cfg.train.cpu_peak_flops or flops.measure_cpu_peak_flops()  # host-wide, all cores
    peak = flops.device_peak_flops(device.device_kind)
    return peak * mesh.size if peak else math.nan


def jit_eval_step(members: Members, graphdef, params_sharding, data_sharding):
    """(params, batch) -> each member's mean loss: a (K,) vector in a group, a scalar for one model."""
    return jax.jit(members.eval_step(make_eval_step(graphdef)), in_shardings=(params_sharding, data_sharding))


def validation_losses(eval_step, params, data: DataStreams, size: int, sharding) -> list[dict]:
    """`evaluate` for any params: `size` members' results on data.val_batches placed with `sharding`."""
    losses = [eval_step(params, to_device(b, sharding, process_rows=True)) for b in data.val_batches]
    losses_UxM = np.reshape(to_host(losses), (len(losses), size))
    results = []
    n = len(losses)
    for k in range(size):
        result = {"loss": float(np.mean(losses_UxM[:, k]))}
        # The eval set's sampling noise: the spread of per-batch losses over sqrt(batches). Sweeps compare
        # it with the loss gaps they fit (batches are consecutive text, so this is a block estimate).
        result["loss_se"] = float(np.std(losses_UxM[:, k], ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        if data.tokens_per_byte is not None:
            result["bits_per_byte"] = result["loss"] / math.log(2) * data.tokens_per_byte
        results.append(result)
    return results


def train(cfg, workdir: str, downstream: Callable | None = None) -> dict:
    """Pretrains per `cfg`, resuming from `workdir` if it holds a checkpoint. Returns final metrics.
    `downstream(params, model_cfg, mesh) -> {name: score}`: more scores at every evaluation (train.eval_tasks:
    gptjax/evaluate/job.py builds it; the loop sits below it and only calls it)."""
    return train_members(cfg, workdir, Members.solo(cfg), downstream)[0]


def train_members(cfg, workdir: str, members: Members, downstream: Callable | None = None) -> list[dict]:
    """Trains `members` per `cfg`, resuming from `workdir`; returns each member's final metrics, with
    the reason under "diverged" for a group member that diverged (plain pretraining raises instead)."""
    return run_in_mesh(functools.partial(_train, members=members, downstream=downstream), cfg, workdir)


def _train(cfg, workdir: str, mesh, members: Members, downstream: Callable | None) -> list[dict]:
    data = make_streams(cfg, workdir)
    task, compile_seconds = pretraining_task(cfg, mesh, members, data, downstream)
    finals = fit(cfg, workdir, task)
    for k, final in enumerate(finals):
        final.update(compile_seconds=compile_seconds, entropy_rate=data.entropy_rate)
        if data.batches_per_epoch:
            final["epochs"] = cfg.train.steps / data.batches_per_epoch
        if k in task.diverged:
            final["diverged"] = task.diverged[k]
    return finals


def pretraining_task(cfg, mesh, members: Members, data: DataStreams,
                     downstream: Callable | None = None) -> tuple[Task, float]:
    """(the Task that trains `members` on `data`'s next-token prediction, seconds spent compiling its step).
    A checkpoint holds the state and, in its meta, the data position, so a rerun resumes in data order.
    `downstream` (see `train`) adds each member's scores to its evaluation."""
    rules = tuple(cfg.parallel.rules)
    optimizer, schedule = members.optimizer(cfg)
    spec = members.state_spec(cfg, optimizer, mesh, rules)
    identity, optim_identity = members.identities(cfg, data_identity(cfg, data))
    data_sharding = batch_sharding(mesh, rules)
    compile_start = time.perf_counter()
    train_step = (jit_train_step(cfg, mesh, members, spec, optimizer, schedule)
                  .lower(spec.abstract, to_device(data.val_batches[0], data_sharding, process_rows=True)).compile())
    eval_step = jit_eval_step(members, spec.graphdef, spec.shardings["params"], data_sharding)
    compile_seconds = time.perf_counter() - compile_start
    warn_at = int(MAX_EPOCHS_BEFORE_WARNING * data.batches_per_epoch) + 1 if data.batches_per_epoch else None

    def restore(checkpointer: Checkpointer, step: int):
        meta = checkpointer.restore_meta(step)
        check_compatible(meta, json_config(cfg)["model"], identity, data.tokenizer_hash, checkpointer.directory,
                         optimizer=optim_identity, allow_steps_change=cfg.train.allow_steps_change)
        state = checkpointer.restore_state(step, spec.abstract)
        data_state = checkpointer.restore_data_state(step)
        if data_state is None and jax.process_count() > 1:
            logging.warning("%s step %d holds no data position of this process (%d of %d): the data order continues "
                            "from process 0's position", checkpointer.directory, step, jax.process_index(),
                            jax.process_count())
        data.train.set_state(meta["data_state"] if data_state is None else data_state)
        task.diverged.update({int(k): v for k, v in meta.get("diverged", {}).items()})
        return state

    def save(checkpointer: Checkpointer, step: int, state) -> None:
        position = data.train.get_state()  # this process's own, and (in meta) process 0's for older readers
        checkpointer.save(step, state, dict(
            step=step, config=json_config(cfg), data_state=position, data_identity=identity,
            tokenizer_hash=data.tokenizer_hash, optimizer_identity=optim_identity,
            diverged={str(k): v for k, v in task.diverged.items()}), data_state=position)

    def step(state, s: int):
        batch = next(data.train)
        state, metrics = train_step(state, to_device(batch, data_sharding, process_rows=True))
        metrics = dict(metrics, batch_crc32=zlib.crc32(batch.tobytes()))  # resume tests compare the batches
        if data.batches_per_epoch:
            metrics["epoch"] = s / data.batches_per_epoch
        if s == warn_at:
            logging.warning("step %d: past %d epochs over the training text; the model may be memorising it",
                            s, MAX_EPOCHS_BEFORE_WARNING)
        return state, metrics

    def evaluate(state) -> list[dict]:
        results = validation_losses(eval_step, state["params"], data, members.size, data_sharding)
        if downstream is not None:
            for k, result in enumerate(results):
                params = jax.tree.map(lambda x: x[k], state["params"]) if members.stacked else state["params"]
                result.update(downstream(params, cfg.model, mesh))
        return results

    task = Task("pretrain", members, spec.initialize, restore, save, step, evaluate,
                guard=("loss", "grad_norm", "param_norm"), tokens_per_step=cfg.data.batch_size * cfg.data.seq_len,
                flops_per_token=flops.flops_per_token(cfg.model, cfg.data.seq_len)["with_attention"],
                peak_flops=peak_flops_total(cfg, mesh))
    return task, compile_seconds


def fit(cfg, workdir: str, task: Task) -> list[dict]:
    """Trains `task` for cfg.train.steps steps, resuming from the newest readable checkpoint in `workdir`.
    Logs every train.log_every steps (JSONL, TensorBoard, progress bar), evaluates every eval_every and
    checkpoints every checkpoint_every and at the end. A non-finite guarded metric stops the run before
    anything is saved (its last good checkpoint kept); in a group it retires that member and the others
    go on. On SIGTERM it checkpoints the step it is at and raises `Preempted` (train/preemption.py).
    Returns each member's final metrics (its latest train row and eval_* results)."""
    t, members = cfg.train, task.members
    K = members.size
    config = json_config(cfg)
    write_json_atomic(os.path.join(workdir, "config.json"), config)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), t.max_to_keep)
    found = checkpointer.restore_to_resume(lambda step: task.restore(checkpointer, step))
    state, start = (task.fresh(), 0) if found is None else (found[1], found[0])
    writer = MetricsWriter(workdir, t.steps, start, t.progress_bar, enabled=jax.process_index() == 0,
                           display=t.show_steps, wandb_project=t.wandb_project, config=config)
    pending = []  # (step, metrics) not yet read back to the host
    clock, clock_step = time.perf_counter(), start
    finals = [{} for _ in range(K)]  # each member's latest metrics

    def diverge(k: int, reason: str) -> None:
        task.diverged[k] = reason
        if members.stacked:
            logging.warning("member %d (lr=%g): %s; the other members go on", k, members.lrs[k], reason)
            return
        checkpointer.wait()
        last_good = checkpointer.latest_step()
        kept = (f"Last good checkpoint: step {last_good} in {checkpointer.directory} (kept intact)."
                if last_good else "No checkpoint had been written yet.")
        raise TrainingDivergedError(f"{task.name}: {reason}; training stopped. {kept} {task.hint}")

    def flush(step: int) -> None:
        nonlocal clock, clock_step
        rows = to_host([m for _, m in pending])
        seconds = (time.perf_counter() - clock) / max(step - clock_step, 1)
        speed = {"step_seconds": seconds}
        if task.tokens_per_step:
            speed["tokens_per_sec"] = task.tokens_per_step / max(seconds, 1e-12)  # each member's
            speed["mfu"] = flops.mfu(K * speed["tokens_per_sec"], task.flops_per_token, task.peak_flops)
        for (s, _), metrics in zip(pending, rows):
            for k in range(K):
                if k in task.diverged:
                    continue
                row = {name: _member_value(value, k) for name, value in metrics.items()}
                bad = [name for name in task.guard if name in row and not math.isfinite(row[name])]
                if bad:
                    diverge(k, f"{bad[0]} became {row[bad[0]]} at step {s}")
                    continue
                row.update(speed)
                writer.write(s, members.split(k), row, show=K == 1 and s == step)
                finals[k].update(row)
        if K > 1 and rows:  # one line per interval for the whole group, not one per member per step
            alive = [k for k in range(K) if k not in task.diverged]
            writer.show(step, "train", {**{f"loss_m{k}": finals[k].get("loss", math.nan) for k in alive}, **speed})
        writer.advance(step - clock_step)
        pending.clear()
        clock, clock_step = time.perf_counter(), step

    def record_eval(state, step: int, log: bool = True) -> None:
        results = task.evaluate(state)
        for final, result in zip(finals, results):
            final.update({f"eval_{k}": v for k, v in result.items()})
        if log:
            writer.write(step, "eval", members.eval_row(results))

    watch = PreemptionWatch()
    profile, tracing = tuple(t.profile_steps), False  # train.profile_steps: (first, last) traced
    try:
        if start == 0 and task.evaluate and task.evaluate_first:
            record_eval(state, 0)
            clock = time.perf_counter()
        for step in range(start + 1, t.steps + 1):
            if profile and step == profile[0]:
                jax.profiler.start_trace(os.path.join(workdir, "profile"))
                tracing = True
            state, metrics = task.step(state, step)
            if tracing and step == profile[1]:
                jax.block_until_ready(metrics)  # the trace holds the last profiled step's device work
                jax.profiler.stop_trace()
                tracing = False
            pending.append((step, metrics))
            is_last = step == t.steps
            checkpoint_now = step % t.checkpoint_every == 0 or is_last
            if step % t.log_every == 0 or checkpoint_now or step % t.eval_every == 0:
                flush(step)  # also the NaN guard: nothing non-finite reaches a checkpoint unmarked
                if len(task.diverged) == K:  # a group's last member (one model has raised)
                    logging.warning("every member diverged by step %d; stopping the group", step)
                    break
            if task.evaluate and (step % t.eval_every == 0 or is_last):
                record_eval(state, step)
                clock = time.perf_counter()  # keep eval time out of the step time
            if checkpoint_now:
                task.save(checkpointer, step, state)
            if watch.reached(step) and not is_last:  # every process asks at every step (a sync point)
                if not checkpoint_now:
                    flush(step)
                    task.save(checkpointer, step, state)
                checkpointer.wait()
                raise Preempted(f"{task.name}: stopped by SIGTERM at step {step} with a checkpoint there "
                                f"({checkpointer.directory}); rerun the same command to resume")
        if task.evaluate and not any(k.startswith("eval_") for k in finals[0]):  # a rerun of a finished run
            record_eval(state, t.steps, log=False)
    finally:  # also on divergence: flush TensorBoard/JSONL and finish any checkpoint in flight
        watch.close()
        if tracing:
            jax.profiler.stop_trace()
        writer.close()
        checkpointer.close()
    return finals


def _member_value(value, k: int):
    """Member k's entry of a metric (a scalar is every member's); integers (checksums) stay integers."""
    flat = np.ravel(value)
    one = flat[k] if flat.size > 1 else flat[0]
    return int(one) if np.issubdtype(flat.dtype, np.integer) else float(one)


def evaluate_checkpoint(cfg, workdir: str) -> dict:
    """`mode=eval`: the validation loss of the latest checkpoint in `workdir`."""
    return run_in_mesh(_evaluate_checkpoint, cfg, workdir)


def _evaluate_checkpoint(cfg, workdir: str, mesh) -> dict:
    """The newest readable checkpoint's params (only: no optimizer state is read, and the run's checkpoints
    are opened read-only) on the validation batches of `cfg.data`, the data that run trained on."""
    rules = tuple(cfg.parallel.rules)
    network = load_network(workdir, mesh, rules, need_tokenizer=False)
    if network.stage != "pretrain":
        raise CheckpointError(f"{workdir} holds a {network.stage!r} checkpoint; mode=eval scores pretraining runs "
                              "(post-training stages report their own eval metrics in metrics.jsonl)")
    data = make_streams(cfg, workdir)
    if data.tokenizer_hash != network.meta.get("tokenizer_hash"):
        raise CheckpointError(f"{workdir}: the checkpoint was trained with tokenizer {network.meta.get('tokenizer_hash')!r}, "
                              f"this config's data with {data.tokenizer_hash!r}; evaluate with the config that trained it")
    data_sharding = batch_sharding(mesh, rules)
    eval_step = jit_eval_step(Members.solo(cfg), model_graphdef(network.model_cfg, rules),
                              params_shardings(network.model_cfg, mesh, rules), data_sharding)
    losses = validation_losses(eval_step, network.params, data, 1, data_sharding)[0]
    result = {"step": network.step, **{f"eval_{k}": v for k, v in losses.items()}, "entropy_rate": data.entropy_rate}
    write_json_atomic(os.path.join(workdir, "eval.json"), result)
    return result
