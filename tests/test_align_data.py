import json
import os

import pytest

from gptjax.align import chat
from gptjax.align.data import (AlignDataError, PreferenceGroup, load_preferences, load_sft, read_jsonl,
                               split_train_val, write_preferences)
from gptjax.data.tokenizer import train_tokenizer

TEXTS = ["What is 3+4? 7", "Now, fair Hippolyta, our nuptial hour draws on apace", "be kind and gentle"] * 10
GOOD_PAIR = {"prompt": "hi", "chosen": "hello there", "rejected": "go away"}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300)


def write(tmp_path, *rows, name="data.jsonl") -> str:
    """A JSONL file of `rows` (dicts are dumped, strings written as they are), one per line."""
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def messages(*turns):
    return [{"role": role, "content": content} for role, content in turns]


# -------------------------------------------------------------------------------------------- read_jsonl


def test_read_jsonl_numbers_lines_from_one_and_skips_blank_ones(tmp_path):
    path = write(tmp_path, {"a": 1}, "", "   ", {"b": 2})
    assert read_jsonl(path) == [(1, {"a": 1}), (4, {"b": 2})]


def test_read_jsonl_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(AlignDataError, match="missing.jsonl: no such file"):
        read_jsonl(str(tmp_path / "missing.jsonl"))
    path = write(tmp_path, {"a": 1}, "", '{"a": 2,}')
    with pytest.raises(AlignDataError, match=r"data.jsonl:3: not valid JSON \("):
        read_jsonl(path)
    path = write(tmp_path, {"a": 1}, "[1, 2]")
    with pytest.raises(AlignDataError, match="data.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)


# ------------------------------------------------------------------------------------------------- SFT


def test_sft_mask_covers_only_assistant_text_and_its_eos(tokenizer, tmp_path):
    conv = messages(("system", "be kind"), ("user", "What is 3+4?"), ("assistant", "7"),
                    ("user", "and gentle?"), ("assistant", "fair Hippolyta"))
    path = write(tmp_path, {"messages": conv, "id": "extra keys are ignored"})
    [r] = load_sft(path, tokenizer, max_len=128)
    assert r == chat.render(conv, tokenizer)
    masked = [t for t, m in zip(r.tokens, r.assistant_mask) if m]
    assert masked == tokenizer.encode("7") + [chat.EOS_ID] + tokenizer.encode("fair Hippolyta") + [chat.EOS_ID]
    assert r.tokens[len(r.tokens) - 1] == chat.EOS_ID and r.assistant_mask[-1]
    assert chat.ROLE_IDS["assistant"] in r.tokens  # the marker is in the tokens but not in the mask
    assert not any(m for t, m in zip(r.tokens, r.assistant_mask) if t == chat.ROLE_IDS["assistant"])


def test_sft_errors_name_path_line_and_fix(tokenizer, tmp_path):
    good = {"messages": messages(("user", "hi"), ("assistant", "hello"))}
    cases = [
        ({"turns": []}, "data.jsonl:2: missing key 'messages'"),
        ({"messages": messages(("user", "hi"))}, "data.jsonl:2: conversation has no assistant turn.*drop the row"),
        ({"messages": messages(("robot", "hi"), ("assistant", "x"))}, "data.jsonl:2: turn 0 has unknown role"),
        ({"messages": []}, "data.jsonl:2: messages must be a non-empty list"),
    ]
    for row, message in cases:
        with pytest.raises(AlignDataError, match=message):
            load_sft(write(tmp_path, good, row), tokenizer, max_len=128)
    n = len(chat.render(good["messages"], tokenizer).tokens)
    with pytest.raises(AlignDataError, match=f"data.jsonl:1: conversation has {n} tokens, more than "
                                             f"model.max_len={n - 1}; shorten it or raise max_len"):
        load_sft(write(tmp_path, good), tokenizer, max_len=n - 1)
    assert len(load_sft(write(tmp_path, good), tokenizer, max_len=n)) == 1  # exactly max_len fits
    with pytest.raises(AlignDataError, match="holds no rows"):
        load_sft(write(tmp_path, ""), tokenizer, max_len=128)


# ----------------------------------------------------------------------------------------- preferences


def test_pair_row_becomes_one_pair_of_weight_one(tokenizer, tmp_path):
    [g] = load_preferences(write(tmp_path, GOOD_PAIR), tokenizer, max_len=128)
    assert g == PreferenceGroup(chat.prompt_tokens("hi", tokenizer),
                                [chat.response_tokens("hello there", tokenizer), chat.response_tokens("go away", tokenizer)],
                                [(0, 1)], 1.0)
    assert g.prompt[-1] == chat.ROLE_IDS["assistant"] and g.responses[0][-1] == chat.EOS_ID


def test_message_list_prompt_renders_with_generation_prompt(tokenizer, tmp_path):
    conv = messages(("system", "be kind"), ("user", "hi"))
    [g] = load_preferences(write(tmp_path, {**GOOD_PAIR, "prompt": conv}), tokenizer, max_len=128)
    assert g.prompt == chat.render(conv, tokenizer, add_generation_prompt=True).tokens


@pytest.mark.parametrize("ranking", [[2, 0, 1], [0, 1, 2, 3], [3, 1, 0, 2, 4]])
def test_ranking_expands_to_all_pairs_best_first(tokenizer, tmp_path, ranking):
    K = len(ranking)
    responses = [f"reply number {i}" for i in range(K)]
    [g] = load_preferences(write(tmp_path, {"prompt": "hi", "responses": responses, "ranking": ranking}),
                           tokenizer, max_len=256)
    assert len(g.pairs) == K * (K - 1) // 2 and g.weight == pytest.approx(2 / (K * (K - 1)))
    assert len(set(g.pairs)) == len(g.pairs)
    position = {index: place for place, index in enumerate(ranking)}  # 0 = best
    assert all(position[w] < position[l] for w, l in g.pairs)
    assert g.responses == [chat.response_tokens(r, tokenizer) for r in responses]  # kept in file order
    if ranking == [2, 0, 1]:
        assert g.pairs == [(2, 0), (2, 1), (0, 1)]


PREFERENCE_ERRORS = [
    ({"prompt": "hi", "chosen": "same", "rejected": "same"}, "same text, so the row carries no preference; drop the row"),
    ({"prompt": "hi", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]}, "responses 0 and 2 are the same text"),
    ({"prompt": "hi", "responses": ["a", "b", "c"], "ranking": [0, 1]}, "'ranking' has 2 entries for 3 responses"),
    ({"prompt": "hi", "responses": ["a", "b", "c"], "ranking": [0, 1, 1]}, r"'ranking' repeats \[1\] and misses \[2\]"),
    ({"prompt": "hi", "responses": ["a", "b"], "ranking": [0, 2]}, r"'ranking' indices \[2\] are outside 0..1"),
    ({"prompt": "hi", "responses": ["a", "b"], "ranking": [0, "1"]}, "'ranking' must be a list of integer indices"),
    ({"prompt": "hi", "responses": ["a", "b"], "ranking": [True, False]}, "must be a list of integer indices"),
    ({"prompt": "hi", "responses": ["a"], "ranking": [0]}, "at least 2 replies"),
    ({"prompt": "hi", "chosen": "a"}, "pair row lacks 'rejected'; a pair row needs keys prompt, chosen, rejected"),
    ({"chosen": "a", "rejected": "b"}, "pair row lacks 'prompt'"),
    ({"prompt": "hi", "responses": ["a", "b"]}, "ranking row lacks 'ranking'; a ranking row needs keys prompt, "
                                                "responses, ranking"),
    ({"prompt": "hi", "answer": "a"}, "not a preference row; a pair needs keys prompt, chosen, rejected, "
                                      "a ranking needs keys prompt, responses, ranking"),
    ({**GOOD_PAIR, "ranking": [0, 1]}, "mixes the pair keys"),
    ({**GOOD_PAIR, "prompt": 3}, "'prompt' must be a string or a list of messages"),
    ({**GOOD_PAIR, "prompt": [{"role": "user"}]}, "prompt: turn 0 must be an object"),
    ({**GOOD_PAIR, "chosen": ["a"]}, "'chosen' must be a string"),
    ({"prompt": "hi", "responses": ["a", 2], "ranking": [0, 1]}, "response 1 must be a string"),
]


