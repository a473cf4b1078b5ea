"""Generation with the KV cache: equal to full recomputation for every model option, ragged batches,
seeds, logprobs, stop tokens/strings, constrained decoding, and the sampling strategies' distributions."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from conftest import tiny_config
from gptjax.config.parallel import DEFAULT_RULES
from gptjax.model.build import init_params
from gptjax.parallel.mesh import make_mesh
from gptjax.model.build import model_graphdef
from gptjax.sample.generate import (EOS_ID, PAD_ID, decode, generate, prefill, start_decoding,
                                    stop_string_cut)
from gptjax.sample.strategies import SampleError, Strategy, filter_logits, sample_tokens
from gptjax.train.state import params_shardings

GREEDY = Strategy(temperature=0)
PROMPTS = [[3, 5, 7], [9, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 11], [13]]  # 3, 17, 1 tokens


def model(**overrides):
    """A tiny model whose large init (std 0.5) makes greedy outputs varied, not one repeated token."""
    m = tiny_config(init_std=0.5, **overrides).model
    m.max_len = 96
    return m, init_params(m, jax.random.key(1))


def full_forward_logprobs(m, params, sequence):
    """log-softmax of the plain training forward pass (no cache) over one unpadded sequence: [T, V]."""
    logits = nnx.merge(model_graphdef(m), params)(jnp.asarray([sequence], jnp.int32))[0]
    return np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))


def greedy_by_recomputation(m, params, prompt, n):
    """n greedy tokens, each from a full forward pass over everything so far (right-padded to a fixed
    length, which causality makes harmless, so one compilation serves every step)."""
    graphdef, total = model_graphdef(m), len(prompt) + n
    last_logits = jax.jit(lambda p, buf, i: nnx.merge(graphdef, p)(buf)[0, i])
    buf = np.zeros((1, total), np.int32)
    buf[0, :len(prompt)] = prompt
    for t in range(len(prompt), total):
        buf[0, t] = int(jnp.argmax(last_logits(params, buf, t - 1)))
    return buf[0, len(prompt):].tolist()


CACHE_OPTIONS = [
    {},
    dict(scan_layers=True, remat=True),
    dict(positional="rope", n_kv_heads=2),
    dict(positional="sinusoidal", norm_position="post", qk_norm=True, n_kv_heads=1),
    dict(norm="rmsnorm", activation="swiglu", tie_embeddings=False, use_bias=False, scan_layers=True, positional="rope"),
    dict(parametrization="mup", mup_base_width=8, positional="rope"),
]


@pytest.mark.parametrize("overrides", CACHE_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_cached_greedy_equals_full_recomputation_for_64_steps(overrides):
    m, params = model(**overrides)
    out = generate(m, params, PROMPTS, max_new_tokens=64, strategy=GREEDY, stop_tokens=())
    for prompt, completion in zip(PROMPTS, out):
        assert completion.tokens == greedy_by_recomputation(m, params, prompt, 64)
        assert completion.finish_reason == "length"
        # every step's whole distribution agrees too, whether or not the greedy path is varied
        logprobs = full_forward_logprobs(m, params, prompt + completion.tokens)[len(prompt) - 1:-1]
        np.testing.assert_allclose(completion.logprobs, logprobs[np.arange(64), completion.tokens], atol=1e-4)


def test_bf16_compute_tracks_recomputation():
    m = tiny_config(compute_dtype="bfloat16", positional="rope", n_kv_heads=2, init_std=0.2).model
    m.max_len = 96
    params = init_params(m, jax.random.key(1))
    prompt = PROMPTS[1]
    completion = generate(m, params, [prompt], max_new_tokens=24, strategy=GREEDY, stop_tokens=())[0]
    logprobs = full_forward_logprobs(m, params, prompt + completion.tokens)[len(prompt) - 1:-1]
    chosen = logprobs[np.arange(24), completion.tokens]
    # The logits are float32 (model/transformer.py); what differs is the bf16 hidden state, cached vs recomputed:
    # 0.011-0.012 nats at most here (measured 2026-12-07), so 0.03 leaves room for another CPU, not for bf16 logits.
    assert np.all(chosen >= logprobs.max(-1) - 0.03)  # each pick is the argmax up to that noise
    np.testing.assert_allclose(completion.logprobs, chosen, atol=0.03)


def test_logprobs_are_the_unfiltered_model_logprobs():
    m, params = model(positional="rope")
    strategy = Strategy(temperature=0.7, top_k=5, top_p=0.9)
    out = generate(m, params, PROMPTS, max_new_tokens=20, strategy=strategy, seed=3)
    for prompt, completion in zip(PROMPTS, out):
        logprobs = full_forward_logprobs(m, params, prompt + completion.tokens)[len(prompt) - 1:-1]
        expected = logprobs[np.arange(len(completion.tokens)), completion.tokens]
        np.testing.assert_allclose(completion.logprobs, expected, atol=1e-4)
        assert completion.logprob == pytest.approx(float(np.sum(expected)), abs=1e-3)


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_ragged_batch_equals_one_by_one(positional):
    m, params = model(positional=positional)
    keys = jax.random.split(jax.random.key(7), len(PROMPTS))
    strategy = Strategy(temperature=1.0, top_p=0.95)  # sampled, so positions/masks must be right at every step
    batched = generate(m, params, PROMPTS, max_new_tokens=12, strategy=strategy, seed=keys, stop_tokens=())
    for i, prompt in enumerate(PROMPTS):  # the 17-token prompt pads the others to 32 columns, alone 16
        alone = generate(m, params, [prompt], max_new_tokens=12, strategy=strategy, seed=keys[i:i + 1],
                         stop_tokens=())[0]
        assert batched[i].tokens == alone.tokens
        np.testing.assert_allclose(batched[i].logprobs, alone.logprobs, atol=1e-4)


def test_same_seed_same_output_other_seed_differs():
    m, params = model()
    strategy = Strategy(temperature=1.5, min_p=0.01)

    def run(seed):
        return [c.tokens for c in generate(m, params, PROMPTS, max_new_tokens=16, strategy=strategy, seed=seed)]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_stop_tokens_truncate_and_eos_stops_by_default():
    m, params = model()
    free = generate(m, params, PROMPTS, max_new_tokens=30, strategy=GREEDY, stop_tokens=())
    stop = free[0].tokens[5]
    first = free[0].tokens.index(stop)
    stopped = generate(m, params, PROMPTS, max_new_tokens=30, strategy=GREEDY, stop_tokens=(stop,))
    assert stopped[0].tokens == free[0].tokens[:first + 1]
    assert stopped[0].finish_reason == "stop_token"
    np.testing.assert_allclose(stopped[0].logprobs, free[0].logprobs[:first + 1], atol=1e-5)
    for f, s in zip(free, stopped):  # rows stop independently
        n = f.tokens.index(stop) + 1 if stop in f.tokens else len(f.tokens)
        assert s.tokens == f.tokens[:n]
    by_default = generate(m, params, PROMPTS, max_new_tokens=30, strategy=GREEDY)
    for f, d in zip(free, by_default):
        n = f.tokens.index(EOS_ID) + 1 if EOS_ID in f.tokens else len(f.tokens)
        assert d.tokens == f.tokens[:n]
    assert any(EOS_ID in f.tokens for f in free)  # the default really was exercised


class PieceTokenizer:
    """Each id decodes to a fixed piece of text: enough to test stop strings across token boundaries."""

    pieces = {i: f"<{i}>" for i in range(64)} | {20: "ab", 21: "c\n", 22: "d", 23: "x"}
    vocab_size = 64

    def decode(self, ids):
        return "".join(self.pieces[int(i)] for i in ids)


def test_stop_string_cut_finds_strings_across_tokens():
    tok = PieceTokenizer()
    assert stop_string_cut([23, 20, 21, 22, 23], tok, ["\nd"]) == (4, "xabc")  # completed by token 22
    assert stop_string_cut([23, 20, 21, 22], tok, ["zz", "b"]) == (2, "xa")
    assert stop_string_cut([23, 20], tok, ["q"]) is None


def test_stop_strings_truncate_generation():
    m, params = model()
    tok = PieceTokenizer()
    free = generate(m, params, PROMPTS, max_new_tokens=20, strategy=GREEDY, stop_tokens=(), tokenizer=tok)
    text = free[0].text
    stop = tok.decode([free[0].tokens[6]])  # a piece that first occurs somewhere in the text
    out = generate(m, params, PROMPTS, max_new_tokens=20, strategy=GREEDY, stop_tokens=(), tokenizer=tok,
                   stop_strings=[stop])
    assert out[0].text == text[:text.index(stop)]
    assert out[0].finish_reason == "stop_string"
    k = free[0].tokens.index(free[0].tokens[6]) + 1
    assert out[0].tokens == free[0].tokens[:k]
    assert len(out[0].logprobs) == k


@dataclasses.dataclass
class Automaton:
    next_state_ZxV: jax.Array
    is_final_Z: jax.Array
    start_state: int


def alternating_automaton(vocab, final=(True, False), second_set=(20, 21, 22)):
    """State 0 allows {10, 11, 12} and moves to state 1, which allows `second_set` and moves back."""
    table = np.full((2, vocab), -1, np.int32)
    table[0, [10, 11, 12]] = 1
    table[1, list(second_set)] = 0
    return Automaton(jnp.asarray(table), jnp.asarray(final), 0)


def test_automaton_constrains_tokens_and_allows_eos_only_in_final_states():
    m, params = model()
    automaton = alternating_automaton(m.vocab_size)
    out = generate(m, params, PROMPTS * 4, max_new_tokens=24, strategy=Strategy(temperature=2.0), seed=0,
                   automaton=automaton)
    assert any(c.finish_reason == "stop_token" for c in out)
    for c in out:
        body = c.tokens[:-1] if c.finish_reason == "stop_token" else c.tokens
        assert all(t in ((10, 11, 12) if i % 2 == 0 else (20, 21, 22)) for i, t in enumerate(body))
        if c.finish_reason == "stop_token":
            assert c.tokens[-1] == EOS_ID and len(body) % 2 == 0  # EOS only back in the final state 0
    never_final = alternating_automaton(m.vocab_size, final=(False, False))
    out = generate(m, params, PROMPTS, max_new_tokens=10, strategy=Strategy(temperature=2.0), automaton=never_final)
    assert all(len(c.tokens) == 10 and EOS_ID not in c.tokens for c in out)
    dead_end = alternating_automaton(m.vocab_size, final=(False, False), second_set=())
    out = generate(m, params, PROMPTS, max_new_tokens=10, strategy=Strategy(temperature=2.0), automaton=dead_end)
    assert all(c.tokens[1:] == [EOS_ID] for c in out)  # no way on: the row ends


PROBS = np.array([0.30, 0.20, 0.15, 0.10, 0.08, 0.06, 0.04, 0.03, 0.02, 0.01, 0.007, 0.003])


def draws(strategy, n=20_000):
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (n, len(PROBS)))
    tokens = sample_tokens(jax.random.split(jax.random.key(0), n), logits, strategy)
    return np.bincount(np.asarray(tokens), minlength=len(PROBS))


@pytest.mark.parametrize("strategy,kept,temperature", [
    (Strategy(temperature=1.0), range(12), 1.0),
    (Strategy(temperature=0.5), range(12), 0.5),
    (Strategy(top_k=4), range(4), 1.0),
    (Strategy(top_p=0.8), range(5), 1.0),  # mass before token 5 is 0.83 >= 0.8
    (Strategy(min_p=0.12), range(7), 1.0),  # p >= 0.036
    (Strategy(temperature=2.0, top_k=6, top_p=0.7), range(4), 2.0),  # at T=2 of the top 6: 0.62 before token 3, 0.76 before 4
    (Strategy(temperature=0.8, top_k=8, min_p=0.22), range(4), 0.8),  # (p/0.3)^(1/0.8) >= 0.22: p >= 0.089
])
def test_sampled_distribution_matches_filtered_softmax(strategy, kept, temperature):
    counts = draws(strategy)
    kept = np.array(list(kept))
    expected = PROBS[kept] ** (1 / temperature)
    expected /= expected.sum()
    assert counts[np.setdiff1d(np.arange(len(PROBS)), kept)].sum() == 0
    assert scipy.stats.chisquare(counts[kept], expected * counts.sum()).pvalue > 1e-3
    filtered = np.asarray(filter_logits(jnp.log(jnp.asarray(PROBS, jnp.float32))[None], strategy))[0]
    assert np.isfinite(filtered).nonzero()[0].tolist() == kept.tolist()


def test_greedy_takes_the_argmax_and_the_chi_square_test_has_power():
    assert draws(GREEDY, n=100)[0] == 100
    counts = draws(Strategy(temperature=0.9))[:5]  # 20k draws tell T=0.9 from T=1 on the top 5
    expected = PROBS[:5] / PROBS[:5].sum()
    assert scipy.stats.chisquare(counts, expected * counts.sum()).pvalue < 1e-3


def test_bad_requests_are_clear_errors():
    m, params = model()
    with pytest.raises(SampleError, match="prompt 1 has 90 tokens.*max_len"):
        generate(m, params, [[3], [3] * 90], max_new_tokens=10)
    with pytest.raises(SampleError, match="prompt 0 is empty"):
        generate(m, params, [[]], max_new_tokens=4)
    with pytest.raises(SampleError, match="token id 40"):
        generate(m, params, [[3, 40]], max_new_tokens=4)
    with pytest.raises(SampleError, match="need a tokenizer"):
        generate(m, params, [[3]], max_new_tokens=4, stop_strings=["x"])
    with pytest.raises(SampleError, match="2 typed keys"):
        generate(m, params, [[3], [4]], max_new_tokens=4, seed=jax.random.split(jax.random.key(0), 3))
    for bad in (dict(temperature=-1), dict(top_k=-2), dict(top_p=0.0), dict(min_p=1.5)):
        with pytest.raises(SampleError, match=next(iter(bad))):
            Strategy(**bad)


def test_prompt_lengths_in_one_bucket_reuse_the_compiled_prefill_and_loop():
    m, params = model(positional="rope")

    def compiled_after(prompt):
        generate(m, params, [prompt], max_new_tokens=6, strategy=GREEDY)
        return prefill._cache_size(), decode._cache_size()

    first = compiled_after([3, 5, 7])
    assert compiled_after([2] * 16) == compiled_after([9]) == first  # 1..16 tokens: one 16-column bucket
    assert compiled_after([2] * 17) == (first[0] + 1, first[1] + 1)  # the next bucket compiles anew


@pytest.mark.parametrize("scan_layers", [False, True])
def test_the_decode_loop_consumes_the_donated_prefill_caches(scan_layers):
    m, params = model(scan_layers=scan_layers)
    s = start_decoding(m, params, PROMPTS, max_new_tokens=4)
    leaves = jax.tree.leaves(s.caches)
    assert len(leaves) == (4 if scan_layers else 8) and not any(leaf.is_deleted() for leaf in leaves)
    out = decode(s.graphdef, params, s.caches, s.logits_BxV, s.start_B, jax.random.split(jax.random.key(0), 3), None,
                 0, first_slot=s.first_slot, max_new_tokens=4, strategy=GREEDY, stop_ids=s.stop_ids, eos_id=EOS_ID,
                 pad_id=PAD_ID, vocab_size=s.vocab_size)
    assert all(leaf.is_deleted() for leaf in leaves)  # updated in place, not copied
    assert [c.tokens for c in generate(m, params, PROMPTS, max_new_tokens=4, strategy=GREEDY)] == [
        row[:n].tolist() for row, n in zip(np.asarray(out[0]), np.asarray(out[2]))]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_kv_cache_is_sharded_by_rows_and_kv_heads_under_a_mesh(scan_layers):
    m, params = model(n_kv_heads=2, scan_layers=scan_layers)
    prompts = [[3, 5, 7, 9], [9, 2, 4, 6], [13, 1, 2, 3], [8, 8, 6, 4]]
    expected = generate(m, params, prompts, max_new_tokens=8, strategy=GREEDY, stop_tokens=())
    mesh = make_mesh(ml_collections.ConfigDict(dict(num_devices=8, mesh=(4, 1, 2))))
    with jax.set_mesh(mesh):
        sharded_params = jax.device_put(params, params_shardings(m, mesh, DEFAULT_RULES))
        cache, _ = prefill(model_graphdef(m, DEFAULT_RULES), sharded_params, jnp.asarray(prompts, jnp.int32),
                           jnp.zeros(4, jnp.int32), length=12)
        out = generate(m, sharded_params, prompts, max_new_tokens=8, strategy=GREEDY, stop_tokens=(), rules=DEFAULT_RULES)
    keys = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(cache) if "k_BxKxSxH" in jax.tree_util.keystr(path)]
    assert len(keys) == (1 if scan_layers else 2)
    lead = (None,) if scan_layers else ()
    for k in keys:  # 4 rows over data = 4, 2 KV heads over tensor = 2: one row and one head per device
        expected_sharding = NamedSharding(mesh, P(*lead, ("data", "fsdp"), "tensor", None, None))
        assert k.sharding.is_equivalent_to(expected_sharding, k.ndim), k.sharding.spec
        assert k.addressable_shards[0].data.shape[-4:] == (1, 1, 12, 8)
    assert [c.tokens for c in out] == [c.tokens for c in expected]
