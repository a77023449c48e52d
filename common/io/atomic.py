"""Atomic file writes: write to a temporary file in the target folder, then rename over the target.

A reader therefore sees either the old file or the complete new one, never a half-written file,
even when the writer is killed mid-write.
"""

from __future__ import annotations

import contextlib
import errno
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
_DIR_MODE = 0o777 & ~_umask()  # what mkdir() would give; mkdtemp alone gives 0o700
_COUNTER = itertools.count()
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _open_temp(path: str) -> tuple[int, str]:
    """A new, empty temporary file beside ``path`` (its folder made if missing), named for this
    process and call, with the mode ``open()`` would give (the umask applies): (fd, name)."""
    folder, name = os.path.split(path)
    while True:
        tmp = os.path.join(folder, f".{name}.{os.getpid()}-{next(_COUNTER)}.tmp")
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:  # left by a killed process that had this pid: take the next
            continue
        except FileNotFoundError:
            os.makedirs(folder or ".", exist_ok=True)


def _sync(fd: int) -> None:
    if not _DEFERRED:
        os.fsync(fd)


def _disk_full(folder: str) -> bool:
    try:
        return os.statvfs(folder or ".").f_bavail == 0
    except OSError:
        return False


def named_error(error: BaseException, path: str | os.PathLike) -> BaseException:
    """``error`` from writing ``path``, as an ``OSError`` naming ``path`` where it named none:
    ``os.write`` on a full disk says only "No space left on device", and a library's own writer
    (``torch.save``, say) raises a ``RuntimeError`` there. Anything else is returned as it is."""
    path = os.fspath(path)
    if isinstance(error, OSError) and error.filename is None and error.errno is not None:
        return OSError(error.errno, error.strerror or str(error), path)
    if not isinstance(error, OSError) and isinstance(error, Exception):
        if _disk_full(os.path.dirname(path)):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return error


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, else is removed.
    A failed write raises an ``OSError`` naming ``path`` (``named_error``)."""
    fd, tmp = _open_temp(os.fspath(path))
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            _sync(f.fileno())
        os.replace(tmp, path)
    except Exception as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # first: the space it held may be what the check below looks at
        named = named_error(error, path)
        if named is error:
            raise
        raise named from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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


def write_bytes_atomic(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically: ``atomic_path`` in the fewest system calls, for
    the many small files of a cache."""
    fd, tmp = _open_temp(os.fspath(path))
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            _sync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        named = named_error(error, path)
        if named is error:
            raise
        raise named from error


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_text_if_changed(path: str | os.PathLike, text: str) -> bool:
    """``write_text_atomic`` unless ``path`` already holds ``text`` (its mtime then stays, so
    what compares mtimes sees no change); returns whether it wrote."""
    path = Path(path)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)
    return True


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


def remove_stale_builds(path: str | os.PathLike) -> int:
    """Remove the half-built folders (``.<name>.*`` beside ``path``: ``atomic_dir``'s) that
    killed builds of ``path`` left. Call it holding ``path``'s lock, so no live build is
    removed. Returns how many."""
    path = Path(path)
    stale = [p for p in path.parent.glob(f".{path.name}.*") if p.is_dir()]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return len(stale)


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Remove the temp files (``.<name>.<pid>-<n>.tmp``) that killed writers left below
    ``folder``: those whose process is gone. Returns how many. Call it while no other process
    writes there (a stage holding the folder's lock)."""
    removed = 0
    for path in Path(folder).rglob(".*.tmp"):
        pid = path.name.rsplit(".", 2)[-2].split("-")[0] if path.name.count(".") >= 3 else ""
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:  # alive, another user's
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def os_error_line(error: OSError) -> str:
    """An OS error (a full disk, a read-only folder, a missing permission) as one line naming
    the path: ``<reason> (<path>)``."""
    return f"{error.strerror or error} ({error.filename or 'no path given'})"