@pytest.mark.parametrize("row,message", PREFERENCE_ERRORS)
def test_preference_errors_name_path_line_and_fix(tokenizer, tmp_path, row, message):
    path = write(tmp_path, GOOD_PAIR, "", row)  # the bad row is on line 3
    with pytest.raises(AlignDataError, match="data.jsonl:3: .*" + message):
        load_preferences(path, tokenizer, max_len=128)


def test_preference_too_long_names_the_response(tokenizer, tmp_path):
    [g] = load_preferences(write(tmp_path, GOOD_PAIR), tokenizer, max_len=128)
    n = len(g.prompt) + len(g.responses[0])  # "hello there" is the longer reply
    assert n > len(g.prompt) + len(g.responses[1])
    with pytest.raises(AlignDataError, match=f"data.jsonl:1: prompt \\+ response 0 have {n} tokens, more than "
                                             f"model.max_len={n - 1}; shorten them or raise max_len"):
        load_preferences(write(tmp_path, GOOD_PAIR), tokenizer, max_len=n - 1)


def test_write_preferences_round_trips_atomically(tokenizer, tmp_path):
    rows = [GOOD_PAIR, {"prompt": messages(("user", "hi")), "responses": ["a", "b", "c"], "ranking": [1, 2, 0]},
            {"prompt": "ünïcode ✓", "chosen": "gentle", "rejected": "rude"}]
    path = str(tmp_path / "new" / "dir" / "prefs.jsonl")
    write_preferences(path, rows[:1])
    write_preferences(path, rows)  # replaces the earlier file whole
    assert [row for _, row in read_jsonl(path)] == rows
    assert load_preferences(path, tokenizer, 128) == load_preferences(write(tmp_path, *rows), tokenizer, 128)
    assert os.listdir(os.path.dirname(path)) == ["prefs.jsonl"]  # no temporary file left behind
    with pytest.raises(AlignDataError, match="row 1 is a list"):
        write_preferences(path, [GOOD_PAIR, ["not", "a", "dict"]])
    assert [row for _, row in read_jsonl(path)] == rows  # a refused write leaves the file as it was


