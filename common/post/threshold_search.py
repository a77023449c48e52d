"""Exhaustive threshold search on out-of-fold probability maps.

Each image is read once and reduced to two 256-bin histograms of its uint8 quantised
probabilities: over all pixels and over the truth pixels. Their suffix sums give, for any
threshold, the predicted area and its overlap with the truth, so every grid point then costs
O(1) per image. The scores are exactly those of ``postprocess.triplet`` (or
``postprocess.two_stage``) followed by ``metrics.dice_per_image``: the same integer counts go
through the same ``dice_from_counts``; only the order of the final mean's summation differs.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numba
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from common.io.atomic import atomic_path
from common.post.metrics import dice_from_counts, jaccard_from_counts
from common.post.postprocess import PROB_SCALE, quantised_cutoff

REFERENCE_PIXELS = 1024 * 1024  # the default min-area grid is stated at 1024x1024
_STEP_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
_MIN_AREAS_1024 = np.concatenate([[0], np.unique(np.round(np.geomspace(16, 4096, 15)))])
_LANES = 4  # interleaved sub-histograms: consecutive equal pixels do not wait on one counter


@numba.njit(cache=True, nogil=True)
def _histograms(prob, truth):
    """Counts of each uint8 level over all pixels and over the truth pixels of flat arrays.

    One 512-bin histogram indexed by ``q + 256 * is_true`` costs one increment per pixel;
    interleaved lanes keep runs of equal pixels from waiting on a single counter.
    """
    bins = PROB_SCALE + 1
    lanes = np.zeros((_LANES, 2 * bins), dtype=np.int32)
    n = prob.size
    body = n - n % _LANES
    for i in range(0, body, _LANES):
        for lane in range(_LANES):
            lanes[lane, prob[i + lane] + (bins if truth[i + lane] else 0)] += 1
    for i in range(body, n):
        lanes[0, prob[i] + (bins if truth[i] else 0)] += 1
    both = lanes.astype(np.int64).sum(axis=0)
    return both[:bins] + both[bins:], both[bins:]


@dataclass(frozen=True)
class ImageStats:
    """Per-image reduction: ``above[n, k]`` = pixels with q >= k, ``above_true`` the same over
    truth pixels (k = 0..256), ``n_true`` the truth area."""

    above: np.ndarray
    above_true: np.ndarray
    n_true: np.ndarray

    @property
    def typical_pixels(self) -> int:
        """Median image size in pixels, which scales the default min-area grid."""
        return int(np.median(self.above[:, 0]))

    def subset(self, rows) -> ImageStats:
        """The reduction of the images at ``rows`` (indices or a boolean mask)."""
        return ImageStats(self.above[rows], self.above_true[rows], self.n_true[rows])

    def areas(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Predicted area and its overlap with the truth at ``threshold``, per image."""
        k = quantised_cutoff(threshold)
        return self.above[:, k], self.above_true[:, k]


def _reduce_one(index: int, prob, truth) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(prob)
    truth = np.asarray(truth)
    if prob.dtype != np.uint8:
        raise ValueError(f"map {index}: expected uint8 quantised probabilities, got {prob.dtype}")
    if prob.shape != truth.shape or prob.ndim != 2:
        raise ValueError(
            f"map {index}: map shape {prob.shape} and truth shape {truth.shape} differ"
        )
    if truth.dtype != np.uint8 and truth.dtype != np.bool_:
        truth = truth != 0
    hist, hist_true = _histograms(np.ravel(prob), np.ravel(truth.view(np.uint8)))
    above = np.zeros((2, PROB_SCALE + 2), dtype=np.int64)
    above[0, :-1] = np.cumsum(hist[::-1])[::-1]
    above[1, :-1] = np.cumsum(hist_true[::-1])[::-1]
    return above[0], above[1]


def reduce_maps(
    prob_maps: Iterable, truth_masks: Iterable, *, progress: bool = False, workers: int = 2
) -> ImageStats:
    """Read each (map, truth) pair once; maps are uint8 quantised, truths binary (non-zero = 1).

    Pairs are reduced on ``workers`` threads (the kernel releases the GIL) with at most
    ``2 * workers`` pairs in flight, so memory does not grow with the number of maps.
    """
    return reduce_pairs(
        zip(prob_maps, truth_masks, strict=True), progress=progress, workers=workers
    )


