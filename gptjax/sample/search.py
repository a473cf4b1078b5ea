"""Search over continuations: beam search (jitted, on the KV cache), best-of-N and self-consistency.

Beam search starts from generate.py's `start_decoding` (left-padding and prefill, shared with sampling)
and supplies its own loop; best-of-N and self-consistency rank or vote over `generate`'s samples.

Scores are logprobs under the model's unfiltered distribution (see generate.py). Beam search ranks
hypotheses by the length-normalised score  sum(logprobs) / length**length_penalty  (length in
generated tokens, the stop token included; length_penalty=0 is the plain sum, 1 the mean).
"""

import collections
import dataclasses
import functools
from typing import Callable, Hashable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.model.kv_cache import select_rows
from gptjax.data.tokenizer import pad_rows
from gptjax.sample.generate import PAD_ID, Completion, generate, next_token_logits, start_decoding, to_completions
from gptjax.sample.strategies import SampleError, Strategy
from gptjax.parallel.mesh import to_host


# Not donating the prefill caches: their B rows become B*W beam rows, so no output could reuse them.
@functools.partial(jax.jit, static_argnames=("graphdef", "first_slot", "max_new_tokens", "beam_width",
                                             "length_penalty", "stop_ids", "pad_id", "vocab_size"))
def beam_decode(graphdef, params, caches, logits_BxV, start_B, *, first_slot: int, max_new_tokens: int,
                beam_width: int, length_penalty: float, stop_ids: tuple, pad_id: int, vocab_size: int):
    """Beam search after `prefill` (from its B-row caches: the W beams of a prompt share its
    prefill). Returns (tokens_BxWxE, logprobs_BxWxE, lengths_BxW, finished_BxW, scores_BxW), beams
    sorted best first; a beam whose score is -inf never existed (fewer hypotheses than beams)."""
    B, V = logits_BxV.shape
    W, E, R = beam_width, max_new_tokens, logits_BxV.shape[0] * beam_width
    rows_R = jnp.repeat(jnp.arange(B), W)
    start_R = start_B[rows_R]
    vocab_1x1xV = jnp.arange(V)[None, None, :] < vocab_size
    # A finished beam has one continuation, a pad at logprob 0, so it competes with its score unchanged.
    finished_1x1xV = jnp.where(jnp.arange(V) == pad_id, 0.0, -jnp.inf)[None, None, :]

    def not_finished(c):
        return (c["step"] < E) & ~jnp.all(c["finished_BxW"])

    def step(c):
        i, finished_BxW = c["step"], c["finished_BxW"]
        logprobs_BxWxV = jax.nn.log_softmax(c["logits_RxV"], axis=-1).reshape(B, W, V)
        logprobs_BxWxV = jnp.where(vocab_1x1xV, logprobs_BxWxV, -jnp.inf)
        logprobs_BxWxV = jnp.where(finished_BxW[..., None], finished_1x1xV, logprobs_BxWxV)
        sums_BxWxV = c["sums_BxW"][..., None] + logprobs_BxWxV
        lengths_BxWx1 = (c["lengths_BxW"] + ~finished_BxW)[..., None]
        scores_BxWxV = sums_BxWxV / lengths_BxWx1.astype(jnp.float32) ** length_penalty
        scores_BxW, flat_BxW = jax.lax.top_k(scores_BxWxV.reshape(B, W * V), W)
        parent_BxW, token_BxW = flat_BxW // V, (flat_BxW % V).astype(jnp.int32)

        def inherit(x_BxW):
            return jnp.take_along_axis(x_BxW, parent_BxW.reshape(B, W, *[1] * (x_BxW.ndim - 2)), axis=1)

        was_finished_BxW = inherit(finished_BxW)
        sums_BxW = jnp.take_along_axis(sums_BxWxV.reshape(B, W * V), flat_BxW, axis=1)
        token_logprob_BxW = jnp.take_along_axis(logprobs_BxWxV.reshape(B, W * V), flat_BxW, axis=1)
        finished_now_BxW = ~was_finished_BxW & (jnp.isin(token_BxW, jnp.array(stop_ids, jnp.int32))
                                                | ~jnp.isfinite(sums_BxW))  # -inf: a beam that never existed
        caches = select_rows(c["caches"], (jnp.arange(B)[:, None] * W + parent_BxW).reshape(R))
        model = nnx.merge(graphdef, params)  # in the loop's trace: nnx transforms (scan_layers) need it there
        logits_RxV, caches = next_token_logits(model, token_BxW.reshape(R, 1), caches, start_R, first_slot + i)
        return dict(step=i + 1, caches=caches, logits_RxV=logits_RxV, sums_BxW=sums_BxW,
                    scores_BxW=scores_BxW, lengths_BxW=inherit(c["lengths_BxW"]) + ~was_finished_BxW,
                    finished_BxW=was_finished_BxW | finished_now_BxW,
                    stopped_BxW=inherit(c["stopped_BxW"]) | (finished_now_BxW & jnp.isfinite(sums_BxW)),
                    tokens_BxWxE=inherit(c["tokens_BxWxE"]).at[:, :, i].set(token_BxW),
                    logprobs_BxWxE=inherit(c["logprobs_BxWxE"]).at[:, :, i].set(
                        jnp.where(was_finished_BxW, 0.0, token_logprob_BxW)))

    # Beams 1..W-1 start at -inf, so the first step draws W distinct tokens from beam 0.
    sums_BxW = jnp.where(jnp.arange(W) == 0, 0.0, -jnp.inf)[None, :].repeat(B, axis=0)
    # Every beam starts from its prompt's prefill.
    init = dict(step=jnp.int32(0), caches=select_rows(caches, rows_R), logits_RxV=logits_BxV[rows_R], sums_BxW=sums_BxW,
                scores_BxW=sums_BxW, lengths_BxW=jnp.zeros((B, W), jnp.int32), finished_BxW=jnp.zeros((B, W), bool),
                stopped_BxW=jnp.zeros((B, W), bool), tokens_BxWxE=jnp.full((B, W, E), pad_id, jnp.int32),
                logprobs_BxWxE=jnp.zeros((B, W, E), jnp.float32))
    out = jax.lax.while_loop(not_finished, step, init)
    return out["tokens_BxWxE"], out["logprobs_BxWxE"], out["lengths_BxW"], out["stopped_BxW"], out["scores_BxW"]


