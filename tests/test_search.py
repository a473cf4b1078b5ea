"""Beam search, best-of-N and self-consistency on real (tiny) models, one of them with known logits."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from gptjax.model.build import init_params
from gptjax.model.build import model_graphdef
from gptjax.sample.generate import EOS_ID, generate
from gptjax.sample.search import beam_search, best_of_n, self_consistency, token_batch
from gptjax.sample.strategies import SampleError, Strategy

V = 12


def bigram_model(logits_VxV):
    """A real Transformer whose next-token logits are logits_VxV[last token], whatever came before:
    one-hot token embeddings (d_model = V), blocks whose output projections are zero (so the residual
    stream passes through), RMSNorm (which only rescales a one-hot vector) and an LM head set to the
    table. Returns (model config, params, the model's measured log-probability table)."""
    m = tiny_config(vocab_size=V, d_model=V, n_heads=2, n_kv_heads=2, d_ff=16, positional="rope", norm="rmsnorm",
                    tie_embeddings=False, use_bias=False).model
    params = init_params(m, jax.random.key(0))

    def set_param(path, x):
        names = [getattr(p, "key", None) for p in path]
        if names[:2] == ["token_embed", "embedding"]:
            return jnp.eye(V)
        if names[:2] == ["lm_head", "kernel"]:
            return jnp.asarray(logits_VxV, jnp.float32) * np.sqrt(1 / V + 1e-5)  # RMSNorm(e_i) = e_i / rms(e_i)
        if "out" in names or "down" in names:
            return jnp.zeros_like(x)
        return x

    params = jax.tree_util.tree_map_with_path(set_param, params)
    measured = nnx.merge(model_graphdef(m), params)(jnp.arange(V)[None, :])[0]
    np.testing.assert_allclose(measured, logits_VxV, atol=1e-3)  # the construction does what it says
    return m, params, np.asarray(jax.nn.log_softmax(measured, axis=-1), np.float64)


def brute_force_best(logprobs_VxV, last_token, n, length_penalty):
    """Best score over every hypothesis: sequences ending in EOS within n tokens, or any n tokens."""
    best = (-np.inf, None)
    for length in range(1, n + 1):
        for seq in itertools.product(range(V), repeat=length):
            if EOS_ID in seq[:-1] or (length < n and seq[-1] != EOS_ID):
                continue
            total = sum(logprobs_VxV[a, b] for a, b in zip((last_token,) + seq[:-1], seq))
            best = max(best, (total / length**length_penalty, list(seq)))
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_search_finds_the_best_hypothesis(length_penalty):
    table = 3.0 * np.random.default_rng(0).standard_normal((V, V))
    table[:, EOS_ID] += 1.0  # some hypotheses end early, so normalisation matters
    m, params, logprobs = bigram_model(table)
    # 144 beams keep every 2-token prefix alive (12 + 11 * 12 < 144): the search is exhaustive for 3 tokens.
    beams = beam_search(m, params, [[4], [7, 8]], beam_width=144, max_new_tokens=3, length_penalty=length_penalty)
    for prompt, found in zip([[4], [7, 8]], beams):
        score, seq = brute_force_best(logprobs, prompt[-1], 3, length_penalty)
        assert found[0].tokens == seq
        assert found[0].score == pytest.approx(score, abs=1e-4)
        assert [b.score for b in found] == sorted((b.score for b in found), reverse=True)
        assert found[0].logprob == pytest.approx(sum(logprobs[a, b] for a, b in zip(prompt[-1:] + seq, seq)), abs=1e-4)


def test_beam_search_beats_greedy_where_greedy_is_myopic():
    table = np.full((V, V), -10.0)
    table[3, [8, 9]] = [np.log(0.55), np.log(0.45)]  # greedy takes 8 ...
    table[8, 7:] = 0.0  # ... after which nothing is likely
    table[9, EOS_ID] = 5.0  # while 9 is almost surely followed by EOS
    m, params, _ = bigram_model(table)
    greedy = generate(m, params, [[3]], max_new_tokens=2, strategy=Strategy(temperature=0))[0]
    assert greedy.tokens[0] == 8
    beam = beam_search(m, params, [[3]], beam_width=2, max_new_tokens=2, length_penalty=0.0)[0][0]
    assert beam.tokens == [9, EOS_ID] and beam.finish_reason == "stop_token"
    assert beam.logprob > greedy.logprob


def test_width_one_beam_search_is_greedy_on_a_random_model():
    m = tiny_config(init_std=0.5, positional="rope", n_kv_heads=2, scan_layers=True).model
    m.max_len = 64
    params = init_params(m, jax.random.key(1))
    prompts = [[3, 5, 7], [9, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 11]]
    greedy = generate(m, params, prompts, max_new_tokens=20, strategy=Strategy(temperature=0))
    beams = beam_search(m, params, prompts, beam_width=1, max_new_tokens=20)
    for g, b in zip(greedy, beams):
        assert b[0].tokens == g.tokens
        np.testing.assert_allclose(b[0].logprobs, g.logprobs, atol=1e-5)


def small_model(**overrides):
    m = tiny_config(init_std=0.5, **overrides).model
    return m, init_params(m, jax.random.key(2))


def test_best_of_n_ranks_by_mean_logprob_or_by_a_scorer():
    m, params = small_model()
    prompt = [3, 4, 5]
    ranked = best_of_n(m, params, prompt, n=6, max_new_tokens=8, seed=1)
    assert len(ranked) == 6
    assert [c.score for c in ranked] == sorted((c.mean_logprob for c in ranked), reverse=True)
    assert len({tuple(c.tokens) for c in ranked}) > 1  # six different samples

    def count_of_token_9(tokens_RxL, lengths_R):
        assert (tokens_RxL[:, :3] == prompt).all()  # the scorer sees prompt + completion
        return [(row[3:n] == 9).sum() for row, n in zip(tokens_RxL, lengths_R)]

    ranked = best_of_n(m, params, prompt, n=6, max_new_tokens=8, seed=1, scorer=count_of_token_9)
    assert ranked[0].tokens.count(9) == max(c.tokens.count(9) for c in ranked) == ranked[0].score
    with pytest.raises(SampleError, match="one score per row"):
        best_of_n(m, params, prompt, n=6, max_new_tokens=8, scorer=lambda t, n: [0.0])


def test_best_of_n_with_a_reward_model_scorer():
    m, params = small_model()
    r_cfg = tiny_config(scalar_head=True).model
    reward = nnx.merge(model_graphdef(r_cfg), init_params(r_cfg, jax.random.key(5)))

    def reward_at_last_token(tokens_RxL, lengths_R):
        return np.asarray(reward.scalar(jnp.asarray(tokens_RxL)))[np.arange(len(lengths_R)), lengths_R - 1]

    ranked = best_of_n(m, params, [3, 4], n=4, max_new_tokens=6, scorer=reward_at_last_token)
    tokens, lengths = token_batch([[3, 4]] * len(ranked), ranked)
    np.testing.assert_allclose([c.score for c in ranked], reward_at_last_token(tokens, lengths), rtol=1e-5)
    assert ranked[0].score == max(c.score for c in ranked)


def test_self_consistency_takes_the_majority_answer():
    table = np.full((V, V), -20.0)
    table[3, [8, 9, 10]] = np.log([0.45, 0.35, 0.2])
    m, params, _ = bigram_model(table)
    vote = self_consistency(m, params, [3], n=60, max_new_tokens=1, seed=0,
                            extract_answer=lambda c: None if c.tokens[0] == 10 else c.tokens[0])
    assert set(vote.answers) <= {8, 9, None}
    assert vote.answer == 8 == vote.counts.most_common(1)[0][0]
    assert sum(vote.counts.values()) == sum(a is not None for a in vote.answers) > 30
    assert 15 < vote.counts[8] and 10 < vote.counts[9]  # a real sample of the 0.45 / 0.35 / 0.2 distribution
    nothing = self_consistency(m, params, [3], n=4, max_new_tokens=1, extract_answer=lambda c: None)
    assert nothing.answer is None and not nothing.counts
