"""Embedded post-training tasks: data and rewards that need no network and no files.

  arithmetic    "What is 13+4?" -> "17" (operands 0..19). A verifiable reward: 1 for the exact answer, else 0.
  shakespeare   "Continue: <first words of a line from the plays>" -> the rest of the line. A
                programmatic *gold* reward (gold_reward) stands in for human judgement, so a reward
                model trained on gold-labelled preferences is a *proxy* whose over-optimisation can be
                measured (Gao et al. 2022: the proxy keeps rising while the gold score peaks and falls).
  shakespeare_concise   the same prompts, judged by concise_gold_reward: a dense gold whose optimum
                (7 distinct words) lies inside what the SFT policy produces, as the over-optimisation study uses.

Each task in TASKS exposes `name`, `sft_rows(n, seed)` (SFT JSONL rows), `prompts(n, seed)` (a list
of (prompt text, meta)), `reward(meta, completion_text)` and `preference_rows(n, seed)` (preference
JSONL rows in the pair format of align/data.py). Everything is a deterministic function of the seed.
"""

import dataclasses
import functools
import math
import re
from collections.abc import Callable

import numpy as np

from gptjax.align.data import AlignDataError
from gptjax.data import sources
from gptjax.data.cache import split_documents

# ------------------------------------------------------------------------------------------- arithmetic

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclasses.dataclass(frozen=True)
class ArithmeticProblem:
    prompt: str  # "What is 3+4?"
    answer: str  # "7"