def beam_search(model_cfg, params, prompts, *, beam_width: int, max_new_tokens: int, length_penalty: float = 1.0,
                stop_tokens=None, tokenizer=None, vocab_size: int | None = None, rules: tuple = ()
                ) -> list[list[Completion]]:
    """Beam search from each prompt (lists of token ids): per prompt, up to `beam_width` Completions,
    best first, each with `.score` = sum(logprobs) / len(tokens)**length_penalty. A beam ends at a stop
    token (default EOS) or after max_new_tokens. Deterministic; no sampling strategy applies."""
    if beam_width < 1:
        raise SampleError(f"beam_width={beam_width}: must be >= 1")
    s = start_decoding(model_cfg, params, prompts, max_new_tokens=max_new_tokens, stop_tokens=stop_tokens,
                       tokenizer=tokenizer, vocab_size=vocab_size, rules=rules)
    out = beam_decode(s.graphdef, params, s.caches, s.logits_BxV, s.start_B, first_slot=s.first_slot,
                      max_new_tokens=max_new_tokens, beam_width=beam_width, length_penalty=float(length_penalty),
                      stop_ids=s.stop_ids, pad_id=PAD_ID, vocab_size=s.vocab_size)
    tokens, logprobs, lengths, stopped, scores = to_host(out)
    B, W, E = tokens.shape
    flat = to_completions(tokens.reshape(B * W, E), logprobs.reshape(B * W, E), lengths.reshape(-1),
                          stopped.reshape(-1), tokenizer=tokenizer)
    results = []
    for b in range(B):
        beams = []
        for w in range(W):
            if np.isfinite(scores[b, w]):
                beams.append(dataclasses.replace(flat[b * W + w], score=float(scores[b, w])))
        results.append(beams)
    return results


def token_batch(prompts, completions) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_RxL, lengths_R): each prompt + its completion, right-padded with <|pad|> (a scorer's input)."""
    rows = [list(prompt) + c.tokens for prompt, c in zip(prompts, completions, strict=True)]
    return pad_rows(rows, max(map(len, rows))), np.array([len(r) for r in rows], np.int32)


def best_of_n(model_cfg, params, prompt, *, n: int, max_new_tokens: int, strategy: Strategy = Strategy(), seed=0,
              scorer: Callable | None = None, **generate_kwargs) -> list[Completion]:
    """Samples n completions of one prompt and returns them best first, each with `.score`: its mean
    logprob, or `scorer(tokens_RxL, lengths_R) -> scores_R` on the prompt + completion token batch of
    `token_batch` (e.g. a reward model's value at each row's last token). Other keyword arguments go
    to `generate`."""
    if n < 1:
        raise SampleError(f"n={n}: must be >= 1")
    completions = generate(model_cfg, params, [list(prompt)] * n, max_new_tokens=max_new_tokens, strategy=strategy,
                           seed=seed, **generate_kwargs)
    if scorer is None:
        scores = np.array([c.mean_logprob for c in completions])
    else:
        scores = np.asarray(scorer(*token_batch([prompt] * n, completions)), np.float64)
        if scores.shape != (n,):
            raise SampleError(f"the scorer returned shape {scores.shape} for {n} completions; it must return one "
                              "score per row")
    ranked = sorted(zip(scores, range(n)), key=lambda si: -si[0])
    return [dataclasses.replace(completions[i], score=float(s)) for s, i in ranked]


@dataclasses.dataclass
class Vote:
    """The result of self-consistency: the majority answer and what it was drawn from."""

    answer: Hashable | None  # the most frequent answer; ties go to the one seen first; None if none was found
    counts: collections.Counter  # answer -> number of samples giving it
    answers: list  # per sample: its extracted answer, or None
    completions: list[Completion]


def self_consistency(model_cfg, params, prompt, *, n: int, extract_answer: Callable[[Completion], Hashable | None],
                     max_new_tokens: int, strategy: Strategy = Strategy(), seed=0, **generate_kwargs) -> Vote:
    """Samples n completions of one prompt, extracts each one's answer with `extract_answer` (None =
    no answer, not counted) and returns the majority vote. Other keyword arguments go to `generate`
    (pass a tokenizer to give the extractor `.text`)."""
    if n < 1:
        raise SampleError(f"n={n}: must be >= 1")
    completions = generate(model_cfg, params, [list(prompt)] * n, max_new_tokens=max_new_tokens, strategy=strategy,
                           seed=seed, **generate_kwargs)
    answers = [extract_answer(c) for c in completions]
    counts = collections.Counter(a for a in answers if a is not None)
    return Vote(counts.most_common(1)[0][0] if counts else None, counts, answers, completions)
