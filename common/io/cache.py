"""The prepared-data cache: each item's files written once, redone only when what produced them
changed, with the tables of rows that describe them.

A competition lists its items as ``Entry`` objects (an id, the table its row goes to, a ``key``
hashing everything that produced its files, the files it writes, and whatever its worker needs)
and gives a worker ``work(entry, out) -> row``. ``refresh`` keeps the rows of the previous run
whose key still matches and whose files all exist (from a private index, so that the work
of a run that stopped on bad items is kept), runs the worker on the rest over joblib
processes in chunks with a progress bar, and writes each table (CSV, with a ``key`` column)
atomically, after the files. A worker's ``ValueError`` marks that item bad: all bad items are
listed in ``bad_ids.csv`` and reported together (``CacheError``), or left out with
``skip_bad``. A worker's ``OSError`` (a full disk, a read-only folder) is raised once the
pool has drained, with the items finished before it kept in the index. Files are written
atomically by the workers (``common.io.images``), so a killed run leaves whole files and tables
that name only finished items; the next run redoes the rest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from common.io.atomic import (
    deferred_sync,
    remove_stale_temps,
    write_text_atomic,
    write_text_if_changed,
)
from common.io.locks import exclusive

BAD_IDS = "bad_ids.csv"
INDEX = ".cache_index.json"  # every finished row with its key, written even when some are bad


@dataclass(frozen=True)
class Table:
    """A CSV in the cache folder: ``columns[0]`` is the id; ``key`` is appended."""

    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    id: str
    table: str  # the Table its row goes to
    key: str  # source_key(...) of everything that produced its files
    files: tuple[str, ...]  # what the worker writes, relative to the cache folder
    source: Any = None  # what the worker reads (picklable)


@dataclass
class Refresh:
    tables: dict[str, pd.DataFrame]  # name -> rows of the good items, in entry order (as read back)
    done: int  # items the worker ran on
    cached: int  # items kept from the previous run
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (id, table, reason)


class CacheError(ValueError):
    """Some items could not be prepared; ``bad`` lists (id, table, reason)."""

    def __init__(self, bad: list[tuple[str, str, str]], report: str):
        super().__init__(report)
        self.bad = bad


def source_key(version: int, files: Iterable[str | os.PathLike | None] = (), *parts) -> str:
    """A short hash of the code ``version``, each file's path, size and modification time, and
    ``parts`` (sizes, annotation rows, ...): it changes when any of them does."""
    stats = []
    for path in files:
        stat = Path(path).stat() if path is not None else None
        stats.append((str(path), stat and stat.st_size, stat and stat.st_mtime_ns))
    return hashlib.sha1(repr([version, stats, parts]).encode()).hexdigest()[:16]


def bad_report(bad: Sequence[tuple[str, str, str]], limit: int = 20) -> str:
    lines = [f"{len(bad)} item(s) could not be prepared:"]
    lines += [f"  {table} {item}: {reason}" for item, table, reason in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more (all listed in {BAD_IDS})")
    return "\n".join(lines)


def _previous_rows(out: Path) -> dict[tuple[str, str], dict]:
    """The rows of every item that finished in earlier runs, bad runs included."""
    try:
        return {(table, item): row for table, item, row in json.loads((out / INDEX).read_text())}
    except (FileNotFoundError, ValueError, TypeError):  # none yet, or unreadable: redo all
        return {}


_DEATH_SIGNAL_SET = False


def _die_with_parent(parent: int) -> None:
    """In a worker process that ``parent`` started: ask Linux to stop it (SIGTERM) when
    ``parent`` dies, so that a killed prepare leaves no worker writing on for seconds, or idle
    for minutes. In ``parent`` itself, or another system, nothing happens."""
    global _DEATH_SIGNAL_SET
    if _DEATH_SIGNAL_SET or os.getpid() == parent or os.getppid() != parent:
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    _DEATH_SIGNAL_SET = True
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _run_chunk(work: Callable, entries: list[Entry], out: Path, parent: int = 0
               ) -> tuple[list[tuple[Entry, dict | str]], OSError | None]:  # fmt: skip
    """The chunk's rows (a bad item's reason in place of its row), and the ``OSError`` that
    stopped it (a full disk, a read-only folder), returned rather than raised: a raise aborts
    joblib, which kills the other workers mid-write and leaves the resource tracker to warn
    about their semaphores after the one-line error."""
    _die_with_parent(parent)
    results = []
    with deferred_sync():  # refresh syncs once before its index names these files
        for entry in entries:
            try:
                results.append((entry, work(entry, out)))
            except ValueError as error:
                results.append((entry, str(error)))
            except OSError as error:
                return results, error
    return results, None


def refresh(
    out: str | os.PathLike,
    tables: Sequence[Table],
    entries: Sequence[Entry],
    work: Callable[[Entry, Path], dict],
    *,
    n_jobs: int = 2,
    chunk: int = 16,  # items per task at most: amortises the round trip to a process
    desc: str = "prepare",
    skip_bad: bool = False,
) -> Refresh:
    """Bring the cache in ``out`` up to date with ``entries`` (see the module docs). ``work``
    must be picklable (a module-level function or a ``functools.partial`` of one) and return the
    item's row with its id under the table's first column."""
    out = Path(out)
    with exclusive(out.parent / f".{out.name}.lock", f"prepare of {out}", wait=True):
        if out.is_dir():
            remove_stale_temps(out)  # what a killed prepare was writing
        return _refresh(out, tables, entries, work, n_jobs, chunk, desc, skip_bad)


def _refresh(out, tables, entries, work, n_jobs, chunk, desc, skip_bad) -> Refresh:
    names = {table.name for table in tables}
    unknown = sorted({entry.table for entry in entries} - names)
    if unknown:
        raise ValueError(f"entries name unknown table(s) {unknown}; tables: {sorted(names)}")
    seen = set()
    for entry in entries:
        if (entry.table, entry.id) in seen:
            raise ValueError(f"{entry.table}: id {entry.id!r} is listed twice")
        seen.add((entry.table, entry.id))
    previous = _previous_rows(out)
    rows: dict[tuple[str, str], dict | str] = {}
    todo = []
    for entry in entries:
        row = previous.get((entry.table, entry.id))
        fresh = row is not None and row["key"] == entry.key
        if fresh and all((out / name).is_file() for name in entry.files):
            rows[(entry.table, entry.id)] = row
        else:
            todo.append(entry)
    cached = len(rows)
    chunk = max(1, min(chunk, -(-len(todo) // (8 * n_jobs))))  # >= 8 chunks a process: balanced
    chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
    failures: list[OSError] = []
    if chunks:
        # the chunks are handed out lazily: after a failure the rest go out empty, so the
        # pool drains at once and shuts down cleanly
        jobs = Parallel(n_jobs=min(n_jobs, len(chunks)), return_as="generator_unordered")(
            delayed(_run_chunk)(work, [] if failures else part, out, os.getpid()) for part in chunks
        )
        with tqdm(total=len(todo), desc=desc, unit="item", disable=None) as bar:
            for results, failure in jobs:
                for entry, row in results:
                    rows[(entry.table, entry.id)] = (
                        row if isinstance(row, str) else row | {"key": entry.key}
                    )
                bar.update(len(results))
                if failure is not None:
                    failures.append(failure)
    finished = sorted([t, i, row] for (t, i), row in rows.items() if not isinstance(row, str))
    if todo:  # after a worker's failure too: the finished items' work is kept where there is room
        try:
            os.sync()  # every worker's files, at once, before the index names them
            write_text_atomic(out / INDEX, json.dumps(finished, default=str))
        except OSError:
            if not failures:
                raise  # else the worker's error, raised next, names the cause
    if failures:
        raise failures[0]
    bad = [(e.id, e.table, r) for e in entries if isinstance(r := rows[(e.table, e.id)], str)]
    bad_path = out / BAD_IDS
    if bad:
        write_text_atomic(
            bad_path, pd.DataFrame(bad, columns=["id", "table", "reason"]).to_csv(index=False)
        )
        if not skip_bad:
            raise CacheError(bad, bad_report(bad) + "\nFix them, or pass --skip-bad to go on.")
    else:
        bad_path.unlink(missing_ok=True)
    frames = {}
    for table in tables:
        good = [
            rows[(e.table, e.id)]
            for e in entries
            if e.table == table.name and not isinstance(rows[(e.table, e.id)], str)
        ]
        path = out / table.name
        write_text_if_changed(
            path, pd.DataFrame(good, columns=[*table.columns, "key"]).to_csv(index=False)
        )
        frames[table.name] = pd.read_csv(path, dtype={table.columns[0]: str})
    return Refresh(frames, done=len(todo), cached=cached, bad=bad)