def reduce_pairs(pairs: Iterable, *, progress: bool = False, workers: int = 2) -> ImageStats:
    """As ``reduce_maps``, on one iterable of (map, truth) pairs (e.g. a model's predictions
    as they are made)."""
    rows = []
    pairs = enumerate(pairs)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for index, (prob, truth) in tqdm(pairs, desc="threshold search", disable=not progress):
            pending.append(pool.submit(_reduce_one, index, prob, truth))
            del prob, truth
            if len(pending) >= 2 * max(1, workers):
                rows.append(pending.popleft().result())
        rows.extend(future.result() for future in pending)
    if not rows:
        raise ValueError("threshold search needs at least one map")
    above = np.stack([r[0] for r in rows])
    above_true = np.stack([r[1] for r in rows])
    return ImageStats(above=above, above_true=above_true, n_true=above_true[:, 0])


def default_min_areas(n_pixels: int = REFERENCE_PIXELS) -> np.ndarray:
    """0 plus log-spaced areas 16..4096 px at 1024x1024, scaled to images of ``n_pixels``."""
    return np.unique(np.round(_MIN_AREAS_1024 * n_pixels / REFERENCE_PIXELS)).astype(np.int64)


@dataclass
class SearchResult:
    """Every grid point with its mean Dice (``table``), the best point, and the all-empty score."""

    table: pd.DataFrame
    best: dict
    empty_dice: float
    n_images: int
    stats: ImageStats = field(repr=False)

    def to_csv(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            self.table.to_csv(tmp, index=False, float_format="%.6f")

    def heatmap(self, path: str | os.PathLike) -> None:
        from common.plots import search_heatmap

        search_heatmap(self, path)


def _as_grid(values, default) -> np.ndarray:
    values = default if values is None else values
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.size == 0:
        raise ValueError("a threshold grid axis is empty")
    return array


def _result(stats: ImageStats, axes: dict, gain: np.ndarray, metric: str = "dice") -> SearchResult:
    """The table of mean Dice for each grid point (axes in product order).

    An image whose mask is dropped scores 1 when its truth is empty, else 0 (``empty``);
    ``gain`` holds, per grid point, the sum over the kept images of (Dice - empty).
    """
    empty = (stats.n_true == 0).astype(np.float64)
    n = len(empty)
    names = list(axes)
    table = pd.DataFrame(list(itertools.product(*axes.values())), columns=names)
    table["min_area"] = table["min_area"].astype(np.int64)
    table[metric] = empty.mean() + gain.ravel() / n
    i = int(np.argmax(table[metric].to_numpy()))
    best = {name: table[name].iloc[i].item() for name in [*names, metric]}
    return SearchResult(table, best, float(empty.mean()), n, stats)


def _gain(kept: np.ndarray, dice: np.ndarray, stats: ImageStats) -> np.ndarray:
    """Sum over images of kept * (dice - empty score): kept (N, P) bool, dice (N,) -> (P,)."""
    delta = dice - (stats.n_true == 0)
    return delta @ kept


def search_triplets(
    prob_maps: Iterable,
    truth_masks: Iterable,
    tops=None,
    min_areas=None,
    bottoms=None,
    *,
    progress: bool = False,
    workers: int = 2,
) -> SearchResult:
    """Grid search of (top, min_area, bottom) triplets; see ``postprocess.triplet``.

    Defaults: top and bottom 0.05..0.95 in 0.05 steps, min areas from ``default_min_areas``
    at the maps' own size (19 x 19 x 16 = 5,776 points at 1024x1024).
    """
    stats = reduce_maps(prob_maps, truth_masks, progress=progress, workers=workers)
    return search_triplets_from_stats(stats, tops, min_areas, bottoms)


def search_triplets_from_stats(
    stats: ImageStats, tops=None, min_areas=None, bottoms=None, *, metric: str = "dice"
):
    """As ``search_triplets``, on an existing per-image reduction; ``metric`` ``jaccard``
    maximises the mean Jaccard instead (the table's score column is named by the metric)."""
    tops = _as_grid(tops, _STEP_GRID)
    bottoms = _as_grid(bottoms, _STEP_GRID)
    min_areas = _as_grid(min_areas, default_min_areas(stats.typical_pixels))
    top_area = np.stack([stats.areas(t)[0] for t in tops], axis=1)  # (N, T)
    kept = (top_area[:, :, None] >= min_areas[None, None, :]).reshape(len(top_area), -1)
    kept = kept.astype(np.float64)  # converted once, reused by every bottom threshold
    score = _scorer(metric)
    gain = np.stack([_gain(kept, score(stats, b), stats) for b in bottoms], axis=1)  # (T*A, B)
    axes = {"top": tops, "min_area": min_areas, "bottom": bottoms}
    return _result(stats, axes, gain, metric)


def cross_fitted_thresholds(stats: ImageStats, folds, grid=None) -> dict[int, float]:
    """{fold: the single threshold of the best mean Dice over the *other* folds' images}, so that
    no image is scored with a threshold chosen on it. ``folds`` gives each image's fold."""
    folds = np.asarray(folds)
    grid = _as_grid(grid, _STEP_GRID)
    if len(folds) != len(stats.n_true):
        raise ValueError(f"{len(folds)} fold labels for {len(stats.n_true)} images")
    best = {}
    for fold in np.unique(folds):
        others = stats.subset(folds != fold)
        if not len(others.n_true):
            raise ValueError(f"fold {fold} holds every image: nothing to search thresholds on")
        best[int(fold)] = float(search_triplets_from_stats(others, [0.0], [0], grid).best["bottom"])
    return best


def search_two_stage(
    prob_maps: Iterable,
    truth_masks: Iterable,
    cls_scores,
    cls_thresholds=None,
    seg_thresholds=None,
    min_areas=None,
    *,
    progress: bool = False,
    workers: int = 2,
) -> SearchResult:
    """Grid search of (cls_threshold, seg_threshold, min_area) for a two-stage model.

    An image keeps its mask when its classification score is above ``cls_threshold`` and at
    least ``min_area`` pixels are above ``seg_threshold``; the mask is then those pixels (see
    ``postprocess.two_stage``).
    """
    stats = reduce_maps(prob_maps, truth_masks, progress=progress, workers=workers)
    return search_two_stage_from_stats(stats, cls_scores, cls_thresholds, seg_thresholds, min_areas)


def search_two_stage_from_stats(
    stats: ImageStats, cls_scores, cls_thresholds=None, seg_thresholds=None, min_areas=None
) -> SearchResult:
    """As ``search_two_stage``, on an existing per-image reduction."""
    scores = np.asarray(cls_scores, dtype=np.float64).ravel()
    if len(scores) != len(stats.n_true):
        raise ValueError(f"{len(scores)} classification scores for {len(stats.n_true)} maps")
    cls_t = _as_grid(cls_thresholds, _STEP_GRID)
    seg_t = _as_grid(seg_thresholds, _STEP_GRID)
    areas = _as_grid(min_areas, default_min_areas(stats.typical_pixels))
    passes_cls = scores[:, None] > cls_t[None, :]  # (N, C)
    gain = np.empty((len(cls_t), len(seg_t), len(areas)))
    for j, seg in enumerate(seg_t):
        seg_area = stats.areas(seg)[0]
        kept = passes_cls[:, :, None] & (seg_area[:, None, None] >= areas[None, None, :])
        gain[:, j, :] = _gain(kept.reshape(len(scores), -1), _dice(stats, seg), stats).reshape(
            len(cls_t), len(areas)
        )
    axes = {"cls_threshold": cls_t, "seg_threshold": seg_t, "min_area": areas}
    return _result(stats, axes, gain)


def _dice(stats: ImageStats, threshold: float) -> np.ndarray:
    n_pred, n_inter = stats.areas(threshold)
    return dice_from_counts(n_inter, n_pred, stats.n_true)


def _jaccard(stats: ImageStats, threshold: float) -> np.ndarray:
    n_pred, n_inter = stats.areas(threshold)
    return jaccard_from_counts(n_inter, n_pred, stats.n_true)


METRICS = {"dice": _dice, "jaccard": _jaccard}  # per-image score from the counts, empty rule: 1


def _scorer(metric: str):
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is unknown; valid: {', '.join(METRICS)}")
    return METRICS[metric]
