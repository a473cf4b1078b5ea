"""Checkpoints with orbax: async saves, atomic steps, restore onto the target sharding.

The only module that imports orbax. A pretraining checkpoint step holds three items:
  state  the train-state pytree (params, opt_state, step, rng)   StandardSave
  meta   JSON: step, config, process 0's data-iterator state, tokenizer hash,   JsonSave
         optimizer identity (what the optimizer state and LR schedule belong to)
  data   each process's own data-iterator state, data/process_<i>-of-<n>.json   ProcessStateSave
         (every process of a multi-host job reads its own slice of the data; older checkpoints have none)
Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save never leaves a step that later reads as finished.
"""

import contextlib
import dataclasses
import io
import json
import logging as std_logging
import os
import sys
import time
from typing import Callable, TypeVar

import jax
import orbax.checkpoint as ocp
from absl import logging

from gptjax.config import model as model_config
from gptjax.parallel.mesh import on_every_process, sync_processes


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this job; the message names it and the fix."""


T = TypeVar("T")


class ProcessStateHandler(ocp.CheckpointHandler):
    """A small JSON dict per process, each process writing and reading only its own file."""

    @staticmethod
    def _file(directory) -> str:
        return os.path.join(os.fspath(directory), f"process_{jax.process_index()}-of-{jax.process_count()}.json")

    def save(self, directory, args: "ProcessStateSave") -> None:
        with open(self._file(directory), "w", encoding="utf-8") as f:  # orbax renames the whole step when done
            json.dump(args.state, f)

    def restore(self, directory, args: "ProcessStateRestore | None" = None) -> dict | None:
        """This process's dict, or None when the step was written by another number of processes."""
        path = self._file(directory)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def metadata(self, directory) -> None:
        return None


@ocp.args.register_with_handler(ProcessStateHandler, for_save=True)
@dataclasses.dataclass
class ProcessStateSave(ocp.args.CheckpointArgs):
    state: dict


@ocp.args.register_with_handler(ProcessStateHandler, for_restore=True)
@dataclasses.dataclass
class ProcessStateRestore(ocp.args.CheckpointArgs):
    pass


