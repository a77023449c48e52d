"""Where files live: the workspace roots, and ids that become file names.

Every stage's files are under one workspace: ``data/<competition>/``, ``models/<competition>/``,
``submissions/<competition>/`` and ``dist/``. The workspace is the repository itself, or the folder
named by ``$KSEG_WORKSPACE`` (data and runs kept elsewhere, e.g. on a bigger disk). A relative
path in a config (``output``, ``data.prepared``, ...) is under the workspace, whatever the current
folder; library code takes its paths from the config or from here, never a literal relative path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

WORKSPACE_ENV = "KSEG_WORKSPACE"
REPO = Path(__file__).resolve().parents[2]
_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def workspace() -> Path:
    """``$KSEG_WORKSPACE`` when set, else the repository."""
    return Path(os.environ.get(WORKSPACE_ENV) or REPO).resolve()


def resolve(path: str | os.PathLike) -> Path:
    """An absolute path: ``path`` itself, or under the workspace when relative."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else workspace() / path


def data_dir(competition: str, *parts: str) -> Path:
    return workspace() / "data" / competition / Path(*parts)


def models_dir(competition: str) -> Path:
    return workspace() / "models" / competition


def submissions_dir(competition: str) -> Path:
    return workspace() / "submissions" / competition


def dist_dir() -> Path:
    return workspace() / "dist"


def check_id(image_id: str, where: str = "") -> str:
    """Return ``image_id`` if it is a plain file-name stem (letters, digits, '.', '_', '-', not
    starting with '.'), else raise ``ValueError`` naming ``where`` (file and row)."""
    if not isinstance(image_id, str) or not _SAFE_ID.fullmatch(image_id):
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}image id {image_id!r} is not a plain file name "
            "(letters, digits, '.', '_', '-'; no path separators, no leading '.')"
        )
    return image_id
