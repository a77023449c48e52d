"""Predicted objects as polygons and QuPath GeoJSON (``common.post.slide_objects``): exact under
the pixel-centre rule, each object once whatever the bands, flags for confident objects that no
annotation covers."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from common.io.polygons import rasterize, read_geojson
from common.io.rle import rle_decode, rle_encode
from common.post.slide_objects import (
    MISSING,
    flag_missing,
    objects_in_bands,
    rle_bands,
    write_geojson,
)


def _bands(array: np.ndarray, rows: int):
    for y0 in range(0, len(array), rows):
        yield y0, array[y0 : y0 + rows]


def _blobs(seed: int, shape=(120, 90)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        cv2.ellipse(mask, (int(x), int(y)), (int(rng.integers(1, 14)), int(rng.integers(1, 14))),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)  # fmt: skip
    mask[rng.random(shape) < 0.01] ^= 1  # single pixels, diagonal touches, pin holes
    mask[40:60, 20:45] = 1
    mask[46:52, 28:35] = 0  # a hole
    mask[48:50, 30:32] = 1  # an island inside it: an object of its own
    return mask


@pytest.mark.parametrize(("seed", "rows"), [(0, 7), (1, 1), (2, 33), (3, 200)])
def test_polygons_give_back_exactly_the_pixels_and_each_object_once(seed, rows):
    mask = _blobs(seed)
    objects = list(objects_in_bands(_bands(mask, rows), mask.shape[1], probabilities=False))
    n_components = cv2.connectedComponents(mask, connectivity=8)[0] - 1
    assert len(objects) == n_components
    drawn = np.zeros_like(mask)
    for obj in objects:
        one = rasterize(obj.polygons, mask.shape)
        assert one.sum() == obj.area  # the polygon holds exactly the object's pixels
        assert not (drawn & one).any()  # and no other object's
        drawn |= one
    assert np.array_equal(drawn, mask)


def test_model_scale_maps_scale_to_full_resolution_with_their_probability():
    probs = np.zeros((40, 30), np.float32)
    probs[4:10, 6:12] = 0.95  # 36 model pixels
    probs[20:22, 3:5] = 0.6  # 4 model pixels: under the minimum area at scale 4 (64 < 100)
    objects = list(objects_in_bands(_bands(probs, 8), 30, threshold=0.5, min_area=100, scale=4.0,
                                    shape=(160, 120)))  # fmt: skip
    assert len(objects) == 1
    (obj,) = objects
    assert obj.box == (16, 40, 24, 48) and obj.area == 36 * 16
    assert obj.probability == pytest.approx(0.95)
    assert rasterize(obj.polygons, (160, 120)).sum() == 24 * 24


def test_confident_objects_no_annotation_covers_are_flagged(tmp_path):
    shape = (64, 64)
    probs = np.zeros(shape, np.float32)
    probs[5:15, 5:15] = 0.97  # annotated
    probs[30:40, 30:40] = 0.96  # confident, not annotated: likely missing
    probs[50:55, 5:10] = 0.7  # not annotated, not confident
    truth = np.zeros(shape, np.uint8)
    truth[4:16, 4:16] = 1
    objects = list(flag_missing(objects_in_bands(_bands(probs, 16), 64), rle_encode(truth), shape))
    by_box = {o.box: o for o in objects}
    assert by_box[(5, 15, 5, 15)].covered == 1.0 and not by_box[(5, 15, 5, 15)].flagged
    assert by_box[(30, 40, 30, 40)].covered == 0.0 and by_box[(30, 40, 30, 40)].flagged
    assert not by_box[(50, 55, 5, 10)].flagged
    counts = write_geojson(tmp_path / "slide.geojson", objects)
    assert counts == {"objects": 3, "flagged": 1}
    document = json.loads((tmp_path / "slide.geojson").read_text())
    names = [f["properties"]["classification"]["name"] for f in document["features"]]
    assert names.count(MISSING) == 1
    assert all(f["properties"]["objectType"] == "annotation" for f in document["features"])
    polygons = read_geojson(tmp_path / "slide.geojson")  # the project's own reader takes it back
    assert np.array_equal(rasterize(polygons, shape), (probs > 0.5).astype(np.uint8))


def test_rle_bands_and_errors():
    mask = _blobs(5, (50, 40))
    rle = rle_encode(mask)
    assert np.array_equal(np.concatenate([b for _, b in rle_bands(rle, (50, 40), rows=16)]),
                          rle_decode(rle, (50, 40)))  # fmt: skip
    with pytest.raises(ValueError, match="band at row 8: expected row 0"):
        list(objects_in_bands([(8, mask[8:16])], 40))
    with pytest.raises(ValueError, match=r"expected \(n, 41\)"):
        list(objects_in_bands([(0, mask)], 41))
