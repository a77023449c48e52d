"""K-fold splits stratified jointly by "has a mask" and mask-area bin (iterative stratification).

Each sample gets two kinds of labels: has-mask (one-hot empty / non-empty) and the quantile bin
of its mask area among the non-empty samples. ``MultilabelStratifiedKFold`` balances all of them
at once, so every fold has about the positive rate and the area distribution of the whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from common.io.atomic import atomic_path

FOLDS_COLUMNS = ("ImageId", "fold")


def area_bins(areas, n_bins: int) -> np.ndarray:
    """Quantile bin (0..n_bins-1) of each positive area; -1 for empty samples."""
    areas = np.asarray(areas, dtype=np.float64)
    bins = np.full(len(areas), -1, dtype=np.int64)
    positive = areas > 0
    if positive.any():
        edges = np.quantile(areas[positive], np.linspace(0, 1, n_bins + 1)[1:-1])
        bins[positive] = np.searchsorted(edges, areas[positive], side="right")
    return bins


def make_folds(
    image_ids, mask_areas, *, n_folds: int = 5, n_area_bins: int = 8, seed: int = 42
) -> pd.DataFrame:
    """Assign each image to one of ``n_folds`` folds; returns a frame (ImageId, fold).

    ``image_ids`` must be unique (merge the annotations of an image first: it is one sample);
    ``mask_areas`` is each image's mask area in pixels, 0 for an empty mask.
    """
    ids = pd.Index(np.asarray(image_ids).astype(str), name="ImageId")
    areas = np.asarray(mask_areas, dtype=np.float64)
    if len(ids) != len(areas):
        raise ValueError(f"{len(ids)} image ids but {len(areas)} mask areas")
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise ValueError(
            f"image id {duplicated[0]!r} appears more than once ({len(duplicated)} repeats): "
            "merge each image's annotations into one row before making folds"
        )
    if np.isnan(areas).any() or (areas < 0).any():
        raise ValueError("mask areas must be non-negative numbers")
    if n_folds < 2 or len(ids) < n_folds:
        raise ValueError(f"cannot split {len(ids)} images into {n_folds} folds")
    bins = area_bins(areas, n_area_bins)
    labels = np.zeros((len(ids), 2 + n_area_bins), dtype=np.int64)
    labels[np.arange(len(ids)), (areas > 0).astype(int)] = 1
    positive = bins >= 0
    labels[np.flatnonzero(positive), 2 + bins[positive]] = 1
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(ids), -1, dtype=np.int64)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(ids)), labels)):
        fold[held_out] = k
    return pd.DataFrame({"ImageId": ids, "fold": fold})


def write_folds(folds: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the (ImageId, fold) table atomically."""
    with atomic_path(path) as tmp:
        folds.loc[:, list(FOLDS_COLUMNS)].to_csv(tmp, index=False)


def read_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a folds CSV: columns ImageId and fold, every id once."""
    frame = pd.read_csv(path, dtype={"ImageId": str})
    missing = set(FOLDS_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected {FOLDS_COLUMNS}")
    repeated = frame["ImageId"][frame["ImageId"].duplicated()]
    if len(repeated):
        raise ValueError(f"{path}: image id {repeated.iloc[0]!r} is in more than one row")
    if not pd.api.types.is_integer_dtype(frame["fold"]) or (frame["fold"] < 0).any():
        raise ValueError(f"{path}: fold must be a non-negative integer in every row")
    return frame.loc[:, list(FOLDS_COLUMNS)]


def group_folds(groups, sizes, n_folds: int, seed: int = 42) -> dict:
    """Folds grouped by a key (the tiles of one slide never split across folds): each group
    goes whole to one fold, the largest first to the fold with the fewest items so far, ties
    broken by a seeded shuffle. ``sizes`` are the groups' item counts; returns group -> fold."""
    groups = list(groups)
    if len(set(groups)) != len(groups):
        raise ValueError("group_folds: each group once")
    if not 1 < n_folds <= len(groups):
        raise ValueError(f"{n_folds} folds need at least as many groups, got {len(groups)}")
    order = np.random.default_rng(seed).permutation(len(groups))
    order = sorted(order, key=lambda i: -float(sizes[i]))
    load = np.zeros(n_folds)
    out = {}
    for i in order:
        fold = int(np.argmin(load))
        out[groups[i]] = fold
        load[fold] += float(sizes[i])
    return out


def ensure_folds(ids, areas, path: str | os.PathLike, n_folds: int, seed: int) -> str:
    """Write ``path`` (``make_folds`` of ``ids`` by mask ``areas``) unless it already covers
    exactly these ids with ``n_folds`` folds: a split must not change under a running
    experiment. Returns what it did."""
    path = Path(path)
    ids = [str(i) for i in ids]
    if path.is_file():
        folds = read_folds(path)
        if set(folds["ImageId"]) == set(ids) and folds["fold"].nunique() == n_folds:
            return f"kept {path}"
    folds = make_folds(ids, areas, n_folds=n_folds, seed=seed)
    write_folds(folds, path)
    return f"wrote {path} ({n_folds} folds of {len(folds)} images)"
