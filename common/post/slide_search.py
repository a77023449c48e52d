"""Out-of-fold search and scoring for slides: the threshold and the small-object size, chosen on
the blended maps at model scale, then the full-resolution Dice of the RLE they make.

Per slide, ``component_counts`` thresholds the quantised map at every grid value, labels the
connected components once per threshold, and counts for every minimum size the predicted pixels
kept and those on the truth (truth at model scale from ``truth_at_scale``, built band by band
from the full-resolution RLE). The counts add up over a slide, so the mean Dice over slides of
every (threshold, min size) pair costs one labelling per threshold. Minimum sizes are given in
full-resolution pixels and compared at model scale (divided by the area scale). The chosen pair
is then applied to the stored map in full-resolution strips (``common.infer.slide_inference``) and
scored against the truth RLE run by run (``common.post.metrics.dice_of_runs``): the competition's
metric, the mean over slides of the full-resolution Dice. ``search_maps`` and ``score_maps`` do
both for slides whose maps a reader gives (stored out-of-fold maps, or an ensemble's mean).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from common.infer.slide_inference import map_bands, rle_from_bands
from common.io.atomic import atomic_path
from common.io.rle import rle_decode_window, rle_runs
from common.post.metrics import dice_of_runs
from common.post.postprocess import quantised_cutoff


def truth_at_scale(
    rle, shape: tuple[int, int], model_shape: tuple[int, int], rows: int = 2048
) -> np.ndarray:
    """The (model_shape) 0/1 truth of a full-resolution RLE: a model pixel is set when at least
    half the area it covers is, decoded ``rows`` full-resolution rows at a time."""
    height, width = shape
    out = np.zeros(model_shape, np.uint8)
    fy = model_shape[0] / height
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        m0, m1 = round(y0 * fy), round(y1 * fy)
        if m1 <= m0:
            continue
        band = rle_decode_window(rle, shape, (y0, y1, 0, width)).astype(np.float32)
        small = cv2.resize(band, (model_shape[1], m1 - m0), interpolation=cv2.INTER_AREA)
        out[m0:m1] = small >= 0.5
    return out


def component_counts(
    prob: np.ndarray, truth: np.ndarray, thresholds, min_sizes
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, on_truth), each (len(thresholds), len(min_sizes)): predicted pixels of the
    quantised map ``prob`` above each threshold, in components of at least each size (model
    pixels), and how many of them lie on ``truth``."""
    kept = np.zeros((len(thresholds), len(min_sizes)), np.int64)
    hits = np.zeros_like(kept)
    truth = np.asarray(truth) > 0
    sizes = np.asarray(min_sizes, np.float64)
    for i, threshold in enumerate(thresholds):
        binary = (prob >= quantised_cutoff(threshold)).view(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        area = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
        on = np.bincount(labels[truth], minlength=n)[1:]
        big = area[None, :] >= sizes[:, None]  # (sizes, components)
        kept[i] = big @ area
        hits[i] = big @ on
    return kept, hits


@dataclass(frozen=True)
class SlideSearch:
    table: pd.DataFrame  # threshold, min_size (full-resolution pixels), dice (mean over slides)
    best: dict
    empty_dice: float
    n_slides: int
    per_slide: np.ndarray | None = None  # (slides, thresholds, min sizes) Dice at model scale
    axes: tuple[tuple, tuple] = ((), ())  # the thresholds and min sizes of per_slide's axes

    def cross_fitted(self, folds: Sequence[int]) -> dict[int, dict] | None:
        """{fold: {threshold, min_size}}, each fold's pair searched on the other folds' slides
        only (``folds``: each slide's fold, in search order), so that no slide is scored with
        a pair chosen on it; None with fewer than two folds."""
        folds = np.asarray(list(folds))
        if self.per_slide is None or len(set(folds.tolist())) < 2:
            return None
        if len(folds) != len(self.per_slide):
            raise ValueError(f"{len(folds)} folds for {len(self.per_slide)} searched slides")
        thresholds, min_sizes = self.axes
        out = {}
        for fold in sorted(set(folds.tolist())):
            mean = self.per_slide[folds != fold].mean(axis=0)
            i, j = np.unravel_index(int(np.argmax(mean)), mean.shape)  # first best, as `best`
            out[int(fold)] = {"threshold": float(thresholds[i]), "min_size": int(min_sizes[j])}
        return out

    def to_csv(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            self.table.to_csv(tmp, index=False, float_format="%.6f")

    def heatmap(self, path: str | os.PathLike) -> None:
        from common.plots import grid_heatmap

        grid_heatmap(self.table, "min_size", "threshold", "dice", path,
                     f"{self.n_slides} slides, mean Dice at model scale: best {self.best['dice']:.4f} "
                     f"(threshold {self.best['threshold']:g}, min size {self.best['min_size']:g}); "
                     f"all empty {self.empty_dice:.4f}", best=self.best)  # fmt: skip


def search_slides(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], thresholds, min_sizes, area_scale: float
) -> SlideSearch:
    """The mean Dice over slides of each (threshold, min size) on (quantised map, truth) pairs
    at model scale; ``min_sizes`` in full-resolution pixels, ``area_scale`` full-resolution
    pixels per model pixel."""
    thresholds, min_sizes = list(thresholds), list(min_sizes)
    model_sizes = [m / area_scale for m in min_sizes]
    dice, empty = [], []
    for prob, truth in pairs:
        kept, hits = component_counts(prob, truth, thresholds, model_sizes)
        n_true = int((np.asarray(truth) > 0).sum())
        total = kept + n_true
        dice.append(np.where(total > 0, 2 * hits / np.maximum(total, 1), 1.0))
        empty.append(1.0 if n_true == 0 else 0.0)
    if not dice:
        raise ValueError("no out-of-fold slides to search")
    mean = np.mean(dice, axis=0)
    table = pd.DataFrame(
        [(t, m, mean[i, j]) for i, t in enumerate(thresholds) for j, m in enumerate(min_sizes)],
        columns=["threshold", "min_size", "dice"],
    )
    best = table.iloc[int(np.argmax(table["dice"].to_numpy()))].to_dict()
    return SlideSearch(table, best, float(np.mean(empty)), len(dice), np.stack(dice),
                       (tuple(thresholds), tuple(min_sizes)))  # fmt: skip


MapReader = Callable[[dict], np.ndarray]  # a slide -> its quantised uint8 map at model scale


def search_maps(
    slides: Sequence[dict], read: MapReader, thresholds, min_sizes, area_scale: float
) -> SlideSearch:
    """``search_slides`` over slides given as dicts with ``rle`` (the full-resolution truth)
    and ``shape``, each map read by ``read`` and its truth brought to the map's scale."""
    pairs = (
        (prob, truth_at_scale(s["rle"], s["shape"], prob.shape))
        for s in slides
        for prob in (read(s),)
    )
    return search_slides(pairs, thresholds, min_sizes, area_scale)


def score_maps(
    slides: Sequence[dict], read: MapReader, *, threshold: float, min_size: int
) -> Iterator[tuple[dict, np.ndarray, str, float]]:
    """(slide, its map, the full-resolution RLE the chosen pair makes, its Dice against the
    slide's truth RLE) per slide, the mask made strip by strip and scored run by run."""
    for s in slides:
        prob = read(s)
        rle = rle_from_bands(
            map_bands(prob), prob.shape, s["shape"], threshold=threshold, min_size=min_size
        )
        yield s, prob, rle, dice_of_runs(rle_runs(rle, s["shape"]), rle_runs(s["rle"], s["shape"]))


def score_honestly(
    slides: Sequence[dict], read: MapReader, search: SlideSearch
) -> tuple[list[tuple[dict, np.ndarray, str, float, dict]], str]:
    """Each slide scored at full resolution with the pair searched on the *other* folds' slides
    (``SlideSearch.cross_fitted``, slides with ``fold``), or with one fold only, with the pair
    searched on all (in-sample, said so). Returns ((slide, map, RLE, Dice, pair) per slide in
    order, "cross-fitted" | "in-sample (one fold)")."""
    pairs = search.cross_fitted([s["fold"] for s in slides])
    mode = "cross-fitted"
    if pairs is None:
        best = {
            "threshold": float(search.best["threshold"]),
            "min_size": int(search.best["min_size"]),
        }
        pairs, mode = {s["fold"]: best for s in slides}, "in-sample (one fold)"
    out = []
    for s in slides:
        pair = pairs[s["fold"]]
        (_, prob, rle, dice), = score_maps([s], read, **pair)  # fmt: skip
        out.append((s, prob, rle, dice, pair))
    return out, mode
