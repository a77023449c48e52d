"""RLE encode/decode of real SIIM masks at 1024x1024 against loop-based and numpy versions.

The loop-based versions are written the way the competition's own mask_functions did it (a
Python loop over every pixel to encode; a token list and a loop over runs into a float buffer to
decode); the numpy versions are the usual vectorised Kaggle-kernel ones.
"""

from __future__ import annotations

import csv

import numpy as np

from benchmarks._util import SHARED_DATA, best_time, record
from common.io.rle import siim_rle_decode, siim_rle_encode

N_MASKS = 200
N_LOOP_MASKS = 3  # the pixel loop takes about a second per mask


def loop_encode(mask: np.ndarray) -> str:
    """Competition style: walk the pixels column by column in Python."""
    tokens = []
    last = 0
    position = 0
    run_start = -1
    previous_end = 0
    height, width = mask.shape
    for x in range(width):
        for y in range(height):
            value = mask[y, x]
            if value != last:
                if value:
                    run_start = position
                else:
                    tokens += [str(run_start - previous_end), str(position - run_start)]
                    previous_end = position
            last = value
            position += 1
    if last:
        tokens += [str(run_start - previous_end), str(position - run_start)]
    return " ".join(tokens) if tokens else "-1"


def loop_decode(rle: str, height: int = 1024, width: int = 1024) -> np.ndarray:
    """Competition style: parse a token list, loop over runs into a float buffer."""
    mask = np.zeros(width * height)
    if rle.strip() == "-1":
        return mask.reshape(width, height).T
    array = np.asarray([int(x) for x in rle.split()])
    position = 0
    for start, length in zip(array[0::2], array[1::2], strict=True):
        position += start
        mask[position : position + length] = 255
        position += length
    return mask.reshape(width, height).T


def numpy_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], mask.T.ravel() != 0, [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1])
    starts, ends = runs[0::2], runs[1::2]
    if len(starts) == 0:
        return "-1"
    gaps = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(map(str, np.column_stack([gaps, ends - starts]).ravel()))


def numpy_decode(rle: str, height: int = 1024, width: int = 1024) -> np.ndarray:
    mask = np.zeros(height * width, dtype=np.uint8)
    if rle.strip() != "-1":
        tokens = np.asarray(rle.split(), dtype=np.int64)
        lengths = tokens[1::2]
        starts = np.cumsum(tokens[0::2]) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for lo, hi in zip(starts, starts + lengths, strict=True):
            mask[lo:hi] = 1
    return mask.reshape(width, height).T


def _each(fn, items) -> None:
    """Call fn on each item, dropping each result at once as a pipeline would (keeping all 200
    decoded masks alive would time the kernel's page faults instead of the codec)."""
    for item in items:
        fn(item)


def real_strings() -> tuple[list[str], str]:
    path = SHARED_DATA / "siim" / "train-rle.reconstructed.csv"
    if path.exists():
        with open(path, newline="") as f:
            rows = [r[1] for r in csv.reader(f)][1:]
        return [r for r in rows if r.strip() != "-1"][:N_MASKS], "real SIIM masks"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:1024, :1024]
    masks = []
    for _ in range(N_MASKS):
        cy, cx, ry, rx = (
            rng.integers(100, 900),
            rng.integers(100, 900),
            rng.integers(5, 200),
            rng.integers(5, 100),
        )
        masks.append(siim_rle_encode(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1))
    return masks, "synthetic ellipses (../shared/data absent)"


def main() -> None:
    strings, source = real_strings()
    masks = [siim_rle_decode(s) for s in strings]
    for rle, mask in zip(strings[:5], masks[:5], strict=True):  # the baselines are correct too
        assert (
            loop_encode(mask)
            == numpy_encode(mask)
            == siim_rle_encode(mask)
            == " ".join(rle.split())
        )
        assert (loop_decode(rle) > 0).sum() == numpy_decode(rle).sum() == mask.sum()
    per = len(masks)
    ours_enc = best_time(lambda: _each(siim_rle_encode, masks)) / per
    numpy_enc = best_time(lambda: _each(numpy_encode, masks), repeat=3) / per
    loop_enc = (
        best_time(lambda: _each(loop_encode, masks[:N_LOOP_MASKS]), repeat=1, warmup=0)
        / N_LOOP_MASKS
    )
    ours_dec = best_time(lambda: _each(siim_rle_decode, strings)) / per
    numpy_dec = best_time(lambda: _each(numpy_decode, strings)) / per
    loop_dec = best_time(lambda: _each(loop_decode, strings), repeat=3) / per
    record(
        {
            "rle.encode_us": ours_enc * 1e6,
            "rle.encode_speedup_vs_loop": loop_enc / ours_enc,
            "rle.encode_speedup_vs_numpy": numpy_enc / ours_enc,
            "rle.decode_us": ours_dec * 1e6,
            "rle.decode_speedup_vs_loop": loop_dec / ours_dec,
            "rle.decode_speedup_vs_numpy": numpy_dec / ours_dec,
        },
        f"RLE, SIIM relative form, 1024x1024, {per} {source} (per mask)",
    )


if __name__ == "__main__":
    main()
