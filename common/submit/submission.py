"""Submission CSVs: written atomically, and validated against the sample submission.

A competition states its format once (``SubmissionFormat``): the two column names, the marker of
an empty mask and the decoder of a mask string for an image of a given shape. The validator reads
the file as text (no pandas type guessing) and reports every problem it finds, each naming the
row: a wrong header, a malformed row, an id missing, repeated or not in the sample, an empty
value where the marker is expected, a string that does not decode or runs out of the image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.io.atomic import atomic_path


@dataclass(frozen=True)
class SubmissionFormat:
    id_column: str
    value_column: str
    empty: str  # what an empty mask is written as, e.g. "-1" (SIIM) or "" (most competitions)
    decode: Callable[[str, tuple[int, int]], np.ndarray]  # raises ValueError when malformed
    key_columns: tuple[str, ...] = ()  # more key columns before the value (e.g. ClassId)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.id_column, *self.key_columns, self.value_column)

    @property
    def header(self) -> str:
        return ",".join(self.columns)


class SubmissionError(ValueError):
    """The file breaks the format; ``problems`` lists each one."""

    def __init__(self, path, problems: list[str], limit: int = 20):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        super().__init__(f"{path}: {len(problems)} problem(s):\n{shown}{more}")


def write_submission(
    rows: Iterable[tuple[str, str]], path: str | os.PathLike, fmt: SubmissionFormat
) -> int:
    """Write (id, value) rows under the format's header, atomically; returns the row count."""
    return write_rows(rows, path, (fmt.id_column, fmt.value_column))


def write_rows(
    rows: Iterable[Sequence[str]], path: str | os.PathLike, header: Sequence[str]
) -> int:
    """Write plain CSV rows (no field may hold a comma or a newline; the last may be empty)
    under ``header``, atomically; returns the row count."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            if len(row) != len(header) or any("," in v or "\n" in v for v in row):
                raise ValueError(f"row {count + 1}: {tuple(row)!r} does not fit the CSV {header}")
            f.write(",".join(row) + "\n")
            count += 1
    return count


def validate_submission(
    path: str | os.PathLike,
    expected_ids: list[str],
    fmt: SubmissionFormat,
    shape_of: Callable[[str], tuple[int, int]],
) -> dict[str, int]:
    """Check ``path`` against the sample's ids; returns counts (rows, empty, non_empty) or raises
    ``SubmissionError`` listing every problem. With ``fmt.key_columns`` a row's id is its key
    fields joined by commas (e.g. ``img7,3`` for image img7, class 3)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SubmissionError(path, ["file not found"]) from None
    except UnicodeDecodeError:
        raise SubmissionError(path, ["not UTF-8 text"]) from None
    lines = text.splitlines()
    problems: list[str] = []
    if not lines or lines[0].lstrip("\ufeff") != fmt.header:
        found = lines[0] if lines else "(empty file)"
        problems.append(f"line 1: header {found!r}, expected {fmt.header!r}")
    expected = set(expected_ids)
    seen: dict[str, int] = {}
    counts = {"rows": 0, "empty": 0, "non_empty": 0}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != len(fmt.columns):
            problems.append(f"line {number}: {len(fields)} fields, expected {len(fmt.columns)}")
            continue
        image_id, value = ",".join(fields[:-1]), fields[-1]
        counts["rows"] += 1
        if image_id in seen:
            problems.append(f"line {number}: id {image_id!r} repeats line {seen[image_id]}")
            continue
        seen[image_id] = number
        if image_id not in expected:
            problems.append(f"line {number}: id {image_id!r} is not in the sample submission")
            continue
        if value == fmt.empty:
            counts["empty"] += 1
            continue
        if not value.strip():
            problems.append(f"line {number}: empty value; an empty mask is {fmt.empty!r}")
            continue
        try:
            fmt.decode(value, shape_of(image_id))
            counts["non_empty"] += 1
        except ValueError as error:
            problems.append(f"line {number} ({image_id}): {error}")
    missing = [i for i in expected_ids if i not in seen]
    if missing:
        problems.append(f"{len(missing)} sample id(s) missing, e.g. {missing[0]!r}")
    if problems:
        raise SubmissionError(path, problems)
    return counts
