"""The column-major RLE of a full-scale HuBMAP mask, encoded in row blocks, against a vectorised
numpy encoder of the whole mask.

The mask is the real predicted mask of image 0486052bb (25,784 x 34,937, 42,366 runs) from
``../shared/data/hubmap`` (discs of a similar density when that is absent). The baseline is the
usual Kaggle-kernel encoder: flatten the transposed mask, pad it, find where neighbours differ.
``common.io.rle.ColumnRunWriter`` gets the same mask 2,048 rows at a time, as tiled inference
produces it, and keeps only runs. Peak memory is what each allocates above the mask
(``tracemalloc``, which sees numpy's buffers); the round trip must give the identical string.
"""

from __future__ import annotations

import csv
import time
import tracemalloc

import cv2
import numpy as np

from benchmarks._util import SHARED_DATA, record
from common.io.rle import ColumnRunWriter, rle_decode, rle_decode_window

SHAPE = (25784, 34937)
BLOCK = 2048


def numpy_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], mask.T.ravel(), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def writer_encode(mask: np.ndarray) -> str:
    writer = ColumnRunWriter(*mask.shape)
    for y0 in range(0, mask.shape[0], BLOCK):
        writer.add(y0, mask[y0 : y0 + BLOCK])
    return writer.encode()


def _rle() -> str:
    path = SHARED_DATA / "hubmap" / "predicted_0486052bb.csv"
    if path.is_file():
        csv.field_size_limit(1 << 30)
        with open(path, newline="") as f:
            return list(csv.reader(f))[1][1].strip()
    print("bench_rle_strips: ../shared/data absent, using synthetic discs at the same scale")
    mask = np.zeros(SHAPE, np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(400):
        y, x = rng.integers(200, SHAPE[0] - 200), rng.integers(200, SHAPE[1] - 200)
        cv2.circle(mask, (int(x), int(y)), int(rng.integers(60, 120)), 1, -1)
    return writer_encode(mask)


def _measure(fn, mask):
    tracemalloc.start()
    start = time.perf_counter()
    out = fn(mask)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def main() -> None:
    rle = _rle()
    mask = rle_decode(rle, SHAPE)
    writer_encode(mask[: BLOCK * 2])  # compile outside the timing
    base, base_s, base_peak = _measure(numpy_encode, mask)
    ours, ours_s, ours_peak = _measure(writer_encode, mask)
    if ours != rle or base != rle:
        raise SystemExit("bench_rle_strips: an encoder did not give back the original string")
    del mask
    start = time.perf_counter()
    windows = [rle_decode_window(rle, SHAPE, (y, y + 1024, x, x + 1024)) for y, x in
               [(12000, 9000), (3000, 30000), (20000, 17000)]]  # fmt: skip
    window_ms = (time.perf_counter() - start) / len(windows) * 1e3
    record(
        {
            "hubmap_rle.numpy_encode_s": base_s,
            "hubmap_rle.numpy_encode_peak_mb": base_peak / 2**20,
            "hubmap_rle.strip_encode_s": ours_s,
            "hubmap_rle.strip_encode_peak_mb": ours_peak / 2**20,
            "hubmap_rle.strip_speedup_vs_numpy": base_s / ours_s,
            "hubmap_rle.strip_memory_vs_numpy": ours_peak / base_peak,
            "hubmap_rle.window_1024_decode_ms": window_ms,
        },
        f"Column-major RLE at {SHAPE[0]}x{SHAPE[1]} ({BLOCK}-row blocks vs the whole mask)",
    )


if __name__ == "__main__":
    main()
