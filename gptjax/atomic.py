"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the whole new one.

Everything is written to a temporary name in the same directory (so the final `os.replace` is a rename
on one filesystem) and renamed into place; the temporary name carries a uuid, so concurrent writers on
hosts or containers whose pids repeat never share one. A failed write leaves no temporary file behind.
"""

import contextlib
import json
import os
import uuid

import jax


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary file path to write; on success it replaces `path`, on an exception it is
    removed. (A directory that must appear whole, like a token cache entry, is renamed by its owner.)"""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # only after a failed write
            os.remove(tmp)


def write_json_atomic(path: str, obj) -> None:
    """Process 0 writes `obj` as indented JSON (a run's shared outputs: one writer on multi-host)."""
    if jax.process_index() != 0:
        return
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def write_jsonl_atomic(path: str, rows, all_processes: bool = False) -> None:
    """Writes one JSON object per line; by process 0 only unless `all_processes` (host-local files)."""
    if not all_processes and jax.process_index() != 0:
        return
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
