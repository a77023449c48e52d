"""common.io.slides and common.io.polygons: every TIFF layout read by windows, bad files refused by
name; polygons with holes and parts rasterised, per window as a whole, real GeoJSON parsed."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile

from common.io.polygons import check_inside, rasterize, read_geojson, union_rle
from common.io.rle import rle_decode, rle_encode
from common.io.slides import SlideError, open_slide
from tests.conftest import shared_path
from tests.reference import ref_rasterize

RNG = np.random.default_rng(7)
IMAGE = RNG.integers(0, 256, (300, 410, 3), dtype=np.uint8)


def _write(path, layout: str, image=IMAGE):
    planes = np.moveaxis(image, -1, 0)
    if layout == "tiled":
        tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb", compression="zlib")
    elif layout == "striped":
        tifffile.imwrite(path, image, rowsperstrip=32, photometric="rgb")
    elif layout == "rgba":
        alpha = np.full((*image.shape[:2], 1), 255, np.uint8)
        tifffile.imwrite(
            path, np.concatenate([image, alpha], -1), photometric="rgb", extrasamples=[2]
        )
    elif layout == "channels-first":
        tifffile.imwrite(path, planes, photometric="rgb", planarconfig="separate")
    elif layout == "pages-as-stack":
        tifffile.imwrite(path, planes, photometric="minisblack")
    elif layout == "5d":
        tifffile.imwrite(
            path, planes[None, None], photometric="minisblack", metadata={"axes": "TZCYX"}
        )
    elif layout == "pages":
        with tifffile.TiffWriter(path) as tiff:
            for channel in range(3):
                tiff.write(image[..., channel], photometric="minisblack", compression="lzw")
    elif layout == "pyramid":
        with tifffile.TiffWriter(path) as tiff:
            tiff.write(image, subifds=1, tile=(64, 64), photometric="rgb")
            tiff.write(image[::2, ::2].copy(), subfiletype=1, tile=(64, 64), photometric="rgb")
    return path


LAYOUTS = ("tiled", "striped", "rgba", "channels-first", "pages-as-stack", "5d", "pages", "pyramid")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_the_same_windows(tmp_path, layout):
    with open_slide(_write(tmp_path / "s.tiff", layout), levels=False) as slide:
        assert slide.shape == (300, 410)
        np.testing.assert_array_equal(slide.read(0, 300, 0, 410), IMAGE)
        np.testing.assert_array_equal(slide.read(37, 201, 90, 333), IMAGE[37:201, 90:333])
        small = slide.read(30, 270, 60, 300, scale=3)
        expected = cv2.resize(IMAGE[30:270, 60:300], (80, 80), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(small, expected)
        assert slide.read(0, 10, 0, 10, shape=(4, 5)).shape == (4, 5, 3)
        chunk = {"tiled": 64, "pyramid": 64, "striped": 32}.get(layout)
        assert slide.row_chunk == chunk if chunk else 1 <= slide.row_chunk <= 300


def _pyramid(path, levels, tile=(64, 64)):
    """``levels[0]`` with the others as SubIFDs (reduced resolution), tiled zlib."""
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(levels[0], subifds=len(levels) - 1, tile=tile, photometric="rgb",
                   compression="zlib")  # fmt: skip
        for level in levels[1:]:
            tiff.write(level, subfiletype=1, tile=tile, photometric="rgb", compression="zlib")
    return path


def _shrunk(image, factor):
    h, w = image.shape[:2]
    return cv2.resize(image, (w // factor, h // factor), interpolation=cv2.INTER_AREA)


def test_a_read_that_shrinks_uses_the_coarsest_pyramid_level_within_its_scale(tmp_path):
    """Levels at 2x and 4x made distinguishable (each inverted): a read shrinking by 4 or more
    reads the 4x level, by 2-4 the 2x level, below 2 level 0; ``levels=False`` only level 0.
    Windows off the levels' grid land on the nearest level pixel."""
    image = np.ascontiguousarray(np.broadcast_to(
        np.linspace(0, 255, 820, dtype=np.uint8)[None, :, None], (600, 820, 3)))  # fmt: skip
    two, four = 255 - _shrunk(image, 2), 255 - _shrunk(image, 4)
    path = _pyramid(tmp_path / "p.tiff", [image, two, four])
    with open_slide(path) as slide:
        assert [lv.factor for lv in slide.levels] == [(2.0, 2.0), (4.0, 4.0)]
        np.testing.assert_array_equal(slide.read(0, 600, 0, 820, scale=4), four)
        np.testing.assert_array_equal(slide.read(100, 300, 200, 600, shape=(25, 50)),
                                      _shrunk(four[25:75, 50:150], 2))  # fmt: skip
        np.testing.assert_array_equal(slide.read(0, 600, 0, 820, scale=2), two)
        np.testing.assert_array_equal(slide.read(0, 600, 0, 820, scale=3), cv2.resize(
            two, (273, 200), interpolation=cv2.INTER_AREA))  # fmt: skip
        off = slide.read(101, 301, 203, 603, scale=2)  # 50.5 -> 50, 101.5 -> 102 on the 2x level
        np.testing.assert_array_equal(off, two[50:150, 102:302])
        np.testing.assert_array_equal(
            slide.read(0, 600, 0, 820, scale=1.5),
            cv2.resize(image, (547, 400), interpolation=cv2.INTER_AREA),
        )
        np.testing.assert_array_equal(slide.read(10, 20, 10, 30), image[10:20, 10:30])
    with open_slide(path, levels=False) as slide:
        assert slide.levels == []
        np.testing.assert_array_equal(slide.read(0, 600, 0, 820, scale=4), _shrunk(image, 4))


