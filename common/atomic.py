"""Atomic file writes: write to a temporary file in the target folder, then rename over the target.

A reader therefore sees either the old file or the complete new one, never a half-written file,
even when the writer is killed mid-write.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_DEFERRED: list[bool] = []  # non-empty inside deferred_sync()
_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0o600
_DIR_MODE = 0o777 & ~_umask()  # what mkdir() would give; mkdtemp alone gives 0o700


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, else is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, _FILE_MODE)
    try:
        yield tmp
        if not _DEFERRED:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def deferred_sync() -> Iterator[None]:
    """Inside, ``atomic_path`` skips its own fsync: for many small files (a cache's), whose
    writer calls ``os.sync()`` once (from any process) before it writes what names them (an
    index, a table), so that nothing names a file a power cut could empty. A reader still sees
    whole files only."""
    _DEFERRED.append(True)
    try:
        yield
    finally:
        _DEFERRED.pop()


_COUNTER = itertools.count()


def write_bytes_atomic(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically: ``atomic_path`` in the fewest system calls, for
    the many small files of a cache (a temporary name unique to this process and call, no
    separate permission change)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{next(_COUNTER)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open()
    except FileNotFoundError:
        os.makedirs(folder or ".", exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if not _DEFERRED:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (whole),
    else it is removed. A reader sees the old folder or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    os.chmod(build, _DIR_MODE)
    try:
        yield build
        if path.exists():
            shutil.rmtree(path)
        build.rename(path)
    finally:
        shutil.rmtree(build, ignore_errors=True)
