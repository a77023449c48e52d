"""Resource errors (issue "Faults and bad input"): a full disk, a read-only output folder and a
file-size limit hit in the middle of a prepare (its worker processes included) end in one line
naming the path, leave no file half-written, and a re-run once the cause is gone writes what a
run on a roomy disk writes.

The full disk and the read-only folder are real (a small tmpfs, mounted here; they skip where
this process may not mount); the file-size limit (``RLIMIT_FSIZE``: ``EFBIG`` from the kernel on
the first write past it, the way a quota acts) runs everywhere."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from tests.conftest import REPO
from tests.faults.test_kill_rerun import _env, _files

CONFIG = "competitions/siim/configs/base.yaml"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from competitions.siim.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("resources")
    return generate(root / "synthetic", SyntheticSpec(size=96, n_train=32, n_test=8), n_jobs=1)


@pytest.fixture(scope="module")
def reference(synthetic):
    """The files of a prepare on a roomy disk."""
    out = synthetic.parent / "roomy" / "prepared"
    assert _prepare(synthetic, out, synthetic.parent).returncode == 0
    return _files(out)


def _prepare(synthetic: Path, out: Path, workspace: Path, limit: int | None = None):
    command = [sys.executable, "-m", "common.cli", "prepare", "--competition", "siim",
               "--config", CONFIG, "--size", "64", "--raw", str(workspace / "raw"),
               "--synthetic", str(synthetic), "--synthetic-size", "96", "--synthetic-train", "32",
               "--synthetic-test", "8", f"data.prepared={out}", f"data.folds={out / 'folds.csv'}"]  # fmt: skip

    def cap():  # Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = _env(workspace) | {"PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=cap if limit else None)  # fmt: skip


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def _nothing_half_written(out: Path) -> None:
    left = [p for p in out.rglob("*.tmp")]
    assert not left, f"temp files left: {left[:3]}"
    for png in out.rglob("*.png"):
        assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED) is not None, f"{png} is half-written"


def _one_line(run, path_inside: Path, reason: str) -> str:
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("siim prepare: ") and reason in line and str(path_inside) in line, line
    return line


def test_a_full_disk(synthetic, reference, tmp_path):
    disk = tmp_path / "disk"
    if not _mount(disk, "size=96k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights): the file-size "
                    "limit test covers the same path")  # fmt: skip
    try:
        out = disk / "prepared"
        _one_line(_prepare(synthetic, out, tmp_path), out, os.strerror(errno.ENOSPC))
        _nothing_half_written(out)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert _prepare(synthetic, out, tmp_path).returncode == 0  # the re-run completes the cache
        assert _files(out) == reference
    finally:
        _umount(disk)


def test_a_read_only_output_folder(synthetic, tmp_path):
    disk = tmp_path / "disk"
    if not _mount(disk, "size=1m,ro"):
        if os.geteuid() == 0:
            pytest.skip("cannot mount a read-only tmpfs here, and root ignores folder modes")
        disk.chmod(0o555)
    try:
        out = disk / "prepared"
        _one_line(_prepare(synthetic, out, tmp_path), disk, "")
        assert not out.exists()
    finally:
        with contextlib.suppress(OSError):
            disk.chmod(0o755)
        _umount(disk)


def test_a_file_size_limit(synthetic, reference, tmp_path):
    out = tmp_path / "prepared"
    run = _prepare(synthetic, out, tmp_path, limit=3_000)  # bytes: some image files are larger
    _one_line(run, out, os.strerror(errno.EFBIG))
    _nothing_half_written(out)
    assert _prepare(synthetic, out, tmp_path).returncode == 0
    assert _files(out) == reference


def test_a_library_writer_failing_on_a_full_disk_is_named(monkeypatch, tmp_path):
    """``torch.save`` on a full disk raises a ``RuntimeError`` ("file write failed"): inside
    ``atomic_path`` it becomes ENOSPC naming the file; on a disk with room it stays itself."""
    import torch

    from common.io import atomic

    target = tmp_path / "final.pt"

    def fails(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed")

    with pytest.raises(RuntimeError, match="PytorchStreamWriter"):
        with atomic.atomic_path(target) as tmp:
            fails(tmp)
    monkeypatch.setattr(atomic.os, "statvfs", lambda _: os.statvfs_result((0,) * 10))
    with pytest.raises(OSError) as error:
        with atomic.atomic_path(target) as tmp:
            torch.save({}, tmp)
            fails(tmp)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(target)
    assert not target.exists() and not list(tmp_path.iterdir())