def test_a_true_pyramid_reads_as_level_zero_within_one_grey_level(tmp_path):
    """Levels that are level 0 shrunk (as scanners write them): a 4x read of the 4x level
    matches the area-shrunk level 0 to one grey level; a level of another aspect is not used,
    nor one in tall strips (it would decode whole)."""
    rng = np.random.default_rng(5)
    image = cv2.GaussianBlur(rng.integers(0, 256, (512, 768, 3), dtype=np.uint8), (0, 0), 3)
    path = _pyramid(tmp_path / "p.tiff", [image, _shrunk(image, 2), _shrunk(image, 4)])
    with open_slide(path) as slide, open_slide(path, levels=False) as flat:
        for box in [(0, 512, 0, 768), (128, 384, 256, 512)]:
            fast, exact = slide.read(*box, scale=4), flat.read(*box, scale=4)
            assert np.abs(fast.astype(int) - exact).max() <= 1
    skewed = _pyramid(tmp_path / "skewed.tiff", [image, cv2.resize(image, (384, 200))])
    with open_slide(skewed) as slide:
        assert slide.levels == []
    with tifffile.TiffWriter(tmp_path / "strips.tiff") as tiff:
        tall = np.concatenate([image, image])  # its 2x level: 512 rows in one strip
        tiff.write(tall, subifds=1, photometric="rgb", rowsperstrip=64)
        tiff.write(_shrunk(tall, 2), subfiletype=1, photometric="rgb", rowsperstrip=512)
    with open_slide(tmp_path / "strips.tiff") as slide:
        assert slide.levels == []


def test_bad_slides_name_the_file(tmp_path):
    grey = tmp_path / "grey.tiff"
    tifffile.imwrite(grey, IMAGE[..., 0])
    with pytest.raises(SlideError, match=r"grey\.tiff: layout not understood"):
        open_slide(grey)
    deep = tmp_path / "deep.tiff"
    tifffile.imwrite(deep, IMAGE.astype(np.uint16), photometric="rgb")
    with pytest.raises(SlideError, match=r"deep\.tiff: uint16"):
        open_slide(deep)
    cut = tmp_path / "cut.tiff"
    data = _write(tmp_path / "whole.tiff", "striped").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match=r"cut\.tiff: truncated"):
        open_slide(cut)
    junk = tmp_path / "junk.tiff"
    junk.write_bytes(b"not a tiff at all")
    with pytest.raises(SlideError, match=r"junk\.tiff: not a readable TIFF"):
        open_slide(junk)
    with (
        open_slide(_write(tmp_path / "ok.tiff", "tiled")) as slide,
        pytest.raises(SlideError, match=r"ok\.tiff: window .* outside the 300x410 image"),
    ):
        slide.read(250, 301, 0, 10)


