"""common.io.cache: incremental per-item refresh, bad items, atomic tables; common.data.sources."""

from __future__ import annotations

import errno
import itertools
import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.sources import raw_or_synthetic
from common.io import atomic
from common.io.atomic import deferred_sync, write_bytes_atomic, write_text_if_changed
from common.io.cache import BAD_IDS, CacheError, Entry, Table, refresh, source_key
from common.io.images import read_png, write_png

TABLES = (Table("items.csv", ("id", "mean")), Table("other.csv", ("name",)))


def _work(entry: Entry, out: Path, scale: int) -> dict:
    values = np.fromfile(entry.source, dtype=np.uint8)
    if values.size == 0:
        raise ValueError(f"{entry.source}: empty")
    write_png(out / "images" / f"{entry.id}.png", np.tile(values * scale, (4, 1)).astype(np.uint8))
    if entry.table == "other.csv":
        return {"name": entry.id}
    return {"id": entry.id, "mean": float(values.mean())}


def _entries(sources: dict[str, Path], scale: int) -> list[Entry]:
    return [
        Entry(
            name,
            "other.csv" if name.startswith("t") else "items.csv",
            source_key(1, [path], scale),
            (f"images/{name}.png",),
            path,
        )
        for name, path in sources.items()
    ]


def _sources(tmp_path: Path, n: int = 5) -> dict[str, Path]:
    sources = {}
    for i in range(n):
        path = tmp_path / "src" / f"{i}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bytes(range(i + 1, i + 9)))
        sources[f"a{i}"] = path
    sources["t0"] = sources["a0"]
    return sources


def test_only_changed_or_missing_items_are_redone(tmp_path):
    sources, out = _sources(tmp_path), tmp_path / "cache"
    first = refresh(out, TABLES, _entries(sources, 1), partial(_work, scale=1), n_jobs=2, chunk=2)
    assert (first.done, first.cached) == (6, 0)
    assert first.tables["items.csv"]["id"].tolist() == ["a0", "a1", "a2", "a3", "a4"]
    assert first.tables["other.csv"]["name"].tolist() == ["t0"]
    assert read_png(out / "images" / "a2.png")[0].tolist() == list(range(3, 11))
    stamp = (out / "items.csv").stat().st_mtime_ns

    again = refresh(out, TABLES, _entries(sources, 1), partial(_work, scale=1), n_jobs=1)
    assert (again.done, again.cached) == (0, 6)
    assert (out / "items.csv").stat().st_mtime_ns == stamp  # unchanged tables are not rewritten
    pd.testing.assert_frame_equal(again.tables["items.csv"], first.tables["items.csv"])

    sources["a1"].write_bytes(bytes([9] * 8))
    os.utime(sources["a1"], ns=(1, 1))  # a new size or time changes the key
    (out / "images" / "a3.png").unlink()
    third = refresh(out, TABLES, _entries(sources, 1), partial(_work, scale=1), n_jobs=1)
    assert (third.done, third.cached) == (2, 4)
    assert third.tables["items.csv"].set_index("id").loc["a1", "mean"] == 9.0

    scaled = refresh(out, TABLES, _entries(sources, 2), partial(_work, scale=2), n_jobs=1)
    assert scaled.done == 6  # a part of the key (the scale) changed everything


def test_bad_items_are_all_reported_and_no_table_names_them(tmp_path):
    sources, out = _sources(tmp_path), tmp_path / "cache"
    sources["a1"].write_bytes(b"")
    sources["a3"].write_bytes(b"")
    with pytest.raises(CacheError) as caught:
        refresh(out, TABLES, _entries(sources, 1), partial(_work, scale=1), n_jobs=2, chunk=1)
    assert [bad[0] for bad in caught.value.bad] == ["a1", "a3"]
    assert "src/1.bin: empty" in str(caught.value) and "--skip-bad" in str(caught.value)
    assert not (out / "items.csv").exists()
    assert pd.read_csv(out / BAD_IDS)["id"].tolist() == ["a1", "a3"]
    kept = refresh(out, TABLES, _entries(sources, 1), partial(_work, scale=1), skip_bad=True)
    assert kept.tables["items.csv"]["id"].tolist() == ["a0", "a2", "a4"]
    assert (kept.cached, kept.done) == (4, 2)  # the bad ones are tried again
    sources["a1"].write_bytes(b"12345678")
    sources["a3"].write_bytes(b"12345678")
    fixed = refresh(out, TABLES, _entries(sources, 1), partial(_work, scale=1))
    assert fixed.done == 2 and not (out / BAD_IDS).exists()


