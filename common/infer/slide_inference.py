"""Tiled prediction over a whole slide, in bounded memory: overlapping tiles read at the model's
scale, blended, and turned into the full-resolution column-major RLE strip by strip.

    slide --read_tiles--> (tiles, uint8 images) --predict--> tile maps --RowStitcher--> bands of
    the map at model scale --rle_from_bands: small objects removed (RowComponentFilter, at
    model scale), upsample_rows, threshold, ColumnRunWriter--> RLE of the full-resolution mask

``TilePlan`` fixes the tiles: ``tile`` model pixels a side, ``scale`` full-resolution pixels per
model pixel (1536 px windows seen at 512: scale 3), ``overlap`` model pixels shared by
neighbours, the ``blend`` weights and the batch size. The full-resolution probability map is
never held: the stitcher keeps about two tile rows at model scale and the full-resolution rows
are made ``max_rows`` at a time, so memory grows with the slide's width, not its area. The
blended map at model scale can be kept as a quantised tiled TIFF (``write_map``) and read back
band by band (``read_map``), which is how out-of-fold maps are searched and scored without a
second forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr

from common.data.datasets import IMAGENET_MEAN, IMAGENET_STD, check_preprocess
from common.data.datasets import preprocess as equalise
from common.data.tiles import BLENDS, RowStitcher, Tile, blend_weights, tile_grid, upsample_rows
from common.infer.inference import predict_tensor
from common.io.atomic import atomic_path
from common.io.rle import ColumnRunWriter
from common.io.slides import Slide, shrink
from common.post.postprocess import PROB_SCALE, RowComponentFilter, binarize, quantise

Predictor = Callable[[np.ndarray], np.ndarray]  # (B, t, t, 3) uint8 RGB -> (B, t, t) float32
Band = tuple[int, np.ndarray]  # (first row, (rows, width) float32 probabilities)


@dataclass(frozen=True)
class TilePlan:
    tile: int  # model input side, pixels
    scale: float  # full-resolution pixels per model pixel
    overlap: int = 0  # model pixels shared by neighbouring tiles
    blend: str = "gaussian"
    batch_size: int = 8
    min_tissue: float = 0.0  # tiles with less tissue (on a thumbnail) are not predicted: zeros

    def __post_init__(self):
        if self.tile <= 0 or not 0 <= self.overlap < self.tile or self.scale <= 0:
            raise ValueError(f"tile plan {self}: need tile > 0, 0 <= overlap < tile, scale > 0")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue {self.min_tissue}: a share between 0 and 1")
        if self.blend not in BLENDS:
            raise ValueError(f"blend {self.blend!r}: valid: {', '.join(BLENDS)}")
        if self.blend == "centre" and self.overlap < self.tile // 2:
            raise ValueError(f"blend centre keeps each tile's central half: overlap {self.overlap} "
                             f"must be at least half the tile ({self.tile // 2})")  # fmt: skip

    def model_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The slide's (height, width) at model scale."""
        return max(1, round(shape[0] / self.scale)), max(1, round(shape[1] / self.scale))


def full_window(tile: Tile, model_shape, shape) -> tuple[int, int, int, int]:
    """The full-resolution window (y0, y1, x0, x1) that a model-scale tile sees."""
    fy, fx = shape[0] / model_shape[0], shape[1] / model_shape[1]
    return (
        round(tile.y0 * fy),
        min(shape[0], max(round(tile.y1 * fy), round(tile.y0 * fy) + 1)),
        round(tile.x0 * fx),
        min(shape[1], max(round(tile.x1 * fx), round(tile.x0 * fx) + 1)),
    )


