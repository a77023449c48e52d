"""common.data.tiles: the grid, blending, the band stitcher and the row-wise upsampler against the
whole-image computations they replace."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from common.data.tiles import RowStitcher, Tile, blend_weights, tile_grid, upsample_rows
from common.io.rle import ColumnRunWriter, rle_decode


@pytest.mark.parametrize(
    ("height", "width", "size", "overlap"),
    [(100, 37, 32, 8), (5, 90, 16, 4), (64, 64, 64, 0), (10, 7, 32, 16)],
)
def test_grid_covers_the_image_in_raster_order(height, width, size, overlap):
    tiles = tile_grid(height, width, size, overlap)
    covered = np.zeros((height, width), int)
    for tile in tiles:
        covered[tile.y0 : tile.y1, tile.x0 : tile.x1] += 1
        assert tile.shape == (min(size, height), min(size, width))
    assert covered.min() >= 1
    assert tiles == sorted(tiles, key=lambda t: (t.y0, t.x0))
    ys = sorted({t.y0 for t in tiles})
    assert all(b - a <= size - overlap for a, b in itertools.pairwise(ys))
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(height, width, size, size)


def test_blend_weights():
    for kind in ("gaussian", "linear", "flat"):
        w = blend_weights(33, kind)
        assert w.shape == (33, 33) and w.min() > 0 and w.max() == pytest.approx(1.0)
        np.testing.assert_allclose(w, w.T)
        np.testing.assert_allclose(w, w[::-1, ::-1])
    for kind in ("gaussian", "linear"):
        w = blend_weights(33, kind)
        assert w[0, 0] == w.min() < 0.05 and w[16, 16] == w.max()
    with pytest.raises(ValueError, match="valid: gaussian, linear, flat, centre"):
        blend_weights(8, "cosine")


def test_centre_blend_is_the_context_crop():
    """Read a window, keep its central half: with an overlap of half a tile every pixel but the
    image's outer quarter-tile frame takes only tiles' centres (the margins, 9.0 here, weigh
    1e-6 of them); the frame, which no centre reaches, takes the margins."""
    from common.infer.slide_inference import TilePlan

    height, width, size = 150, 97, 40
    weights = blend_weights(size, "centre")
    assert weights[size // 2, size // 2] == 1 and weights[0, size // 2] < 1e-5
    stitcher = RowStitcher(height, width)
    bands = []
    for t in tile_grid(height, width, size, size // 2):
        pred = np.full((1, *t.shape), 9.0, np.float32)
        pred[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 0.5
        bands += stitcher.add(t, pred[:, : t.shape[0], : t.shape[1]], weights)
    bands += stitcher.close()
    got = np.concatenate([b for _, b in bands], axis=1)[0]
    inner = got[size // 4 : height - size // 4, size // 4 : width - size // 4]
    np.testing.assert_allclose(inner, 0.5, atol=1e-4)
    assert got[0, 0] == pytest.approx(9.0) and got[-1, -1] == pytest.approx(9.0)
    with pytest.raises(ValueError, match="overlap 16 must be at least half the tile"):
        TilePlan(tile=40, scale=2, overlap=16, blend="centre")


def test_stitched_bands_equal_the_whole_weighted_average():
    rng = np.random.default_rng(0)
    height, width, size = 150, 97, 40
    weights = blend_weights(size)
    tiles = tile_grid(height, width, size, 12)
    preds = {t: rng.random((2, *t.shape)).astype(np.float32) for t in tiles}
    total = np.zeros((2, height, width))
    norm = np.zeros((height, width))
    for t, p in preds.items():
        w = weights[: t.shape[0], : t.shape[1]]
        total[:, t.y0 : t.y1, t.x0 : t.x1] += p * w
        norm[t.y0 : t.y1, t.x0 : t.x1] += w
    stitcher = RowStitcher(height, width, channels=2)
    bands, held = [], 0
    for t in tiles:
        bands += stitcher.add(t, preds[t], weights)
        held = max(held, stitcher._weight.shape[0])
    bands += stitcher.close()
    assert [b[0] for b in bands] == sorted(b[0] for b in bands) and bands[0][0] == 0
    np.testing.assert_allclose(
        np.concatenate([b for _, b in bands], axis=1), total / norm, rtol=1e-5
    )
    assert held <= 2 * size  # a band of rows, not the image


def test_stitcher_refuses_tiles_out_of_order_and_gaps():
    stitcher = RowStitcher(20, 10)
    w = blend_weights(10)
    stitcher.add(Tile(0, 0, 10, 10), np.ones((10, 10)), w)
    stitcher.add(Tile(10, 0, 20, 10), np.ones((10, 10)), w)
    with pytest.raises(ValueError, match="raster order"):
        stitcher.add(Tile(0, 0, 10, 10), np.ones((10, 10)), w)
    with pytest.raises(ValueError, match="row 0: no tile covered it"):
        (
            RowStitcher(20, 10).add(Tile(10, 0, 20, 10), np.ones((10, 10)), w)
            + RowStitcher(20, 10).close()
        )
    with pytest.raises(ValueError, match=r"prediction \(1, 5, 10\)"):
        RowStitcher(20, 10).add(Tile(0, 0, 10, 10), np.ones((5, 10)), w)


@pytest.mark.parametrize(
    ("small", "big"), [((17, 23), (51, 69)), ((40, 30), (100, 75)), ((9, 9), (9, 9))]
)
def test_upsampled_rows_equal_resizing_the_whole(small, big):
    rng = np.random.default_rng(1)
    whole = rng.random((2, *small)).astype(np.float32)
    expected = np.stack([cv2.resize(c, big[::-1], interpolation=cv2.INTER_LINEAR) for c in whole])
    cuts = [0, 3, 4, 11, small[0]]
    bands = ((a, whole[:, a:b]) for a, b in itertools.pairwise(cuts) if b > a)
    out = list(upsample_rows(bands, small[0], *big))
    assert [start for start, _ in out] == sorted(start for start, _ in out)
    np.testing.assert_allclose(np.concatenate([b for _, b in out], axis=1), expected, atol=1e-4)


def test_upsample_needs_every_band_in_order():
    whole = np.zeros((1, 10, 4), np.float32)
    with pytest.raises(ValueError, match="expected row 5"):
        list(upsample_rows([(0, whole[:, :5]), (6, whole[:, 6:])], 10, 20, 8))
    with pytest.raises(ValueError, match="the bands end at row 5 of 10"):
        list(upsample_rows([(0, whole[:, :5])], 10, 20, 8))


def test_tiles_to_rle_streaming_equals_the_whole_image_pipeline():
    """Tiles predicted at a third of the scale, blended, upsampled band by band, thresholded
    and encoded column-major in blocks: the mask of the whole-image computation."""
    rng = np.random.default_rng(2)
    small_h, small_w, size, scale = 70, 55, 24, 3
    yy, xx = np.mgrid[:small_h, :small_w]
    truth = 0.5 + 0.5 * np.sin(yy / 5.0) * np.cos(xx / 7.0)  # smooth, as a model's map
    weights = blend_weights(size, "linear")
    stitcher = RowStitcher(small_h, small_w)
    bands = []
    total, norm = np.zeros((small_h, small_w)), np.zeros((small_h, small_w))
    for t in tile_grid(small_h, small_w, size, 8):
        pred = (truth[t.y0 : t.y1, t.x0 : t.x1] + rng.normal(0, 0.02, t.shape)).astype(np.float32)
        w = weights[: t.shape[0], : t.shape[1]]
        total[t.y0 : t.y1, t.x0 : t.x1] += pred * w
        norm[t.y0 : t.y1, t.x0 : t.x1] += w
        bands += stitcher.add(t, pred, weights)
    bands += stitcher.close()
    height, width = small_h * scale, small_w * scale
    writer = ColumnRunWriter(height, width)
    for y0, band in upsample_rows(bands, small_h, height, width):
        writer.add(y0, band[0] > 0.5)
    whole = cv2.resize(
        (total / norm).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )
    streamed = rle_decode(writer.encode(), (height, width))
    clear = np.abs(whole - 0.5) > 1e-4
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(streamed[clear], (whole > 0.5)[clear])


def test_gaussian_blend_sigma_is_a_quarter_tile():
    from common.data.tiles import blend_weights

    size = 64
    row = blend_weights(size, "gaussian")[size // 2]  # the middle row: the 1-D profile
    centre = (np.arange(size) + 0.5) / size - 0.5
    expected = np.exp(-0.5 * (centre / 0.25) ** 2)
    np.testing.assert_allclose(row, (expected / expected.max()).clip(1e-3), rtol=1e-5)
