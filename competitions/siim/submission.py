"""The SIIM submission format, its validator, and scoring against a truth file.

``ImageId,EncodedPixels``; one row per test image in the sample submission's order; the relative
run-length encoding (``common.io.rle.siim_rle_encode``) at the image's native size; ``-1`` for an
empty mask.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from common.io.paths import data_dir
from common.io.rle import SIIM_EMPTY, SIIM_SHAPE, siim_rle_decode
from common.io.rle_csv import merged_mask_rows, read_rle_csv
from common.post.metrics import dice_per_image
from common.submit.submission import SubmissionFormat, validate_submission
from competitions.siim import layout

FORMAT = SubmissionFormat("ImageId", "EncodedPixels", SIIM_EMPTY, siim_rle_decode)


def native_shapes(table: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Native (height, width) per ImageId of a prepared train.csv / test.csv table."""
    return {
        image_id: (int(h), int(w))
        for image_id, h, w in zip(table["ImageId"], table["height"], table["width"], strict=True)
    }


def shapes_from(test_csv: str | os.PathLike | None) -> dict[str, tuple[int, int]]:
    """``native_shapes`` of a prepared ``test.csv`` file; {} when absent."""
    if test_csv is None or not Path(test_csv).is_file():
        return {}
    return native_shapes(pd.read_csv(test_csv, dtype={"ImageId": str}))


def validate(
    path: str | os.PathLike, sample: str | os.PathLike, test_csv: str | os.PathLike | None = None
) -> dict[str, int]:
    """Check a SIIM CSV against the sample submission; image sizes from the prepared
    ``test.csv`` when given, else 1024x1024. Raises ``SubmissionError`` listing the problems."""
    expected = list(dict.fromkeys(read_rle_csv(sample)["ImageId"]))
    shapes = shapes_from(test_csv)
    return validate_submission(path, expected, FORMAT, lambda i: shapes.get(i, SIIM_SHAPE))


def validate_found(csv: str | os.PathLike, sample: str | os.PathLike | None = None
                   ) -> tuple[dict[str, int], Path, bool]:  # fmt: skip
    """The ``validate`` stage: ``validate`` against ``sample``, else the download's sample
    submission (or the synthetic set's); returns (counts, that sample, whether synthetic)."""
    synthetic = False
    if sample is None:
        found = [(layout.find_sample(data_dir("siim", kind)), kind == "synthetic")
                 for kind in ("raw", "synthetic")]  # fmt: skip
        sample, synthetic = next(((s, syn) for s, syn in found if s is not None), (None, False))
        if sample is None:
            raise ValueError(f"no sample submission in {data_dir('siim', 'raw')}/ or "
                             f"{data_dir('siim', 'synthetic')}/: pass --sample")  # fmt: skip
    test_csv = next(iter(sorted(data_dir("siim", "prepared").glob("*/test.csv"))), None)
    return validate(csv, sample, test_csv), Path(sample), synthetic


def score(
    path: str | os.PathLike, truth: str | os.PathLike, shapes: dict[str, tuple[int, int]]
) -> dict[str, float]:
    """Kaggle mean Dice of a submission against a truth CSV in the train-rle format (annotations
    OR-merged), next to the all-empty baseline."""
    predicted = read_rle_csv(path).groupby("ImageId", sort=False)
    annotations = read_rle_csv(truth).groupby("ImageId", sort=False)
    missing = set(annotations.groups) - set(predicted.groups)
    if missing:
        raise ValueError(f"{path}: {len(missing)} truth id(s) have no row, e.g. {min(missing)!r}")
    dice, empty = [], []
    for image_id, rows in annotations:
        shape = shapes.get(image_id, SIIM_SHAPE)
        true = merged_mask_rows(zip(rows["EncodedPixels"], rows["line"], strict=True), shape, truth)
        group = predicted.get_group(image_id)
        pred = merged_mask_rows(
            zip(group["EncodedPixels"], group["line"], strict=True), shape, path
        )
        dice.append(float(dice_per_image(pred[None], true[None])[0]))
        empty.append(float(not true.any()))
    return {"dice": float(np.mean(dice)), "empty_dice": float(np.mean(empty)), "n": len(dice)}
