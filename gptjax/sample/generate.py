"""Autoregressive generation with a KV cache: the prompts in one prefill pass, then one token per step
inside a jitted `lax.while_loop`.

`start_decoding` is the setup every decoding strategy shares (here sampling, in search.py beam search):
batched prompts of different lengths are left-padded to a common length (a multiple of PROMPT_BUCKET, so
few shapes are compiled), each row's positions starting at 0 at its first real token and its pads hidden
from attention (model/kv_cache.py), and run through the model once, which fills the KV caches. The
caches are plain arrays of a static size, prompt + max_new_tokens slots, passed to `Transformer.decode`
and returned updated; they are donated from the prefill to the decode loop, which updates them in place.

Per step and row: logits of tokens the row may not emit -> -inf (ids >= vocab_size; an automaton's
disallowed tokens) -> a Strategy picks the token -> the row stops at a stop token (EOS by default).
Stop strings are matched on the host after the loop, on decoded text: a string can straddle token
boundaries and be tokenized many ways, so only text comparison is exact; the price is that a row
that hits one keeps decoding (uselessly) until it stops otherwise. Each returned token carries its
logprob under the model's unfiltered distribution (softmax of the raw logits: temperature 1, no
top-k/top-p/min-p, no constraint), so scores compare across strategies.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.data.tokenizer import EOS_ID, PAD_ID
from gptjax.model.kv_cache import cache_positions, empty_caches
from gptjax.sample.strategies import SampleError, Strategy, sample_tokens, token_logprobs
from gptjax.model.build import model_graphdef
from gptjax.parallel.mesh import to_host

PROMPT_BUCKET = 16  # prompts are left-padded to a multiple of this many tokens


@dataclasses.dataclass
class Completion:
    """One generated continuation of a prompt."""

    tokens: list[int]  # generated ids; ends with the stop token (or the one completing a stop string) if any
    logprobs: list[float]  # per token, under the model's unfiltered distribution (see module docstring)
    finish_reason: str  # "stop_token" | "stop_string" | "length" (max_new_tokens reached)
    text: str | None = None  # decoded, without the stop token and cut before a stop string; needs a tokenizer
    score: float | None = None  # set by search.py: what the search ranked it by

    @property
    def logprob(self) -> float:
        """Sequence logprob: the sum of the per-token logprobs."""
        return float(sum(self.logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(len(self.tokens), 1)


def left_pad(prompts, *, max_new_tokens: int, max_len: int, vocab_size: int, pad_id: int = PAD_ID):
    """(tokens_BxL, start_B) int32 numpy arrays: each prompt right-aligned in P columns (a multiple of
    PROMPT_BUCKET), `pad_id` before it; start_B[b] is the column of row b's first token."""
    if len(prompts) == 0:
        raise SampleError("no prompts given; pass at least one list of token ids")
    if max_new_tokens < 1:
        raise SampleError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise SampleError(f"prompt {i} is empty; give it at least one token (e.g. <|bos|>)")
        if len(prompt) + max_new_tokens > max_len:
            raise SampleError(f"prompt {i} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} that exceeds "
                              f"the model's context of {max_len} tokens (model.max_len); shorten the prompt or lower "
                              "max_new_tokens")
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise SampleError(f"prompt {i} holds token id {bad[0]}, outside the model's vocabulary [0, {vocab_size})")
    P = -(-max(len(p) for p in prompts) // PROMPT_BUCKET) * PROMPT_BUCKET
    tokens_BxL = np.full((len(prompts), P), pad_id, np.int32)
    for i, prompt in enumerate(prompts):
        tokens_BxL[i, P - len(prompt):] = prompt
    start_B = np.array([P - len(p) for p in prompts], np.int32)
    return tokens_BxL, start_B


def next_token_logits(model, tokens_BxT, caches, start_B, first_slot):
    """(float32 logits_BxV after the T tokens written to cache slots first_slot.., the updated caches);
    the LM head runs on the last position only."""
    x_BxTxD, caches = model.decode(tokens_BxT, cache_positions(start_B, first_slot, tokens_BxT.shape[1]), caches)
    return model.logits(x_BxTxD[:, -1:])[:, 0].astype(jnp.float32), caches


@functools.partial(jax.jit, static_argnames=("graphdef", "length"))
def prefill(graphdef, params, prompt_BxL, start_B, *, length: int):
    """Runs left-padded prompts through the model in one pass: (KV caches of `length` slots holding
    them, float32 logits_BxV of each row's next token)."""
    model = nnx.merge(graphdef, params)
    logits_BxV, caches = next_token_logits(model, prompt_BxL, empty_caches(model, start_B, length), start_B, 0)
    return caches, logits_BxV


@dataclasses.dataclass(frozen=True)
class DecodeStart:
    """What every decoding loop starts from: prompts left-padded, prefilled and the rules a row stops by."""

    graphdef: nnx.GraphDef
    caches: object  # KV caches of first_slot + max_new_tokens slots holding the prompts; a loop may donate them
    logits_BxV: jax.Array  # float32: each row's next-token logits
    start_B: jax.Array  # int32: each row's first real slot (its pads come before)
    first_slot: int  # the padded prompt length P: the slot of the first generated token
    stop_ids: tuple  # sorted ids that end a row
    vocab_size: int  # ids at or above it are never emitted


def default_stop_ids(tokenizer) -> tuple:
    """The tokenizer's stop ids; gptjax's EOS without one (or for a decode-only stand-in that names none)."""
    return getattr(tokenizer, "stop_ids", (EOS_ID,))


def start_decoding(model_cfg, params, prompts, *, max_new_tokens: int, stop_tokens=None, tokenizer=None,
                   vocab_size: int | None = None, rules: tuple = ()) -> DecodeStart:
    """Left-pads `prompts` (lists of token ids; checked, SampleError if unusable) and prefills them for
    max_new_tokens decode steps. stop_tokens: default the tokenizer's stop ids (EOS, and an imported model's
    end-of-turn ids), or gptjax's EOS without a tokenizer; vocab_size: default the tokenizer's
    vocabulary when given, else the model's; rules: the logical-axis rules (cfg.parallel.rules) that
    shard activations and KV caches under a mesh."""
    tokens_BxL, start_B = left_pad(prompts, max_new_tokens=max_new_tokens, max_len=model_cfg.max_len,
                                   vocab_size=model_cfg.vocab_size)
    graphdef, P = model_graphdef(model_cfg, rules), tokens_BxL.shape[1]
    caches, logits_BxV = prefill(graphdef, params, tokens_BxL, start_B, length=P + max_new_tokens)
    return DecodeStart(graphdef, caches, logits_BxV, jnp.asarray(start_B), first_slot=P,
                       stop_ids=tuple(sorted(set(default_stop_ids(tokenizer) if stop_tokens is None else stop_tokens))),
                       vocab_size=vocab_size or (tokenizer.vocab_size if tokenizer else model_cfg.vocab_size))


def allowed_tokens(logits_BxV, vocab_size: int, automaton, state_B, eos_id: int):
    """Bool allowed_BxV: ids below `vocab_size`, and with an automaton (next_state_ZxV, is_final_Z)
    the tokens state_B allows, EOS only in final states (or in a dead-end state, to end the row)."""
    allowed_BxV = jnp.broadcast_to(jnp.arange(logits_BxV.shape[-1]) < vocab_size, logits_BxV.shape)
    if automaton is None:
        return allowed_BxV
    next_state_ZxV, is_final_Z = automaton
    allowed_BxV = allowed_BxV & (next_state_ZxV[state_B] >= 0)
    dead_end_B = ~allowed_BxV.at[:, eos_id].set(False).any(-1)
    return allowed_BxV.at[:, eos_id].set(is_final_Z[state_B] | dead_end_B)


@functools.partial(jax.jit, donate_argnames=("caches",),
                   static_argnames=("graphdef", "first_slot", "max_new_tokens", "strategy", "stop_ids", "eos_id",
                                    "pad_id", "vocab_size"))
def decode(graphdef, params, caches, logits_BxV, start_B, keys_B, automaton, start_state, *, first_slot: int,
           max_new_tokens: int, strategy: Strategy, stop_ids: tuple, eos_id: int, pad_id: int, vocab_size: int):
    """The sampling loop, after `prefill` (whose caches it consumes): up to max_new_tokens steps, ending
    early once every row has stopped. Returns (tokens_BxE, logprobs_BxE, n_B, stopped_B, caches): rows
    hold n_B generated tokens followed by pads; stopped_B tells whether the last one is a stop token;
    the caches are returned so that their donated buffers are updated in place."""
    B, E = logits_BxV.shape[0], max_new_tokens

    def not_finished(c):
        return (c["step"] < E) & ~jnp.all(c["stopped_B"])

    def step(c):
        i, live_B = c["step"], ~c["stopped_B"]
        allowed_BxV = allowed_tokens(c["logits_BxV"], vocab_size, automaton, c["state_B"], eos_id)
        step_keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, i)
        token_B = sample_tokens(step_keys_B, jnp.where(allowed_BxV, c["logits_BxV"], -jnp.inf), strategy)
        token_B = jnp.where(live_B, token_B, pad_id)
        logprob_B = jnp.where(live_B, token_logprobs(c["logits_BxV"], token_B), 0.0)
        stops_B = live_B & jnp.isin(token_B, jnp.array(stop_ids, jnp.int32))
        state_B = c["state_B"]
        if automaton is not None:  # a stopped row keeps its state: EOS may have no transition
            state_B = jnp.where(live_B & ~stops_B, automaton[0][state_B, token_B], state_B)
        model = nnx.merge(graphdef, params)  # in the loop's trace: nnx transforms (scan_layers) need it there
        logits_BxV, caches = next_token_logits(model, token_B[:, None], c["caches"], start_B, first_slot + i)
        return dict(step=i + 1, caches=caches, logits_BxV=logits_BxV, state_B=state_B,
                    stopped_B=c["stopped_B"] | stops_B, n_B=c["n_B"] + live_B,
                    tokens_BxE=c["tokens_BxE"].at[:, i].set(token_B), logprobs_BxE=c["logprobs_BxE"].at[:, i].set(logprob_B))

    init = dict(step=jnp.int32(0), caches=caches, logits_BxV=logits_BxV, state_B=jnp.full((B,), start_state, jnp.int32),
                stopped_B=jnp.zeros((B,), bool), n_B=jnp.zeros((B,), jnp.int32),
                tokens_BxE=jnp.full((B, E), pad_id, jnp.int32), logprobs_BxE=jnp.zeros((B, E), jnp.float32))
    out = jax.lax.while_loop(not_finished, step, init)
    return out["tokens_BxE"], out["logprobs_BxE"], out["n_B"], out["stopped_B"], out["caches"]


