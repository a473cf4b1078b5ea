"""JSONL files for post-training: SFT conversations and preferences, read into token ids.

One JSON object per line; blank lines are skipped; every error names `path:line` (1-based) and the fix.
Keys a format does not use are ignored, so rows may carry ids, sources or scores.

  SFT          {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}
  pair         {"prompt": P, "chosen": "reply", "rejected": "reply"}
  ranking      {"prompt": P, "responses": ["reply", ...], "ranking": [best index, ..., worst index]}

P is a string (one user turn) or a list of messages (the conversation before the reply); replies are
assistant texts. Pair and ranking rows may share one file. A ranking of K responses stands for all
K(K-1)/2 pairs it implies, each weighted 1/C(K,2) so that every prompt counts once (InstructGPT).
"""

import dataclasses
import hashlib
import json
import math
import os

from gptjax.align import chat
from gptjax.atomic import write_jsonl_atomic

PAIR_KEYS = ("prompt", "chosen", "rejected")
RANKING_KEYS = ("prompt", "responses", "ranking")


class AlignDataError(ValueError):
    """A post-training data file or row that cannot be used; the message names `path:line` and the fix."""


@dataclasses.dataclass(frozen=True)
class PreferenceGroup:
    """One prompt with its responses and the preferences among them."""

    prompt: list[int]  # prompt tokens, ending with <|assistant|>
    responses: list[list[int]]  # reply tokens, each ending with <|eos|>
    pairs: list[tuple[int, int]]  # (winner index, loser index) into responses
    weight: float  # per pair: 1 for a plain pair, 1/C(K,2) for a ranking


# ---------------------------------------------------------------------------------------------- reading


