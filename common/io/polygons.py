"""Masks from polygon annotations (GeoJSON in full-resolution pixel coordinates, as QuPath and
the HuBMAP ``<id>.json`` files write them).

``read_geojson(path)`` gives the polygons of a FeatureCollection, a list of Features or a single
Feature: each polygon is a list of rings, (N, 2) float arrays of (x, y), the first the outline
and the rest its holes; a MultiPolygon gives one polygon per part. Geometries that enclose no
area (LineString, Point, ...) are skipped with one message naming the file and the feature, or
refused with ``strict=True``. ``rasterize(polygons, shape, window)`` fills them into a uint8
mask of the image or of one window of it, as the organisers' masks are drawn: the pixel in row
r and column c (the square [c, c+1) x [r, r+1)) is set when its centre (c + 0.5, r + 0.5) lies
inside a polygon's outline and inside none of its holes (a centre exactly on an edge is in on
the left and top edges, out on the right and bottom: a 30 px square covers 30 x 30 pixels).
Each polygon is filled on its own and the masks OR-ed, so a hole never clears a neighbour.
``union_rle(rle, shape, polygons)`` ORs them into a mask given as column-major RLE and gives its
RLE, a block of rows at a time (the whole mask of a 2-gigapixel slide never exists).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from common.io.rle import ColumnRunWriter, RleWindows

Polygon = list[np.ndarray]  # [outline, *holes], each (N, 2) float64 (x, y)
AREA_TYPES = ("Polygon", "MultiPolygon")


def _rings(coordinates, where: str) -> Polygon:
    rings = []
    if not isinstance(coordinates, list):
        raise ValueError(f"{where}: coordinates are not a list of rings")
    for index, ring in enumerate(coordinates):
        try:
            array = np.asarray(ring, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: ring {index} is not a list of (x, y) points") from None
        if array.ndim != 2 or array.shape[1] < 2 or len(array) < 3:
            raise ValueError(f"{where}: ring {index} is not a list of at least 3 (x, y) points")
        if not np.isfinite(array[:, :2]).all():
            raise ValueError(f"{where}: ring {index} has a non-finite coordinate")
        rings.append(array[:, :2])
    if not rings:
        raise ValueError(f"{where}: a polygon without rings")
    return rings


def _features(data, path: Path) -> list[dict]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
        if not isinstance(features, list):
            raise ValueError(f"{path}: 'features' is not a list")
        return features
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise ValueError(f"{path}: not GeoJSON features (a FeatureCollection, Feature or list)")


def read_geojson(
    path: str | os.PathLike, *, strict: bool = False, log: Callable[[str], None] = print
) -> list[Polygon]:
    """Every polygon of the file (see the module docs)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # JSON and UTF-8 errors are ValueErrors
        raise ValueError(f"{path}: cannot read GeoJSON ({error})") from None
    polygons, skipped = [], []
    for index, feature in enumerate(_features(data, path)):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        where = f"{path}: feature {index}"
        if kind in AREA_TYPES and not isinstance(geometry.get("coordinates"), list):
            raise ValueError(f"{where}: a {kind} without a list of coordinates")
        if kind == "Polygon":
            polygons.append(_rings(geometry["coordinates"], where))
        elif kind == "MultiPolygon":
            polygons.extend(
                _rings(part, f"{where} part {n}") for n, part in enumerate(geometry["coordinates"])
            )
        elif strict:
            raise ValueError(
                f"{where} is a {kind}, which encloses no area ({'/'.join(AREA_TYPES)} expected)"
            )
        else:
            skipped.append(f"{index} ({kind})")
    if skipped:
        log(f"{path}: skipped feature(s) {', '.join(skipped)}: they enclose no area")
    return polygons


