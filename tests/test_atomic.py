"""Atomic writes (gptjax/atomic.py): a failed write keeps the old file and leaves no temporary behind."""

import json
import os

import pytest

from gptjax.atomic import atomic_path, write_json_atomic, write_jsonl_atomic


def test_writes_replace_the_file_whole(tmp_path):
    path = str(tmp_path / "sub" / "rows.jsonl")  # the directory is created
    write_jsonl_atomic(path, [{"a": 1}, {"b": "é"}])
    with open(path, encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == [{"a": 1}, {"b": "é"}]
    write_json_atomic(path, {"c": [1, 2]})
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == {"c": [1, 2]}
    assert os.listdir(tmp_path / "sub") == ["rows.jsonl"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    write_json_atomic(str(path), {"old": True})
    with pytest.raises(TypeError):
        write_json_atomic(str(path), {"bad": object()})  # fails halfway through json.dump
    assert json.loads(path.read_text()) == {"old": True}
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            open(tmp, "w").write("partial")
            raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["meta.json"]
