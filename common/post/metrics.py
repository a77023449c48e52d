"""Per-image Dice and Jaccard with the Kaggle rule for empty masks.

Binary masks are (N, H, W) arrays of bool, 0/1 or 0/255 (any non-zero pixel is foreground).
Kaggle rule: when prediction and truth are both empty the image scores 1; when exactly one of
them is empty it scores 0 (which the plain formula already gives). Multi-class masks are
(N, C, H, W) and are scored per (image, class) pair, as the Clouds and Severstal competitions did.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _count(pred, truth):
    """(intersection, predicted, true) pixel counts per image of two (N, P) uint8 arrays."""
    n, size = pred.shape
    counts = np.zeros((n, 3), dtype=np.int64)
    for k in range(n):
        inter = 0
        n_pred = 0
        n_true = 0
        for i in range(size):
            p = pred[k, i] != 0
            t = truth[k, i] != 0
            inter += p & t
            n_pred += p
            n_true += t
        counts[k, 0] = inter
        counts[k, 1] = n_pred
        counts[k, 2] = n_true
    return counts


def _flat_uint8(masks: np.ndarray) -> np.ndarray:
    """(M, H*W) uint8 view or copy of a (..., H, W) batch, non-zero meaning foreground."""
    if masks.dtype == np.bool_:
        masks = masks.view(np.uint8)
    elif masks.dtype != np.uint8:
        masks = (masks != 0).view(np.uint8)
    return np.ascontiguousarray(masks).reshape(-1, masks.shape[-2] * masks.shape[-1])


def overlap_counts(pred, truth) -> np.ndarray:
    """Intersection, predicted and true pixel counts per mask of two (..., H, W) batches.

    Returns an (M, 3) int64 array, M being the product of the leading dimensions.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} does not match truth shape {truth.shape}")
    if pred.ndim < 3:
        raise ValueError(f"expected a batch of masks (..., H, W), got shape {pred.shape}")
    return _count(_flat_uint8(pred), _flat_uint8(truth))


def dice_from_counts(intersection, n_pred, n_true) -> np.ndarray:
    """Dice 2|P&T| / (|P| + |T|) per element, 1.0 where both masks are empty."""
    intersection = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(n_pred, dtype=np.float64) + np.asarray(n_true, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total == 0, 1.0, 2.0 * intersection / total)


def jaccard_from_counts(intersection, n_pred, n_true) -> np.ndarray:
    """Jaccard |P&T| / |P or T| per element, 1.0 where both masks are empty."""
    intersection = np.asarray(intersection, dtype=np.float64)
    union = (
        np.asarray(n_pred, dtype=np.float64) + np.asarray(n_true, dtype=np.float64) - intersection
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union == 0, 1.0, intersection / union)


def dice_per_image(pred, truth) -> np.ndarray:
    """Kaggle Dice of each image of two (N, H, W) binary batches, shape (N,)."""
    _require_ndim(pred, 3)
    c = overlap_counts(pred, truth)
    return dice_from_counts(c[:, 0], c[:, 1], c[:, 2])


def jaccard_per_image(pred, truth) -> np.ndarray:
    """Jaccard (IoU) of each image of two (N, H, W) binary batches, 1.0 when both are empty."""
    _require_ndim(pred, 3)
    c = overlap_counts(pred, truth)
    return jaccard_from_counts(c[:, 0], c[:, 1], c[:, 2])


def mean_dice(pred, truth) -> float:
    """The competition score: mean Kaggle Dice over the images of an (N, H, W) batch."""
    return float(dice_per_image(pred, truth).mean())


def dice_per_class(pred, truth) -> np.ndarray:
    """Kaggle Dice of each (image, class) pair of two (N, C, H, W) batches, shape (N, C)."""
    _require_ndim(pred, 4)
    c = overlap_counts(pred, truth)
    n, n_classes = np.shape(pred)[:2]
    return dice_from_counts(c[:, 0], c[:, 1], c[:, 2]).reshape(n, n_classes)


def jaccard_per_class(pred, truth) -> np.ndarray:
    """Jaccard of each (image, class) pair of two (N, C, H, W) batches, shape (N, C)."""
    _require_ndim(pred, 4)
    c = overlap_counts(pred, truth)
    n, n_classes = np.shape(pred)[:2]
    return jaccard_from_counts(c[:, 0], c[:, 1], c[:, 2]).reshape(n, n_classes)


def mean_dice_multiclass(pred, truth) -> float:
    """Mean Kaggle Dice over all (image, class) pairs of two (N, C, H, W) batches."""
    return float(dice_per_class(pred, truth).mean())


def _require_ndim(masks, ndim: int) -> None:
    shape = np.shape(masks)
    if len(shape) != ndim:
        layout = "(N, H, W)" if ndim == 3 else "(N, C, H, W)"
        raise ValueError(f"expected a batch of masks {layout}, got shape {shape}")


def dice_jaccard(pred, truth) -> dict[str, float]:
    """Dice and Jaccard of one binary mask against its truth (both empty: 1), as floats."""
    counts = overlap_counts(np.asarray(pred)[None], np.asarray(truth)[None])[0]
    return {
        "dice": float(dice_from_counts(*counts)),
        "jaccard": float(jaccard_from_counts(*counts)),
    }


@numba.njit(cache=True, nogil=True)
def _runs_overlap(starts_a, lengths_a, starts_b, lengths_b) -> int:
    i = j = 0
    total = 0
    while i < len(starts_a) and j < len(starts_b):
        end_a, end_b = starts_a[i] + lengths_a[i], starts_b[j] + lengths_b[j]
        low, high = max(starts_a[i], starts_b[j]), min(end_a, end_b)
        if high > low:
            total += high - low
        if end_a <= end_b:
            i += 1
        else:
            j += 1
    return total


def dice_of_runs(runs_a, runs_b) -> float:
    """The Dice of two masks given as sorted, non-overlapping runs (``common.io.rle.rle_runs``:
    (starts, lengths) in one pixel order), never decoded: a 2-gigapixel slide's score in the
    memory of its runs. Both empty scores 1 (the Kaggle rule)."""
    (sa, la), (sb, lb) = runs_a, runs_b
    total = int(la.sum()) + int(lb.sum())
    if total == 0:
        return 1.0
    return 2.0 * _runs_overlap(sa, la, sb, lb) / total
