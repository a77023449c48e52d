"""Predicted objects of a slide as polygons, in memory bounded by the tallest object, and as
GeoJSON that QuPath opens; objects the model is sure of but no annotation covers are flagged as
likely missing annotations (the seed's re-annotation idea: the organisers' masks miss glomeruli).

``objects_in_bands(bands, width, threshold=..., min_area=..., scale=...)`` reads a mask, or a map
of probabilities, as row bands top to bottom (a slide's model-scale map, or a full-resolution
mask decoded from its RLE a band at a time) and yields each object once it is complete: its
outline and holes as polygons in full-resolution pixel coordinates, its area and, for a map, its
mean probability. Rows are held only while an object may still grow downwards.

The outline follows the pixel-centre rule that ``common.io.polygons.rasterize`` draws with: it
runs a quarter pixel inside each boundary pixel's edges, so rasterizing the polygons gives back
exactly the object's pixels (tested); a model-scale object gives the full-resolution pixels its
model pixels cover.

``flag_missing(objects, truth, confident=, covered_below=)`` marks each object with the share of
its pixels an annotation covers; a confident object with less than ``covered_below`` covered is
flagged. ``write_geojson`` writes a FeatureCollection of QuPath annotations, the flagged ones
classified apart ("likely missing annotation"), atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from common.io.atomic import write_text_atomic
from common.io.polygons import Polygon, rasterize
from common.post.postprocess import final_rows

FOUND, MISSING = "glomerulus", "likely missing annotation"
COLOURS = {FOUND: (0, 160, 0), MISSING: (230, 120, 0)}


@dataclass
class SlideObject:
    polygons: list[Polygon]  # full-resolution (x, y); an 8-connected object may be several
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 at full resolution (clipped to the slide)
    area: float  # full-resolution pixels (model pixels x scale^2)
    probability: float | None = None  # mean over its pixels (maps only)
    covered: float | None = None  # share of its pixels an annotation covers (flag_missing)
    flagged: bool = False
    extra: dict = field(default_factory=dict)


def _outline(crop: np.ndarray) -> list[Polygon]:
    """Polygons (outline, holes) of a binary crop's pixels in crop pixel coordinates, a quarter
    pixel inside the boundary pixels' edges (exact under the pixel-centre rule)."""
    doubled = np.ascontiguousarray(np.repeat(np.repeat(crop, 2, 0), 2, 1), dtype=np.uint8)
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    polygons: list[Polygon] = []
    parent_of = hierarchy[0][:, 3]
    to_crop = lambda c: (c[:, 0, :].astype(np.float64) + 0.5) / 2.0  # noqa: E731
    for index, contour in enumerate(contours):
        if parent_of[index] >= 0 or len(contour) < 3:
            continue
        rings = [to_crop(contour)]
        rings += [to_crop(contours[h]) for h in np.flatnonzero(parent_of == index)
                  if len(contours[h]) >= 3]  # fmt: skip
        polygons.append(rings)
    return polygons


def _scaled(ring: np.ndarray, scale: float) -> np.ndarray:
    """Model-scale outline points (a quarter pixel inside an edge) to full resolution: the edge
    scaled, the quarter pixel kept, so the full-resolution pixels drawn are the model pixels'."""
    edges = np.rint(ring)
    return edges * scale + (ring - edges)


def objects_in_bands(
    bands: Iterable[tuple[int, np.ndarray]],
    width: int,
    *,
    threshold: float = 0.5,
    min_area: float = 0.0,
    scale: float = 1.0,
    shape: tuple[int, int] | None = None,
    probabilities: bool = True,
) -> Iterator[SlideObject]:
    """The objects (8-connected pixels above ``threshold``) of a map of ``probabilities`` (or a
    0/1 mask) given as row bands (``(first row, rows)``, top to bottom, ``width`` columns), at
    least ``min_area`` full-resolution pixels; coordinates times ``scale`` (a model-scale
    map's), clipped to ``shape`` (the full-resolution slide) when given."""
    dtype = np.float32 if probabilities else np.uint8
    held = np.zeros((0, width), dtype)
    first = 0  # the slide row of held[0]
    expected = 0

    def release(final: bool) -> Iterator[SlideObject]:
        nonlocal held, first
        binary = (held > threshold).astype(np.uint8)
        if not binary.any():
            first, held = first + len(held), held[len(held) :]
            return
        _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        cut = final_rows(labels, stats, final)  # objects that may still grow stay held
        bottoms = stats[1:, cv2.CC_STAT_TOP] + stats[1:, cv2.CC_STAT_HEIGHT]
        for k in np.flatnonzero(bottoms <= cut) + 1:
            y, x, h, w = (stats[k, cv2.CC_STAT_TOP], stats[k, cv2.CC_STAT_LEFT],
                          stats[k, cv2.CC_STAT_HEIGHT], stats[k, cv2.CC_STAT_WIDTH])  # fmt: skip
            area = float(stats[k, cv2.CC_STAT_AREA]) * scale**2
            if area < min_area:
                continue
            crop = labels[y : y + h, x : x + w] == k
            offset = np.array([x, y + first], np.float64)
            polygons = [[_scaled(ring + offset, scale) for ring in polygon]
                        for polygon in _outline(crop)]  # fmt: skip
            box = [round((y + first) * scale), round((y + first + h) * scale),
                   round(x * scale), round((x + w) * scale)]  # fmt: skip
            if shape is not None:
                box = [min(box[0], shape[0]), min(box[1], shape[0]),
                       min(box[2], shape[1]), min(box[3], shape[1])]  # fmt: skip
            probability = None
            if probabilities:
                probability = float(held[y : y + h, x : x + w][crop].mean())
            yield SlideObject(polygons, tuple(box), area, probability)
        first, held = first + cut, held[cut:]

    for start, rows in bands:
        if start != expected:
            raise ValueError(f"band at row {start}: expected row {expected}")
        expected += len(rows)
        rows = np.asarray(rows, dtype=dtype)
        if rows.ndim != 2 or rows.shape[1] != width:
            raise ValueError(f"band at row {start}: {rows.shape}, expected (n, {width})")
        held = np.concatenate([held, rows]) if len(held) else rows
        yield from release(final=False)
    yield from release(final=True)