def read_jsonl(path: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of `path`, line numbers 1-based."""
    if not os.path.isfile(path):
        raise AlignDataError(f"{path}: no such file; give the path of a JSONL file (one JSON object per line)")
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    rows.append((number, _parse_line(line, f"{path}:{number}")))
    except UnicodeDecodeError as e:
        raise AlignDataError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from e
    return rows


def _parse_line(line: str, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise AlignDataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                             "write one JSON object per line") from e
    if not isinstance(obj, dict):
        raise AlignDataError(f"{where}: expected a JSON object, got {type(obj).__name__}; "
                             "write one {...} object per line")
    return obj


def _rows(path: str) -> list[tuple[int, dict]]:
    """read_jsonl, refusing a file without rows (training on nothing would fail later and less clearly)."""
    rows = read_jsonl(path)
    if not rows:
        raise AlignDataError(f"{path}: the file holds no rows; add at least one JSON object")
    return rows


def _render(messages, tokenizer, where: str, add_generation_prompt: bool = False) -> chat.Rendered:
    try:
        return chat.render(messages, tokenizer, add_generation_prompt=add_generation_prompt, where=where)
    except chat.ChatError as e:  # one exception type for every data problem, same message
        raise AlignDataError(str(e)) from e


# --------------------------------------------------------------------------------------------------- SFT


def load_sft(path: str, tokenizer, max_len: int) -> list[chat.Rendered]:
    """The conversations of an SFT JSONL, rendered by the chat template, each at most `max_len` tokens."""
    rendered = []
    for number, row in _rows(path):
        where = f"{path}:{number}"
        if "messages" not in row:
            raise AlignDataError(f"{where}: missing key 'messages'; an SFT row is "
                                 '{"messages": [{"role": ..., "content": ...}, ...]}')
        r = _render(row["messages"], tokenizer, where)
        if not any(r.assistant_mask):  # pitfall: an all-zero loss mask trains on nothing, silently
            raise AlignDataError(f"{where}: conversation has no assistant turn, so there is nothing to learn; "
                                 "add the assistant's reply or drop the row")
        if len(r.tokens) > max_len:
            raise AlignDataError(f"{where}: conversation has {len(r.tokens)} tokens, more than "
                                 f"model.max_len={max_len}; shorten it or raise max_len")
        rendered.append(r)
    return rendered


# ------------------------------------------------------------------------------------------- preferences


def load_preferences(path: str, tokenizer, max_len: int) -> list[PreferenceGroup]:
    """The preference groups of a JSONL of pair and ranking rows (see the module docstring)."""
    return [_preference_group(row, tokenizer, max_len, f"{path}:{number}") for number, row in _rows(path)]


def _preference_group(row: dict, tokenizer, max_len: int, where: str) -> PreferenceGroup:
    is_pair = "chosen" in row or "rejected" in row
    is_ranking = "responses" in row or "ranking" in row
    if is_pair and is_ranking:
        raise AlignDataError(f"{where}: row mixes the pair keys (chosen, rejected) with the ranking keys "
                             "(responses, ranking); keep one format per row")
    if not is_pair and not is_ranking:
        raise AlignDataError(f"{where}: not a preference row; a pair needs keys {', '.join(PAIR_KEYS)}, "
                             f"a ranking needs keys {', '.join(RANKING_KEYS)}")
    _require_keys(row, PAIR_KEYS if is_pair else RANKING_KEYS, "pair" if is_pair else "ranking", where)
    prompt = _prompt_tokens(row["prompt"], tokenizer, where)
    if is_pair:
        texts, pairs, weight = _pair(row, where)
    else:
        texts, pairs, weight = _ranking(row, where)
    responses = [chat.response_tokens(t, tokenizer) for t in texts]
    for i, r in enumerate(responses):
        if len(prompt) + len(r) > max_len:
            raise AlignDataError(f"{where}: prompt + response {i} have {len(prompt) + len(r)} tokens, more than "
                                 f"model.max_len={max_len}; shorten them or raise max_len")
    return PreferenceGroup(prompt, responses, pairs, weight)


def _require_keys(row: dict, keys, kind: str, where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise AlignDataError(f"{where}: {kind} row lacks {', '.join(map(repr, missing))}; "
                             f"a {kind} row needs keys {', '.join(keys)}")


def _prompt_tokens(prompt, tokenizer, where: str) -> list[int]:
    """A string is one user turn; a list of messages is the conversation the reply continues."""
    if isinstance(prompt, str):
        return chat.prompt_tokens(prompt, tokenizer)
    if isinstance(prompt, list):
        return _render(prompt, tokenizer, f"{where}: prompt", add_generation_prompt=True).tokens
    raise AlignDataError(f"{where}: 'prompt' must be a string or a list of messages, got {type(prompt).__name__}")


def _reply(value, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise AlignDataError(f"{where}: {key} must be a string (the assistant's reply), got {type(value).__name__}")
    return value


def _pair(row: dict, where: str):
    chosen, rejected = _reply(row["chosen"], "'chosen'", where), _reply(row["rejected"], "'rejected'", where)
    if chosen == rejected:
        raise AlignDataError(f"{where}: 'chosen' and 'rejected' are the same text, so the row carries no "
                             "preference; drop the row")
    return [chosen, rejected], [(0, 1)], 1.0


def _ranking(row: dict, where: str):
    responses, ranking = row["responses"], row["ranking"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise AlignDataError(f"{where}: 'responses' must be a list of at least 2 replies; "
                             "a single reply carries no preference")
    texts = [_reply(r, f"response {i}", where) for i, r in enumerate(responses)]
    first_seen = {}
    for i, t in enumerate(texts):
        if t in first_seen:
            raise AlignDataError(f"{where}: responses {first_seen[t]} and {i} are the same text, so their order "
                                 "carries no preference; keep one of them")
        first_seen[t] = i
    _check_permutation(ranking, len(texts), where)
    pairs = [(ranking[i], ranking[j]) for i in range(len(ranking)) for j in range(i + 1, len(ranking))]
    return texts, pairs, 1.0 / math.comb(len(texts), 2)


def _check_permutation(ranking, k: int, where: str) -> None:
    """`ranking` must list every index 0..k-1 once, best first; say which part is wrong."""
    fix = f"list each index 0..{k - 1} of 'responses' once, best first"
    if not isinstance(ranking, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
        raise AlignDataError(f"{where}: 'ranking' must be a list of integer indices, got {ranking!r}; {fix}")
    if len(ranking) != k:
        raise AlignDataError(f"{where}: 'ranking' has {len(ranking)} entries for {k} responses; {fix}")
    outside = sorted({i for i in ranking if not 0 <= i < k})
    if outside:
        raise AlignDataError(f"{where}: 'ranking' indices {outside} are outside 0..{k - 1}; {fix}")
    repeated = sorted({i for i in ranking if ranking.count(i) > 1})
    if repeated:
        missing = sorted(set(range(k)) - set(ranking))
        raise AlignDataError(f"{where}: 'ranking' repeats {repeated} and misses {missing}; {fix}")


def write_preferences(path: str, rows: list[dict]) -> None:
    """Writes preference rows as JSONL, atomically: readers see the old file or the whole new one."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise AlignDataError(f"{path}: row {i} is a {type(row).__name__}, not a dict; pass preference rows "
                                 "as dicts (see gptjax/align/data.py)")
    write_jsonl_atomic(path, rows, all_processes=True)


