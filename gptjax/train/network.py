"""One way to read a trained network from a workdir: `load_network(workdir, mesh, rules)`.

Every reader of another run (mode=sample, mode=eval, a post-training stage's init_from, reference and
reward models, best-of-N scorers, notebooks, benchmarks) goes through here. It opens the run's
checkpoints read-only, restores only the parameters (a pretraining checkpoint's optimizer state, twice
the params under Adam, is never read) straight onto their shardings, fills the model config's keys added
since the run was written with their defaults, and loads the tokenizer the run was trained with.

Two checkpoint layouts exist: pretraining's (`state` item: params inside the train state; `meta` with
the full config) and post-training's (`params` item; `meta` with "stage" and "model"). A LoRA stage's `params`
hold only its adapters (and a reward model's head): its network is its base's (`meta["lora_base"]`) with them
merged in.
"""

import dataclasses
import os

import ml_collections

from gptjax.data.tokenizer import Tokenizer, TokenizerError
from gptjax.model import lora
from gptjax.model.quantize import quantization_rounded
from gptjax.train.checkpoint import CheckpointError, Checkpointer, model_with_defaults
from gptjax.train.state import abstract_params


@dataclasses.dataclass
class Network:
    """A trained network: its model config, params placed on the mesh, tokenizer (None for
    synthetic-token runs, which have none), the checkpoint's step and meta, and the workdir."""

    model_cfg: ml_collections.ConfigDict
    params: dict
    tokenizer: Tokenizer | None
    step: int
    meta: dict
    workdir: str

    @property
    def stage(self) -> str:
        """"pretrain", or the post-training mode that wrote the checkpoint ("sft", "reward", ...)."""
        return self.meta.get("stage", "pretrain")


def workdir_tokenizer(workdir: str) -> Tokenizer:
    """WORKDIR/tokenizer.json, the tokenizer a run was trained with."""
    path = os.path.join(workdir, "tokenizer.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist; reading text needs the tokenizer the checkpoint in {workdir} "
                              "was trained with, which runs on text sources save there (synthetic-token runs have none)")
    try:
        return Tokenizer.load(path)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e


def saved_model_config(meta: dict) -> ml_collections.ConfigDict:
    """The network's model config from a checkpoint's meta (either layout), defaults filled in."""
    saved = meta["model"] if "stage" in meta else meta["config"]["model"]
    return ml_collections.ConfigDict(model_with_defaults(saved))


def _with_base(meta: dict, model_cfg, trained: dict, mesh, rules, what: str):
    """(plain model config, params) of a LoRA checkpoint: its base network with the adapters merged in."""
    base_dir = meta.get("lora_base", "")
    if not os.path.isdir(os.path.join(base_dir, "checkpoints")):
        raise CheckpointError(f"{what}: a LoRA checkpoint whose base network {base_dir!r} (the align.init_from it "
                              "adapted) is gone; restore that workdir")
    base = load_network(base_dir, mesh, rules, what=f"{what}'s LoRA base", need_tokenizer=False)
    # under an int8 base (align.quantize_base) the adapters were trained against the rounded kernels
    frozen = quantization_rounded(base.params) if model_cfg.get("kernel_quant", "none") == "int8" else base.params
    return lora.merged(model_cfg, lora.combine(frozen, trained))


def load_network(workdir: str, mesh, rules, *, what: str = "--workdir", need_tokenizer: bool = True,
                 step: int | None = None) -> Network:
    """The newest readable checkpoint's network in `workdir` (params only, placed by `rules` on `mesh`), or
    that of checkpoint `step` when given. `what` names the input in errors (e.g. "align.reference"). A damaged
    newest step is skipped with a warning for the one before it (checkpoint.Checkpointer.restore_newest_readable);
    a damaged `step` is an error."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise CheckpointError(f"{what}={workdir!r}: no checkpoint in {os.path.abspath(directory)}; give the workdir of "
                              "a finished run, or train first (e.g. mode=pretrain)")
    checkpointer = Checkpointer.reader(directory)

    def restore(step):
        meta = checkpointer.restore_meta(step)
        model_cfg = saved_model_config(meta)
        target = abstract_params(model_cfg, mesh, rules)
        if model_cfg.lora_rank:  # a LoRA stage saved its trainable leaves; the frozen rest is its base's
            trained = checkpointer.restore_items(step, {"params": lora.split(target)[0]})["params"]
            return (*_with_base(meta, model_cfg, trained, mesh, rules, what), meta)
        if "stage" in meta:
            params = checkpointer.restore_items(step, {"params": target})["params"]
        else:
            params = checkpointer.restore_params(step, target)
        return model_cfg, params, meta

    try:
        if step is None:
            found = checkpointer.restore_newest_readable(restore)
        elif step in checkpointer.all_steps():
            found = step, restore(step)
        else:
            raise CheckpointError(f"{what}={workdir!r}: no checkpoint step {step} in {os.path.abspath(directory)} (it "
                                  f"has {checkpointer.all_steps()}); raise train.max_to_keep to keep more steps")
    finally:
        checkpointer.close()
    if found is None:
        raise CheckpointError(f"{what}={workdir!r}: no checkpoint in {os.path.abspath(directory)}; give the workdir of "
                              "a finished run, or train first (e.g. mode=pretrain)")
    step, (model_cfg, params, meta) = found
    tokenizer = None
    if need_tokenizer or os.path.isfile(os.path.join(workdir, "tokenizer.json")):
        tokenizer = workdir_tokenizer(workdir)
        if meta.get("tokenizer_hash") != tokenizer.hash:
            raise CheckpointError(f"{workdir}/tokenizer.json (hash {tokenizer.hash}) is not the tokenizer checkpoint "
                                  f"{step} was trained with ({meta.get('tokenizer_hash')}); restore that run's "
                                  "tokenizer.json")
    return Network(model_cfg, params, tokenizer, step, meta, workdir)