class RowBuffer:
    """Full-width rows of a slide for windows that move down it (tile rows in raster order):
    each read runs to the end of a strip or tile row of the file and lands in one reused array,
    and rows above the current window are let go, so every strip or tile is decoded once and
    memory holds about one window height plus one chunk of full-width rows (a 50,000 px wide
    slide: 1,536 x 50,000 x 3 bytes = 230 MB for 1,024 px windows in 512 px TIFF tiles), read
    in blocks of whole tiles or strips of about ``piece`` x 512 pixels (so no full-width
    temporary). A window is a view, valid until the next call."""

    piece = 8192  # px: a block is at most this wide (whole tile columns) and ~piece x 512 px

    def __init__(self, slide: Slide):
        self.slide = slide
        self.start = self.end = 0  # the rows held, [start, end)
        self.rows = np.empty((0, slide.width, 3), np.uint8)

    def window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if y0 < self.start:
            raise ValueError(f"rows from {y0}: the buffer has moved on to row {self.start}")
        if y1 > self.end:
            chunk = self.slide.row_chunk
            stop = min(self.slide.height, -(-y1 // chunk) * chunk)
            kept = max(0, self.end - y0)  # rows [y0, y0 + kept) are held already
            if stop - y0 > len(self.rows):
                grown = np.empty((stop - y0, self.slide.width, 3), np.uint8)
                grown[:kept] = self.rows[y0 - self.start : y0 - self.start + kept]
                self.rows = grown
            else:  # numpy copies overlapping slices correctly
                self.rows[:kept] = self.rows[y0 - self.start : y0 - self.start + kept]
            self.start, self.end = y0, stop
            self._read_into(y0, y0 + kept, stop)
        return self.rows[y0 - self.start : y1 - self.start, x0:x1]

    def _read_into(self, y0: int, r0: int, stop: int) -> None:
        """Rows [r0, stop) into the buffer (which starts at row y0), in blocks of whole strips
        or tiles of about ``piece`` x 512 pixels: each decoded once, no full-width temporary."""
        chunk_rows, chunk_cols, width = self.slide.row_chunk, self.slide.col_chunk, self.slide.width
        cols = chunk_cols * max(1, self.piece // chunk_cols)
        rows = chunk_rows * max(1, self.piece * 512 // (min(cols, width) * chunk_rows))
        b0 = r0
        while b0 < stop:
            b1 = min(b0 // chunk_rows * chunk_rows + rows, stop)  # blocks end on chunk rows
            for c0 in range(0, width, cols):
                c1 = min(c0 + cols, width)
                self.rows[b0 - y0 : b1 - y0, c0:c1] = self.slide.read(b0, b1, c0, c1)
            b0 = b1


def tissue_tiles(slide: Slide, plan: TilePlan, grid: Sequence[Tile], max_side: int = 1024,
                 small_rgb: np.ndarray | None = None) -> list[bool]:  # fmt: skip
    """For each model-scale tile of ``grid``: does its window hold at least ``plan.min_tissue``
    stained tissue (``common.data.tiles.tissue_fraction``'s rule) on a thumbnail of the slide?
    The thumbnail costs one low-resolution pass over the slide (none when ``small_rgb``, the
    slide's thumbnail already read, is given)."""
    from common.data.tiles import tissue_mask
    from common.io.slides import thumbnail

    small = tissue_mask(thumbnail(slide, max_side) if small_rgb is None else small_rgb)
    model_shape = plan.model_shape(slide.shape)
    fy, fx = small.shape[0] / slide.height, small.shape[1] / slide.width
    keep = []
    for tile in grid:
        y0, y1, x0, x1 = full_window(tile, model_shape, slide.shape)
        ty0, tx0 = min(int(y0 * fy), small.shape[0] - 1), min(int(x0 * fx), small.shape[1] - 1)
        ty1, tx1 = max(ty0 + 1, round(y1 * fy)), max(tx0 + 1, round(x1 * fx))
        keep.append(float(small[ty0:ty1, tx0:tx1].mean()) >= plan.min_tissue)
    return keep


def read_tiles(slide: Slide, plan: TilePlan, grid: Sequence[Tile] | None = None
               ) -> Iterator[tuple[list[Tile], np.ndarray]]:  # fmt: skip
    """The slide's model-scale tile grid (or the tiles of ``grid``) in raster order, in batches
    of uint8 RGB images (a tile smaller than ``plan.tile`` padded at its bottom and right), cut
    from full-width row strips (``RowBuffer``); the next batch is read in a thread while the
    caller works on this one."""
    model_shape = plan.model_shape(slide.shape)
    if grid is None:
        grid = tile_grid(*model_shape, plan.tile, plan.overlap)
    if not grid:
        return
    batches = [grid[i : i + plan.batch_size] for i in range(0, len(grid), plan.batch_size)]
    rows = RowBuffer(slide)

    def read(tiles: list[Tile]) -> np.ndarray:
        images = np.empty((len(tiles), plan.tile, plan.tile, 3), np.uint8)
        for index, tile in enumerate(tiles):
            h, w = tile.shape
            window = rows.window(*full_window(tile, model_shape, slide.shape))
            images[index, :h, :w] = shrink(window, tile.shape)
            if (h, w) != (plan.tile, plan.tile):  # a slide smaller than a tile: edge padding
                images[index] = np.pad(
                    images[index, :h, :w],
                    ((0, plan.tile - h), (0, plan.tile - w), (0, 0)),
                    mode="edge",
                )
        return images

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read, batches[0])
        for index, tiles in enumerate(batches):
            images = pending.result()
            if index + 1 < len(batches):
                pending = pool.submit(read, batches[index + 1])
            yield tiles, images


def predict_slide(slide: Slide, predict: Predictor, plan: TilePlan,
                  small_rgb: np.ndarray | None = None) -> Iterator[Band]:  # fmt: skip
    """The blended probability map of the slide at model scale, as bands of rows top to
    bottom. With ``plan.min_tissue`` the tiles of background (``tissue_tiles``, on
    ``small_rgb`` when the caller has read the slide's 1,024 px thumbnail) are neither read nor
    predicted: they are blended in as zeros."""
    model_shape = plan.model_shape(slide.shape)
    stitcher = RowStitcher(*model_shape, channels=1)
    weights = blend_weights(plan.tile, plan.blend)
    grid = tile_grid(*model_shape, plan.tile, plan.overlap)
    keep = (tissue_tiles(slide, plan, grid, small_rgb=small_rgb) if plan.min_tissue > 0
            else [True] * len(grid))  # fmt: skip
    skipped = iter([tile for tile, kept in zip(grid, keep, strict=True) if not kept])
    pending = next(skipped, None)

    def zeros_before(tile: Tile | None) -> Iterator[Band]:  # the skipped tiles, in raster order
        nonlocal pending
        while pending is not None and (
            tile is None or (pending.y0, pending.x0) < (tile.y0, tile.x0)
        ):
            for start, band in stitcher.add(pending, np.zeros(pending.shape, np.float32), weights):
                yield start, band[0]
            pending = next(skipped, None)

    for tiles, images in read_tiles(slide, plan, [t for t, k in zip(grid, keep, strict=True) if k]):
        probs = np.asarray(predict(images), np.float32)
        if probs.shape != (len(tiles), plan.tile, plan.tile):
            raise ValueError(f"the predictor gave {probs.shape} for {images.shape} images")
        for tile, prob in zip(tiles, probs, strict=True):
            yield from zeros_before(tile)
            h, w = tile.shape
            for start, band in stitcher.add(tile, prob[:h, :w], weights):
                yield start, band[0]
    yield from zeros_before(None)
    for start, band in stitcher.close():
        yield start, band[0]


def _split(bands: Iterable[Band], rows: int) -> Iterator[tuple[int, np.ndarray]]:
    for start, band in bands:
        for offset in range(0, band.shape[0], rows):
            yield start + offset, band[None, offset : offset + rows]


def _small_objects_removed(bands: Iterable[Band], width: int, threshold: float, min_size: float):
    """The bands with each object (connected pixels above ``threshold``) under ``min_size``
    model pixels set to 0 (its pixels' 8-neighbours are all at or under ``threshold``, so no
    full-resolution pixel interpolated near it passes)."""
    keep = RowComponentFilter(width, round(min_size))
    held = np.zeros((0, width), np.float32)  # the rows the filter has not released, in order

    def release(done):
        nonlocal held
        for start, kept in done:
            rows, held = held[: len(kept)], held[len(kept) :]
            yield start, np.where((kept > 0) | (rows <= threshold), rows, 0.0).astype(np.float32)

    for start, band in bands:
        held = np.concatenate([held, band])
        yield from release(keep.add(start, band > threshold))
    yield from release(keep.close())


def mask_rows(
    bands: Iterable[Band],
    model_shape: tuple[int, int],
    shape: tuple[int, int],
    *,
    threshold: float,
    min_size: int = 0,
    max_rows: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Full-resolution uint8 0/1 mask rows from model-scale probability bands: objects under
    ``min_size`` full-resolution pixels removed (at model scale, where the search chose the
    size), then bilinear upsampling and ``p > threshold``, about ``max_rows`` full-resolution
    rows at a time (by default as many as hold about 4 M pixels, at most 256)."""
    area_scale = shape[0] * shape[1] / (model_shape[0] * model_shape[1])
    if min_size > 0:
        bands = _small_objects_removed(bands, model_shape[1], threshold, min_size / area_scale)
    if max_rows is None:  # about 4 M full-resolution pixels a band (256 rows up to 16,384 px wide)
        max_rows = max(16, min(256, (1 << 22) // shape[1]))
    step = max(1, int(max_rows * model_shape[0] / shape[0]))
    for start, rows in upsample_rows(_split(bands, step), model_shape[0], *shape):
        yield start, binarize(rows[0], threshold)


def encode_rows(rows: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int]) -> str:
    """The column-major RLE of a mask given as row bands (any order, each row once)."""
    writer = ColumnRunWriter(*shape)
    for start, block in rows:
        writer.add(start, block)
    return writer.encode()


def rle_from_bands(bands, model_shape, shape, *, threshold: float, min_size: int = 0) -> str:
    return encode_rows(
        mask_rows(bands, model_shape, shape, threshold=threshold, min_size=min_size), shape
    )


def write_map(path: str | Path, bands: Iterable[Band], shape: tuple[int, int], tile: int = 256):
    """The map given as bands, quantised to uint8 (``common.post.postprocess``), into a tiled,
    compressed TIFF written atomically and without the whole map in memory."""
    width = shape[1]

    def tiles() -> Iterator[np.ndarray]:
        held = np.zeros((0, width), np.uint8)
        for _, band in bands:
            held = np.concatenate([held, quantise(band)])
            while len(held) >= tile:
                yield from (held[:tile, x : x + tile] for x in range(0, width, tile))
                held = held[tile:]
        if len(held):
            yield from (held[:, x : x + tile] for x in range(0, width, tile))

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, tiles(), shape=shape, dtype=np.uint8, tile=(tile, tile),
                         compression="zlib", compressionargs={"level": 1})  # fmt: skip


def map_bands(array, rows: int = 256) -> Iterator[Band]:
    """The bands of a quantised uint8 map (a numpy array, or a zarr array read ``rows`` at a
    time) as float32 probabilities."""
    for start in range(0, array.shape[0], rows):
        yield start, np.asarray(array[start : start + rows]).astype(np.float32) / PROB_SCALE


def read_map(path: str | Path, rows: int = 256) -> tuple[tuple[int, int], Iterator[Band]]:
    """A map written by ``write_map``: its shape and its bands (float32 probabilities)."""
    with tifffile.TiffFile(path) as tiff:
        shape = tiff.series[0].shape

    def bands() -> Iterator[Band]:
        with tifffile.TiffFile(path) as tiff:
            yield from map_bands(zarr.open(tiff.series[0].aszarr(), mode="r"), rows)

    return shape, bands()


def tile_predictor(
    models: Sequence[torch.nn.Module],
    *,
    device: torch.device,
    weights: Sequence[float] | None = None,
    tta: Sequence[str] = ("none",),
    channels_last: bool = False,
    channel: int = 0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    preprocess: dict | None = None,
) -> Predictor:
    """A ``Predictor`` averaging ``models`` (with ``weights``) and their TTA views on one mask
    channel, with the training loaders' ``preprocess`` and normalisation."""
    weights = list(weights) if weights is not None else [1.0] * len(models)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    spec = check_preprocess(preprocess)

    def predict(images: np.ndarray) -> np.ndarray:
        if spec["name"] != "none":  # the runs' data.preprocess, as in training
            images = np.stack([equalise(image, spec) for image in images])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - mean_t) / std_t
        total = None
        for model, weight in zip(models, weights, strict=True):
            out = predict_tensor(model, x, device=device, tta=tuple(tta),
                                 channels_last=channels_last)["mask"][:, channel]  # fmt: skip
            total = out * weight if total is None else total + out * weight
        return total / sum(weights)

    return predict
