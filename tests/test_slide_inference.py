"""common.infer.slide_inference and its parts: D4 TTA pairs, the streaming small-object filter, runs
Dice, and a slide predicted tile by tile against the same steps on the whole image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
import torch

from common.data.tiles import RowStitcher, blend_weights, tile_grid
from common.infer.inference import D4, tta_augment, tta_deaugment
from common.infer.slide_inference import (
    RowBuffer,
    TilePlan,
    full_window,
    mask_rows,
    predict_slide,
    read_map,
    rle_from_bands,
    tile_predictor,
    write_map,
)
from common.io.rle import rle_decode, rle_encode, rle_runs
from common.io.slides import open_slide
from common.post.metrics import dice_of_runs, dice_per_image
from common.post.postprocess import RowComponentFilter, remove_small_components


@pytest.mark.parametrize("name", D4)
def test_d4_views_undo(name):
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(tta_deaugment(tta_augment(x, name), name), x)
    views = {tuple(tta_augment(x, n).flatten().tolist()) for n in D4}
    assert len(views) == 8  # eight distinct elements of the group


@pytest.mark.parametrize("bands", [[7], [1, 1, 1], [3, 5, 2, 40], [64]])
def test_row_component_filter_equals_whole_image(bands):
    rng = np.random.default_rng(len(bands))
    mask = (cv2.GaussianBlur(rng.random((64, 80)), (0, 0), 2) > 0.5).astype(np.uint8)
    mask[10:60, 5] = 1  # a tall thin object crossing every band
    mask[20:50, 70] = mask[20, 70:78] = mask[49, 70:78] = 1  # a "[" open at the bottom of a band
    expected = remove_small_components(mask, 12)
    keep = RowComponentFilter(80, 12)
    out = np.full_like(mask, 9)
    start = 0
    for rows in [*bands, 64]:
        for first, block in keep.add(start, mask[start : start + rows]):
            out[first : first + len(block)] = block
        start += rows
        if start >= 64:
            break
    for first, block in keep.close():
        out[first : first + len(block)] = block
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="expected row"):
        RowComponentFilter(80, 3).add(5, mask[:2])


def test_dice_of_runs_against_decoded_masks():
    rng = np.random.default_rng(1)
    shape = (37, 53)
    for density in (0.0, 0.05, 0.5, 1.0):
        a = (rng.random(shape) < density).astype(np.uint8)
        b = (rng.random(shape) < density).astype(np.uint8)
        runs_a, runs_b = rle_runs(rle_encode(a), shape), rle_runs(rle_encode(b), shape)
        assert dice_of_runs(runs_a, runs_b) == pytest.approx(dice_per_image(a[None], b[None])[0])
    with pytest.raises(ValueError, match="past the end"):
        rle_runs("1 5 2000 5", shape)


def _slide(tmp_path, shape=(701, 455)):
    rng = np.random.default_rng(0)
    low = cv2.resize(rng.random((shape[0] // 20, shape[1] // 20)).astype(np.float32), shape[::-1])
    image = np.repeat((low * 255).astype(np.uint8)[..., None], 3, axis=2)
    tifffile.imwrite(tmp_path / "s.tiff", image, tile=(64, 64), photometric="rgb")
    return tmp_path / "s.tiff", image


def _brightness(images: np.ndarray) -> np.ndarray:  # a "model": the red channel as probability
    return images[..., 0].astype(np.float32) / 255


def test_tiled_prediction_equals_the_whole_image_steps(tmp_path):
    path, image = _slide(tmp_path)
    plan = TilePlan(tile=64, scale=3, overlap=16, blend="gaussian", batch_size=5)
    with open_slide(path) as slide:
        model_shape = plan.model_shape(slide.shape)
        bands = list(predict_slide(slide, _brightness, plan))
    # the same steps on the whole image
    small = cv2.resize(image, model_shape[::-1], interpolation=cv2.INTER_AREA)
    stitcher = RowStitcher(*model_shape)
    weights = blend_weights(64, "gaussian")
    whole = []
    for tile in tile_grid(*model_shape, 64, 16):
        y0, y1, x0, x1 = full_window(tile, model_shape, image.shape[:2])
        view = cv2.resize(image[y0:y1, x0:x1], tile.shape[::-1], interpolation=cv2.INTER_AREA)
        whole += stitcher.add(tile, _brightness(view[None])[0], weights)
    whole += stitcher.close()
    expected = np.concatenate([b[0] for _, b in whole])
    got = np.concatenate([b for _, b in bands])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert abs(got - small[..., 0] / 255).max() < 0.06  # blending kept the picture
    area_scale = image.shape[0] * image.shape[1] / (model_shape[0] * model_shape[1])
    kept = remove_small_components(expected > 0.55, round(500 / area_scale))  # at model scale
    assert 0 < kept.sum() < (expected > 0.55).sum()  # some objects removed, some kept
    lowered = np.where((kept > 0) | (expected <= 0.55), expected, 0)
    truth = cv2.resize(lowered, image.shape[1::-1], interpolation=cv2.INTER_LINEAR) > 0.55
    rle = rle_from_bands(iter(bands), model_shape, image.shape[:2], threshold=0.55, min_size=500)
    decoded = rle_decode(rle, image.shape[:2])
    assert (decoded != truth).mean() < 1e-4  # float rounding of the upsampling, at the edge
    # the same through a quantised map on disk
    write_map(tmp_path / "map.tiff", iter(bands), model_shape, tile=32)
    shape, stored = read_map(tmp_path / "map.tiff", rows=50)
    assert shape == model_shape
    stored = list(stored)
    np.testing.assert_allclose(
        np.concatenate([b for _, b in stored]), expected, atol=0.5 / 255 + 1e-6
    )
    rows = list(mask_rows(iter(stored), model_shape, image.shape[:2], threshold=0.55, min_size=500))
    assert sum(len(block) for _, block in rows) == image.shape[0]


def test_row_buffer_reads_each_chunk_once(tmp_path):
    path, image = _slide(tmp_path)  # 64 px TIFF tiles
    plan = TilePlan(tile=64, scale=3, overlap=16, batch_size=5)
    with open_slide(path) as slide:
        reads = []
        real = slide.read
        slide.read = lambda *window, **kw: reads.append(window) or real(*window, **kw)
        rows = RowBuffer(slide)
        model_shape = plan.model_shape(slide.shape)
        for tile in tile_grid(*model_shape, 64, 16):
            y0, y1, x0, x1 = full_window(tile, model_shape, slide.shape)
            np.testing.assert_array_equal(rows.window(y0, y1, x0, x1), image[y0:y1, x0:x1])
        # full-width strips read in pieces of whole tile columns (8,192 px: one piece here)
        assert all(x0 == 0 and x1 == 455 for _, _, x0, x1 in reads)
        assert [r[0] for r in reads[1:]] == [r[1] for r in reads[:-1]]  # each row once
        assert reads[-1][1] == 701 and all(y1 % 64 == 0 for _, y1, _, _ in reads[:-1])
        with pytest.raises(ValueError, match="moved on"):
            rows.window(0, 10, 0, 10)
    with open_slide(path) as slide:  # windows that skip rows, and a window of a whole chunk
        rows = RowBuffer(slide)
        for y0, y1 in ((5, 70), (60, 120), (300, 400), (410, 420), (640, 701)):
            np.testing.assert_array_equal(rows.window(y0, y1, 7, 99), image[y0:y1, 7:99])
    with open_slide(path) as slide:  # rows read in pieces of two tile columns
        reads = []
        real = slide.read
        slide.read = lambda *window, **kw: reads.append(window) or real(*window, **kw)
        rows = RowBuffer(slide)
        rows.piece = 128
        for y0, y1 in ((0, 100), (90, 300), (650, 701)):
            np.testing.assert_array_equal(rows.window(y0, y1, 30, 400), image[y0:y1, 30:400])
        assert {(x0, x1) for _, _, x0, x1 in reads} == {
            (0, 128),
            (128, 256),
            (256, 384),
            (384, 455),
        }
        assert len(reads) == len(set(reads))  # nothing read twice
    striped = tmp_path / "striped.tif"  # 16-row strips: blocks of whole strips, full width
    tifffile.imwrite(striped, image, photometric="rgb", rowsperstrip=16)
    with open_slide(striped) as slide:
        reads = []
        real = slide.read
        slide.read = lambda *window, **kw: reads.append(window) or real(*window, **kw)
        rows = RowBuffer(slide)
        rows.piece = 128  # 128 x 512 px a block: 144 rows of 455 px
        for y0, y1 in ((3, 100), (90, 300), (650, 701)):
            np.testing.assert_array_equal(rows.window(y0, y1, 30, 400), image[y0:y1, 30:400])
        assert all(x0 == 0 and x1 == 455 and b1 - b0 <= 144 for b0, b1, x0, x1 in reads)
        assert all(b1 % 16 == 0 for _, b1, _, _ in reads[:-1]) and len(reads) == len(set(reads))


def test_tile_predictor_averages_views_and_models():
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return {"mask": self.conv(x)}

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    one = tile_predictor([Net()], device=torch.device("cpu"))(images)
    two = tile_predictor([Net(), Net()], device=torch.device("cpu"), weights=[1, 3])(images)
    assert one.shape == (2, 32, 32) and np.allclose(one, two, atol=1e-6)
    d4 = tile_predictor([Net()], device=torch.device("cpu"), tta=D4)(images)
    assert d4.shape == (2, 32, 32) and not np.allclose(one, d4)


def test_background_tiles_are_neither_read_nor_predicted(tmp_path):
    """With min_tissue, tiles of glass (a thumbnail says so) are blended in as zeros: the
    predictor never sees them, the tissue tiles come out as without skipping."""
    from common.infer.slide_inference import TilePlan, predict_slide, tissue_tiles
    from common.io.slides import open_slide, thumbnail

    image = np.full((600, 900, 3), 235, np.uint8)  # pale glass
    image[:, :300] = (180, 60, 160)  # stained tissue on the left third
    path = tmp_path / "half.tiff"
    tifffile.imwrite(path, image, tile=(128, 128))
    seen = []

    def ones(images):
        seen.append(len(images))
        return np.ones(images.shape[:3], np.float32)

    with open_slide(path) as slide:
        full = TilePlan(tile=64, scale=3, overlap=16, batch_size=4)
        skip = TilePlan(tile=64, scale=3, overlap=16, batch_size=4, min_tissue=0.05)
        everything = np.concatenate([b for _, b in predict_slide(slide, ones, full)])
        n_all = sum(seen)
        seen.clear()
        skipped = np.concatenate([b for _, b in predict_slide(slide, ones, skip)])
        keep = tissue_tiles(slide, skip, tile_grid(200, 300, 64, 16))
        small = thumbnail(slide, 1024)
        with pytest.MonkeyPatch.context() as patch:  # a thumbnail already read: no second pass
            patch.setattr("common.io.slides.thumbnail", lambda *a, **k: pytest.fail("read again"))
            given = np.concatenate(
                [b for _, b in predict_slide(slide, ones, skip, small_rgb=small)]
            )
    np.testing.assert_array_equal(given, skipped)
    assert np.allclose(everything, 1.0) and sum(seen) == 2 * sum(keep) < 2 * n_all
    assert np.allclose(skipped[:, : 100 - 16], 1.0)  # inside the tissue: as before
    assert np.allclose(skipped[:, 100 + 64 :], 0.0)  # far from it: zero, never predicted
    with pytest.raises(ValueError, match=r"min_tissue 1\.5"):
        TilePlan(tile=64, scale=3, min_tissue=1.5)
