"""The pretraining loop and evaluation, importable from a notebook: `train(cfg, workdir)`.

Workdir layout:
  config.json          the resolved config of the latest run
  metrics.jsonl        train/eval rows (see metrics.py)
  tensorboard/         TensorBoard event files
  checkpoints/<step>/  orbax checkpoints (state + meta)
Rerunning the same command resumes from the latest checkpoint, data order included.
"""

import dataclasses
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
from gptjax.config import validate
from gptjax.data.pipeline import DataStreams, make_streams
from gptjax.parallel.mesh import batch_sharding, host_local_batch, make_mesh, replicated
from gptjax.train import flops
from gptjax.train.checkpoint import CheckpointError, Checkpointer, check_compatible, optimizer_identity
from gptjax.train.metrics import MetricsWriter
from gptjax.train.optim import make_optimizer
from gptjax.train.state import create_train_state, state_spec
from gptjax.train.step import make_eval_step, make_train_step

MAX_EPOCHS_BEFORE_WARNING = 4


class TrainingDivergedError(RuntimeError):
    """The loss or parameters became non-finite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Job:
    """Everything a train or eval run holds: built once by `setup`."""

    cfg: object
    workdir: str
    mesh: jax.sharding.Mesh
    data: DataStreams
    graphdef: object
    state: dict
    shardings: dict
    checkpointer: Checkpointer
    optimizer: object
    schedule: object


def json_config(cfg) -> dict:
    return json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as they come back from JSON


def data_identity(cfg, data: DataStreams) -> dict:
    """What a checkpoint's data position is relative to: resuming needs the same stream."""
    d = cfg.data
    keys = ("source", "seq_len", "batch_size", "val_fraction", "split_seed", "keep_markup", "text_split",
            "markov_order", "markov_concentration", "markov_alphabet")
    return {**{k: d[k] for k in keys}, "seed": cfg.seed, "corpus_fingerprint": data.fingerprint}


def setup(cfg, workdir: str, mesh) -> Job:
    """Validates, builds mesh/data/state, and restores the latest checkpoint in `workdir` if any.

    Must run inside `jax.set_mesh(mesh)` and `nnx.logical_axis_rules(rules)`; `run_in_mesh` does that.
    """
    data = make_streams(cfg, workdir)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps, cfg.model)
    spec = state_spec(cfg.model, optimizer, mesh, tuple(cfg.parallel.rules), cfg.seed)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), cfg.train.max_to_keep)
    latest = checkpointer.latest_step()
    if latest is None:
        state = spec.initialize()
    else:
        meta = checkpointer.restore_meta(latest)
        check_compatible(meta, json_config(cfg)["model"], data_identity(cfg, data), data.tokenizer_hash,
                         checkpointer.directory, optimizer=optimizer_identity(cfg.optim, cfg.train.steps),
                         allow_steps_change=cfg.train.allow_steps_change)
        state = checkpointer.restore_state(latest, spec.abstract)
        data.train.set_state(meta["data_state"])
    return Job(cfg, workdir, mesh, data, spec.graphdef, state, spec.shardings, checkpointer, optimizer, schedule)


def run_in_mesh(fn, cfg, workdir: str):
    """Runs fn(cfg, workdir, mesh) with the config's mesh and logical-axis rules active."""
    validate(cfg, workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = make_mesh(cfg.parallel)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(tuple(cfg.parallel.rules)):
        return fn(cfg, workdir, mesh)


def sharded_train_step(cfg, mesh):
    """(jitted train step, fresh sharded state, batch sharding) for `cfg` on `mesh`, for benchmarks,
    tests and notebooks that drive steps themselves. Call inside `jax.set_mesh(mesh)` and
    `nnx.logical_axis_rules(cfg.parallel.rules)`; the step donates the state it is given."""
    rules = tuple(cfg.parallel.rules)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps, cfg.model)
    graphdef, state, shardings = create_train_state(cfg.model, optimizer, mesh, rules, cfg.seed)
    data_sharding = batch_sharding(mesh, rules)
    step_fn = make_train_step(graphdef, optimizer, schedule, grad_accum=cfg.optim.grad_accum, dropout=cfg.model.dropout)
    step = jax.jit(step_fn, in_shardings=(shardings, data_sharding), out_shardings=(shardings, replicated(mesh)),
                   donate_argnums=0)
    return step, state, data_sharding


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


def evaluate(job: Job, eval_step) -> dict:
    """Mean validation loss (nats/token) over the fixed validation batches, and bits per byte
    of the validation text when the source is text."""
    sharding = batch_sharding(job.mesh, tuple(job.cfg.parallel.rules))
    losses = [eval_step(job.state["params"], host_local_batch(b, sharding)) for b in job.data.val_batches]
    result = {"loss": float(np.mean(jax.device_get(losses)))}
    if job.data.tokens_per_byte is not None:
        result["bits_per_byte"] = result["loss"] / math.log(2) * job.data.tokens_per_byte
    return result


def train(cfg, workdir: str) -> dict:
    """Pretrains per `cfg`, resuming from `workdir` if it holds a checkpoint. Returns final metrics."""
    return run_in_mesh(_train, cfg, workdir)


