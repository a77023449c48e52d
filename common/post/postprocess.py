"""Triplet binarisation of probability maps (top score threshold, minimum area, bottom threshold).

Probability maps are 2-D (H, W), or batches (N, H, W), either float in [0, 1] or uint8 quantised
probabilities ``q`` (probability ``q / 255``). Thresholds are always on the 0..1 scale: a float
pixel ``p`` passes ``t`` when ``p > t``; a quantised pixel passes when ``q / 255 > t`` (computed
in float64), that is when ``q >= quantised_cutoff(t)``.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

PROB_SCALE = 255  # uint8 quantisation: probability = q / PROB_SCALE
_LEVELS = np.arange(PROB_SCALE + 1, dtype=np.float64) / PROB_SCALE


def quantise(prob) -> np.ndarray:
    """Float probabilities in [0, 1] to uint8 ``round(p * 255)``."""
    prob = np.asarray(prob, dtype=np.float32)
    return np.rint(np.clip(prob, 0.0, 1.0) * PROB_SCALE).astype(np.uint8)


def quantised_cutoff(threshold: float) -> int:
    """The smallest uint8 level ``q`` with ``q / 255 > threshold`` (256 when none passes)."""
    return int(np.searchsorted(_LEVELS, float(threshold), side="right"))


def binarize(prob, threshold: float) -> np.ndarray:
    """uint8 0/1 mask of the pixels whose probability is above ``threshold`` (0..1 scale)."""
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        cutoff = quantised_cutoff(threshold)
        return (prob >= cutoff).view(np.uint8) if cutoff <= PROB_SCALE else np.zeros_like(prob)
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"probability maps must be float in [0, 1] or uint8, got {prob.dtype}")
    return (prob > threshold).view(np.uint8)


def remove_small_components(mask, min_size: int, connectivity: int = 8) -> np.ndarray:
    """Drop the connected components of a 2-D mask smaller than ``min_size`` pixels."""
    mask = np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)
    if min_size <= 1 or not mask.any():
        return mask
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=connectivity)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False  # label 0 is the background
    return keep[labels].view(np.uint8)


def triplet(
    prob, top: float, min_area: int, bottom: float, *, min_component: int = 0
) -> np.ndarray:
    """Triplet post-processing of one (H, W) map.

    The map is kept only if at least ``min_area`` pixels are above ``top``; the mask is then the
    pixels above ``bottom``. ``min_component`` > 0 also removes connected components smaller than
    that many pixels (8-connectivity) from the final mask.
    """
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"triplet takes one (H, W) map, got shape {prob.shape}; use triplet_batch")
    if int(binarize(prob, top).sum()) < min_area:
        return np.zeros(prob.shape, dtype=np.uint8)
    mask = binarize(prob, bottom)
    if min_component > 0:
        mask = remove_small_components(mask, min_component)
    return mask


def triplet_batch(
    probs, top: float, min_area: int, bottom: float, *, min_component: int = 0
) -> np.ndarray:
    """Triplet post-processing of each map of an (N, H, W) batch, uint8 0/1 (N, H, W)."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"triplet_batch takes (N, H, W) maps, got shape {probs.shape}")
    out = np.empty(probs.shape, dtype=np.uint8)
    for i, prob in enumerate(probs):
        out[i] = triplet(prob, top, min_area, bottom, min_component=min_component)
    return out


def two_stage(
    prob, cls_score: float, cls_threshold: float, seg_threshold: float, min_area: int
) -> np.ndarray:
    """Two-stage post-processing of one (H, W) map with its image's classification score.

    The mask is the pixels above ``seg_threshold``, kept only when ``cls_score > cls_threshold``
    and the mask has at least ``min_area`` pixels.
    """
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"two_stage takes one (H, W) map, got shape {prob.shape}")
    mask = binarize(prob, seg_threshold)
    if not cls_score > cls_threshold or int(mask.sum()) < min_area:
        return np.zeros(prob.shape, dtype=np.uint8)
    return mask


def _components(mask, connectivity: int):
    mask = np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(
        mask, connectivity=connectivity
    )
    return mask, count, labels, stats[:, cv2.CC_STAT_AREA], centroids


def largest_component(mask, connectivity: int = 8) -> np.ndarray:
    """The largest connected component of a 2-D mask (an empty mask stays empty)."""
    mask, count, labels, areas, _ = _components(mask, connectivity)
    if count <= 2:
        return mask
    return (labels == 1 + int(np.argmax(areas[1:]))).view(np.uint8)


