"""The training loop and evaluation, importable from a notebook: `train(cfg, workdir)`.

One loop trains `Members` (members.py): plain pretraining is one model (`train`); a sweep group is K
models of one shape trained at once (`gptjax.scaling.vectorized.train_group`). Both go through the same
setup (mesh, shardings, restore), jitted step, NaN guard, eval, metrics and checkpoints.

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

import jax
import numpy as np
from absl import logging
from flax import nnx

from gptjax.atomic import write_json_atomic
from gptjax.config import create_workdir, validate
from gptjax.data.cache import SPLIT_RULE
from gptjax.data.pipeline import DataStreams, make_streams
from gptjax.model.build import model_graphdef
from gptjax.parallel.mesh import batch_sharding, host_local_batch, make_mesh, replicated
from gptjax.train import flops
from gptjax.train.checkpoint import CheckpointError, Checkpointer, check_compatible
from gptjax.train.members import Members
from gptjax.train.metrics import MetricsWriter
from gptjax.train.network import load_network
from gptjax.train.state import StateSpec, params_shardings
from gptjax.train.step import make_eval_step, make_train_step
from gptjax.train.xla_options import training_compiler_options

MAX_EPOCHS_BEFORE_WARNING = 4


class TrainingDivergedError(RuntimeError):
    """The loss or parameters became non-finite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Job:
    """Everything a train or eval run holds: built once by `setup`."""

    cfg: object
    workdir: str
    mesh: jax.sharding.Mesh
    members: Members
    data: DataStreams
    spec: StateSpec  # graphdef, shardings and restore target of `state`
    state: dict
    checkpointer: Checkpointer
    optimizer: object
    schedule: object
    identity: dict  # the data identity of its checkpoints (a group's includes its members)
    optimizer_identity: dict
    diverged: dict  # member index -> reason; restored from the checkpoint meta

    def checkpoint_meta(self, step: int) -> dict:
        return dict(step=step, config=json_config(self.cfg), data_state=self.data.train.get_state(),
                    data_identity=self.identity, tokenizer_hash=self.data.tokenizer_hash,
                    optimizer_identity=self.optimizer_identity, diverged={str(k): v for k, v in self.diverged.items()})


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


def setup(cfg, workdir: str, mesh, members: Members) -> Job:
    """Builds data and the members' sharded state, and restores the latest checkpoint in `workdir` if any.

    Must run inside `jax.set_mesh(mesh)` and `nnx.logical_axis_rules(rules)`; `run_in_mesh` does that.
    """
    data = make_streams(cfg, workdir)
    optimizer, schedule = members.optimizer(cfg)
    spec = members.state_spec(cfg, optimizer, mesh, tuple(cfg.parallel.rules))
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), cfg.train.max_to_keep)
    identity, optim_identity = members.identities(cfg, data_identity(cfg, data))
    diverged = {}

    def restore(step):
        meta = checkpointer.restore_meta(step)
        check_compatible(meta, json_config(cfg)["model"], identity, data.tokenizer_hash, checkpointer.directory,
                         optimizer=optim_identity, allow_steps_change=cfg.train.allow_steps_change)
        return meta, checkpointer.restore_state(step, spec.abstract)

    found = checkpointer.restore_to_resume(restore)
    if found is None:
        state = spec.initialize()
    else:
        _, (meta, state) = found
        data.train.set_state(meta["data_state"])
        diverged = {int(k): v for k, v in meta.get("diverged", {}).items()}
    return Job(cfg, workdir, mesh, members, data, spec, state, checkpointer, optimizer, schedule, identity,
               optim_identity, diverged)


def run_in_mesh(fn, cfg, workdir: str):
    """Runs fn(cfg, workdir, mesh) with the config's mesh and logical-axis rules active."""
    validate(cfg, workdir)
    create_workdir(workdir)
    mesh = make_mesh(cfg.parallel)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(tuple(cfg.parallel.rules)):
        return fn(cfg, workdir, mesh)


def jit_train_step(cfg, mesh, members: Members, spec: StateSpec, optimizer, schedule):
    """The members' train step, jitted with the state and batch shardings; it donates the state."""
    step_fn = make_train_step(spec.graphdef, optimizer, schedule, grad_accum=cfg.optim.grad_accum,
                              dropout=cfg.model.dropout)
    return jax.jit(members.train_step(step_fn),
                   in_shardings=(spec.shardings, batch_sharding(mesh, tuple(cfg.parallel.rules))),
                   out_shardings=(spec.shardings, replicated(mesh)), donate_argnums=0,
                   compiler_options=training_compiler_options(mesh))