class Checkpointer:
    """A run's checkpoints/ directory. A writer (`Checkpointer(directory, max_to_keep)`) keeps the newest
    `max_to_keep` steps; `Checkpointer.reader(directory)` opens another run's directory read-only (it
    creates, saves and deletes nothing)."""

    def __init__(self, directory: str, max_to_keep: int | None, *, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
        else:
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep), enable_async_checkpointing=True)
        with _filtered(std_logging.getLogger("absl"), "read only"):  # orbax's note that read-only is read-only
            self._manager = ocp.CheckpointManager(self.directory, options=options)

    @classmethod
    def reader(cls, directory: str) -> "Checkpointer":
        return cls(directory, None, read_only=True)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore_newest_readable(self, restore: Callable[[int], T]) -> tuple[int, T] | None:
        """(step, restore(step)) for the newest step that `restore` can read, or None when there is no step.
        A damaged step (truncated or missing files: orbax and tensorstore raise) is named in a warning and
        skipped for the one before it; nothing is deleted. CheckpointError (a checkpoint of another run)
        is not damage and propagates. Raises CheckpointError when every step is damaged."""
        damaged = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                with _silence_failed_reads():
                    restored, problem = restore(step), None
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read a step's files is damage
                restored, problem = None, _orbax_summary(e)
            # A step is used only if every process read its part (one host's files may be the damaged ones).
            if on_every_process(problem is None):
                return step, restored
            problem = problem or "another process could not read its part"
            damaged.append(f"step {step} ({problem})")
            logging.warning("checkpoint step %d in %s is unreadable, skipped (kept on disk): %s", step,
                            self.directory, problem)
        if damaged:
            raise CheckpointError(f"{self.directory}: no readable checkpoint; damaged: {'; '.join(damaged)}. Nothing "
                                  "was deleted; restore the files from a backup, or use a fresh --workdir.")
        return None

    def restore_to_resume(self, restore: Callable[[int], T]) -> tuple[int, T] | None:
        """A writer's `restore_newest_readable`: the damaged steps newer than the one restored are moved
        out of the way (`set_aside`), so the resumed run can save those step numbers again."""
        found = self.restore_newest_readable(restore)
        if found is not None:
            for step in [s for s in self._manager.all_steps() if s > found[0]]:
                logging.warning("resuming from checkpoint step %d; damaged step %d moved to %s", found[0], step,
                                self.set_aside(step))
        return found

    def set_aside(self, step: int) -> str:
        """Moves a damaged step out of the directory (to ../damaged_checkpoints/<step>, never deleted).
        Returns the new path."""
        target = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints", str(step))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.exists(target):
            target = f"{target}.{len(os.listdir(os.path.dirname(target)))}"
        if jax.process_index() == 0:  # one shared directory: one process moves it, the others wait to reread it
            os.rename(os.path.join(self.directory, str(step)), target)
        sync_processes(f"gptjax checkpoint: step {step} set aside")
        self._manager.reload()
        return target

    def save(self, step: int, state, meta: dict, data_state: dict | None = None) -> None:
        """Starts an asynchronous save; the previous one is finished first by orbax. `data_state`: this
        process's data-iterator state (each process saves its own)."""
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_state is not None:
            items["data"] = ProcessStateSave(data_state)
        self._manager.save(step, args=ocp.args.Composite(**items))

    def restore_meta(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_data_state(self, step: int) -> dict | None:
        """This process's data-iterator state at `step`; None for a checkpoint from before per-process
        states, or one written by another number of processes."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "data")):
            return None
        return self._manager.restore(step, args=ocp.args.Composite(data=ProcessStateRestore()))["data"]

    def restore_state(self, step: int, abstract_state):
        """The state at `step`, placed with the shardings carried by `abstract_state`'s leaves."""
        with self._tree_mismatch_is_an_error(step):
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        return restored["state"]

    def restore_params(self, step: int, abstract_params):
        """Only the params of the train state at `step` (sampling, evaluation, a post-training start): the
        optimizer state, twice the params' size under Adam, is neither read nor needs a matching optimizer."""
        target = {"params": abstract_params}
        args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                      partial_restore=True)
        return self._manager.restore(step, args=ocp.args.Composite(state=args))["state"]["params"]

    def save_items(self, step: int, items: dict, meta: dict) -> None:
        """Post-training layout: each named pytree of `items` its own item (a consumer restores only
        the ones it needs, e.g. `params`), plus `meta`. Asynchronous, like `save`."""
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        self._manager.save(step, args=ocp.args.Composite(**args, meta=ocp.args.JsonSave(meta)))

    def restore_items(self, step: int, abstract_items: dict) -> dict:
        """The named items of `abstract_items` at `step`, placed with the shardings their leaves carry."""
        args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
        with self._tree_mismatch_is_an_error(step):
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        return {name: restored[name] for name in abstract_items}

    @contextlib.contextmanager
    def _tree_mismatch_is_an_error(self, step: int):
        """Turns orbax's tree-structure mismatch (a saved optimizer state of another shape than the one
        this config builds) into a CheckpointError; checkpoints written before the optimizer identity
        was recorded reach it, because the meta check cannot see their optimizer."""
        try:
            yield
        except ValueError as e:
            if not _is_tree_mismatch(e):
                raise
            raise CheckpointError(
                f"{self.directory} step {step} holds a train state whose structure differs from the one this "
                "config builds, most likely because the optimizer changed since it was written (e.g. optim.clip_norm "
                "turned on or off); rerun with the config that wrote it, or use a fresh --workdir. "
                f"(orbax: {_orbax_summary(e)})"
            ) from e

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# Model keys that change how the parameters are used, not which parameters exist or mean.
RUNTIME_ONLY_MODEL_KEYS = ("remat", "dropout", "compute_dtype", "init_std", "attention")


def model_with_defaults(saved_model: dict) -> dict:
    """A saved model config (checkpoint meta, a sweep's trial.json) with the keys added to `config.model`
    since it was written set to their defaults, which reproduce what the model did before (e.g.
    mup_base_head_dim = 0)."""
    return {**model_config.defaults().to_dict(), **saved_model} if saved_model else saved_model


def data_with_split_seed(saved_data: dict, seed) -> dict:
    """A saved data identity or config from before data.split_seed existed: its split came from `seed`."""
    return saved_data if "split_seed" in saved_data else {**saved_data, "split_seed": seed}


def check_compatible(meta: dict, model_cfg: dict, data_identity: dict, tokenizer_hash, directory: str, *,
                     optimizer: dict, allow_steps_change: bool) -> None:
    """Raises CheckpointError if a checkpoint was written for another model, data stream, tokenizer or
    optimizer (`optimizer_identity`; see `check_optimizer` for train.steps and `allow_steps_change`)."""
    saved_model = model_with_defaults(meta.get("config", {}).get("model", {}))
    diffs = [f"model.{k}: checkpoint {saved_model.get(k)!r} vs config {v!r}"
             for k, v in model_cfg.items() if k not in RUNTIME_ONLY_MODEL_KEYS and saved_model.get(k) != v]
    if diffs:
        raise CheckpointError(
            f"{directory} holds a checkpoint of a different model ({'; '.join(diffs[:3])}); "
            "rerun with the config that wrote it, or use a fresh --workdir."
        )
    saved_data = meta.get("data_identity", {})
    saved_data = data_with_split_seed(saved_data, saved_data.get("seed"))
    diffs = [f"{k}: checkpoint {saved_data.get(k)!r} vs now {v!r}" for k, v in data_identity.items()
             if saved_data.get(k) != v]
    if diffs:
        raise CheckpointError(
            f"{directory} was trained on another data stream ({'; '.join(diffs[:3])}), so its data position "
            "cannot be resumed; rerun with the data config that wrote it, or use a fresh --workdir."
        )
    if meta.get("tokenizer_hash") != tokenizer_hash:
        raise CheckpointError(
            f"{directory} was written with tokenizer {meta.get('tokenizer_hash')!r}, not {tokenizer_hash!r}; "
            "use the tokenizer.json saved with that run, or a fresh --workdir."
        )
    check_optimizer(meta, optimizer, directory, allow_steps_change)