# -------------------------------------------------------------------------------------------- splitting


def test_split_is_deterministic_disjoint_and_complete():
    items = list(range(1000))
    train, val = split_train_val(items, 0.1, seed=3)
    assert (train, val) == split_train_val(items, 0.1, seed=3)
    assert 70 <= len(val) <= 130 and sorted(train + val) == items and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)  # original order kept
    assert split_train_val(items, 0.1, seed=4)[1] != val


def test_split_is_by_prompt_so_subsets_and_reorderings_keep_their_held_out_prompts():
    items = [f"What is {a}+{b}?" for a in range(20) for b in range(20)]
    _, val = split_train_val(items, 0.1, seed=0)
    subset = items[::3][::-1]  # fewer examples, another order (align.num_examples, another seed's draw)
    sub_train, sub_val = split_train_val(subset, 0.1, seed=0)
    assert set(sub_val) == set(val) & set(subset) and not set(sub_train) & set(val)
    doubled = items + items[:50]  # a repeated prompt never lands on both sides
    d_train, d_val = split_train_val(doubled, 0.1, seed=0)
    assert not set(d_train) & set(d_val)
    pairs = [(text, i) for i, text in enumerate(items)]  # items keyed by their prompt
    assert [t for t, _ in split_train_val(pairs, 0.1, 0, prompt_of=lambda p: p[0])[1]] == val


