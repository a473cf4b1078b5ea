"""The sample layer's part of `mode=sample` (the job itself is align/sample_job.py, since a post-training
checkpoint, a reward-model scorer and the chat template come from align/): the prompts, a pretraining
workdir's tokenizer and latest params, and the constrained-decoding automaton.
"""

import os

import ml_collections

from gptjax.data.tokenizer import Tokenizer, TokenizerError
from gptjax.sample.strategies import SampleError
from gptjax.train.checkpoint import CheckpointError, Checkpointer
from gptjax.train.state import abstract_params


def read_prompts(sample_cfg) -> list[str]:
    if sample_cfg.prompt:
        return [sample_cfg.prompt]
    with open(sample_cfg.prompts_file, encoding="utf-8") as f:
        prompts = [line.rstrip("\r\n") for line in f if line.strip()]
    if not prompts:
        raise SampleError(f"sample.prompts_file={sample_cfg.prompts_file!r} holds no prompts; write one per line")
    return prompts


def load_workdir_tokenizer(workdir: str) -> Tokenizer:
    path = os.path.join(workdir, "tokenizer.json")
    if not os.path.isfile(path):
        raise SampleError(f"{path} does not exist; reading text needs the tokenizer the checkpoint in {workdir} was "
                          "trained with, which runs on text sources save there (synthetic-token runs have none)")
    try:
        return Tokenizer.load(path)
    except TokenizerError as e:
        raise SampleError(str(e)) from e


def restore_trained_params(workdir: str, mesh, rules) -> tuple[ml_collections.ConfigDict, dict, int, dict]:
    """(trained config, params placed by `rules` on `mesh`, step, meta) of the latest checkpoint."""
    directory = os.path.join(workdir, "checkpoints")
    checkpointer = Checkpointer(directory, max_to_keep=1) if os.path.isdir(directory) else None
    step = checkpointer.latest_step() if checkpointer else None
    if step is None:
        raise CheckpointError(f"no checkpoint in {os.path.abspath(directory)}; train first with mode=pretrain.")
    try:
        meta = checkpointer.restore_meta(step)
        trained = ml_collections.ConfigDict(meta["config"])
        params = checkpointer.restore_params(step, abstract_params(trained.model, mesh, rules))
    finally:
        checkpointer.close()
    return trained, params, step, meta


def constraint_automaton(sample_cfg, tokenizer):
    """The automaton for sample.regex / sample.json_schema, or None."""
    if not (sample_cfg.regex or sample_cfg.json_schema):
        return None
    from gptjax.sample import constrained  # lazy: only constrained runs build automata

    key, value = ("sample.regex", sample_cfg.regex) if sample_cfg.regex else ("sample.json_schema", sample_cfg.json_schema)
    try:
        if sample_cfg.regex:
            return constrained.regex_automaton(sample_cfg.regex, tokenizer)
        return constrained.json_schema_automaton(sample_cfg.json_schema, tokenizer)
    except constrained.ConstraintError as e:
        raise SampleError(f"{key}={value!r}: {e}") from e
