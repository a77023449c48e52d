"""Dice over 64 masks of 1024x1024: the numba kernel against the usual numpy expression."""

from __future__ import annotations

import numpy as np

from benchmarks._util import best_time, record
from common.post.metrics import dice_per_image

N, SIZE = 64, 1024


def numpy_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    p = pred.astype(bool)
    t = truth.astype(bool)
    inter = np.logical_and(p, t).sum(axis=(1, 2))
    total = p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
    return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))


def main() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    truth = np.zeros((N, SIZE, SIZE), np.uint8)
    pred = np.zeros((N, SIZE, SIZE), np.uint8)
    for i in range(N):
        if i % 4:  # about a quarter empty, as in SIIM
            (cy, cx), r = rng.integers(200, 800, 2).tolist(), int(rng.integers(10, 150))
            truth[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            pred[i] = (yy - cy - 5) ** 2 + (xx - cx + 3) ** 2 < (r * 1.1) ** 2
    np.testing.assert_allclose(dice_per_image(pred, truth), numpy_dice(pred, truth))
    ours = best_time(lambda: dice_per_image(pred, truth))
    baseline = best_time(lambda: numpy_dice(pred, truth))
    record(
        {"dice.ms_per_64_masks": ours * 1e3, "dice.speedup_vs_numpy": baseline / ours},
        f"Dice over {N} masks of {SIZE}x{SIZE} (uint8 0/1)",
    )


if __name__ == "__main__":
    main()