def row_keys(seed, batch: int):
    """keys_B: `seed` split into one key per row, or `seed` itself if it is already `batch` keys."""
    if isinstance(seed, (int, np.integer)):
        return jax.random.split(jax.random.key(int(seed)), batch)
    keys = jnp.asarray(seed)
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) or keys.shape != (batch,):
        raise SampleError(f"seed must be an int or {batch} typed keys (jax.random.split(key, {batch})), "
                          f"got {keys.dtype}{list(keys.shape)}")
    return keys


def automaton_arrays(automaton, model_vocab: int):
    """(next_state_ZxV padded to the model's vocabulary with -1, is_final_Z) and the start state, or
    (None, 0) without an automaton."""
    if automaton is None:
        return None, 0
    next_state_ZxV = jnp.asarray(automaton.next_state_ZxV, jnp.int32)
    if next_state_ZxV.ndim != 2 or next_state_ZxV.shape[1] > model_vocab:
        raise SampleError(f"the automaton's next_state_ZxV has shape {tuple(next_state_ZxV.shape)}; it needs "
                          f"[states, V] with V <= the model's vocabulary of {model_vocab}")
    next_state_ZxV = jnp.pad(next_state_ZxV, ((0, 0), (0, model_vocab - next_state_ZxV.shape[1])), constant_values=-1)
    return (next_state_ZxV, jnp.asarray(automaton.is_final_Z, bool)), int(automaton.start_state)