def sharded_train_step(cfg, mesh, members: Members | None = None):
    """(jitted train step, fresh sharded state, batch sharding) for `cfg` on `mesh` (one model, or
    `members`), for benchmarks, tests and notebooks that drive steps themselves. Call inside
    `jax.set_mesh(mesh)` and `nnx.logical_axis_rules(cfg.parallel.rules)`; the step donates the state."""
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
    with jax.set_mesh(mesh), nnx.logical_axis_rules(tuple(cfg.parallel.rules)):
        step, state, data = sharded_train_step(cfg, mesh)
        batch = jax.device_put(batch_np, data)
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


def evaluate(job: Job, eval_step) -> list[dict]:
    """Per member: the mean validation loss (nats/token) over the fixed validation batches, its standard
    error over those batches ("loss_se"), and bits per byte of the validation text when the source is text."""
    return validation_losses(eval_step, job.state["params"], job.data, job.members.size,
                             batch_sharding(job.mesh, tuple(job.cfg.parallel.rules)))


def validation_losses(eval_step, params, data: DataStreams, size: int, sharding) -> list[dict]:
    """`evaluate` for any params: `size` members' results on data.val_batches placed with `sharding`."""
    losses = [eval_step(params, host_local_batch(b, sharding)) for b in data.val_batches]
    losses_NxK = np.reshape(jax.device_get(losses), (len(losses), size))
    results = []
    n = len(losses)
    for k in range(size):
        result = {"loss": float(np.mean(losses_NxK[:, k]))}
        # The eval set's sampling noise: the spread of per-batch losses over sqrt(batches). Sweeps compare
        # it with the loss gaps they fit (batches are consecutive text, so this is a block estimate).
        result["loss_se"] = float(np.std(losses_NxK[:, k], ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        if data.tokens_per_byte is not None:
            result["bits_per_byte"] = result["loss"] / math.log(2) * data.tokens_per_byte
        results.append(result)
    return results


def train(cfg, workdir: str) -> dict:
    """Pretrains per `cfg`, resuming from `workdir` if it holds a checkpoint. Returns final metrics."""
    return train_members(cfg, workdir, Members.solo(cfg))[0]


def train_members(cfg, workdir: str, members: Members) -> list[dict]:
    """Trains `members` per `cfg`, resuming from `workdir`; returns each member's final metrics, with
    the reason under "diverged" for a group member that diverged (plain pretraining raises instead)."""
    return run_in_mesh(functools.partial(_train, members=members), cfg, workdir)


def _train(cfg, workdir: str, mesh, members: Members) -> list[dict]:
    job = setup(cfg, workdir, mesh, members)
    t = cfg.train
    K = members.size
    write_json_atomic(os.path.join(workdir, "config.json"), json_config(cfg))
    data_sharding = batch_sharding(job.mesh, tuple(cfg.parallel.rules))
    first_batch = host_local_batch(job.data.val_batches[0], data_sharding)
    compile_start = time.perf_counter()
    train_step = (jit_train_step(cfg, job.mesh, members, job.spec, job.optimizer, job.schedule)
                  .lower(job.state, first_batch).compile())
    eval_step = jit_eval_step(members, job.spec.graphdef, job.spec.shardings["params"], data_sharding)
    compile_seconds = time.perf_counter() - compile_start

    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops_per_token = flops.flops_per_token(cfg.model, cfg.data.seq_len)["with_attention"]
    peak = peak_flops_total(cfg, job.mesh)
    start_step = int(np.ravel(jax.device_get(job.state["step"]))[0])  # every member's counter is the same
    writer = MetricsWriter(workdir, t.steps, start_step, t.progress_bar, enabled=jax.process_index() == 0,
                           display=t.show_steps)
    pending = []  # (step, device metrics, batch checksum) not yet read back to the host
    clock, clock_step = time.perf_counter(), start_step
    finals = [{"compile_seconds": compile_seconds} for _ in range(K)]  # each member's latest metrics

    def flush(step):
        nonlocal clock, clock_step
        rows = jax.device_get([m for _, m, _ in pending])
        elapsed = time.perf_counter() - clock
        tokens_per_sec = tokens_per_step * (step - clock_step) / max(elapsed, 1e-9)  # each member's
        speed = dict(tokens_per_sec=tokens_per_sec, mfu=flops.mfu(K * tokens_per_sec, flops_per_token, peak))
        for (s, _, checksum), metrics in zip(pending, rows):
            for k in range(K):
                if k in job.diverged:
                    continue
                row = {name: float(np.ravel(values)[k]) for name, values in metrics.items()}
                bad = [name for name in ("loss", "grad_norm", "param_norm") if not np.isfinite(row[name])]
                if bad:
                    mark_diverged(job, k, f"{bad[0]} became {row[bad[0]]} at step {s}")
                    continue
                row.update(speed, batch_crc32=checksum)
                if job.data.batches_per_epoch:
                    row["epoch"] = s / job.data.batches_per_epoch
                writer.write(s, members.split(k), row, show=K == 1 and s == step)
                finals[k].update(row)
        if K > 1 and rows:  # one line per interval for the whole group, not one per member per step
            alive = [k for k in range(K) if k not in job.diverged]
            writer.show(step, "train", {**{f"loss_m{k}": finals[k].get("loss", math.nan) for k in alive}, **speed})
        writer.advance(step - clock_step)
        pending.clear()
        clock, clock_step = time.perf_counter(), step

    try:
        for step in range(start_step + 1, t.steps + 1):
            batch = next(job.data.train)
            job.state, metrics = train_step(job.state, host_local_batch(batch, data_sharding))
            pending.append((step, metrics, zlib.crc32(batch.tobytes())))
            is_last = step == t.steps
            checkpoint_now = step % t.checkpoint_every == 0 or is_last
            if step % t.log_every == 0 or checkpoint_now or step % t.eval_every == 0:
                flush(step)  # also the NaN guard: nothing non-finite reaches a checkpoint unmarked
                if len(job.diverged) == K:  # a group's last member (plain pretraining has raised)
                    logging.warning("every member diverged by step %d; stopping the group", step)
                    break
            if step % t.eval_every == 0 or is_last:
                _record_eval(finals, writer, step, members, evaluate(job, eval_step))
                clock = time.perf_counter()  # keep eval time out of tokens/s
            if job.data.batches_per_epoch and step == int(MAX_EPOCHS_BEFORE_WARNING * job.data.batches_per_epoch) + 1:
                logging.warning("step %d: past %d epochs over the training text; the model may be memorising it",
                                step, MAX_EPOCHS_BEFORE_WARNING)
            if checkpoint_now:
                job.checkpointer.save(step, job.state, job.checkpoint_meta(step))
        if "eval_loss" not in finals[0]:  # rerun of a finished run (or a group that all diverged): still report
            _record_eval(finals, writer, t.steps, members, evaluate(job, eval_step), log=False)
    finally:  # also on divergence: flush TensorBoard/JSONL and finish any checkpoint in flight
        writer.close()
        job.checkpointer.close()
    for final in finals:
        final["entropy_rate"] = job.data.entropy_rate
        if job.data.batches_per_epoch:
            final["epochs"] = t.steps / job.data.batches_per_epoch
    for k, reason in job.diverged.items():
        finals[k]["diverged"] = reason
    return finals


def mark_diverged(job: Job, k: int, reason: str) -> None:
    """Member k's loss or norms became non-finite. Plain pretraining stops here, its last good checkpoint
    kept; a group marks the member (its rows stop, the checkpoint meta records it) and the others go on."""
    job.diverged[k] = reason
    if job.members.stacked:
        logging.warning("member %d (lr=%g): %s; the other members go on", k, job.members.lrs[k], reason)
        return
    job.checkpointer.wait()
    last_good = job.checkpointer.latest_step()
    kept = (f"Last good checkpoint: step {last_good} in {job.checkpointer.directory} (kept intact)."
            if last_good else "No checkpoint had been written yet.")
    raise TrainingDivergedError(f"{reason}; training stopped. {kept} Lower optim.lr or raise optim.warmup_steps.")


def _record_eval(finals: list[dict], writer: MetricsWriter, step: int, members: Members, results: list[dict],
                 log: bool = True) -> None:
    for final, result in zip(finals, results):
        final.update({f"eval_{k}": v for k, v in result.items()})
    if log:
        writer.write(step, "eval", members.eval_row(results))


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
    eval_step = jit_eval_step(Members.solo(cfg), model_graphdef(network.model_cfg),
                              params_shardings(network.model_cfg, mesh, rules), data_sharding)
    losses = validation_losses(eval_step, network.params, data, 1, data_sharding)[0]
    result = {"step": network.step, **{f"eval_{k}": v for k, v in losses.items()}, "entropy_rate": data.entropy_rate}
    write_json_atomic(os.path.join(workdir, "eval.json"), result)
    return result
