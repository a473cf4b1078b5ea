"""`mode=sample`: completions of prompts from the latest checkpoint in the workdir, written as JSONL.

The model is the one the checkpoint was trained with (its config is stored in the checkpoint, so
`config.model` is not read); the tokenizer is WORKDIR/tokenizer.json and must be the one the checkpoint
was trained with. Each prompt is encoded after <|bos|>, as every training document starts.
One JSON row per completion goes to `sample.output` (default WORKDIR/samples.jsonl), written atomically.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from gptjax.data.tokenizer import Tokenizer, TokenizerError
from gptjax.sample.generate import generate
from gptjax.sample.search import beam_search
from gptjax.sample.strategies import SampleError, Strategy
from gptjax.train.checkpoint import CheckpointError, Checkpointer
from gptjax.train.loop import run_in_mesh
from gptjax.train.optim import make_optimizer
from gptjax.train.state import state_spec


def sample_checkpoint(cfg, workdir: str) -> dict:
    """Samples per `cfg.sample` from the latest checkpoint in `workdir`; returns a summary."""
    return run_in_mesh(_sample_checkpoint, cfg, workdir)


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
        raise SampleError(f"{path} does not exist; sampling text needs the tokenizer the checkpoint was trained with, "
                          "which runs on text sources save there (synthetic-token runs have none)")
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
        # The saved state includes the optimizer's; its structure comes from the trained config.
        optimizer, _ = make_optimizer(trained.optim, trained.train.steps, trained.model)
        state = checkpointer.restore_state(step, state_spec(trained.model, optimizer, mesh, rules, trained.seed).abstract)
    finally:
        checkpointer.close()
    return trained, state["params"], step, meta


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


def _write_jsonl_atomic(path: str, rows: list[dict]) -> None:
    if jax.process_index() != 0:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _sample_checkpoint(cfg, workdir: str, mesh) -> dict:
    s = cfg.sample
    prompts = read_prompts(s)
    tokenizer = load_workdir_tokenizer(workdir)
    trained, params, step, meta = restore_trained_params(workdir, mesh, tuple(cfg.parallel.rules))
    if meta.get("tokenizer_hash") != tokenizer.hash:
        raise CheckpointError(f"{workdir}/tokenizer.json (hash {tokenizer.hash}) is not the tokenizer checkpoint {step} "
                              f"was trained with ({meta.get('tokenizer_hash')}); restore that run's tokenizer.json.")
    automaton = constraint_automaton(s, tokenizer)
    encoded = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
    # One row per (prompt, sample); each row's key depends only on those indices, not on batching.
    jobs = [(i, j) for i in range(len(prompts)) for j in range(1 if s.beam_width else s.num_samples)]
    root, strategy = jax.random.key(s.seed), Strategy(s.temperature, s.top_k, s.top_p, s.min_p)
    rows = []
    for first in range(0, len(jobs), s.batch_size):
        batch = jobs[first:first + s.batch_size]
        batch_prompts = [encoded[i] for i, _ in batch]
        if s.beam_width:
            beams = beam_search(trained.model, params, batch_prompts, beam_width=s.beam_width,
                                max_new_tokens=s.max_new_tokens, length_penalty=s.length_penalty, tokenizer=tokenizer)
            completions = [(i, j, c) for (i, _), best in zip(batch, beams) for j, c in enumerate(best[:s.num_samples])]
        else:
            keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(root, i), j) for i, j in batch])
            out = generate(trained.model, params, batch_prompts, max_new_tokens=s.max_new_tokens, strategy=strategy,
                           seed=keys, stop_strings=tuple(s.stop_strings), tokenizer=tokenizer, automaton=automaton)
            completions = [(i, j, c) for (i, j), c in zip(batch, out)]
        for i, j, c in completions:
            rows.append(dict(prompt=prompts[i], prompt_index=i, sample_index=j, completion=c.text, tokens=c.tokens,
                             logprob=c.logprob, mean_logprob=c.mean_logprob, token_logprobs=c.logprobs,
                             finish_reason=c.finish_reason, **({"score": c.score} if c.score is not None else {})))
        logging.info("sampled %d/%d rows", min(first + s.batch_size, len(jobs)), len(jobs))
    output = s.output or os.path.join(workdir, "samples.jsonl")
    _write_jsonl_atomic(output, rows)
    result = dict(step=step, prompts=len(prompts), samples=len(rows), output=os.path.abspath(output))
    if s.prompt:  # one prompt from the command line: show its completions too
        result["completions"] = [r["completion"] for r in rows]
    return result