# Optimizer keys that change how a step computes its gradient, not the optimizer state or schedule.
RUNTIME_ONLY_OPTIM_KEYS = ("grad_accum",)


def optimizer_identity(optim_cfg, train_steps: int) -> dict:
    """What a checkpoint's optimizer state and learning-rate schedule belong to, keyed as in the config:
    every `optim` key that shapes them (clipping on/off changes the state's structure; lr, schedule,
    warmup... the schedule) and `train.steps`, the schedule's horizon. `optim_cfg` is the section the
    optimizer was built from (a ConfigDict or dict)."""
    optim = json.loads(json.dumps(dict(optim_cfg)))  # tuples -> lists, as they come back from the meta
    identity = {f"optim.{k}": v for k, v in optim.items() if k not in RUNTIME_ONLY_OPTIM_KEYS}
    return {**identity, "train.steps": train_steps}


def check_optimizer(meta: dict, identity: dict, directory: str, allow_steps_change: bool) -> None:
    """Raises CheckpointError if the checkpoint's optimizer identity differs from `identity`
    (`optimizer_identity`); a train.steps-only change passes, with a warning, if `allow_steps_change`.
    Checkpoints written before identities were recorded, and keys added to the config since, are
    unknown, so unchecked."""
    saved = meta.get("optimizer_identity")
    if saved is None:
        return
    diffs = {k: (saved[k], v) for k, v in identity.items() if k in saved and saved[k] != v}
    steps = diffs.pop("train.steps", None)
    if diffs:
        described = "; ".join(f"{k}: checkpoint {old!r} vs config {new!r}" for k, (old, new) in diffs.items())
        raise CheckpointError(
            f"{directory} was written with another optimizer or learning-rate schedule ({described}); its "
            "optimizer state belongs to that one. Rerun with the config that wrote it, or use a fresh --workdir."
        )
    if steps is None:
        return
    old, new = steps
    if not allow_steps_change:
        raise CheckpointError(
            f"{directory} was written for train.steps={old}, not {new}: the learning-rate schedule is laid out "
            f"over train.steps, so resuming would move its horizon mid-run. Rerun with train.steps={old}, set "
            "train.allow_steps_change=True to continue on the new horizon, or use a fresh --workdir."
        )
    logging.warning("resuming %s with train.steps=%s (it was written for %s; train.allow_steps_change=True): the "
                    "learning-rate schedule's horizon moved, so the rate may jump here", directory, new, old)


@contextlib.contextmanager
def _filtered(logger, text: str):
    """Drops `logger`'s records containing `text` inside the block."""
    def keep(record):
        return text not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


@contextlib.contextmanager
def _silence_failed_reads():
    """When a restore fails on damaged files, orbax closes its event loop while tensorstore reads of the
    step's other arrays are still finishing; each of those then prints an "Event loop is closed"
    traceback and asyncio logs "Task exception was never retrieved". Those say nothing the one warning
    does not, so after a failed read this swallows stderr until it has been quiet for 0.3 s (at most 3 s)."""
    buffer = _TimedBuffer()
    asyncio_log = std_logging.getLogger("asyncio")
    level = asyncio_log.level
    asyncio_log.setLevel(std_logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(buffer):
            try:
                yield
            except Exception:
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline and time.monotonic() - buffer.last_write < 0.3:
                    time.sleep(0.05)
                raise
    finally:
        asyncio_log.setLevel(level)
    sys.stderr.write(buffer.getvalue())  # a successful restore's own output is shown as usual


class _TimedBuffer(io.StringIO):
    def __init__(self):
        super().__init__()
        self.last_write = time.monotonic()

    def write(self, text):
        self.last_write = time.monotonic()
        return super().write(text)


def _is_tree_mismatch(e: ValueError) -> bool:
    # orbax says "...metadata tree structures do not match: <path> ..." or "Structure mismatch: ..."
    return "structure" in str(e).lower()


def _orbax_summary(e: Exception) -> str:
    """orbax's message on one line, without its advice (partial_restore) or its listing of every saved key."""
    text = str(e).split("If this mismatch")[0].split("Metadata keys")[0]
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:300] + " ..."