def stop_string_cut(tokens: list[int], tokenizer, stop_strings) -> tuple[int, str] | None:
    """(k, text) for the first prefix tokens[:k] whose decoded text contains a stop string, `text`
    being that decoded prefix cut before the stop string; None if no stop string occurs."""
    if not any(s in tokenizer.decode(tokens) for s in stop_strings):
        return None
    for k in range(1, len(tokens) + 1):  # decode prefixes: a stop string may end inside a token
        text = tokenizer.decode(tokens[:k])
        found = [text.find(s) for s in stop_strings if s in text]
        if found:
            return k, text[:min(found)]
    return None


def to_completions(tokens_BxE, logprobs_BxE, n_B, stopped_B, tokenizer=None, stop_strings=()) -> list[Completion]:
    """Host-side results: truncated at stop strings (if any) and decoded when a tokenizer is given."""
    completions = []
    for tokens, logprobs, n, stopped in zip(np.asarray(tokens_BxE), np.asarray(logprobs_BxE), n_B, stopped_B):
        tokens, logprobs = tokens[:n].tolist(), logprobs[:n].tolist()
        reason, text = ("stop_token" if stopped else "length"), None
        if tokenizer is not None:
            body = tokens[:-1] if stopped else tokens
            cut = stop_string_cut(body, tokenizer, stop_strings) if stop_strings else None
            if cut is not None:
                k, text = cut
                tokens, logprobs, reason = tokens[:k], logprobs[:k], "stop_string"
            else:
                text = tokenizer.decode(body)
        completions.append(Completion(tokens, logprobs, reason, text))
    return completions


