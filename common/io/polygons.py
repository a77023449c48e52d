"""Masks from polygon annotations (GeoJSON in full-resolution pixel coordinates, as QuPath and
the HuBMAP ``<id>.json`` files write them).

``read_geojson(path)`` gives the polygons of a FeatureCollection, a list of Features or a single
Feature: each polygon is a list of rings, (N, 2) float arrays of (x, y), the first the outline
and the rest its holes; a MultiPolygon gives one polygon per part. Geometries that enclose no
area (LineString, Point, ...) are skipped with one message naming the file and the feature, or
refused with ``strict=True``. ``rasterize(polygons, shape, window)`` fills them into a uint8
mask of the image or of one window of it, holes cleared, the pixel (x, y) set when it lies
inside the outline as ``cv2.fillPoly`` draws it on coordinates rounded to the nearest pixel.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

Polygon = list[np.ndarray]  # [outline, *holes], each (N, 2) float64 (x, y)
AREA_TYPES = ("Polygon", "MultiPolygon")


def _rings(coordinates, where: str) -> Polygon:
    rings = []
    for index, ring in enumerate(coordinates):
        array = np.asarray(ring, dtype=np.float64)
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
        return list(data.get("features", []))
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
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read GeoJSON ({error})") from None
    polygons, skipped = [], []
    for index, feature in enumerate(_features(data, path)):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        where = f"{path}: feature {index}"
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


def rasterize(
    polygons: Sequence[Polygon],
    shape: tuple[int, int],
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """A uint8 0/1 mask of the (height, width) image, or of its ``window`` (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = window if window is not None else (0, shape[0], 0, shape[1])
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    origin = np.array([x0, y0], np.float64)
    for polygon in polygons:
        top, bottom, left, right = bounds(polygon)
        if bottom < y0 - 1 or top > y1 or right < x0 - 1 or left > x1:
            continue
        rings = [np.rint(ring - origin).astype(np.int32) for ring in polygon]
        cv2.fillPoly(mask, rings[:1], 1)
        if len(rings) > 1:
            cv2.fillPoly(mask, rings[1:], 0)
    return mask
