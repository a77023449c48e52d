"""One writer per folder: a stage that writes a fold, an ensemble or a prepared cache holds a
lock file there (``filelock``: released by the OS when the process dies, so a killed run never
leaves a stale lock). A second run of the same stage on the same folder either waits for the
first (``wait=True``: a prepare, which then finds everything done) or stops at once with one line
saying what holds it (a training fold, an ensemble)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike, what: str, *, wait: bool = False) -> Iterator[None]:
    """Hold ``lock_path`` while the block runs; ``ValueError`` naming it when another process
    holds it (unless ``wait``)."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(f"another {what} is running ({lock_path} is held): wait for it to "
                         "finish, or stop it first") from None  # fmt: skip
    try:
        yield
    finally:
        lock.release()
