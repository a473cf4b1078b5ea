"""Checkpoints with orbax: async saves, atomic steps, restore onto the target sharding.

The only module that imports orbax. A checkpoint step holds two items:
  state  the train-state pytree (params, opt_state, step, rng)   StandardSave
  meta   JSON: step, config, data-iterator state, tokenizer hash  JsonSave
Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save never leaves a step that later reads as finished.
"""

import os

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this job; the message names it and the fix."""


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        """Starts an asynchronous save; the previous one is finished first by orbax."""
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def restore_meta(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_state(self, step: int, abstract_state):
        """The state at `step`, placed with the shardings carried by `abstract_state`'s leaves."""
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        return restored["state"]

    def save_items(self, step: int, items: dict, meta: dict) -> None:
        """Post-training layout: each named pytree of `items` its own item (a consumer restores only
        the ones it needs, e.g. `params`), plus `meta`. Asynchronous, like `save`."""
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        self._manager.save(step, args=ocp.args.Composite(**args, meta=ocp.args.JsonSave(meta)))

    def restore_items(self, step: int, abstract_items: dict) -> dict:
        """The named items of `abstract_items` at `step`, placed with the shardings their leaves carry."""
        args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        return {name: restored[name] for name in abstract_items}

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# Model keys that change how the parameters are used, not which parameters exist or mean.
RUNTIME_ONLY_MODEL_KEYS = ("remat", "dropout", "compute_dtype", "init_std")


def check_compatible(meta: dict, model_cfg: dict, data_identity: dict, tokenizer_hash, directory: str) -> None:
    """Raises CheckpointError if a checkpoint was written for another model, data stream or tokenizer."""
    saved_model = meta.get("config", {}).get("model", {})
    diffs = [f"model.{k}: checkpoint {saved_model.get(k)!r} vs config {v!r}"
             for k, v in model_cfg.items() if k not in RUNTIME_ONLY_MODEL_KEYS and saved_model.get(k) != v]
    if diffs:
        raise CheckpointError(
            f"{directory} holds a checkpoint of a different model ({'; '.join(diffs[:3])}); "
            "rerun with the config that wrote it, or use a fresh --workdir."
        )
    saved_data = meta.get("data_identity", {})
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