def rle_bands(
    rle: str, shape: tuple[int, int], rows: int = 1024
) -> Iterator[tuple[int, np.ndarray]]:
    """A full-resolution RLE (absolute, column-major) as 0/1 row bands, one band in memory."""
    from common.io.rle import RleWindows

    windows = RleWindows(rle, shape)
    for y0 in range(0, shape[0], rows):
        y1 = min(y0 + rows, shape[0])
        yield y0, windows.window((y0, y1, 0, shape[1]))


def flag_missing(objects: Iterable[SlideObject], truth: str, shape: tuple[int, int], *,
                 confident: float = 0.9, covered_below: float = 0.1) -> Iterator[SlideObject]:  # fmt: skip
    """Each object with ``covered``: the share of its full-resolution pixels (its polygons
    rasterized) that the annotation RLE ``truth`` covers; flagged when its mean probability is
    at least ``confident`` and less than ``covered_below`` of it is covered."""
    from common.io.rle import RleWindows

    windows = RleWindows(truth, shape)
    for obj in objects:
        y0, y1, x0, x1 = obj.box
        if y1 <= y0 or x1 <= x0:
            obj.covered = 0.0
        else:
            mask = rasterize(obj.polygons, shape, (y0, y1, x0, x1)).astype(bool)
            pixels = int(mask.sum())
            hits = int((windows.window((y0, y1, x0, x1)).astype(bool) & mask).sum())
            obj.covered = hits / pixels if pixels else 0.0
        sure = obj.probability is not None and obj.probability >= confident
        obj.flagged = bool(sure and obj.covered < covered_below)
        yield obj


def _rgb(colour: tuple[int, int, int]) -> int:
    return (colour[0] << 16) + (colour[1] << 8) + colour[2] - (1 << 24)  # QuPath's packed ARGB


def feature(obj: SlideObject) -> dict:
    """A QuPath annotation: a Polygon or MultiPolygon in (x, y) pixels, its class and measures."""
    parts = [[np.round(ring, 2).tolist() for ring in polygon] for polygon in obj.polygons]
    for part in parts:  # GeoJSON rings are closed
        for ring in part:
            ring.append(ring[0])
    geometry = ({"type": "Polygon", "coordinates": parts[0]} if len(parts) == 1
                else {"type": "MultiPolygon", "coordinates": parts})  # fmt: skip
    name = MISSING if obj.flagged else FOUND
    measurements = {"area_px": round(obj.area, 1)}
    if obj.probability is not None:
        measurements["mean_probability"] = round(obj.probability, 4)
    if obj.covered is not None:
        measurements["annotation_covered"] = round(obj.covered, 4)
    return {"type": "Feature", "geometry": geometry,
            "properties": {"objectType": "annotation", "isLocked": False,
                           "classification": {"name": name, "colorRGB": _rgb(COLOURS[name])},
                           "measurements": measurements, **obj.extra}}  # fmt: skip


def write_geojson(path: str | os.PathLike, objects: Iterable[SlideObject]) -> dict[str, int]:
    """A FeatureCollection of the objects, written atomically; returns the counts."""
    features = [feature(o) for o in objects if o.polygons]
    flagged = sum(f["properties"]["classification"]["name"] == MISSING for f in features)
    document = {"type": "FeatureCollection", "features": features}
    write_text_atomic(path, json.dumps(document, separators=(",", ":")) + "\n")
    return {"objects": len(features), "flagged": int(flagged)}
