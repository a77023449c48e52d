"""Windowed reads of huge RGB TIFFs (whole-slide images) in any of their usual layouts, never the
whole image in memory.

``open_slide(path)`` returns a ``Slide``: ``shape`` is (height, width) of the full-resolution
image and ``read(y0, y1, x0, x1, scale)`` gives the window ``[y0, y1) x [x0, x1)`` as an
(h, w, 3) uint8 RGB array, shrunk ``scale`` times (area interpolation) when ``scale > 1``.
Reads go through tifffile's zarr store, which decodes only the strips or tiles a window touches
(uncompressed, zlib, LZW, JPEG, ...). Layouts understood:

- (H, W, 3) interleaved RGB (``YXS``), striped or tiled, with or without a pyramid (level 0 is
  read); an alpha channel is dropped;
- channels first, (3, H, W), with any leading singleton axes: (1, 1, 3, H, W) and the like;
- three separate 2-D pages (series), one per channel.

Anything else (greyscale, 16-bit, two channels), a truncated file (a strip or tile past the end
of the file) or a window outside the image is one ``SlideError`` naming the file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import tifffile
import zarr


class SlideError(ValueError):
    """A slide that cannot be read; the message names the file."""


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


def _pages(series) -> list:
    return [page for level in series.levels[:1] for page in level.pages if page is not None]


def shrink(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``rgb`` resized to ``shape`` (height, width) by area averaging (unchanged at its size)."""
    if tuple(shape) == rgb.shape[:2]:
        return rgb
    return cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


class Slide:
    """An open TIFF; use as a context manager or call ``close``. ``row_chunk`` is the height of
    the file's strips or tiles: a read of whole chunk rows decodes nothing twice."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
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
        _check_complete(self.path, [p for s in used for p in _pages(s)])
        chunks = self._arrays[0].chunks
        self.row_chunk = int(chunks[-3] if self.layout == "interleaved" else chunks[-2])

    def _array(self, series):
        return zarr.open(series.aszarr(level=0), mode="r")

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
        try:
            if self.layout == "interleaved":
                (array,) = self._arrays
                lead = (0,) * (array.ndim - 3)
                rgb = np.asarray(array[(*lead, slice(y0, y1), slice(x0, x1), slice(0, 3))])
            elif self.layout == "channels-first":
                (array,) = self._arrays
                lead = (0,) * (array.ndim - 3)
                planes = np.asarray(array[(*lead, slice(None), slice(y0, y1), slice(x0, x1))])
                rgb = np.ascontiguousarray(np.moveaxis(planes, 0, -1))
            else:
                rgb = np.stack([np.asarray(a[y0:y1, x0:x1]) for a in self._arrays], axis=-1)
        except MemoryError:
            raise
        except Exception as error:  # corrupt tiles fail inside the codecs in many ways
            raise SlideError(
                f"{self.path}: window y {y0}:{y1}, x {x0}:{x1}: {_reason(error)}"
            ) from None
        if shape is None and scale != 1:
            shape = (max(1, round((y1 - y0) / scale)), max(1, round((x1 - x0) / scale)))
        return rgb if shape is None else shrink(rgb, shape)

    def close(self) -> None:
        self._tiff.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def thumbnail(slide: Slide, max_side: int = 1024, window: int = 4096) -> np.ndarray:
    """The whole slide shrunk to at most ``max_side`` pixels a side, read ``window`` full-
    resolution pixels at a time."""
    scale = max(slide.height, slide.width) / max_side
    shape = max(1, round(slide.height / scale)), max(1, round(slide.width / scale))
    out = np.zeros((*shape, 3), np.uint8)
    for y0 in range(0, slide.height, window):
        for x0 in range(0, slide.width, window):
            y1, x1 = min(y0 + window, slide.height), min(x0 + window, slide.width)
            ty0, ty1 = round(y0 * shape[0] / slide.height), round(y1 * shape[0] / slide.height)
            tx0, tx1 = round(x0 * shape[1] / slide.width), round(x1 * shape[1] / slide.width)
            if ty1 > ty0 and tx1 > tx0:
                out[ty0:ty1, tx0:tx1] = slide.read(y0, y1, x0, x1, shape=(ty1 - ty0, tx1 - tx0))
    return out


def open_slide(path: str | os.PathLike) -> Slide:
    return Slide(path)


def slide_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a slide, reading only its header."""
    with open_slide(path) as slide:
        return slide.shape
