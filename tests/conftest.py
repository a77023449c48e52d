"""Shared fixtures: the private real-data folder ``../shared/data`` (skipped when absent)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under the real-data folder, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real competition data not available: {path} is absent (private test data)")
    return path


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """A folder for the runs one test module shares, removed when the module ends with no test
    failed: each such module writes hundreds of MB of checkpoints, which ``tmp_path_factory``
    would keep until the session ends (several GB together, more than a small CI disk has)."""
    failed = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    if request.session.testsfailed == failed:
        shutil.rmtree(path, ignore_errors=True)