def _feature(geometry):
    return {"type": "Feature", "geometry": geometry, "properties": {}}


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


@pytest.mark.parametrize(
    "options",
    [{}, {"compression": "zlib"}, {"compression": "zlib", "predictor": True}],
    ids=["raw", "zlib", "zlib-predictor"],
)
def test_a_single_strip_slide_is_read_in_windows_never_whole(tmp_path, options):
    """One strip of 3,000 rows (26 MB decoded): windows anywhere, also back up the slide, read
    exactly, and a window of ten rows allocates a few bands of rows, not the strip."""
    import tracemalloc

    from common.io.slides import thumbnail

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (3000, 2900, 3), dtype=np.uint8)
    image[500:2500, 300:2000] = (200, 120, 180)
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, image, photometric="rgb", rowsperstrip=3000, **options)
    with open_slide(path) as slide:
        assert slide.row_chunk == 256
        for y0, y1, x0, x1 in [(2990, 3000, 0, 2900), (0, 3, 5, 9), (1500, 1800, 250, 2100),
                               (1400, 1401, 0, 2900), (0, 3000, 2899, 2900)]:  # fmt: skip
            np.testing.assert_array_equal(slide.read(y0, y1, x0, x1), image[y0:y1, x0:x1])
        tracemalloc.start()
        slide.read(2000, 2010, 0, 100)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # rows are skipped STREAM_ROWS at a time: a few such bands (2.2 MB) and one 1 MiB read
        # of compressed input at most, not the 26 MB strip
        assert peak < 4 * 256 * 2900 * 3 + (1 << 20)
        small = thumbnail(slide, 300)
    reference = cv2.resize(image, small.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - reference).mean() < 1.0
    broken = tmp_path / "broken.tif"
    data = bytearray(path.read_bytes())
    if options:  # a corrupt deflate stream is one SlideError naming the file
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
        broken.write_bytes(bytes(data))
        with open_slide(broken) as slide, pytest.raises(SlideError, match=r"broken\.tif"):
            slide.read(2900, 3000, 0, 2900)


def test_polygons_holes_parts_and_lines(tmp_path):
    path = tmp_path / "a.json"
    features = [
        _feature(
            {"type": "Polygon", "coordinates": [_square(10, 10, 40, 40), _square(20, 20, 30, 30)]}
        ),
        _feature(
            {
                "type": "MultiPolygon",
                "coordinates": [[_square(50, 5, 60, 15)], [_square(70, 5, 80, 15)]],
            }
        ),
        _feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}),
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    messages = []
    polygons = read_geojson(path, log=messages.append)
    assert len(polygons) == 3 and len(polygons[0]) == 2
    assert messages == [f"{path}: skipped feature(s) 2 (LineString): they enclose no area"]
    with pytest.raises(ValueError, match=r"a\.json: feature 2 is a LineString"):
        read_geojson(path, strict=True)
    mask = rasterize(polygons, (50, 90))
    expected = np.zeros((50, 90), np.uint8)
    expected[10:40, 10:40] = 1  # a 30 px square covers 30 x 30 pixel centres
    expected[20:30, 20:30] = 0  # the hole: its 10 x 10 centres, nothing around it
    expected[5:15, 50:60] = 1
    expected[5:15, 70:80] = 1
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(
        rasterize(polygons, (50, 90), (8, 33, 15, 75)), expected[8:33, 15:75]
    )
    check_inside(polygons, (50, 90), "a.json")
    with pytest.raises(ValueError, match=r"a\.json: polygon 2 spans x 70..80.*outside the 50x75"):
        check_inside(polygons, (50, 75), "a.json")


