"""Constrained decoding: the token automaton against re.fullmatch, JSON schemas, refusals, and
generation under it (every sample ends at EOS with a full match)."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from conftest import tiny_config
from gptjax.data.tokenizer import SPECIAL_TOKENS, train_tokenizer
from gptjax.model.build import init_params
from gptjax.sample.constrained import ConstraintError, json_schema_automaton, regex_automaton
from gptjax.sample.generate import generate

# Its module-scoped fixtures are built once: under pytest-xdist (--dist loadgroup) the module stays on one worker.
pytestmark = pytest.mark.xdist_group("test_constrained")

ALPHABET = "ab01 é-"  # é: two UTF-8 bytes, so tokens that split a character are exercised
CORPUS = ["ab ba 01 10 aab abba é éa aé -a- b-0 " * 5, "a0b1 é0é 1-1 bb aa 00 11 ab01é"] * 3
CLASSES = ("[ab]", "[01]", "[a-b]", "[^a]")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


@dataclasses.dataclass
class StubTokenizer:
    """The duck-typed tokenizer interface the builder reads, with a vocabulary missing most bytes."""

    tokens: list
    eos_id: int = 1
    hash: str = "stub"

    @property
    def vocab_size(self):
        return len(self.tokens)

    def token_bytes(self):
        return self.tokens


# A small regex grammar: each generator returns (regex, a function sampling a matching string).
def random_regex(rng, depth=0):
    kind = rng.choice(["lit", "class", "cat", "alt", "rep"] if depth < 3 else ["lit", "class"])
    if kind == "lit":
        char = ALPHABET[rng.integers(len(ALPHABET))]
        return char, lambda r: char
    if kind == "class":
        cls = CLASSES[rng.integers(len(CLASSES))]
        members = [c for c in ALPHABET if re.fullmatch(cls, c)]
        return cls, lambda r: members[r.integers(len(members))]
    parts = [random_regex(rng, depth + 1) for _ in range(rng.integers(2, 4))]
    if kind == "cat":
        return "".join(p for p, _ in parts), lambda r: "".join(s(r) for _, s in parts)
    if kind == "alt":
        return "(" + "|".join(p for p, _ in parts) + ")", lambda r: parts[r.integers(len(parts))][1](r)
    (inner, sample), lo = parts[0], int(rng.integers(0, 2))
    hi = lo + int(rng.integers(0, 3))
    return f"({inner}){{{lo},{hi}}}", lambda r: "".join(sample(r) for _ in range(r.integers(lo, hi + 1)))


def walk(automaton, tokens):
    """States visited by feeding `tokens` from the start; stops early (returns None) at a forbidden token."""
    table, state, states = np.asarray(automaton.next_state_ZxV), automaton.start_state, [automaton.start_state]
    for t in tokens:
        state = table[state, t]
        if state < 0:
            return None
        states.append(state)
    return states


def random_walk(automaton, tokenizer, rng, max_steps=60):
    """Token ids chosen uniformly among the allowed ones until EOS is drawn (None if no EOS in max_steps)."""
    table, final = np.asarray(automaton.next_state_ZxV), np.asarray(automaton.is_final_Z)
    state, tokens = automaton.start_state, []
    for _ in range(max_steps):
        token = rng.choice(np.flatnonzero(table[state] >= 0))
        if token == tokenizer.eos_id:
            assert final[state]
            return tokens
        tokens.append(int(token))
        state = table[state, token]
    return None


def decode_bytes(tokenizer, tokens):
    token_bytes = tokenizer.token_bytes()
    return b"".join(token_bytes[t] for t in tokens).decode("utf-8")


def matches(regex, tokenizer, tokens) -> bool:
    """Whether `tokens` spell a string that fully matches `regex` (a cut through a character never does)."""
    try:
        return bool(re.fullmatch(regex, decode_bytes(tokenizer, tokens)))
    except UnicodeDecodeError:
        return False


def test_token_bytes_spell_the_encoded_text(tokenizer):
    token_bytes = tokenizer.token_bytes()
    assert token_bytes[:len(SPECIAL_TOKENS)] == [None] * len(SPECIAL_TOKENS)
    text = "aé b\n ☃ 01-é\t"
    assert b"".join(token_bytes[t] for t in tokenizer.encode(text)) == text.encode("utf-8")
    assert any(len(b) == 1 and b[0] >= 0x80 for b in token_bytes if b)  # half of a UTF-8 character


@pytest.mark.parametrize("seed", range(12))
def test_automaton_accepts_exactly_the_matching_token_sequences(tokenizer, seed):
    rng = np.random.default_rng(seed)
    regex, sample = random_regex(rng)
    automaton = regex_automaton(regex, tokenizer)
    table, final = np.asarray(automaton.next_state_ZxV), np.asarray(automaton.is_final_Z)
    assert table.shape[1] == tokenizer.vocab_size and table.shape[0] % 32 == 0
    # Special tokens: never allowed, except EOS exactly in the accepting states (where it stays put).
    others = [i for i in range(len(SPECIAL_TOKENS)) if i != tokenizer.eos_id]
    assert (table[:, others] == -1).all()
    assert ((table[:, tokenizer.eos_id] >= 0) == final).all()
    assert (table[final, tokenizer.eos_id] == np.flatnonzero(final)).all()
    for _ in range(10):  # sound: every sequence it lets through, stopped at EOS, matches
        tokens = random_walk(automaton, tokenizer, rng)
        if tokens is not None:
            text = decode_bytes(tokenizer, tokens)
            assert re.fullmatch(regex, text), (regex, text)
            states = walk(automaton, tokens)
            assert [bool(final[s]) for s in states] == [matches(regex, tokenizer, tokens[:i])
                                                        for i in range(len(tokens) + 1)]
    for _ in range(10):  # complete: the tokenizer's own encoding of any matching string is let through
        text = sample(rng)
        states = walk(automaton, tokenizer.encode(text))
        assert states is not None and final[states[-1]], (regex, text)
    for _ in range(20):  # and a string that does not match never ends in an accepting state
        text = "".join(rng.choice(list(ALPHABET), rng.integers(0, 6)))
        states = walk(automaton, tokenizer.encode(text))
        assert (states is not None and bool(final[states[-1]])) == bool(re.fullmatch(regex, text)), (regex, text)


def test_dead_end_states_are_pruned():
    # No token spells "c": after "a" the pattern can never be completed, so "a" must not be allowed.
    stub = StubTokenizer([None, None, b"a", b"b"])
    automaton = regex_automaton("a+c|b", stub)
    table = np.asarray(automaton.next_state_ZxV)
    assert table.shape == (32, 4) and table[0, 2] == -1 and table[0, 3] == 1
    assert list(table[1]) == [-1, 1, -1, -1] and (table[2:] == -1).all()  # final: EOS only; 2..31: padding
    assert list(np.flatnonzero(np.asarray(automaton.is_final_Z))) == [1]
    with pytest.raises(ConstraintError, match="'a\\+c'.*no sequence"):
        regex_automaton("a+c", stub)
    with pytest.raises(ConstraintError, match="'c'"):
        regex_automaton("c", stub)


def test_bad_patterns_are_clear_errors(tokenizer):
    with pytest.raises(ConstraintError, match=r"pattern '\(ab'"):
        regex_automaton("(ab", tokenizer)
    with pytest.raises(ConstraintError, match=r"pattern 'a\)\(b'"):  # not a group of the END wrapping
        regex_automaton("a)(b", tokenizer)
    with pytest.raises(ConstraintError, match="pattern '\\[a&&b\\]'"):  # the empty language
        regex_automaton("[a&&b]", tokenizer)
    with pytest.raises(ConstraintError, match="JSON schema .*cannot be compiled"):
        json_schema_automaton({"type": "no-such-type"}, tokenizer)
    with pytest.raises(ConstraintError, match="states.*MiB.*max_table_bytes"):
        regex_automaton("[ab]{0,40}", tokenizer, max_table_bytes=10_000)


def test_automata_are_cached_per_pattern_and_tokenizer(tokenizer):
    first = regex_automaton("(ab)+", tokenizer)
    assert regex_automaton("(ab)+", tokenizer) is first
    assert regex_automaton("(ab)+", StubTokenizer([None, None, b"a", b"b"])) is not first
    with pytest.raises(ConstraintError, match="max_table_bytes"):  # a cached automaton still honours the limit
        regex_automaton("(ab)+", tokenizer, max_table_bytes=16)


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 3}, "n": {"type": "integer"}},
     "required": ["name", "n"]},
    {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    {"type": "object", "properties": {"kind": {"enum": ["a", "b0"]}, "x": {"type": "number"}}, "required": ["kind"]},
]


def conforms(value, schema) -> bool:
    """The JSON Schema subset SCHEMAS use: type, properties/required, items/maxItems, maxLength, enum."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema["type"]
    if kind == "object":
        props = schema["properties"]
        return (isinstance(value, dict) and set(value) <= set(props) and set(schema.get("required", ())) <= set(value)
                and all(conforms(v, props[k]) for k, v in value.items()))
    if kind == "array":
        return (isinstance(value, list) and len(value) <= schema.get("maxItems", len(value))
                and all(conforms(v, schema["items"]) for v in value))
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema.get("maxLength", len(value))
    types = {"integer": int, "number": (int, float), "boolean": bool}
    return isinstance(value, types[kind]) and (kind == "boolean") == isinstance(value, bool)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_schema_automaton_yields_valid_documents(tokenizer, schema):
    automaton = json_schema_automaton(schema, tokenizer)
    assert json_schema_automaton(json.dumps(schema), tokenizer) is automaton
    rng, documents = np.random.default_rng(0), 0
    for _ in range(15):
        tokens = random_walk(automaton, tokenizer, rng, max_steps=80)
        if tokens is not None:
            documents += 1
            assert conforms(json.loads(decode_bytes(tokenizer, tokens)), schema)
    assert documents >= 5
    valid = json.dumps({"name": "ab", "n": -10} if schema["type"] == "object" and "name" in schema["properties"]
                       else [True, False] if schema["type"] == "array" else {"kind": "b0", "x": 1.5})
    states = walk(automaton, tokenizer.encode(valid))
    assert states is not None and np.asarray(automaton.is_final_Z)[states[-1]]


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    """A random-init model whose vocabulary is wider than the tokenizer's (the automaton gets padded)."""
    model_cfg = tiny_config(vocab_size=tokenizer.vocab_size + 3, max_len=128).model
    return model_cfg, init_params(model_cfg, jax.random.key(0))