def test_sft_and_rl_with_other_seeds_hold_out_the_same_arithmetic_problems(tokenizer):
    from conftest import tiny_config
    from gptjax.align.rl import task_prompts
    from gptjax.align.sft import load_conversations
    from gptjax.align.tasks import get_task

    cfg = tiny_config(vocab_size=300, max_len=64)
    cfg.align.update(task="arithmetic", num_examples=400, val_fraction=0.2)
    sft_train, sft_val = load_conversations(cfg, tokenizer, 64)
    cfg.seed, cfg.align.num_examples = 7, 150  # an RL run with another seed and fewer problems
    rl_train, rl_val = task_prompts(cfg, get_task("arithmetic"), tokenizer, 64)
    held_out = {tuple(r.tokens[:r.assistant_mask.index(True)]) for r in sft_val}
    assert held_out and not {tuple(t) for t in rl_train.tokens} & held_out
    assert {tuple(t) for t in rl_val.tokens} <= held_out


def test_split_is_by_prompt_text_so_every_tokenizer_holds_out_the_same_rows(tokenizer, tmp_path):
    """The split hashes the prompt's text, not its token ids: it is known before a stage trains its
    tokenizer, and two tokenizers hold out the same conversations and preference rows."""
    from conftest import tiny_config
    from gptjax.align.reward import preference_groups
    from gptjax.align.sft import load_conversations

    other = train_tokenizer(TEXTS[::-1] + ["What is 7+8? 15"], vocab_size=280)
    assert other.hash != tokenizer.hash
    cfg = tiny_config(vocab_size=300, max_len=64)
    cfg.align.update(task="arithmetic", num_examples=400, val_fraction=0.2)
    held_out = [[tok.decode(r.tokens) for r in load_conversations(cfg, tok, 64)[1]] for tok in (tokenizer, other)]
    assert held_out[0] == held_out[1] and 40 <= len(held_out[0]) <= 120
    rows = [{"prompt": f"Name {i}", "chosen": f"yes {i}", "rejected": "no"} for i in range(60)]
    path = write(tmp_path, *rows)
    val_prompts = [[tok.decode(g.prompt) for g in preference_groups(path, cfg, tok, 64)[1]] for tok in (tokenizer, other)]
    assert val_prompts[0] == val_prompts[1] and val_prompts[0]


def test_a_fresh_stage_tokenizer_learns_from_the_training_rows_only(tmp_path):
    """With align.init_from "" a stage trains its tokenizer; the held-out rows' text never reaches it."""
    from conftest import tiny_config
    from gptjax.align.reward import preference_rows, preference_texts
    from gptjax.align.sft import split_rows, sft_rows, training_texts

    cfg = tiny_config(vocab_size=300, max_len=64)
    cfg.align.update(task="arithmetic", num_examples=400, val_fraction=0.2)
    train, val = split_rows(cfg, sft_rows(cfg))
    texts = set(training_texts(cfg))
    assert {row["messages"][0]["content"] for row in train} <= texts
    assert val and not {row["messages"][0]["content"] for row in val} & texts
    path = write(tmp_path, *[{"prompt": f"Name {i}", "chosen": f"yes {i}", "rejected": "no"} for i in range(60)])
    train, val = preference_rows(path, cfg)
    texts = set(preference_texts(path, cfg))
    assert {row["prompt"] for row in train} <= texts and val
    assert not {row["prompt"] for row in val} & texts and not {row["chosen"] for row in val} & texts


def test_split_keeps_one_item_on_each_side_when_it_can():
    assert [len(s) for s in split_train_val(["a", "b"], 0.05, 0)] == [1, 1]
    assert [len(s) for s in split_train_val(list(range(5)), 0.99, 0)] == [1, 4]
    assert split_train_val(["a"], 0.5, 0) == (["a"], [])
    assert split_train_val(list(range(5)), 0.0, 0) == (list(range(5)), [])
    assert split_train_val([], 0.5, 0) == ([], [])
    with pytest.raises(AlignDataError, match="align.val_fraction=1.0: must be in"):
        split_train_val([1, 2], 1.0, 0)