def check_inside(polygons: Sequence[Polygon], shape: tuple[int, int], what: str) -> None:
    """Refuse a polygon with a vertex outside the (height, width) image."""
    height, width = shape
    for index, polygon in enumerate(polygons):
        points = np.concatenate(polygon)
        low, high = points.min(axis=0), points.max(axis=0)
        if low[0] < -0.5 or low[1] < -0.5 or high[0] > width - 0.5 or high[1] > height - 0.5:
            raise ValueError(
                f"{what}: polygon {index} spans x {low[0]:g}..{high[0]:g}, y {low[1]:g}..{high[1]:g}, "
                f"outside the {height}x{width} image"
            )


def bounds(polygon: Polygon) -> tuple[float, float, float, float]:
    """(y0, y1, x0, x1) of the outline."""
    outline = polygon[0]
    return outline[:, 1].min(), outline[:, 1].max(), outline[:, 0].min(), outline[:, 0].max()


def _ring_rows(ring: np.ndarray, rows: np.ndarray, x0: int, width: int) -> np.ndarray:
    """(len(rows), width) bool: the pixel centres inside one closed ring (even-odd) on each row
    of ``rows``, columns from ``x0``."""
    (xa, ya), (xb, yb) = ring.T, np.roll(ring, -1, axis=0).T
    yc = rows[:, None] + 0.5
    crossing = (ya[None] <= yc) != (yb[None] <= yc)  # half-open in y: each crossing counted once
    with np.errstate(divide="ignore", invalid="ignore"):
        x = xa[None] + (yc - ya[None]) * (xb - xa)[None] / (yb - ya)[None]
    x = np.sort(np.where(crossing, x, np.inf), axis=1)
    count = int(crossing.sum(axis=1).max(initial=0))
    x = x[:, : count - count % 2]
    starts, ends = np.ceil(x[:, 0::2] - 0.5), np.ceil(x[:, 1::2] - 0.5)  # [start, end) columns
    empty = ~np.isfinite(starts) | ~np.isfinite(ends)
    starts = np.clip(np.where(empty, x0, starts) - x0, 0, width).astype(np.int64)
    ends = np.clip(np.where(empty, x0, ends) - x0, 0, width).astype(np.int64)
    diff = np.zeros((len(rows), width + 1), np.int32)
    index = np.broadcast_to(np.arange(len(rows))[:, None], starts.shape)
    np.add.at(diff, (index, starts), 1)
    np.add.at(diff, (index, ends), -1)
    return np.cumsum(diff[:, :width], axis=1) > 0


def rasterize(
    polygons: Sequence[Polygon],
    shape: tuple[int, int],
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """A uint8 0/1 mask of the (height, width) image, or of its ``window`` (y0, y1, x0, x1), by
    pixel centres (see the module docs)."""
    y0, y1, x0, x1 = window if window is not None else (0, shape[0], 0, shape[1])
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    width = x1 - x0
    for polygon in polygons:
        top, bottom, left, right = bounds(polygon)
        first, last = max(y0, int(np.floor(top - 0.5))), min(y1, int(np.ceil(bottom + 0.5)))
        if last <= first or right < x0 or left > x1:
            continue
        rows = np.arange(first, last, dtype=np.float64)
        inside = _ring_rows(polygon[0], rows, x0, width)
        for hole in polygon[1:]:  # a hole removes only from its own outline
            inside &= ~_ring_rows(hole, rows, x0, width)
        mask[first - y0 : last - y0] |= inside.astype(np.uint8)
    return mask


def union_rle(rle, shape: tuple[int, int], polygons: Sequence[Polygon], rows: int = 1024) -> str:
    """The absolute column-major RLE of the (height, width) mask ``rle`` describes OR-ed with
    ``polygons`` drawn by pixel centres, made ``rows`` full-width rows at a time."""
    if not polygons:
        return "" if rle is None or (isinstance(rle, float) and np.isnan(rle)) else str(rle)
    height, width = shape
    truth, writer = RleWindows(rle, shape), ColumnRunWriter(height, width)
    for y0 in range(0, height, rows):
        box = (y0, min(y0 + rows, height), 0, width)
        writer.add(y0, truth.window(box) | rasterize(polygons, shape, box))
    return writer.encode()
