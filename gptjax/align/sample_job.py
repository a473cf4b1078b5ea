"""`mode=sample`: completions of prompts from the latest checkpoint in the workdir, written as JSONL.

The model is the one the checkpoint was trained with (its config is stored in the checkpoint, so
`config.model` is not read); the tokenizer is WORKDIR/tokenizer.json and must be the one the checkpoint
was trained with. Each prompt is encoded after <|bos|>, as every training document starts.
One JSON row per completion goes to `sample.output` (default WORKDIR/samples.jsonl), written atomically.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from gptjax.align.chat import prompt_tokens
from gptjax.align.losses import best_of_n_kl
from gptjax.align.reward import RewardModel
from gptjax.align.stage import AlignError
from gptjax.atomic import write_jsonl_atomic
from gptjax.sample.generate import generate
from gptjax.sample.job import constraint_automaton, read_prompts
from gptjax.sample.quantize import params_bytes, quantize_int8
from gptjax.sample.search import beam_search, best_of_n
from gptjax.sample.strategies import SampleError, Strategy
from gptjax.train.loop import run_in_mesh
from gptjax.train.network import load_network


def sample_checkpoint(cfg, workdir: str) -> dict:
    """Samples per `cfg.sample` from the latest checkpoint in `workdir`; returns a summary."""
    return run_in_mesh(_sample_checkpoint, cfg, workdir)


def reward_scorer(sample_cfg, model_cfg, tokenizer, mesh, rules):
    """sample.scorer's reward model as a best-of-N scorer, or None."""
    if not sample_cfg.scorer:
        return None
    try:
        scorer = RewardModel(sample_cfg.scorer, mesh, rules, "sample.scorer")
    except AlignError as e:
        raise SampleError(str(e)) from e
    if scorer.network.tokenizer.hash != tokenizer.hash or scorer.model_cfg.vocab_size != model_cfg.vocab_size:
        raise SampleError(f"sample.scorer={sample_cfg.scorer!r} was trained with another tokenizer or vocabulary than "
                          "the sampled model; train the reward model from this model's run")
    return scorer


def encode_prompt(prompt: str, tokenizer, chat_template: bool) -> list[int]:
    """BOS (where the tokenizer has one) + the prompt, as pretraining documents start; or, with `chat_template`,
    a user turn followed by the assistant's turn opening (the chat template), as SFT'd models expect."""
    if chat_template:
        return prompt_tokens(prompt, tokenizer)
    return ([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + tokenizer.encode(prompt)


def _sample_checkpoint(cfg, workdir: str, mesh) -> dict:
    s, rules = cfg.sample, tuple(cfg.parallel.rules)
    prompts = read_prompts(s)
    network = load_network(workdir, mesh, rules)
    model_cfg, params, step, tokenizer = network.model_cfg, network.params, network.step, network.tokenizer
    memory = {}
    if s.quantize == "int8":
        memory["params_bytes_float"] = params_bytes(params)
        model_cfg, params = quantize_int8(model_cfg, params, mesh, rules)
        memory["params_bytes_int8"] = params_bytes(params)
    automaton = constraint_automaton(s, tokenizer)
    scorer = reward_scorer(s, model_cfg, tokenizer, mesh, rules)
    encoded = [encode_prompt(p, tokenizer, s.chat) for p in prompts]
    if scorer is not None:
        return _best_of_n(cfg, workdir, model_cfg, params, step, tokenizer, prompts, encoded, scorer, automaton, rules)
    # One row per (prompt, sample); each row's key depends only on those indices, not on batching.
    jobs = [(i, j) for i in range(len(prompts)) for j in range(1 if s.beam_width else s.num_samples)]
    root, strategy = jax.random.key(s.seed), Strategy(s.temperature, s.top_k, s.top_p, s.min_p)
    rows = []
    for first in range(0, len(jobs), s.batch_size):
        batch = jobs[first:first + s.batch_size]
        batch_prompts = [encoded[i] for i, _ in batch]
        if s.beam_width:
            beams = beam_search(model_cfg, params, batch_prompts, beam_width=s.beam_width,
                                max_new_tokens=s.max_new_tokens, length_penalty=s.length_penalty, tokenizer=tokenizer,
                                rules=rules)
            completions = [(i, j, c) for (i, _), best in zip(batch, beams) for j, c in enumerate(best[:s.num_samples])]
        else:
            keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(root, i), j) for i, j in batch])
            out = generate(model_cfg, params, batch_prompts, max_new_tokens=s.max_new_tokens, strategy=strategy,
                           seed=keys, stop_strings=tuple(s.stop_strings), tokenizer=tokenizer, automaton=automaton,
                           rules=rules)
            completions = [(i, j, c) for (i, j), c in zip(batch, out)]
        for i, j, c in completions:
            rows.append(dict(prompt=prompts[i], prompt_index=i, sample_index=j, completion=c.text, tokens=c.tokens,
                             logprob=c.logprob, mean_logprob=c.mean_logprob, token_logprobs=c.logprobs,
                             finish_reason=c.finish_reason, **({"score": c.score} if c.score is not None else {})))
        logging.info("sampled %d/%d rows", min(first + s.batch_size, len(jobs)), len(jobs))
    output = s.output or os.path.join(workdir, "samples.jsonl")
    write_jsonl_atomic(output, rows)
    result = dict(step=step, prompts=len(prompts), samples=len(rows), output=os.path.abspath(output), **memory)
    if s.prompt:  # one prompt from the command line: show its completions too
        result["completions"] = [r["completion"] for r in rows]
    return result


def _best_of_n(cfg, workdir, model_cfg, params, step, tokenizer, prompts, encoded, scorer, automaton, rules) -> dict:
    """sample.num_samples completions per prompt ranked by the reward model; rows carry `score` and
    `rank` (0 = the best-of-N pick). Sampling keys are those of plain sampling, so rank 0 is the
    best of exactly the completions a scorer-less run would write."""
    s = cfg.sample
    root, strategy = jax.random.key(s.seed), Strategy(s.temperature, s.top_k, s.top_p, s.min_p)
    rows = []
    for i, prompt in enumerate(encoded):
        keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(root, i), j) for j in range(s.num_samples)])
        ranked = best_of_n(model_cfg, params, prompt, n=s.num_samples, max_new_tokens=s.max_new_tokens,
                           strategy=strategy, seed=keys, scorer=scorer, stop_strings=tuple(s.stop_strings),
                           tokenizer=tokenizer, automaton=automaton, rules=rules)
        for rank, c in enumerate(ranked):
            rows.append(dict(prompt=prompts[i], prompt_index=i, rank=rank, score=c.score, completion=c.text,
                             tokens=c.tokens, logprob=c.logprob, finish_reason=c.finish_reason))
        logging.info("best-of-%d: %d/%d prompts", s.num_samples, i + 1, len(prompts))
    output = s.output or os.path.join(workdir, "samples.jsonl")
    write_jsonl_atomic(output, rows)
    best = [r for r in rows if r["rank"] == 0]
    return dict(step=step, prompts=len(prompts), samples=len(rows), output=os.path.abspath(output),
                best_of=s.num_samples, kl_bound=best_of_n_kl(s.num_samples), mean_best_score=float(
                    np.mean([r["score"] for r in best])), best_completions=[r["completion"] for r in best])
