"""The competition's own files, or its embedded synthetic set, said loudly.

Every competition reads its download from ``data/<name>/raw/`` and falls back to a synthetic set
in the same on-disk layout when that folder is absent or empty, so that a fresh clone runs end to
end. A ``raw/`` folder that holds something else is an error, never a silent fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.submit.report import banner


@dataclass(frozen=True)
class Source:
    root: Path  # the folder to read
    synthetic: bool


def raw_or_synthetic(
    raw: str | os.PathLike,
    synthetic: str | os.PathLike,
    *,
    has_data: Callable[[Path], bool],
    expected: str,
    generate: Callable[[Path], object],
    describe: str,
    log: Callable[[str], object] = print,
) -> Source:
    """``raw`` when ``has_data(raw)``; else, when ``raw`` is absent or empty, the synthetic set in
    ``synthetic`` (``generate(synthetic)`` makes it, or reuses it when it is already there),
    announced through ``log`` in a banner. ``expected`` says what ``raw`` should hold (for the
    error when it holds something else); ``describe`` what the synthetic set is."""
    raw, synthetic = Path(raw), Path(synthetic)
    if has_data(raw):
        return Source(raw, synthetic=False)
    if raw.exists() and any(raw.iterdir()):
        raise ValueError(
            f"{raw} exists but does not hold {expected}: put the download there as it comes, "
            "or remove the folder to use the synthetic set"
        )
    log(
        banner(
            [
                f"No competition data in {raw}/: using the embedded SYNTHETIC set",
                f"{describe} in {synthetic}/.",
                "Scores on it say the pipeline works; they are not competition scores.",
            ]
        )
    )
    generate(synthetic)
    return Source(synthetic, synthetic=True)