def _train(cfg, workdir: str, mesh) -> dict:
    job = setup(cfg, workdir, mesh)
    t = cfg.train
    write_json_atomic(os.path.join(workdir, "config.json"), json_config(cfg))
    rules = tuple(cfg.parallel.rules)
    data_sharding = batch_sharding(job.mesh, rules)
    step_fn = make_train_step(job.graphdef, job.optimizer, job.schedule,
                              grad_accum=cfg.optim.grad_accum, dropout=cfg.model.dropout)
    first_batch = host_local_batch(job.data.val_batches[0], data_sharding)
    compile_start = time.perf_counter()
    train_step = (
        jax.jit(step_fn, in_shardings=(job.shardings, data_sharding),
                out_shardings=(job.shardings, replicated(job.mesh)), donate_argnums=0)
        .lower(job.state, first_batch)
        .compile()
    )
    eval_step = jax.jit(make_eval_step(job.graphdef), in_shardings=(job.shardings["params"], data_sharding))
    compile_seconds = time.perf_counter() - compile_start

    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops_per_token = flops.flops_per_token(cfg.model, cfg.data.seq_len)["with_attention"]
    peak = peak_flops_total(cfg, job.mesh)
    start_step = int(jax.device_get(job.state["step"]))
    writer = MetricsWriter(workdir, t.steps, start_step, t.progress_bar, enabled=jax.process_index() == 0)
    pending = []  # (step, device metrics, batch checksum) not yet read back to the host
    clock, clock_step = time.perf_counter(), start_step
    final = {"compile_seconds": compile_seconds}

    def flush(step):
        nonlocal clock, clock_step
        rows = jax.device_get([m for _, m, _ in pending])
        elapsed = time.perf_counter() - clock
        tokens_per_sec = tokens_per_step * (step - clock_step) / max(elapsed, 1e-9)
        for (s, _, checksum), row in zip(pending, rows):
            bad = [k for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(row[k])]
            if bad:
                job.checkpointer.wait()
                last_good = job.checkpointer.latest_step()
                kept = (f"Last good checkpoint: step {last_good} in {job.checkpointer.directory} (kept intact)."
                        if last_good else "No checkpoint had been written yet.")
                raise TrainingDivergedError(
                    f"{bad[0]} became {row[bad[0]]} at step {s}; training stopped. {kept} "
                    "Lower optim.lr or raise optim.warmup_steps."
                )
            row = {k: float(v) for k, v in row.items()}
            row.update(tokens_per_sec=tokens_per_sec, mfu=flops.mfu(tokens_per_sec, flops_per_token, peak),
                       batch_crc32=checksum)
            if job.data.batches_per_epoch:
                row["epoch"] = s / job.data.batches_per_epoch
            writer.write(s, "train", row)
            final.update(row)
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
                flush(step)  # also the NaN guard: nothing non-finite reaches a checkpoint
            if step % t.eval_every == 0 or is_last:
                _record_eval(final, writer, step, evaluate(job, eval_step))
                clock = time.perf_counter()  # keep eval time out of tokens/s
            if job.data.batches_per_epoch and step == int(MAX_EPOCHS_BEFORE_WARNING * job.data.batches_per_epoch) + 1:
                logging.warning("step %d: past %d epochs over the training text; the model may be memorising it",
                                step, MAX_EPOCHS_BEFORE_WARNING)
            if checkpoint_now:
                meta = dict(step=step, config=json_config(cfg), data_state=job.data.train.get_state(),
                            data_identity=data_identity(cfg, job.data), tokenizer_hash=job.data.tokenizer_hash,
                            optimizer_identity=optimizer_identity(cfg.optim, t.steps))
                job.checkpointer.save(step, job.state, meta)
        if "eval_loss" not in final:  # rerun of a finished run: nothing to train, still report
            _record_eval(final, writer, t.steps, evaluate(job, eval_step), log=False)
    finally:  # also on divergence: flush TensorBoard/JSONL and finish any checkpoint in flight
        writer.close()
        job.checkpointer.close()
    final["entropy_rate"] = job.data.entropy_rate
    if job.data.batches_per_epoch:
        final["epochs"] = t.steps / job.data.batches_per_epoch
    return final


def _record_eval(final: dict, writer: MetricsWriter, step: int, result: dict, log: bool = True) -> None:
    final.update({f"eval_{k}": v for k, v in result.items()})
    if log:
        writer.write(step, "eval", result)


def evaluate_checkpoint(cfg, workdir: str) -> dict:
    """`mode=eval`: the validation loss of the latest checkpoint in `workdir`."""
    return run_in_mesh(_evaluate_checkpoint, cfg, workdir)


def _evaluate_checkpoint(cfg, workdir: str, mesh) -> dict:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory) or Checkpointer(directory, cfg.train.max_to_keep).latest_step() is None:
        raise CheckpointError(f"no checkpoint in {os.path.abspath(directory)}; train first with mode=pretrain.")
    job = setup(cfg, workdir, mesh)
    step = job.checkpointer.latest_step()
    eval_step = jax.jit(make_eval_step(job.graphdef))
    result = {"step": step, **{f"eval_{k}": v for k, v in evaluate(job, eval_step).items()},
              "entropy_rate": job.data.entropy_rate}
    write_json_atomic(os.path.join(workdir, "eval.json"), result)
    job.checkpointer.close()
    return result
