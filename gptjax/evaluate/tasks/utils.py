"""The offline tasks' dataset loader (lm-eval's `custom_dataset`): a JSONL fixture beside this file, its rows
split by their "split" field, so no task needs the Hugging Face hub."""

import json
import os

import datasets

HERE = os.path.dirname(os.path.abspath(__file__))


def load_fixture(fixture: str, **_metadata) -> datasets.DatasetDict:
    with open(os.path.join(HERE, fixture), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    splits = sorted({row["split"] for row in rows})
    return datasets.DatasetDict({s: datasets.Dataset.from_list([r for r in rows if r["split"] == s]) for s in splits})
