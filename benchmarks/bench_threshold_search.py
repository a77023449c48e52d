"""Threshold search over 500 maps of 1024x1024 and the default grid (5,776 triplets).

Baselines in the same process: one numpy pass that only reads every map once
(``(p > 127).sum()``), and re-binarising every map at each grid point (a few points timed,
then extrapolated to the whole grid).
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from benchmarks._util import best_time, record
from common.post.metrics import dice_per_image
from common.post.postprocess import triplet
from common.post.threshold_search import search_triplets

N_MAPS, SIZE, N_BASE = 500, 1024, 25
N_TIMED_POINTS = 3


def make_maps() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Smooth probability maps with a sigmoid-like background (small non-zero values, as a
    trained model gives) and blob truths on about a fifth of them; distinct arrays each."""
    rng = np.random.default_rng(0)
    base_maps, base_truths = [], []
    for i in range(N_BASE):
        field = cv2.GaussianBlur(rng.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), 30)
        field = (field - field.mean()) / field.std()
        truth = (field > 2.0) if i % 5 == 0 else np.zeros_like(field, bool)
        logits = 3.0 * field - 6.0 + rng.normal(0, 0.5, field.shape).astype(np.float32)
        base_maps.append(np.rint(255 / (1 + np.exp(-logits))).astype(np.uint8))
        base_truths.append(truth.astype(np.uint8))
    maps, truths = [], []
    for i in range(N_MAPS):
        shift = int(rng.integers(0, SIZE))
        maps.append(np.roll(base_maps[i % N_BASE], shift, axis=1))
        truths.append(np.roll(base_truths[i % N_BASE], shift, axis=1))
    return maps, truths


def main() -> None:
    maps, truths = make_maps()
    search_triplets(maps[:2], truths[:2])  # compile the kernels
    read_once = best_time(lambda: [int((p > 127).sum()) for p in maps], repeat=3)
    start = time.perf_counter()
    result = search_triplets(maps, truths)
    search = time.perf_counter() - start
    one_thread = best_time(lambda: search_triplets(maps, truths, workers=1), repeat=1, warmup=0)
    points = len(result.table)
    sample = result.table.sample(N_TIMED_POINTS, random_state=0)
    start = time.perf_counter()
    for row in sample.itertuples():
        pred = np.stack([triplet(p, row.top, row.min_area, row.bottom) for p in maps])
        assert abs(dice_per_image(pred, np.stack(truths)).mean() - row.dice) < 1e-9
        del pred
    per_point = (time.perf_counter() - start) / N_TIMED_POINTS
    record(
        {
            "search.grid_points": points,
            "search.maps": len(maps),
            "search.seconds": search,
            "search.read_once_seconds": read_once,
            "search.ratio_to_read_once": search / read_once,
            "search.ratio_to_read_once_1_thread": one_thread / read_once,
            "search.rebinarise_seconds_extrapolated": per_point * points,
            "search.speedup_vs_rebinarise": per_point * points / search,
        },
        f"Threshold search: {len(maps)} maps of {SIZE}x{SIZE}, {points} grid points",
    )


if __name__ == "__main__":
    main()
