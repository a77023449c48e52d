"""Kaggle run-length CSVs as competitions ship them (``ImageId,EncodedPixels``: SIIM, and the
many competitions that copied its form): one row per annotation with the line it came from (for
error messages), and the mask of an id as the OR of its rows.

Quirks handled (all seen in real files): a UTF-8 byte-order mark, CRLF line ends, no header
(Kaggle's sample submissions), a header with a space (``ImageId, EncodedPixels``), values with a
leading space (`` -1``), ``-1`` for an empty mask, and an id repeated on several rows. Masks
are decoded in SIIM's relative encoding unless ``decode`` reads another form. (A dataset folder's
``train.csv``, with any column names and either encoding, is read by ``common.io.folder``.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from common.io.paths import check_id
from common.io.rle import SIIM_EMPTY, siim_rle_decode

RLE_COLUMNS = ("ImageId", "EncodedPixels")


def read_table(path: str | os.PathLike, **options) -> pd.DataFrame:
    """A user's CSV (a dataset folder's ``train.csv`` or sample submission) as strings through
    ``pandas.read_csv(path, **options)``; what pandas refuses (not UTF-8, no columns, a broken
    quote) is one ``ValueError`` naming the file."""
    path = Path(path)
    try:
        return pd.read_csv(
            path, encoding="utf-8-sig", **({"dtype": str, "keep_default_na": False} | options)
        )
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty: no header and no rows") from None
    except pd.errors.ParserError as error:
        raise ValueError(f"{path}: not a CSV table: {str(error).strip().splitlines()[0]}") from None


def read_rle_csv(path: str | os.PathLike) -> pd.DataFrame:
    """One row per annotation: ImageId, EncodedPixels (stripped; ``-1`` when empty) and the
    1-based ``line`` of the file it came from, for error messages."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if number == 1 and fields[0] == "ImageId":
            if fields[1:] != ["EncodedPixels"]:
                raise ValueError(f"{path}: header {line!r}, expected 'ImageId,EncodedPixels'")
            continue
        where = f"{path}, line {number}"
        if len(fields) != 2:
            raise ValueError(
                f"{where}: expected 2 fields (ImageId, EncodedPixels), got {len(fields)}"
            )
        image_id, encoded = fields
        check_id(image_id, where)
        if not encoded:
            raise ValueError(
                f"{where}: EncodedPixels is empty; an empty mask is written {SIIM_EMPTY!r}"
            )
        rows.append((image_id, encoded, number))
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return pd.DataFrame(rows, columns=[*RLE_COLUMNS, "line"])


def merged_masks(
    annotations: pd.DataFrame, shape=(1024, 1024), source: str = ""
) -> dict[str, np.ndarray]:
    """ImageId -> uint8 mask, the OR of all that image's annotations; errors name the line."""
    return {
        image_id: merged_mask_rows(
            zip(group["EncodedPixels"], group["line"], strict=True), shape, source
        )
        for image_id, group in annotations.groupby("ImageId", sort=False)
    }


def merged_mask_rows(
    rows, shape=(1024, 1024), source: str = "", decode=siim_rle_decode
) -> np.ndarray:
    """The OR of the decoded (EncodedPixels, line) rows of one image."""
    mask = np.zeros(shape, dtype=np.uint8)
    for encoded, line in rows:
        try:
            mask |= decode(encoded, shape)
        except ValueError as error:
            raise ValueError(f"{source}, line {line}: {error}") from None
    return mask
