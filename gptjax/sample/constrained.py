"""Constrained decoding: outputs that match a regular expression or a JSON schema.

outlines-core compiles the pattern against the tokenizer's vocabulary into a token-level automaton
(state --token--> state) once, on the host. We renumber its states from 0 (the start), drop the states
from which no accepting state can be reached (so sampling can never paint itself into a corner), and
store it as a dense table the jitted decode loop indexes on device:

    allowed_BxV = automaton.next_state_ZxV[state_B] >= 0     # mask the logits with this
    state_B = automaton.next_state_ZxV[state_B, token_B]     # after sampling token_B

Special tokens are never allowed, except EOS in accepting states (where it keeps the state), so a
sequence ends exactly when the text so far matches and the model chooses to stop.

Memory: the table holds S * V int32, S rounded up to a multiple of 32. With GPT-2's 50257 ids one
state costs 196 KiB: the 32-state minimum is 6.1 MiB, a 1000-state JSON schema 192 MiB; builds above
`max_table_bytes` (default 512 MiB, ~2670 GPT-2 states) are refused rather than exhausting device memory.
"""

import collections
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from outlines_core import Index, Vocabulary
from outlines_core.json_schema import build_regex_from_schema

MAX_TABLE_BYTES = 512 * 2**20
STATE_BUCKET = 32  # S is a multiple of this (see _build)
CACHE_SIZE = 16  # automata kept per process; a GPT-2-vocab automaton is tens of MiB on device


