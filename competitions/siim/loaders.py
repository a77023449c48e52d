"""SIIM data for training: the prepared tables (``ImageId``) with ``folds.csv``, as
``common.data.frames`` reads every prepared image cache."""

from __future__ import annotations

from pathlib import Path

from common.data.frames import frame_set

FRAMES = frame_set(
    transforms=Path(__file__).resolve().parent / "transforms",
    id_column="ImageId",
    hint="run `make siim-prepare CONFIG=...` (or `python -m common.cli prepare --competition siim --config ...`)",
    label="siim",
    header=("ImageId", "EncodedPixels", ""),
)
