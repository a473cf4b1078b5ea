"""A lock file that at most one process holds: the sweep's per-trial lock (trials/<id>/trial.lock).

`acquire` creates it atomically (a hard link, which fails where the file exists), recording {"pid",
"host", "pid_namespace", "since"}; `release` removes it when the given process holds it. A lock whose process is dead on this same host and pid
namespace is stale and taken over; from another host liveness cannot be told, so such a lock stays
until a person deletes it.
"""

import contextlib
import json
import os
import socket
import time
import uuid

from absl import logging


def process_domain() -> dict:
    """Where a pid names one process: this host and, on Linux, this pid namespace (containers that
    share a host name, e.g. with host networking, still number their processes apart)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    return {"host": socket.gethostname(), "pid_namespace": namespace}


def _held_here(holder: dict | None) -> bool:
    """True when the lock was taken in this process domain, where its pid can be checked."""
    return bool(holder) and {key: holder.get(key) for key in ("host", "pid_namespace")} == process_domain()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _is_stale(holder: dict | None) -> bool:
    """A lock is stale when its process is known to be gone: taken here and its pid is dead (or is this
    process, which does not hold it: a leftover of an earlier process with the same pid). A lock from
    another host, or unreadable, is never judged stale: there is no way to tell."""
    if not _held_here(holder) or not isinstance(holder.get("pid"), int):
        return False
    return holder["pid"] == os.getpid() or not _pid_alive(holder["pid"])


def _read_lock(path: str) -> tuple[bytes, dict | None]:
    """The lock file's bytes and its holder; holder None when unreadable (mid-write, or truncated)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        holder = json.loads(raw)
    except ValueError:
        return raw, None
    return raw, holder if isinstance(holder, dict) else None


def _remove_if_unchanged(path: str, raw: bytes) -> None:
    """Removes the stale lock `path` if it still holds `raw`. It is renamed aside first and checked, so
    a fresh lock another process took meanwhile is put back instead of deleted."""
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another process took it over first
        return
    with open(aside, "rb") as f:
        unchanged = f.read() == raw
    if not unchanged:
        # Put the fresh lock back with link, which fails where a third process has locked `path` in the
        # meantime (a rename would silently replace that lock, leaving two holders).
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    os.remove(aside)


def acquire(path: str) -> dict | None:
    """Creates the lock file at `path` atomically. None when this process now holds it, else the
    holder that keeps it ({} when its file is unreadable)."""
    record = dict(pid=os.getpid(), **process_domain(), since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    # The record is written to a private file first and linked into place (link, like O_EXCL, fails if
    # `path` exists), so a lock file is never seen empty or half written.
    draft = f"{path}.draft-{uuid.uuid4().hex}"
    with open(draft, "w", encoding="utf-8") as f:
        json.dump(record, f)
    try:
        return _link_lock(draft, path)
    finally:
        os.remove(draft)


def _link_lock(draft: str, path: str) -> dict | None:
    holder = {}
    for _ in range(3):  # a retry follows a lock released meanwhile or a stale one removed; more means contention
        try:
            os.link(draft, path)
        except FileExistsError:
            try:
                raw, holder = _read_lock(path)
            except FileNotFoundError:
                continue
            if not _is_stale(holder):
                return holder or {}
            logging.warning("sweep: taking over the stale lock %s (pid %s is dead)", path, holder["pid"])
            _remove_if_unchanged(path, raw)
            continue
        return None
    return holder or {}


def release(path: str, pid: int | None = None) -> None:
    """Removes the lock at `path` if `pid` (default: this process) of this process domain holds it."""
    pid = os.getpid() if pid is None else pid
    try:
        _, holder = _read_lock(path)
    except FileNotFoundError:
        return
    if _held_here(holder) and holder.get("pid") == pid:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