class ConstraintError(ValueError):
    """A regex or JSON schema that cannot constrain decoding; the message names it and the fix."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenAutomaton:
    """A token-level automaton as device arrays (a jax pytree; `start_state` is static).

    next_state_ZxV: int32 [S, V]; the state after token v in state s, -1 where v is not allowed.
    is_final_Z: bool [S]; states in which the text so far matches the pattern (EOS allowed).
    """

    next_state_ZxV: jax.Array
    is_final_Z: jax.Array
    start_state: int = dataclasses.field(default=0, metadata=dict(static=True))


def regex_automaton(regex: str, tokenizer, max_table_bytes: int = MAX_TABLE_BYTES) -> TokenAutomaton:
    """The automaton whose accepted token sequences decode to exactly the strings that fully match
    `regex` (Rust `regex` syntax: no lookaround or backreferences), over the tokenizer's ids (the
    generate loop pads it to a larger model vocabulary). Built once per (regex, tokenizer) and cached."""
    key = (regex, tokenizer.hash)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        _check_size(regex, *_CACHE[key].next_state_ZxV.shape, max_table_bytes)  # built under another limit?
        return _CACHE[key]
    _CACHE[key] = _build(regex, tokenizer, max_table_bytes)
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return _CACHE[key]


def json_schema_automaton(schema: str | dict, tokenizer, whitespace_pattern: str | None = None,
                          max_table_bytes: int = MAX_TABLE_BYTES) -> TokenAutomaton:
    """The automaton for JSON texts valid under `schema` (a JSON Schema as a dict or JSON string), via
    outlines-core's schema -> regex translation. `whitespace_pattern` is the regex allowed between
    tokens of the JSON syntax (outlines' default: an optional single space; "" for compact JSON)."""
    schema_json = schema if isinstance(schema, str) else json.dumps(schema)
    try:
        regex = build_regex_from_schema(schema_json, whitespace_pattern)
    except (ValueError, TypeError) as e:
        raise ConstraintError(f"JSON schema {_short(schema_json)} cannot be compiled ({e}); fix the schema or use "
                              "the features outlines-core supports") from e
    return regex_automaton(regex, tokenizer, max_table_bytes)


_CACHE: collections.OrderedDict = collections.OrderedDict()


def _short(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_size(regex: str, n_states: int, vocab_size: int, max_table_bytes: int) -> None:
    table_bytes = 4 * n_states * vocab_size
    if table_bytes > max_table_bytes:
        raise ConstraintError(
            f"pattern {_short(regex)} needs {n_states} automaton states, a {table_bytes / 2**20:.0f} MiB table at "
            f"vocab size {vocab_size}, above max_table_bytes={max_table_bytes / 2**20:.0f} MiB; simplify the "
            "pattern (bound fewer repetitions, e.g. maxLength) or raise max_table_bytes")


# outlines-core (0.2.x) builds the index on a regex-automata DFA, which reports a match one byte late
# and follows leftmost-first alternation; its Index therefore drops every token that continues past a
# position where the regex already matches ("(ba)+" never gets past "ba" with one-letter tokens, "a|ab"
# never allows "ab"). Compiling "(?:R)" + END instead puts the only match after END, so no real token
# crosses a match; R accepts a text exactly where the token END leads to a final state. END is a
# Unicode noncharacter, which no text the pattern is meant for contains.
END = "\uffff"


def _outlines_index(regex: str, tokenizer) -> tuple[Index, int]:
    """outlines-core's index of "(?:regex)END" and the id of the extra END token."""
    by_bytes = collections.defaultdict(list)
    for token_id, token in enumerate(tokenizer.token_bytes()):
        if token is not None:  # special tokens spell no text; outlines gets EOS by id only
            by_bytes[token].append(token_id)
    end_id = tokenizer.vocab_size
    by_bytes[END.encode("utf-8")].append(end_id)
    try:
        # The regex alone first (over single bytes: cheap), else "a)(b" would pass as "(?:a)(b)END".
        Index(regex, Vocabulary(256, {bytes([b]): [b] for b in range(256)}))
        return Index(f"(?:{regex}){END}", Vocabulary(tokenizer.eos_id, dict(by_bytes))), end_id
    except ValueError as e:  # outlines raises ValueError for bad syntax and for patterns no token can spell
        raise ConstraintError(f"pattern {_short(regex)} cannot constrain decoding with this tokenizer ({e})") from e


def _build(regex: str, tokenizer, max_table_bytes: int) -> TokenAutomaton:
    index, end_id = _outlines_index(regex, tokenizer)
    outlines_finals = set(index.get_final_states())
    transitions, finals = {}, set()
    for s, out in index.get_transitions().items():
        if out.get(end_id) in outlines_finals:
            finals.add(s)
        transitions[s] = {t: n for t, n in out.items() if t not in (end_id, tokenizer.eos_id)}
    live = _live_states(transitions, finals)
    start = index.get_initial_state()
    if start not in live:
        raise ConstraintError(f"pattern {_short(regex)}: no sequence of this tokenizer's tokens matches it in full; "
                              "check that the characters it requires are spelled by some token")
    # Breadth-first numbering from the start state, through live states only; dead ones vanish.
    number, order = {start: 0}, [start]
    for s in order:
        for n in transitions.get(s, {}).values():
            if n in live and n not in number:
                number[n] = len(order)
                order.append(n)
    # Unreachable padding states round S up, so that patterns of similar size share one compiled loop.
    n_states = -(-len(order) // STATE_BUCKET) * STATE_BUCKET
    _check_size(regex, n_states, tokenizer.vocab_size, max_table_bytes)
    next_state_ZxV = np.full((n_states, tokenizer.vocab_size), -1, np.int32)
    for s in order:
        kept = [(t, number[n]) for t, n in transitions.get(s, {}).items() if n in number]
        if kept:
            tokens, targets = np.array(kept, np.int64).T
            next_state_ZxV[number[s], tokens] = targets
    is_final_Z = np.zeros(n_states, bool)
    is_final_Z[[number[s] for s in finals if s in number]] = True
    next_state_ZxV[is_final_Z, tokenizer.eos_id] = np.flatnonzero(is_final_Z)
    return TokenAutomaton(jnp.asarray(next_state_ZxV), jnp.asarray(is_final_Z))


def _live_states(transitions: dict, finals: set) -> set:
    """States from which some accepting state is reachable (backward search from the accepting ones)."""
    predecessors = collections.defaultdict(set)
    for s, out in transitions.items():
        for n in out.values():
            predecessors[n].add(s)
    live, frontier = set(finals), list(finals)
    while frontier:
        for p in predecessors[frontier.pop()] - live:
            live.add(p)
            frontier.append(p)
    return live
