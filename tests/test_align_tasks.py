import math
import re

import numpy as np
import pytest

from gptjax.align import tasks
from gptjax.align.data import AlignDataError, load_preferences, write_preferences
from gptjax.align.tasks import (LEXICON, TASKS, ArithmeticProblem, arithmetic_problems, arithmetic_reward,
                                arithmetic_sft_rows, concise_gold_reward, get_task, gold_reward, shakespeare_preferences,
                                shakespeare_prompts, shakespeare_sft_rows)
from gptjax.data import sources
from gptjax.data.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["What is 3+4? 7", "Continue: Now, fair Hippolyta, our nuptial hour"] * 10, vocab_size=300)


@pytest.fixture(scope="module")
def corpus_text():
    """The plays without markup, whitespace collapsed (as prompts and replies are written)."""
    docs = sources.shakespeare(keep_markup=False)
    return " ".join(" ".join(docs[i].split()) for i in range(len(docs)))


# ------------------------------------------------------------------------------------------- arithmetic


def test_arithmetic_reward_is_exact_match_of_stripped_text():
    p = ArithmeticProblem("What is 3+4?", "7")
    assert arithmetic_reward(p, "7") == arithmetic_reward(p, " 7\n") == 1.0
    for wrong in ["8", "77", "7.", "= 7", "The answer is 7", "7 7", ""]:
        assert arithmetic_reward(p, wrong) == 0.0, wrong


