"""Project-wide rules that are cheap to check: common/ never imports competitions/."""

from __future__ import annotations

import ast

from tests.conftest import REPO


def test_common_does_not_import_competitions():
    for path in (REPO / "common").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "competitions" for n in names), path


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from common.io.atomic import atomic_path, write_text_atomic

    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    try:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os

    from common.io.atomic import atomic_dir, write_text_atomic

    write_text_atomic(tmp_path / "x.txt", "hi")
    with atomic_dir(tmp_path / "folder") as build:
        (build / "y.txt").write_text("hi")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~mask


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    import pytest

    from common.io.atomic import atomic_dir

    target = tmp_path / "set"
    with atomic_dir(target) as build:
        (build / "a.txt").write_text("1")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError), atomic_dir(target) as build:
        (build / "b.txt").write_text("2")
        raise RuntimeError("killed half way")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no build folder left
