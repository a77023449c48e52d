"""Tiles over images too large to hold: the grid, blending weights, and the stitching of
overlapping tile predictions into full-width row blocks with memory bounded by one band of rows.

Tiled inference on a (height, width) image: ``tile_grid`` gives overlapping windows in raster
order (the last window of each row and column flush with the edge); each window's prediction is
weighted by ``blend_weights`` (highest in the middle, never zero) and given to a
``RowStitcher``, which averages where windows overlap and hands back each band of rows as soon
as no later window can touch it. ``upsample_rows`` turns those bands, predicted at a reduced
scale, into full-resolution rows as they come, with the bilinear interpolation of the whole map.
Nothing here holds more than about two tile heights of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

BLENDS = ("gaussian", "linear", "flat", "centre")


@dataclass(frozen=True)
class Tile:
    """The window ``[y0, y1) x [x0, x1)`` of an image."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    return [*starts, length - size]


def tile_grid(height: int, width: int, size: int, overlap: int = 0) -> list[Tile]:
    """Windows of ``size`` x ``size`` that cover a (height, width) image, neighbours sharing at
    least ``overlap`` pixels, in raster order; an image smaller than a tile gets one window of
    its own size (pad it to ``size`` before the model)."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"tile size {size} with overlap {overlap}: need 0 <= overlap < size")
    if height <= 0 or width <= 0:
        raise ValueError(f"image of {height}x{width}: nothing to tile")
    stride = size - overlap
    return [
        Tile(y, x, min(y + size, height), min(x + size, width))
        for y in _starts(height, size, stride)
        for x in _starts(width, size, stride)
    ]


def blend_weights(size: int, kind: str = "gaussian") -> np.ndarray:
    """(size, size) float32 weights for a tile's prediction: ``gaussian`` (sigma of a quarter
    tile; nnU-Net's is an eighth, which trusts the tile's edges less), ``linear`` (a pyramid
    falling towards the edges), ``flat``, or ``centre``: the context crop of the top HuBMAP
    solutions (read a window, keep its central half: 1 there, 1e-6 around it, so the margin only
    counts where no tile's centre reaches, at the image's border; with an overlap of at least
    half a tile every other pixel is some tile's centre).
    The smallest weight is positive, so every pixel of a covered image gets a value."""
    if kind not in BLENDS:
        raise ValueError(f"blend {kind!r}: valid: {', '.join(BLENDS)}")
    centre = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5  # -0.5 .. 0.5
    floor = 1e-3
    if kind == "gaussian":
        line = np.exp(-0.5 * (centre / 0.25) ** 2)
    elif kind == "linear":
        line = 1.0 - np.abs(centre) * 2 + 1.0 / size
    elif kind == "centre":
        line, floor = np.where(np.abs(centre) < 0.25, 1.0, 1e-6), 1e-12
    else:
        line = np.ones(size)
    weights = np.outer(line, line)
    return (weights / weights.max()).clip(floor, None).astype(np.float32)


class RowStitcher:
    """Weighted average of overlapping tile predictions on a (height, width) grid of C channels,
    given tile by tile in raster order (``tile_grid``'s); ``add`` returns the bands of rows
    that are finished, as (first row, (C, rows, width) float32), top to bottom. Only rows that a
    tile of the current or the next tile row can touch are held."""

    def __init__(self, height: int, width: int, channels: int = 1):
        self.height, self.width, self.channels = height, width, channels
        self._top = 0  # the first row not handed back yet
        self._sum = np.zeros((channels, 0, width), np.float32)
        self._weight = np.zeros((0, width), np.float32)
        self._row = -1  # y0 of the tiles being added

    def _grow(self, rows: int) -> None:
        have = self._weight.shape[0]
        if rows > have:
            extra = rows - have
            self._sum = np.concatenate(
                [self._sum, np.zeros((self.channels, extra, self.width), np.float32)], axis=1
            )
            self._weight = np.concatenate([self._weight, np.zeros((extra, self.width), np.float32)])

    def _release(self, until: int) -> list[tuple[int, np.ndarray]]:
        rows = until - self._top
        if rows <= 0:
            return []
        self._grow(rows)  # rows no tile reached are held as zero weight, refused below
        weight = self._weight[:rows]
        if (weight <= 0).any():
            y = self._top + int(np.argwhere(weight <= 0)[0][0])
            raise ValueError(f"row {y}: no tile covered it (tiles must come from tile_grid)")
        band = self._sum[:, :rows] / weight
        self._sum, self._weight = self._sum[:, rows:].copy(), self._weight[rows:].copy()
        start, self._top = self._top, until
        return [(start, band)]

    def add(
        self, tile: Tile, prob: np.ndarray, weights: np.ndarray
    ) -> list[tuple[int, np.ndarray]]:
        """Blend ``prob`` ((C, h, w) or (h, w) for one channel, the tile's shape; a padded
        prediction is cropped by the caller) with ``weights`` (at least the tile's shape: the
        top-left part is used)."""
        prob = np.asarray(prob, np.float32)
        prob = prob[None] if prob.ndim == 2 else prob
        h, w = tile.shape
        if prob.shape != (self.channels, h, w):
            raise ValueError(
                f"tile {tile}: prediction {prob.shape}, expected {(self.channels, h, w)}"
            )
        if tile.y0 < self._row or tile.y0 < self._top:
            raise ValueError(f"tile {tile} comes after tiles below it: add tiles in raster order")
        done = self._release(tile.y0) if tile.y0 > self._row else []
        self._row = tile.y0
        self._grow(tile.y1 - self._top)
        rows = slice(tile.y0 - self._top, tile.y1 - self._top)
        weight = weights[:h, :w]
        self._sum[:, rows, tile.x0 : tile.x1] += prob * weight
        self._weight[rows, tile.x0 : tile.x1] += weight
        return done

    def close(self) -> list[tuple[int, np.ndarray]]:
        """The last rows, once every tile was added."""
        return self._release(self.height)


def upsample_rows(
    bands: Iterable[tuple[int, np.ndarray]], in_height: int, height: int, width: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Bands of a (C, in_height, w) map, given top to bottom as (first row, (C, rows, w)), as
    bands of the (C, height, width) map that bilinear resizing of the whole would give (pixel
    centres aligned, as ``cv2.resize``), each as soon as the rows it needs have arrived."""
    rows = (np.arange(height) + 0.5) * (in_height / height) - 0.5
    rows = np.clip(rows, 0, in_height - 1)
    low = np.floor(rows).astype(np.int64)
    high = np.minimum(low + 1, in_height - 1)
    frac = (rows - low).astype(np.float32)[:, None]
    held, first, done = None, 0, 0
    for start, band in bands:
        band = np.asarray(band, np.float32)
        if held is None:
            if start != 0:
                raise ValueError(f"the first band starts at row {start}, not 0")
            held, first = band, 0
        else:
            if start != first + held.shape[1]:
                raise ValueError(f"band at row {start}: expected row {first + held.shape[1]}")
            held = np.concatenate([held, band], axis=1)
        available = first + held.shape[1]
        stop = int(np.searchsorted(high, available, side="left"))  # rows whose inputs arrived
        if stop > done:  # vertically at the input width, then horizontally (cv2, vectorised)
            out = held[:, low[done:stop] - first] * (1 - frac[done:stop])
            out += held[:, high[done:stop] - first] * frac[done:stop]
            if out.shape[-1] != width:
                out = np.stack([cv2.resize(c, (width, c.shape[0]), interpolation=cv2.INTER_LINEAR)
                                for c in out])  # fmt: skip
            yield done, out
            done = stop
        keep = int(low[done]) if done < height else available
        held, first = held[:, keep - first :], keep
    if done < height:
        raise ValueError(
            f"the bands end at row {first + (0 if held is None else held.shape[1])} of {in_height}"
        )


def tissue_mask(rgb: np.ndarray, min_saturation: int = 40) -> np.ndarray:
    """Where an RGB uint8 image is stained tissue: HSV saturation (0..255) above
    ``min_saturation`` and not near-black (scanner padding); glass and background are pale."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    return (hsv[..., 1] > min_saturation) & (hsv[..., 2] > 30)


def tissue_fraction(rgb: np.ndarray, min_saturation: int = 40) -> float:
    """Share of an RGB uint8 window that is stained tissue (``tissue_mask``)."""
    return float(tissue_mask(rgb, min_saturation).mean())


def object_centres(
    runs: tuple[np.ndarray, np.ndarray], shape: tuple[int, int], cell: int
) -> np.ndarray:
    """(K, 2) int (y, x) centres of the mask given as column-major runs (``rle_runs``), one per
    ``cell`` x ``cell`` square holding mask pixels: the pixel-weighted mean of its runs."""
    starts, lengths = runs
    if not len(starts):
        return np.zeros((0, 2), np.int64)
    height = shape[0]
    cols, rows = starts // height, starts % height + (lengths - 1) / 2
    keys = (rows // cell).astype(np.int64) * (shape[1] // cell + 1) + cols // cell
    _, inverse = np.unique(keys, return_inverse=True)
    weight = np.bincount(inverse, lengths).astype(np.float64)
    y = np.bincount(inverse, rows * lengths) / weight
    x = np.bincount(inverse, cols * lengths) / weight
    return np.rint(np.stack([y, x], axis=1)).astype(np.int64)


def training_windows(
    shape: tuple[int, int],
    size: int,
    *,
    overlap: int = 0,
    centres: np.ndarray | None = None,
    jitter: float = 0.0,
    seed: int = 0,
) -> list[tuple[Tile, str]]:
    """Training windows of ``size`` full-resolution pixels over a (height, width) image: the
    grid (``"grid"``) plus one window around each of ``centres`` (``"object"``), shifted by up to
    ``jitter`` x size at random (seeded) and moved inside the image."""
    height, width = shape
    windows = [(tile, "grid") for tile in tile_grid(height, width, size, overlap)]
    rng = np.random.default_rng(seed)
    for y, x in np.asarray(centres if centres is not None else np.zeros((0, 2)), np.int64):
        dy, dx = rng.uniform(-jitter, jitter, 2) * size
        y0 = int(np.clip(round(y + dy - size / 2), 0, max(0, height - size)))
        x0 = int(np.clip(round(x + dx - size / 2), 0, max(0, width - size)))
        windows.append((Tile(y0, x0, min(y0 + size, height), min(x0 + size, width)), "object"))
    return windows