def _work_on_a_filling_disk(entry: Entry, out: Path, full: Path) -> dict:
    """``_work``, but every item from ``a5`` on meets a full disk while ``full`` exists."""
    if full.exists() and entry.id >= "a5":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / f"{entry.id}.png"))
    return _work(entry, out, scale=1)


def test_a_full_disk_is_raised_after_the_pool_drains_and_keeps_the_finished_work(tmp_path):
    """A worker's ``OSError`` is the run's error, naming its file; the items finished before it
    stay in the index, so the re-run once there is room redoes only the rest."""
    sources, out, full = _sources(tmp_path, 9), tmp_path / "cache", tmp_path / "full"
    work = partial(_work_on_a_filling_disk, full=full)
    full.touch()
    with pytest.raises(OSError) as caught:
        refresh(out, TABLES, _entries(sources, 1), work, n_jobs=2, chunk=1)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith(".png")
    assert not (out / "items.csv").exists()
    full.unlink()
    again = refresh(out, TABLES, _entries(sources, 1), work, n_jobs=2, chunk=1)
    assert again.cached >= 5 and again.done + again.cached == 10  # a0-a4 went out before a5 failed
    clean = refresh(tmp_path / "clean", TABLES, _entries(sources, 1), work, n_jobs=1)
    for name in ("items.csv", "other.csv"):
        pd.testing.assert_frame_equal(again.tables[name], clean.tables[name])


def test_entries_are_checked(tmp_path):
    sources = _sources(tmp_path, 1)
    entry = _entries(sources, 1)[0]
    with pytest.raises(ValueError, match="unknown table"):
        refresh(tmp_path, TABLES, [Entry("x", "nope.csv", "k", ())], partial(_work, scale=1))
    with pytest.raises(ValueError, match="'a0' is listed twice"):
        refresh(tmp_path, TABLES, [entry, entry], partial(_work, scale=1))


def test_raw_or_synthetic(tmp_path):
    said, made = [], []

    def generate(root: Path) -> None:
        made.append(root)
        root.mkdir()

    kwargs = dict(
        has_data=lambda root: (root / "train.csv").is_file(),
        expected="train.csv",
        generate=generate,
        describe="Tiny: 3 images",
        log=said.append,
    )
    source = raw_or_synthetic(tmp_path / "raw", tmp_path / "syn", **kwargs)
    assert source.synthetic and source.root == tmp_path / "syn" and made == [tmp_path / "syn"]
    assert "SYNTHETIC" in said[0] and "Tiny: 3 images" in said[0]
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"raw exists but does not hold train.csv"):
        raw_or_synthetic(tmp_path / "raw", tmp_path / "syn", **kwargs)
    (tmp_path / "raw" / "train.csv").write_text("id\n")
    real = raw_or_synthetic(tmp_path / "raw", tmp_path / "syn", **kwargs)
    assert not real.synthetic and real.root == tmp_path / "raw" and len(said) == 1


def test_atomic_bytes_make_the_folder_leave_nothing_on_error_and_sync_unless_deferred(
    tmp_path, monkeypatch
):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "new" / "deeper" / "a.bin"
    write_bytes_atomic(target, b"abc")
    assert target.read_bytes() == b"abc" and len(synced) == 1
    with deferred_sync():
        write_bytes_atomic(target, memoryview(b"defg"))
    assert target.read_bytes() == b"defg" and len(synced) == 1

    def fail(fd, data):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "write", fail)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(target, b"xyz")
    assert target.read_bytes() == b"defg"
    assert [p.name for p in target.parent.iterdir()] == ["a.bin"]  # no temporary file left


def test_a_temporary_name_left_by_a_killed_process_is_stepped_over(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_COUNTER", itertools.count())
    stale = tmp_path / f".a.txt.{os.getpid()}-0.tmp"
    stale.write_text("left behind")
    write_bytes_atomic(tmp_path / "a.txt", b"new")
    assert (tmp_path / "a.txt").read_bytes() == b"new" and stale.read_text() == "left behind"


def test_write_text_if_changed_keeps_an_unchanged_file(tmp_path):
    path = tmp_path / "sub" / "t.csv"
    assert write_text_if_changed(path, "a\n1\n")
    stamp = path.stat().st_mtime_ns
    assert not write_text_if_changed(path, "a\n1\n") and path.stat().st_mtime_ns == stamp
    assert write_text_if_changed(path, "a\n2\n") and path.read_text() == "a\n2\n"
