"""Windowed reads of huge RGB TIFFs (whole-slide images) in any of their usual layouts, never the
whole image in memory.

``open_slide(path)`` returns a ``Slide``: ``shape`` is (height, width) of the full-resolution
image and ``read(y0, y1, x0, x1, scale)`` gives the window ``[y0, y1) x [x0, x1)`` as an
(h, w, 3) uint8 RGB array, shrunk ``scale`` times (area interpolation) when ``scale > 1``.
Reads go through tifffile's zarr store, which decodes only the strips or tiles a window touches
(uncompressed, zlib, LZW, JPEG, ...). Layouts understood:

- (H, W, 3) interleaved RGB (``YXS``), striped or tiled, with or without a pyramid (SubIFDs or
  reduced pages); an alpha channel is dropped;
- channels first, (3, H, W), with any leading singleton axes: (1, 1, 3, H, W) and the like;
- three separate 2-D pages (series), one per channel.

A file whose strips are taller than ``STREAM_ROWS`` (a single-strip slide, as some scanners and
converters write) is not decoded a strip at a time: uncompressed strips are read by byte range
and deflate ones are decompressed as a stream (``_StripRows``), so memory follows the rows asked
for, not the strip.

Pyramids: a read that shrinks the window (``scale`` or ``shape``) by at least a level's factor
reads the coarsest such level (a level's factor: level 0's height and width over its own, equal
within 1%) and shrinks what is left by area: a 1024 px window at 256 px reads 16x fewer pixels
from a level at 4x. The level's pixels are the scanner's (its own interpolation), so
``open_slide(path, levels=False)`` reads level 0 only; training tiles and prediction read the
same way, so they agree. The levels' strips or tiles are checked like level 0's.

Anything else (greyscale, 16-bit, two channels), a truncated file (a strip or tile past the end
of the file) or a window outside the image is one ``SlideError`` naming the file.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
import zarr


class SlideError(ValueError):
    """A slide that cannot be read; the message names the file."""


STREAM_ROWS = 256  # strips taller than this are read in windows of rows (``_StripRows``)
_STREAMABLE = {1: "none", 8: "deflate", 32946: "deflate"}  # TIFF compression codes


class _StripRows:
    """Rows of one striped, interleaved 8-bit page without decoding a strip whole: an
    uncompressed strip is read by byte range; a deflate strip is decompressed as a stream that
    moves down it (a read above the stream's row starts it again from the strip's first byte),
    its horizontal predictor undone row by row. Memory: the rows asked for."""

    def __init__(self, path: Path, page):
        self.path, self.fh = path, page.parent.filehandle
        self.height, self.width, self.samples = (
            page.imagelength,
            page.imagewidth,
            page.samplesperpixel,
        )
        self.row_bytes = self.width * self.samples
        self.per_strip = min(page.rowsperstrip, self.height)
        self.offsets, self.counts = page.dataoffsets, page.databytecounts
        self.deflate = _STREAMABLE[int(page.compression)] == "deflate"
        self.predictor = int(page.predictor)
        self._stream = None  # (strip, decompressor, next row, next file byte, unread input)

    def read(self, y0: int, y1: int) -> np.ndarray:
        """Rows [y0, y1) as (rows, width, samples) uint8."""
        out = np.empty((y1 - y0, self.width, self.samples), np.uint8)
        for strip in range(y0 // self.per_strip, (y1 - 1) // self.per_strip + 1):
            first = strip * self.per_strip
            a, b = max(y0, first), min(y1, first + self.per_strip, self.height)
            raw = self._rows(strip, a - first, b - first)
            rows = np.frombuffer(raw, np.uint8).reshape(b - a, self.width, self.samples)
            if self.predictor == 2:  # horizontal differencing, modulo 256 per sample
                rows = np.cumsum(rows, axis=1, dtype=np.uint8)
            out[a - y0 : b - y0] = rows
        return out

    def _rows(self, strip: int, a: int, b: int) -> bytes:
        if not self.deflate:
            self.fh.seek(self.offsets[strip] + a * self.row_bytes)
            data = self.fh.read((b - a) * self.row_bytes)
            if len(data) != (b - a) * self.row_bytes:
                raise SlideError(f"{self.path}: strip {strip} ends before row {b}")
            return data
        if self._stream is None or self._stream[0] != strip or self._stream[2] > a:
            self._stream = [strip, zlib.decompressobj(), 0, self.offsets[strip], b""]
        while self._stream[2] < a:  # skip to row a, a window of rows at a time
            self._take(min(a - self._stream[2], STREAM_ROWS) * self.row_bytes)
        return self._take((b - a) * self.row_bytes)

    def _take(self, n: int) -> bytes:
        strip, inflate, _, position, tail = self._stream
        end = self.offsets[strip] + self.counts[strip]
        out = bytearray()
        while len(out) < n:
            if not tail:
                if position >= end:
                    raise SlideError(f"{self.path}: strip {strip} is shorter than its rows")
                self.fh.seek(position)
                tail = self.fh.read(min(1 << 20, end - position))
                position += len(tail)
            try:
                out += inflate.decompress(tail, n - len(out))
            except zlib.error as error:
                raise SlideError(f"{self.path}: strip {strip}: {error}") from None
            tail = inflate.unconsumed_tail
        self._stream[2:] = [self._stream[2] + n // self.row_bytes, position, tail]
        return bytes(out)


def _streamable(page) -> bool:
    """A page ``_StripRows`` reads: striped, tall strips, interleaved 8-bit, no or deflate
    compression, no or horizontal predictor."""
    return (not page.is_tiled and page.rowsperstrip > STREAM_ROWS and page.bitspersample == 8
            and page.planarconfig == 1 and int(page.compression) in _STREAMABLE
            and int(page.predictor) in (1, 2) and page.fillorder == 1)  # fmt: skip


def _check_complete(path: Path, pages) -> None:
    size = path.stat().st_size
    for page in pages:
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True) if n]
        if ends and max(ends) > size:
            raise SlideError(
                f"{path}: truncated: image data runs to byte {max(ends):,} of a {size:,}-byte file"
            )


def _reason(error: BaseException) -> str:
    """One line for an error raised deep inside tifffile, zarr or a codec."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _pages(series, level: int = 0) -> list:
    return [page for page in series.levels[level].pages if page is not None]