def arithmetic_problems(n: int, seed: int, max_operand: int = 9, ops=("+",)) -> list[ArithmeticProblem]:
    """`n` problems "a<op>b" with operands in 0..max_operand and op drawn from `ops` (+, -, *).

    Distinct problems while n does not exceed the (max_operand + 1)^2 * len(ops) there are, so a
    held-out split shares no problem with training; beyond that they repeat.
    """
    ops = tuple(ops)
    if not ops or any(op not in OPS for op in ops):
        raise AlignDataError(f"ops={ops!r}: choose operators from {', '.join(OPS)}")
    if not isinstance(max_operand, int) or max_operand < 1:
        raise AlignDataError(f"max_operand={max_operand!r}: must be an integer >= 1")
    side = max_operand + 1
    total = side * side * len(ops)
    codes = np.random.default_rng(seed).choice(total, size=n, replace=n > total)
    problems = []
    for code in codes.tolist():
        op, rest = ops[code // (side * side)], code % (side * side)
        a, b = divmod(rest, side)
        problems.append(ArithmeticProblem(f"What is {a}{op}{b}?", str(OPS[op](a, b))))
    return problems


def arithmetic_reward(problem: ArithmeticProblem, completion_text: str) -> float:
    """1.0 if the completion, stripped of surrounding whitespace, is exactly the answer, else 0.0.

    Deliberately strict: "= 7", "7." or "The answer is 7" score 0, so the policy must learn the format
    that SFT taught as well as the sum (a lenient parser would reward hedged, many-number answers).
    """
    return 1.0 if completion_text.strip() == problem.answer else 0.0


def arithmetic_sft_rows(n: int, seed: int, **kw) -> list[dict]:
    """SFT rows: the problem as the user turn, the bare answer as the assistant turn."""
    return [_messages(p.prompt, p.answer) for p in arithmetic_problems(n, seed, **kw)]


def arithmetic_preference_rows(n: int, seed: int, **kw) -> list[dict]:
    """Pairs: the right answer is chosen over a near miss (the answer off by 1 to 3)."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the problems stay those of `seed`
    rows = []
    for p in arithmetic_problems(n, seed, **kw):
        wrong = int(p.answer) + int(rng.integers(1, 4)) * int(rng.choice([-1, 1]))
        rows.append(dict(prompt=p.prompt, chosen=p.answer, rejected=str(wrong)))
    return rows


def _messages(prompt: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}


# ------------------------------------------------------------------------------------------ shakespeare

PROMPT_PREFIX = "Continue: "
MAX_REPLY_WORDS = 12  # SFT replies: the rest of the line, at most this many words
MAX_GOLD_WORDS = 16  # gold_reward penalises every word beyond this
CONCISE_WORDS = 7  # concise_gold_reward's best length, in words
CONCISE_OVERLONG_COST = 1.0  # what concise_gold_reward takes off per word beyond CONCISE_WORDS
# The document split of configs/pretrain_shakespeare.py (data.val_fraction, data.split_seed): the plays it
# holds out for validation never give a post-training prompt, so a policy is never tuned on them.
PRETRAINING_VAL_FRACTION, PRETRAINING_SPLIT_SEED = 0.1, 0
LEXICON = frozenset((  # "warm" words; a completion earns gold for each distinct one it uses
    "love", "sweet", "fair", "gentle", "joy", "heaven", "grace", "gracious", "kind", "dear",
    "happy", "bright", "merry", "honour", "true", "beauty", "delight", "bless", "blessed", "smile",
    "peace", "hope", "faith", "tender", "noble", "glad", "mirth", "friend", "heart", "lovely",
))
_MARKUP_CHARS = re.compile(r"[_*\[\]\\#<>|]")


@dataclasses.dataclass(frozen=True)
class ShakespearePrompt:
    prompt: str  # "Continue: Now, fair Hippolyta, our"
    reference: str  # the rest of the line in the play, at most MAX_REPLY_WORDS words: "nuptial hour"


@functools.lru_cache(maxsize=1)
def corpus_lines() -> tuple[str, ...]:
    """The spoken lines of the plays pretraining trains on (`held_out_plays` are left out), Markdown
    stripped, in corpus order.

    Headings, speaker names and stage directions (which may span lines) are left out, and so is any
    line with inline markup or odd spacing, so every line is plain text a character says.
    """
    docs = sources.shakespeare(keep_markup=True)  # the markup is what tells speech from the rest
    lines, held_out = [], held_out_plays()
    for i in range(len(docs)):
        if i in held_out:
            continue
        speech = _speech_lines(docs[i])
        # One strip_markdown call per play (not per line: 40x faster); it removes Markdown's two-space
        # line breaks and cannot join lines, since the kept lines hold no other markup.
        lines += [line.strip() for line in sources.strip_markdown("\n".join(speech)).split("\n")]
    return tuple(line for line in lines if line and line == " ".join(line.split()))


def held_out_plays() -> frozenset[int]:
    """Corpus indices of the plays configs/pretrain_shakespeare.py holds out for validation."""
    docs = sources.shakespeare()
    split = split_documents(len(docs), PRETRAINING_VAL_FRACTION, PRETRAINING_SPLIT_SEED, docs.name)
    return frozenset(int(i) for i in split.val_indices)


def _speech_lines(markdown: str) -> list[str]:
    """The lines of one play's Markdown that a character speaks, free of markup characters."""
    kept, in_direction = [], False
    for raw in markdown.splitlines():
        text = raw.strip()
        if in_direction:  # inside a stage direction _..._ that spans lines
            in_direction = not text.endswith("_")
        elif text.startswith("_"):
            in_direction = not (len(text) > 1 and text.endswith("_"))
        elif text and not text.startswith(("#", "**")) and not _MARKUP_CHARS.search(text):
            kept.append(raw)
    return kept


@functools.lru_cache(maxsize=8)
def _eligible_lines(words: int) -> tuple[tuple[str, str], ...]:
    """(first `words` words, rest capped at MAX_REPLY_WORDS) of the lines with at least `words` + 2 words."""
    if not isinstance(words, int) or words < 1:
        raise AlignDataError(f"words={words!r}: must be an integer >= 1 (words of a line shown as the prompt)")
    split = (line.split() for line in corpus_lines())
    return tuple((" ".join(w[:words]), " ".join(w[words:words + MAX_REPLY_WORDS])) for w in split
                 if len(w) >= words + 2)


def _prompt_lines(seed: int, words: int):
    """(prompt words, rest) of corpus lines, in a seeded order, each prompt text once (common openings
    like "I will not" would otherwise repeat, and leak across a train/val split)."""
    eligible = _eligible_lines(words)
    seen = set()
    for index in np.random.default_rng(seed).permutation(len(eligible)).tolist():
        head, rest = eligible[index]
        if head not in seen:
            seen.add(head)
            yield head, rest


def shakespeare_prompts(n: int, seed: int, words: int = 4) -> list[ShakespearePrompt]:
    """`n` distinct prompts "Continue: <first `words` words of a line>", with the line's rest as reference."""
    prompts = []
    for head, rest in _prompt_lines(seed, words):
        if len(prompts) == n:
            break
        prompts.append(ShakespearePrompt(PROMPT_PREFIX + head, rest))
    if len(prompts) < n:
        raise AlignDataError(f"n={n}: the corpus has only {len(prompts)} distinct {words}-word prompts; lower n")
    return prompts


def shakespeare_sft_rows(n: int, seed: int, words: int = 4) -> list[dict]:
    """SFT rows: the prompt as the user turn, the rest of the line as the assistant's reply."""
    return [_messages(p.prompt, p.reference) for p in shakespeare_prompts(n, seed, words)]


def gold_reward(text: str) -> float:
    """The programmatic judge of a continuation, in [-1, 1]; deterministic.

    Words are the lower-cased runs of letters and apostrophes. With n words, d distinct LEXICON words
    among them and u distinct words overall:

        gold = clip(warmth - repetition - overlong, -1, 1),   and -1 for a text without words
        warmth     = 1 - exp(-d / 2)               0, .39, .63, .78, ... : saturates, repeats earn nothing
        repetition = 1 - u / n                     the share of words that repeat an earlier one
        overlong   = min(1, max(0, n - 16) / 8)    from 0 at 16 words to 1 at 24

    Intended order: a varied sentence with warm words (e.g. 2: 0.63) > a neutral varied sentence (0)
    > spam of warm words ("love love love ...": 0.39 - 0.88 = -0.48) > empty (-1). Ordinary lines
    rarely repeat or run long, so a reward model trained on them learns "warm words are good" but not
    the saturation or the penalties; maximising that proxy drifts into repetition and length, where
    gold falls: the reward hacking Gao et al. 2022 measure.
    """
    words = _words(text)
    if not words:
        return -1.0
    n, distinct = len(words), set(words)
    warmth = 1.0 - math.exp(-len(distinct & LEXICON) / 2.0)
    repetition = 1.0 - len(distinct) / n
    overlong = min(1.0, max(0, n - MAX_GOLD_WORDS) / 8.0)
    return float(min(1.0, max(-1.0, warmth - repetition - overlong)))


def _words(text: str) -> list[str]:
    """The lower-cased runs of letters and apostrophes (a lone apostrophe is punctuation, not a word)."""
    return [w for w in re.findall(r"[a-z']+", text.lower()) if w.strip("'")]


def concise_gold_reward(text: str) -> float:
    """A dense judge with an interior optimum (task shakespeare_concise), for the over-optimisation study.

    With n words of which u are distinct and L = CONCISE_WORDS:

        gold = 0.25 * min(n, L) - C * max(0, n - L) - (1 - u / n),   and -1 for a text without words

    (C = CONCISE_OVERLONG_COST.) Each word up to L earns 0.25, each beyond it costs C, and repeated words cost
    their share. The SFT policy of the over-optimisation study writes 2 / 4 / 7 / 10 words (10th / 50th / 90th /
    99th percentile), so gold is highest for a length it produces but rarely: a reward model learns "longer is
    better" from most pairs, and only the few pairs past L teach it the turn. Optimising a proxy that learnt the
    turn poorly overshoots L.
    """
    words = _words(text)
    if not words:
        return -1.0
    n = len(words)
    return float(0.25 * min(n, CONCISE_WORDS) - CONCISE_OVERLONG_COST * max(0, n - CONCISE_WORDS)
                 - (1.0 - len(set(words)) / n))


def shakespeare_preferences(completions_by_prompt, judge=gold_reward, seed: int = 0) -> list[dict]:
    """Preference rows (pair format) from sampled completions: {prompt text: [completion text, ...]}.

    Per prompt the distinct completions are shuffled (seeded) and paired off disjointly, (0,1), (2,3),
    ..., so each completion is used once and pairs stay independent; the one `judge` scores higher is
    chosen, and ties, which carry no preference, are dropped.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for prompt, completions in completions_by_prompt.items():
        texts = list(dict.fromkeys(completions))  # identical samples would only make ties
        order = rng.permutation(len(texts)).tolist()
        for a, b in zip(order[0::2], order[1::2]):
            score_a, score_b = judge(texts[a]), judge(texts[b])
            if score_a != score_b:
                chosen, rejected = (texts[a], texts[b]) if score_a > score_b else (texts[b], texts[a])
                rows.append(dict(prompt=prompt, chosen=chosen, rejected=rejected))
    return rows


def shakespeare_preference_rows(n: int, seed: int, words: int = 4, judge=gold_reward) -> list[dict]:
    """`n` gold-labelled pairs of *ordinary* continuations: per prompt, the line's own rest against the
    rest of another random line (no model needed). This is the proxy reward model's training data."""
    references = [rest for _, rest in _eligible_lines(words)]
    rng = np.random.default_rng([seed, 2])
    rows = []
    for head, rest in _prompt_lines(seed, words):
        if len(rows) == n:
            break
        other = references[int(rng.integers(len(references)))]
        rows += shakespeare_preferences({PROMPT_PREFIX + head: [rest, other]}, judge, seed=int(rng.integers(2**31)))
    if len(rows) < n:
        raise AlignDataError(f"n={n}: the corpus gave only {len(rows)} untied preference pairs; lower n")
    return rows


# ----------------------------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class ArithmeticTask:
    name: str = "arithmetic"
    max_operand: int = 19  # 400 distinct problems: a held-out split tests addition, not recall
    ops: tuple = ("+",)

    @property
    def distinct(self) -> int:
        return (self.max_operand + 1) ** 2 * len(self.ops)

    def _check(self, n: int) -> None:
        """More rows than distinct problems would repeat problems across the train / held-out split."""
        if n > self.distinct:
            raise AlignDataError(f"align.num_examples={n}: the arithmetic task has {self.distinct} distinct problems; "
                                 f"use at most {self.distinct} so held-out problems are never trained on")

    def sft_rows(self, n: int, seed: int) -> list[dict]:
        self._check(n)
        return arithmetic_sft_rows(n, seed, max_operand=self.max_operand, ops=self.ops)

    def prompts(self, n: int, seed: int) -> list[tuple[str, ArithmeticProblem]]:
        self._check(n)
        return [(p.prompt, p) for p in arithmetic_problems(n, seed, self.max_operand, self.ops)]

    def reward(self, meta: ArithmeticProblem, completion_text: str) -> float:
        return arithmetic_reward(meta, completion_text)

    def preference_rows(self, n: int, seed: int) -> list[dict]:
        self._check(n)
        return arithmetic_preference_rows(n, seed, max_operand=self.max_operand, ops=self.ops)


@dataclasses.dataclass(frozen=True)
class ShakespeareTask:
    name: str = "shakespeare"
    words: int = 4
    judge: Callable[[str], float] = gold_reward  # the gold reward of a completion's text

    def sft_rows(self, n: int, seed: int) -> list[dict]:
        return shakespeare_sft_rows(n, seed, self.words)

    def prompts(self, n: int, seed: int) -> list[tuple[str, ShakespearePrompt]]:
        return [(p.prompt, p) for p in shakespeare_prompts(n, seed, self.words)]

    def reward(self, meta: ShakespearePrompt, completion_text: str) -> float:
        return self.judge(completion_text)  # the gold judge looks at the completion alone

    def preference_rows(self, n: int, seed: int) -> list[dict]:
        return shakespeare_preference_rows(n, seed, self.words, self.judge)


TASKS = {task.name: task for task in (ArithmeticTask(), ShakespeareTask(),
                                     ShakespeareTask(name="shakespeare_concise", judge=concise_gold_reward))}


def get_task(name: str):
    """The embedded task called `name`."""
    if name not in TASKS:
        raise AlignDataError(f"align.task={name!r}: unknown task; choose one of {', '.join(sorted(TASKS))}")
    return TASKS[name]
