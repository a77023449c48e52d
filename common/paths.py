"""Ids that become file names: refuse any that could escape their folder."""

from __future__ import annotations

import re

_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


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