LEVEL_TOLERANCE = 0.01  # a level's height and width factors agree to this share; a read uses a
# level when its factor is at most the read's shrink factor times (1 + this)


@dataclass(frozen=True)
class Level:
    """A reduced pyramid level: its factor against level 0 (height, width), shape and arrays."""

    factor: tuple[float, float]
    shape: tuple[int, int]
    arrays: tuple


def shrink(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``rgb`` resized to ``shape`` (height, width) by area averaging (unchanged at its size)."""
    if tuple(shape) == rgb.shape[:2]:
        return rgb
    return cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


class Slide:
    """An open TIFF; use as a context manager or call ``close``. ``row_chunk`` and
    ``col_chunk`` are the height and width of the file's strips or tiles: a read of whole
    chunks decodes nothing twice. ``levels``: the pyramid's reduced levels (finest first) that
    shrinking reads use; with ``levels=False`` none (an empty list)."""

    def __init__(self, path: str | os.PathLike, levels: bool = True):
        self.path = Path(path)
        self._use_levels = levels
        try:
            self._tiff = tifffile.TiffFile(self.path)
        except MemoryError:
            raise
        except Exception as error:  # a corrupt header fails inside tifffile in many ways
            raise SlideError(f"{self.path}: not a readable TIFF ({_reason(error)})") from None
        try:
            self._open()
        except SlideError:
            self._tiff.close()
            raise
        except MemoryError:
            self._tiff.close()
            raise
        except Exception as error:
            self._tiff.close()
            raise SlideError(f"{self.path}: not a readable TIFF ({_reason(error)})") from None

    def _open(self) -> None:
        series = self._tiff.series
        if not series:
            raise SlideError(f"{self.path}: no image in the file")
        first = series[0]
        axes, shape = first.axes, first.shape
        if first.dtype != np.uint8:
            raise SlideError(f"{self.path}: {first.dtype} pixels; an 8-bit RGB slide is expected")
        if axes.endswith("YXS") and shape[-1] in (3, 4) and math.prod(shape[:-3]) == 1:
            self.layout, used = "interleaved", [first]
            self._arrays = [self._array(first)]
            self.shape = shape[-3], shape[-2]
        elif (
            axes.endswith("YX")
            and len(shape) >= 3
            and shape[-3] == 3
            and math.prod(shape[:-3]) == 1
        ):
            self.layout, used = "channels-first", [first]
            self._arrays = [self._array(first)]
            self.shape = shape[-2], shape[-1]
        elif (
            len(shape) == 2
            and len(series) >= 3
            and all(s.shape == shape and s.dtype == np.uint8 for s in series[:3])
        ):
            self.layout, used = "pages", list(series[:3])
            self._arrays = [self._array(s) for s in used]
            self.shape = shape
        else:
            described = ", ".join(f"{s.shape} {s.axes}" for s in series[:4])
            raise SlideError(
                f"{self.path}: layout not understood ({len(series)} series: {described}); "
                "expected (H, W, 3), (..., 3, H, W) or three (H, W) pages"
            )
        pages = [p for s in used for p in _pages(s)]
        self.levels = self._pyramid(used) if self._use_levels else []
        levels = [p for s in used for k in range(1, len(self.levels) + 1) for p in _pages(s, k)]
        _check_complete(self.path, pages + levels)
        chunks = self._arrays[0].chunks
        self.row_chunk = int(chunks[-3] if self.layout == "interleaved" else chunks[-2])
        self.col_chunk = int(chunks[-2] if self.layout == "interleaved" else chunks[-1])
        self._strips = None
        if self.layout == "interleaved" and len(pages) == 1 and _streamable(pages[0]):
            self._strips, self.row_chunk = _StripRows(self.path, pages[0]), STREAM_ROWS
            self.col_chunk = self.width

    def _array(self, series, level: int = 0):
        return zarr.open(series.aszarr(level=level), mode="r")

    def _yx(self, shape) -> tuple[int, int]:
        return (shape[-3], shape[-2]) if self.layout == "interleaved" else (shape[-2], shape[-1])

    def _pyramid(self, used) -> list[Level]:
        """The reduced levels every used series has, in order, up to the first that is not a
        uint8 image of the same layout shrunk by one factor in both directions, in strips of at
        most ``STREAM_ROWS`` rows or in tiles."""
        levels = []
        for k in range(1, min(len(s.levels) for s in used)):
            shapes = {s.levels[k].shape for s in used}
            if len(shapes) != 1 or any(s.levels[k].dtype != np.uint8 for s in used):
                break
            (shape,) = shapes
            if len(shape) != len(used[0].shape):
                break
            height, width = self._yx(shape)
            factor = self.height / height, self.width / width
            if abs(factor[0] - factor[1]) > LEVEL_TOLERANCE * max(factor) or min(factor) <= 1:
                break
            pages = [p for s in used for p in _pages(s, k)]
            if any(not p.is_tiled and min(p.rowsperstrip, height) > STREAM_ROWS for p in pages):
                break  # tall strips decode whole: level 0 streams them, so reads stay there
            levels.append(Level(factor, (height, width), tuple(self._array(s, k) for s in used)))
        return levels

    def level_for(self, y_scale: float, x_scale: float) -> Level | None:
        """The coarsest level whose factors are at most a read's shrink factors (with
        ``LEVEL_TOLERANCE``), or None for level 0."""
        fits = [lv for lv in self.levels
                if lv.factor[0] <= y_scale * (1 + LEVEL_TOLERANCE)
                and lv.factor[1] <= x_scale * (1 + LEVEL_TOLERANCE)]  # fmt: skip
        return fits[-1] if fits else None

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    def read(
        self, y0: int, y1: int, x0: int, x1: int, scale: float = 1, shape: tuple | None = None
    ) -> np.ndarray:
        """The window as (h, w, 3) uint8 RGB; with ``scale > 1`` resized to
        (round(h / scale), round(w / scale)) by area averaging, or to ``shape`` when given."""
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise SlideError(
                f"{self.path}: window y {y0}:{y1}, x {x0}:{x1} is outside the "
                f"{self.height}x{self.width} image"
            )
        if shape is None and scale != 1:
            shape = (max(1, round((y1 - y0) / scale)), max(1, round((x1 - x0) / scale)))
        level = None
        if shape is not None and self.levels:
            level = self.level_for((y1 - y0) / shape[0], (x1 - x0) / shape[1])
        try:
            if level is not None:  # the window on the level, each edge at its nearest pixel
                (fy, fx), (h, w) = level.factor, level.shape
                ly0, lx0 = min(round(y0 / fy), h - 1), min(round(x0 / fx), w - 1)
                ly1 = max(min(round(y1 / fy), h), ly0 + 1)
                lx1 = max(min(round(x1 / fx), w), lx0 + 1)
                rgb = self._read_arrays(level.arrays, ly0, ly1, lx0, lx1)
            elif self._strips is not None:  # tall strips: the rows, never the whole strip
                rgb = self._strips.read(y0, y1)[:, x0:x1, :3]
            else:
                rgb = self._read_arrays(self._arrays, y0, y1, x0, x1)
        except (MemoryError, SlideError):
            raise
        except Exception as error:  # corrupt tiles fail inside the codecs in many ways
            raise SlideError(
                f"{self.path}: window y {y0}:{y1}, x {x0}:{x1}: {_reason(error)}"
            ) from None
        return rgb if shape is None else shrink(rgb, shape)

    def _read_arrays(self, arrays, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self.layout == "interleaved":
            (array,) = arrays
            lead = (0,) * (array.ndim - 3)
            return np.asarray(array[(*lead, slice(y0, y1), slice(x0, x1), slice(0, 3))])
        if self.layout == "channels-first":
            (array,) = arrays
            lead = (0,) * (array.ndim - 3)
            planes = np.asarray(array[(*lead, slice(None), slice(y0, y1), slice(x0, x1))])
            return np.ascontiguousarray(np.moveaxis(planes, 0, -1))
        return np.stack([np.asarray(a[y0:y1, x0:x1]) for a in arrays], axis=-1)

    def close(self) -> None:
        self._tiff.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def thumbnail(slide: Slide, max_side: int = 1024, window: int = 4096) -> np.ndarray:
    """The whole slide shrunk to at most ``max_side`` pixels a side, read in full-width bands
    of about ``window``^2 pixels (whole strips or tile rows, in raster order: each decoded
    once, and a streamed strip read down once)."""
    scale = max(slide.height, slide.width) / max_side
    shape = max(1, round(slide.height / scale)), max(1, round(slide.width / scale))
    out = np.zeros((*shape, 3), np.uint8)
    chunk = max(1, slide.row_chunk)
    band = chunk * max(1, window * window // slide.width // chunk)
    for y0 in range(0, slide.height, band):
        y1 = min(y0 + band, slide.height)
        ty0, ty1 = round(y0 * shape[0] / slide.height), round(y1 * shape[0] / slide.height)
        if ty1 > ty0:
            out[ty0:ty1] = slide.read(y0, y1, 0, slide.width, shape=(ty1 - ty0, shape[1]))
    return out


def open_slide(path: str | os.PathLike, levels: bool = True) -> Slide:
    return Slide(path, levels)


def slide_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a slide, reading only its header."""
    with open_slide(path) as slide:
        return slide.shape