def generate(model_cfg, params, prompts, *, max_new_tokens: int, strategy: Strategy = Strategy(), seed=0,
             stop_tokens=None, stop_strings=(), tokenizer=None, automaton=None, vocab_size: int | None = None,
             rules: tuple = ()) -> list[Completion]:
    """Samples a continuation of each prompt (lists of token ids) from the model `model_cfg` with `params`
    (a train state's pure params dict); returns one Completion per prompt, in order.

    strategy: greedy / temperature / top-k / top-p / min-p (strategies.py). seed: an int (split into one
    key per prompt) or one typed key per prompt, which makes each prompt's sample independent of the
    batch it is in; the same seed gives the same output. stop_tokens: ids that end a row (default: the
    tokenizer's stop ids, or EOS).
    stop_strings: end a row at the first of these in the decoded text (needs `tokenizer`, checked after
    decoding). automaton: constrained decoding, an object with device arrays `next_state_ZxV` (int32,
    -1 = token not allowed in that state), `is_final_Z` (bool) and an int `start_state`; EOS is allowed
    only in final states. vocab_size: ids at or above it are never sampled (default: the tokenizer's
    vocabulary when given, else the model's). rules: the logical-axis rules (cfg.parallel.rules) that
    shard activations and KV caches under a mesh (() = none: XLA propagates the params' shardings).
    """
    if stop_strings and tokenizer is None:
        raise SampleError("stop_strings need a tokenizer to decode the samples; pass tokenizer=")
    if any(not s for s in stop_strings):
        raise SampleError(f"stop_strings={list(stop_strings)!r} holds an empty string, which would match everywhere")
    keys_B = row_keys(seed, len(prompts))
    automaton_state, start_state = automaton_arrays(automaton, model_cfg.vocab_size)
    s = start_decoding(model_cfg, params, prompts, max_new_tokens=max_new_tokens, stop_tokens=stop_tokens,
                       tokenizer=tokenizer, vocab_size=vocab_size, rules=rules)
    out = decode(s.graphdef, params, s.caches, s.logits_BxV, s.start_B, keys_B, automaton_state, start_state,
                 first_slot=s.first_slot, max_new_tokens=max_new_tokens, strategy=strategy, stop_ids=s.stop_ids,
                 eos_id=getattr(tokenizer, "eos_id", EOS_ID), pad_id=PAD_ID, vocab_size=s.vocab_size)
    return to_completions(*to_host(out[:4]), tokenizer=tokenizer, stop_strings=stop_strings)