def test_arithmetic_problems_are_deterministic_correct_and_varied():
    problems = arithmetic_problems(50, seed=0, ops=("+", "-", "*"))
    assert problems == arithmetic_problems(50, seed=0, ops=("+", "-", "*"))
    assert problems != arithmetic_problems(50, seed=1, ops=("+", "-", "*"))
    assert len({p.prompt for p in problems}) == 50  # distinct while there are enough problems
    assert {re.search(r"[-+*]", p.prompt).group() for p in problems} == {"+", "-", "*"}
    for p in problems:
        a, op, b = re.fullmatch(r"What is (\d)([-+*])(\d)\?", p.prompt).groups()
        assert int(p.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert len(arithmetic_problems(300, seed=0)) == 300  # more than the 100 sums there are: repeats
    assert all(int(p.answer) <= 6 for p in arithmetic_problems(20, seed=0, max_operand=3))


def test_arithmetic_bad_settings_raise():
    with pytest.raises(AlignDataError, match="choose operators from"):
        arithmetic_problems(3, 0, ops=("/",))
    with pytest.raises(AlignDataError, match="max_operand=0"):
        arithmetic_problems(3, 0, max_operand=0)


def test_arithmetic_sft_and_preference_rows(tokenizer, tmp_path):
    problems = arithmetic_problems(5, seed=2)
    rows = arithmetic_sft_rows(5, seed=2)
    assert rows == [{"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.answer}]}
                    for p in problems]
    task = get_task("arithmetic")
    prefs = task.preference_rows(5, seed=2)
    problems = arithmetic_problems(5, seed=2, max_operand=task.max_operand)
    assert [(r["prompt"], r["chosen"]) for r in prefs] == [(p.prompt, p.answer) for p in problems]
    assert all(1 <= abs(int(r["rejected"]) - int(r["chosen"])) <= 3 for r in prefs)
    path = str(tmp_path / "prefs.jsonl")
    write_preferences(path, prefs)
    assert len(load_preferences(path, tokenizer, max_len=64)) == 5


# ------------------------------------------------------------------------------------------ gold reward


def test_gold_reward_orders_hand_examples_as_documented():
    varied_two = gold_reward("the fair moon shines on my dear lord")  # fair, dear: 1 - e^-1
    neutral = gold_reward("the old moon wanes slowly")
    spam = gold_reward("love love love love love love love love")
    two_word_spam = gold_reward("love sweet love sweet love sweet love sweet")
    assert varied_two == pytest.approx(1 - math.exp(-1))
    assert neutral == 0.0
    assert spam == pytest.approx(1 - math.exp(-0.5) - 7 / 8)
    assert varied_two > neutral > two_word_spam > spam > gold_reward("") == gold_reward(" ... ") == -1.0
    assert gold_reward("Love, LOVE!") == gold_reward("love love")  # case and punctuation do not matter
    assert gold_reward("sweet love") > gold_reward("love")  # each distinct warm word adds


def test_gold_reward_penalises_length_past_sixteen_words():
    words = "the fair moon shines on my dear lord and all his men ride out at dawn".split()
    assert len(words) == 16
    base = gold_reward(" ".join(words))
    longer = [gold_reward(" ".join(words + [f"w{c}" for c in "abcdefghij"[:k]])) for k in range(1, 11)]
    assert all(a > b for a, b in zip([base] + longer[:8], longer[:8]))  # each extra word costs 1/8
    assert longer[7] == longer[9] == pytest.approx(base - 1)  # the penalty is full at 24 words


def test_gold_reward_is_bounded_and_deterministic():
    texts = ["", "love " * 100, " ".join(sorted(LEXICON)), "a b c", "O, I cry you mercy", "x " * 40]
    scores = [gold_reward(t) for t in texts]
    assert scores == [gold_reward(t) for t in texts]
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert len(LEXICON) == 30


def test_concise_gold_reward_peaks_at_seven_distinct_words():
    words = "now is the winter of our discontent made glorious summer by this sun of york".split()
    scores = [concise_gold_reward(" ".join(words[:n])) for n in range(1, 13)]
    assert scores[:7] == pytest.approx([0.25 * n for n in range(1, 8)])  # each word up to 7 earns 0.25
    assert scores[7:] == pytest.approx([1.75 - 1.0 * k for k in range(1, 6)])  # each beyond costs 1
    assert int(np.argmax(scores)) + 1 == 7
    assert concise_gold_reward("the the the the") == pytest.approx(1.0 - 0.75)  # 3 of 4 words repeat
    assert concise_gold_reward("") == concise_gold_reward("!!") == -1.0


def test_the_concise_task_judges_and_labels_with_its_own_gold():
    concise, plain = get_task("shakespeare_concise"), get_task("shakespeare")
    assert concise.prompts(5, seed=0) == plain.prompts(5, seed=0)  # the same prompts and SFT data
    assert concise.sft_rows(5, seed=0) == plain.sft_rows(5, seed=0)
    text = "the fair moon shines on my dear lord and all his men ride out"
    assert concise.reward(None, text) == concise_gold_reward(text) != plain.reward(None, text)
    for row in concise.preference_rows(30, seed=0):
        assert concise_gold_reward(row["chosen"]) > concise_gold_reward(row["rejected"])


# ------------------------------------------------------------------------------------------ shakespeare


def test_shakespeare_prompts_come_from_the_corpus(corpus_text):
    prompts = shakespeare_prompts(30, seed=0)
    assert prompts == shakespeare_prompts(30, seed=0) != shakespeare_prompts(30, seed=1)
    assert len({p.prompt for p in prompts}) == 30
    for p in prompts:
        assert p.prompt.startswith("Continue: ")
        head = p.prompt[len("Continue: "):]
        assert len(head.split()) == 4 and 1 <= len(p.reference.split()) <= 12
        assert f"{head} {p.reference}" in corpus_text
        assert not re.search(r"[_*#\[\]]", p.prompt + p.reference)  # no Markdown left
    assert all(len(p.prompt.split()) == 1 + 2 for p in shakespeare_prompts(5, seed=0, words=2))


def test_corpus_lines_are_speech_only():
    lines = set(tasks.corpus_lines())
    assert "Now is the winter of our discontent" in lines  # verse (Richard III, a play pretraining trains on)
    for not_speech in ["GLOUCESTER", "ACT I", "Richard III", "SCENE I. London. A street.", "Enter GLOUCESTER, solus"]:
        assert not_speech not in lines


def test_shakespeare_sft_rows_reply_with_the_rest_of_the_line():
    rows, prompts = shakespeare_sft_rows(10, seed=3), shakespeare_prompts(10, seed=3)
    assert [[t["content"] for t in r["messages"]] for r in rows] == [[p.prompt, p.reference] for p in prompts]
    assert [t["role"] for t in rows[0]["messages"]] == ["user", "assistant"]


def test_shakespeare_preferences_prefer_the_judge_and_drop_ties():
    rows = shakespeare_preferences({"Continue: a": ["the moon", "sweet fair love", "the moon"],
                                    "Continue: b": ["x y", "x z"]}, seed=0)
    # a: the duplicate sample is dropped, the two texts left make one pair; b's pair ties at 0, dropped
    assert rows == [{"prompt": "Continue: a", "chosen": "sweet fair love", "rejected": "the moon"}]
    by_length = shakespeare_preferences({"p": ["a", "bb", "ccc", "dddd"]}, judge=len, seed=5)
    assert len(by_length) == 2 and all(len(r["chosen"]) > len(r["rejected"]) for r in by_length)
    assert by_length == shakespeare_preferences({"p": ["a", "bb", "ccc", "dddd"]}, judge=len, seed=5)


def test_shakespeare_preference_rows_are_gold_labelled_and_loadable(tokenizer, tmp_path):
    rows = get_task("shakespeare").preference_rows(40, seed=0)
    assert len(rows) == 40 and rows == get_task("shakespeare").preference_rows(40, seed=0)
    assert all(gold_reward(r["chosen"]) > gold_reward(r["rejected"]) for r in rows)
    path = str(tmp_path / "prefs.jsonl")
    write_preferences(path, rows)
    assert len(load_preferences(path, tokenizer, max_len=256)) == 40


# --------------------------------------------------------------------------------------------- registry


def test_registry_tasks_share_one_interface():
    assert set(TASKS) == {"arithmetic", "shakespeare", "shakespeare_concise"}
    arithmetic = get_task("arithmetic")
    assert arithmetic.name == "arithmetic"
    [(text, meta)] = arithmetic.prompts(1, seed=0)
    assert text == meta.prompt and arithmetic.reward(meta, meta.answer) == 1.0
    assert arithmetic.reward(meta, meta.answer + "0") == 0.0
    assert arithmetic.sft_rows(3, seed=0) == arithmetic_sft_rows(3, seed=0, max_operand=arithmetic.max_operand)
    shakespeare = get_task("shakespeare")
    [(text, meta)] = shakespeare.prompts(1, seed=0)
    assert text.startswith("Continue: ") and shakespeare.reward(meta, "sweet love") == gold_reward("sweet love")
    assert len(shakespeare.sft_rows(3, seed=0)) == 3
    with pytest.raises(AlignDataError, match="align.task='chess': unknown task; choose one of arithmetic, shakespeare"):
        get_task("chess")


def test_arithmetic_task_refuses_more_rows_than_distinct_problems():
    task = get_task("arithmetic")
    assert len({p for p, _ in task.prompts(task.distinct, seed=0)}) == task.distinct == 400
    with pytest.raises(AlignDataError, match="align.num_examples=401: the arithmetic task has 400 distinct"):
        task.prompts(401, seed=0)


def test_shakespeare_prompts_never_come_from_the_plays_pretraining_holds_out():
    """Post-training's Shakespeare lines come from configs/pretrain_shakespeare.py's training plays only."""
    import importlib.util
    import os

    from gptjax.data.cache import split_documents

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "pretrain_shakespeare.py")
    spec = importlib.util.spec_from_file_location("pretrain_shakespeare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    d = module.get_config().data
    docs = sources.shakespeare(keep_markup=True)
    held_out = tasks.held_out_plays()
    assert held_out == {int(i) for i in split_documents(len(docs), d.val_fraction, d.split_seed, docs.name).val_indices}

    def lines_of(i):
        return {" ".join(line.split()) for line in sources.strip_markdown("\n".join(tasks._speech_lines(docs[i]))).split("\n")}

    trained_on = set().union(*(lines_of(i) for i in range(len(docs)) if i not in held_out))
    only_held_out = set().union(*(lines_of(i) for i in held_out)) - trained_on - {""}
    assert len(only_held_out) > 1000  # the held-out plays' own lines
    assert not only_held_out & set(tasks.corpus_lines())