def largest_per_side(mask, connectivity: int = 8) -> np.ndarray:
    """The largest connected component on each side of the image's vertical midline (by the
    component's centroid): one left and one right structure, e.g. a pair of clavicles."""
    mask, count, labels, areas, centroids = _components(mask, connectivity)
    if count <= 2:
        return mask
    middle = (mask.shape[1] - 1) / 2
    keep = np.zeros(count, dtype=bool)
    for side in (centroids[1:, 0] <= middle, centroids[1:, 0] > middle):
        if side.any():
            keep[1 + np.flatnonzero(side)[np.argmax(np.where(side, areas[1:], -1)[side])]] = True
    return keep[labels].view(np.uint8)


def fill_holes(mask) -> np.ndarray:
    """A 2-D mask with every region enclosed by it filled."""
    return ndimage.binary_fill_holes(np.asarray(mask) != 0).view(np.uint8)


KEEP_RULES = {
    "all": lambda mask: np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8),
    "largest": largest_component,
    "largest_per_side": largest_per_side,
}


def clean_mask(mask, keep: str = "all", fill: bool = False) -> np.ndarray:
    """Shape priors for an anatomical structure: keep ``all`` components, the ``largest`` or
    the ``largest_per_side``, then optionally fill the holes."""
    if keep not in KEEP_RULES:
        raise ValueError(f"unknown component rule {keep!r}; valid: {', '.join(KEEP_RULES)}")
    mask = KEEP_RULES[keep](mask)
    return fill_holes(mask) if fill else mask


def final_rows(labels: np.ndarray, stats: np.ndarray, final: bool) -> int:
    """How many of a band's top rows are final, given its components (``labels`` and ``stats``
    of ``cv2.connectedComponentsWithStats``): every row when ``final``, else the rows above the
    first object that touches the band's last row (it may still grow downwards), moved up so
    that no object is cut in two (its rest would be judged alone)."""
    cut = len(labels)
    if final:
        return cut
    open_labels = np.unique(labels[-1])
    open_labels = open_labels[open_labels > 0]
    tops = stats[1:, cv2.CC_STAT_TOP]
    bottoms = tops + stats[1:, cv2.CC_STAT_HEIGHT]
    if len(open_labels):
        cut = int(stats[open_labels, cv2.CC_STAT_TOP].min())
    while True:
        split = (tops < cut) & (bottoms > cut)
        if not split.any():
            return cut
        cut = int(tops[split].min())


class RowComponentFilter:
    """``remove_small_components`` over a mask given as row bands, top to bottom, with memory
    bounded by the tallest object rather than the image: ``add(start, rows)`` returns the rows
    that are final, as (first row, uint8 0/1 rows); rows are held back only while an object
    that touches the last row given may still grow downwards. ``close`` returns the rest."""

    def __init__(self, width: int, min_size: int, connectivity: int = 8):
        self.width, self.min_size, self.connectivity = width, min_size, connectivity
        self._held = np.zeros((0, width), np.uint8)
        self._next = 0  # the row the next band must start at; held rows end there

    def add(self, start: int, rows) -> list[tuple[int, np.ndarray]]:
        rows = np.ascontiguousarray(np.asarray(rows) != 0, dtype=np.uint8)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows {rows.shape}: expected (n, {self.width})")
        if start != self._next:
            raise ValueError(f"band at row {start}: expected row {self._next}")
        self._next += rows.shape[0]
        self._held = np.concatenate([self._held, rows]) if len(self._held) else rows
        return self._release(final=False)

    def close(self) -> list[tuple[int, np.ndarray]]:
        return self._release(final=True)

    def _release(self, final: bool) -> list[tuple[int, np.ndarray]]:
        held = self._held
        if not len(held):
            return []
        if self.min_size <= 1 or not held.any():
            cut = len(held)
            labels = stats = None
        else:
            _, labels, stats, _ = cv2.connectedComponentsWithStats(
                held, connectivity=self.connectivity
            )
            cut = final_rows(labels, stats, final)
        if cut == 0:
            return []
        out = held[:cut]
        if labels is not None:
            keep = stats[:, cv2.CC_STAT_AREA] >= self.min_size
            keep[0] = False
            out = keep[labels[:cut]].view(np.uint8)
        start = self._next - len(held)
        self._held = held[cut:].copy()
        return [(start, out)]
