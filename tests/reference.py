"""Plain, obviously correct reference implementations, written from the formats' definitions.

They are slow (Python loops over pixels) and exist only to check the fast kernels in ``common``.
"""

from __future__ import annotations

import numpy as np


def flatten(mask: np.ndarray, order: str) -> list[int]:
    """Pixels in Kaggle order: "F" walks down each column, left to right; "C" along each row."""
    height, width = mask.shape
    if order == "F":
        return [int(mask[r, c] != 0) for c in range(width) for r in range(height)]
    return [int(mask[r, c] != 0) for r in range(height) for c in range(width)]


def unflatten(pixels: list[int], shape: tuple[int, int], order: str) -> np.ndarray:
    height, width = shape
    mask = np.zeros(shape, dtype=np.uint8)
    for index, value in enumerate(pixels):
        if order == "F":
            mask[index % height, index // height] = value
        else:
            mask[index // width, index % width] = value
    return mask


def runs(pixels: list[int]) -> list[tuple[int, int]]:
    """(0-based start, length) of each maximal run of ones."""
    out = []
    start = None
    for index, value in enumerate([*pixels, 0]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            out.append((start, index - start))
            start = None
    return out


def ref_rle_encode(mask: np.ndarray, order: str = "F") -> str:
    return " ".join(f"{start + 1} {length}" for start, length in runs(flatten(mask, order)))


def ref_rle_decode(rle: str, shape: tuple[int, int], order: str = "F") -> np.ndarray:
    pixels = [0] * (shape[0] * shape[1])
    numbers = [int(t) for t in rle.split()]
    for start, length in zip(numbers[0::2], numbers[1::2], strict=True):
        for index in range(start - 1, start - 1 + length):
            pixels[index] = 1
    return unflatten(pixels, shape, order)


def ref_siim_encode(mask: np.ndarray) -> str:
    tokens = []
    previous_end = 0
    for start, length in runs(flatten(mask, "F")):
        tokens += [start - previous_end, length]
        previous_end = start + length
    return " ".join(map(str, tokens)) if tokens else "-1"


def ref_siim_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    pixels = [0] * (shape[0] * shape[1])
    if rle.strip() != "-1":
        numbers = [int(t) for t in rle.split()]
        position = 0
        for gap, length in zip(numbers[0::2], numbers[1::2], strict=True):
            position += gap
            for index in range(position, position + length):
                pixels[index] = 1
            position += length
    return unflatten(pixels, shape, "F")


def ref_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Kaggle Dice of one image: 1 when both are empty."""
    p = pred.astype(bool)
    t = truth.astype(bool)
    if not p.any() and not t.any():
        return 1.0
    return 2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum())


def ref_jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    p = pred.astype(bool)
    t = truth.astype(bool)
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else np.logical_and(p, t).sum() / union


def _in_ring(x: float, y: float, ring) -> bool:
    """Ray casting of one point against one closed ring (pure Python)."""
    inside = False
    points = [tuple(map(float, p)) for p in ring]
    for (xa, ya), (xb, yb) in zip(points, points[1:] + points[:1], strict=True):
        if (ya <= y) != (yb <= y) and x < xa + (y - ya) * (xb - xa) / (yb - ya):
            inside = not inside
    return inside


def ref_inside(x: float, y: float, rings) -> bool:
    """Inside the outline (the first ring) and inside none of the holes (the others)."""
    return _in_ring(x, y, rings[0]) and not any(_in_ring(x, y, hole) for hole in rings[1:])


def ref_rasterize(polygons, shape: tuple[int, int]) -> np.ndarray:
    """A pixel is set when its centre is inside some polygon (holes out), one point at a time."""
    mask = np.zeros(shape, np.uint8)
    for r in range(shape[0]):
        for c in range(shape[1]):
            mask[r, c] = any(ref_inside(c + 0.5, r + 0.5, p) for p in polygons)
    return mask