def test_rasterize_by_pixel_centres_against_a_reference():
    rng = np.random.default_rng(3)
    polygons = []
    for _ in range(6):  # star-shaped polygons with fractional vertices, some with a hole
        cy, cx, radius = rng.uniform(8, 40), rng.uniform(8, 56), rng.uniform(3, 12)
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 12)))
        scale = radius * rng.uniform(0.5, 1.0, len(angles))
        outline = np.stack([cx + scale * np.cos(angles), cy + scale * np.sin(angles)], axis=1)
        rings = [outline]
        if rng.random() < 0.5:
            rings.append(np.array([[cx - 1.5, cy - 1.5], [cx + 1.7, cy - 1.2], [cx, cy + 2.1]]))
        polygons.append(rings)
    polygons.append([np.array([[0.0, 0.0], [64.0, 0.0], [64.0, 2.5]])])  # along the border
    shape = (48, 64)
    expected = ref_rasterize(polygons, shape)
    np.testing.assert_array_equal(rasterize(polygons, shape), expected)
    np.testing.assert_array_equal(rasterize(polygons, shape, (5, 40, 7, 50)), expected[5:40, 7:50])
    # a hole clears only its own polygon: a second polygon under it stays
    ring, hole = np.array(_square(0, 0, 20, 20), float), np.array(_square(5, 5, 15, 15), float)
    inner = np.array(_square(8, 8, 12, 12), float)
    both = rasterize([[ring, hole], [inner]], (20, 20))
    assert both[8:12, 8:12].all() and not both[5:8, 5:15].any() and both.sum() == 400 - 100 + 16


def test_union_rle_block_by_block_against_the_whole_mask():
    """A column-major RLE OR-ed with polygons, a few rows at a time (blocks that cut objects and
    runs that go on into the next column), is the RLE of the whole union."""
    rng = np.random.default_rng(11)
    shape = (97, 61)
    mask = (rng.random(shape) < 0.03).astype(np.uint8)
    mask[40:70, 10:12] = 1  # runs down a column across blocks
    mask[90:, 30] = mask[:5, 31] = 1  # a run from the bottom of one column into the next
    polygons = [[np.array(_square(3, 50, 25, 80), float)],
                [np.array([[30.2, 5.5], [58.7, 20.1], [44.0, 60.3]]), np.array(_square(40, 25, 46, 32), float)]]  # fmt: skip
    expected = rle_encode(mask | ref_rasterize(polygons, shape))
    for rows in (1, 13, 97, 500):
        assert union_rle(rle_encode(mask), shape, polygons, rows=rows) == expected
    assert union_rle("", shape, polygons, rows=7) == rle_encode(ref_rasterize(polygons, shape))
    assert union_rle("3 4", shape, []) == "3 4"  # nothing to add: the string as it was
    with pytest.raises(ValueError, match="past the end"):
        union_rle(f"{97 * 61 - 2} 5", shape, polygons)
    assert rle_decode(expected, shape).sum() > mask.sum()


def test_real_geojson_mixed_geometries():
    folder = shared_path("hubmap", "extra_annotations_geojson")
    messages = []
    total = 0
    for path in sorted(folder.glob("*.json")):
        polygons = read_geojson(path, log=messages.append)
        total += len(polygons)
        for polygon in polygons:  # each fills, at its own place, about its shoelace area
            outline = polygon[0]
            y0, x0 = np.floor(outline.min(axis=0)[::-1]).astype(int)
            y1, x1 = np.ceil(outline.max(axis=0)[::-1]).astype(int) + 1
            filled = rasterize([polygon], (y1 + 1, x1 + 1), (y0, y1, x0, x1)).sum()
            x, y = outline[:, 0], outline[:, 1]
            area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
            assert filled == pytest.approx(area, rel=0.1, abs=200)
    assert total == 171 + 2 * 12  # Polygons, and both parts of each MultiPolygon
    assert len(messages) == 1 and "(LineString)" in messages[0]


def test_bad_geojson_names_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json: cannot read GeoJSON"):
        read_geojson(broken)
    short = tmp_path / "short.json"
    short.write_text(json.dumps([_feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]})]))
    with pytest.raises(
        ValueError, match=r"short\.json: feature 0: ring 0 is not a list of at least 3"
    ):
        read_geojson(short)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"type": "Topology"}))
    with pytest.raises(ValueError, match=r"other\.json: not GeoJSON features"):
        read_geojson(other)