def sample_constrained(tiny_model, tokenizer, automaton, n=4, seed=0):
    model_cfg, params = tiny_model
    prompts = [tokenizer.encode(text) for text in ("ab", "0 1", "é", "b-a")[:n]]
    return generate(model_cfg, params, prompts, max_new_tokens=64, seed=seed, tokenizer=tokenizer,
                    automaton=automaton)


@pytest.mark.parametrize("seed", [0, 1, 4, 6, 9])
def test_generate_with_regex_ends_at_eos_with_a_full_match(tiny_model, tokenizer, seed):
    regex, _ = random_regex(np.random.default_rng(seed))  # bounded: every path ends within 64 tokens
    for completion in sample_constrained(tiny_model, tokenizer, regex_automaton(regex, tokenizer), seed=seed):
        assert completion.finish_reason == "stop_token" and completion.tokens[-1] == tokenizer.eos_id
        assert re.fullmatch(regex, completion.text), (regex, completion.text)


def test_generate_with_json_schema_yields_valid_documents(tiny_model, tokenizer):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 3}, "ok": {"type": "boolean"},
                                               "tags": {"type": "array", "items": {"enum": ["a", "b0"]}, "maxItems": 2}},
              "required": ["name", "ok"]}
    completions = sample_constrained(tiny_model, tokenizer, json_schema_automaton(schema, tokenizer))
    for completion in completions:
        assert completion.finish_reason == "stop_token"
        assert conforms(json.loads(completion.text), schema), completion.text
    assert len({c.text for c in completions}) > 1  # sampled, not one forced string