# -------------------------------------------------------------------------------------------- splitting


SPLIT_RULE = "prompt-text-v2"  # in every stage's identity: checkpoints from before it are refused


def prompt_key(prompt) -> tuple:
    """What the split hashes of a prompt: its messages as ((role, content), ...), a string prompt being one
    user message. Text, not token ids: the split is the same under every tokenizer, so it is decided
    before a stage trains its tokenizer (on the training rows only)."""
    if isinstance(prompt, str):
        return (("user", prompt),)
    if not isinstance(prompt, list):
        return ()  # a malformed row: the loader names it
    return tuple((m.get("role"), m.get("content")) for m in prompt if isinstance(m, dict))


def conversation_prompt(messages) -> list:
    """The messages of a conversation before its first assistant turn (what the model is asked)."""
    if not isinstance(messages, list):
        return []
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    return messages[:roles.index("assistant")] if "assistant" in roles else messages


def prompt_hash_unit(prompt_key, seed: int) -> float:
    """A number in [0, 1) fixed by the prompt (`prompt_key`, or any text) and `seed` (align.split_seed)."""
    key = tuple(prompt_key) if isinstance(prompt_key, (list, tuple)) else prompt_key
    digest = hashlib.sha256(repr((int(seed), key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_train_val(items, val_fraction: float, seed: int, prompt_of=lambda item: item) -> tuple[list, list]:
    """(train, val), both in their original order: an item is held out when its *prompt*
    (`prompt_of(item)`, a `prompt_key`) hashes below `val_fraction` under `seed` (align.split_seed).

    Deciding by the prompt, not the item's position, makes the split one fixed partition of prompts:
    SFT, reward, DPO and RL stages hold out the same prompts whatever their seed, item order or
    align.num_examples (a smaller set's held-out prompts are a subset of a larger one's), and duplicates
    of a prompt never straddle the split. With at least 2 items and val_fraction > 0 each side gets at
    least one item (a tiny file still evaluates); with 1 item, or val_fraction 0, val is empty.
    """
    if not 0 <= val_fraction < 1:
        raise AlignDataError(f"align.val_fraction={val_fraction}: must be in [0, 1); e.g. 0.05")
    items = list(items)
    if len(items) < 2 or val_fraction == 0:
        return items, []
    units = [prompt_hash_unit(prompt_of(x), seed) for x in items]
    held_out = [u < val_fraction for u in units]
    if not any(held_out):  # tiny sets: the lowest-hashing prompt evaluates
        held_out = [u == min(units) for u in units]
    if all(held_out):
        held_out = [u != max(units) for u in units]
    train = [x for x, out in zip(items, held_out) if not out]
    val = [x for x, out in zip(items, held_out) if out]
    return train, val
