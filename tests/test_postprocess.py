"""common.post.postprocess: the triplet rule, the uint8 threshold convention, small components."""

from __future__ import annotations

import numpy as np
import pytest

from common.post.postprocess import (
    binarize,
    quantise,
    quantised_cutoff,
    remove_small_components,
    triplet,
    triplet_batch,
    two_stage,
)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.95, 1.0, 51 / 255, 0.19999])
def test_uint8_threshold_is_q_over_255_above_t(t):
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = (levels.astype(np.float64) / 255 > t).astype(np.uint8)
    np.testing.assert_array_equal(binarize(levels, t), expected)
    assert quantised_cutoff(t) == int(np.argmax(np.append(expected.ravel(), 1)))


def test_float_maps_compare_directly():
    prob = np.array([[0.1, 0.5, 0.50001, 0.9]])
    np.testing.assert_array_equal(binarize(prob, 0.5), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="float in"):
        binarize(np.array([[1, 2]], dtype=np.int64), 0.5)


def test_quantise_round_trip():
    q = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(quantise(q / 255.0), q)


def test_triplet_rule():
    prob = np.zeros((10, 10), np.float32)
    prob[2:4, 2:4] = 0.9  # 4 confident pixels
    prob[2:6, 2:6] = np.maximum(prob[2:6, 2:6], 0.4)  # 16 pixels above 0.3
    kept = triplet(prob, top=0.8, min_area=4, bottom=0.3)
    assert kept.sum() == 16 and kept.dtype == np.uint8
    assert triplet(prob, top=0.8, min_area=5, bottom=0.3).sum() == 0
    assert triplet(prob, top=0.95, min_area=1, bottom=0.3).sum() == 0
    assert triplet(prob, top=0.95, min_area=0, bottom=0.3).sum() == 16
    batch = triplet_batch(np.stack([prob, prob * 0]), top=0.8, min_area=4, bottom=0.3)
    assert batch.shape == (2, 10, 10) and batch[0].sum() == 16 and batch[1].sum() == 0
    quantised = quantise(prob)
    np.testing.assert_array_equal(triplet(quantised, 0.8, 4, 0.3), kept)


def test_triplet_removes_small_components():
    prob = np.zeros((12, 12), np.float32)
    prob[1:5, 1:5] = 0.9  # 16 px
    prob[9, 9] = 0.9  # 1 px
    prob[8, 8] = 0.9  # touches (9, 9) diagonally: one 8-connected component of 2 px
    out = triplet(prob, 0.5, 1, 0.5, min_component=3)
    assert out.sum() == 16 and out[9, 9] == 0
    assert remove_small_components(out, 17).sum() == 0
    four = remove_small_components(prob > 0.5, 2, connectivity=4)
    assert four[8, 8] == 0 and four[9, 9] == 0


def test_two_stage_rule():
    prob = np.zeros((6, 6), np.float32)
    prob[:2, :2] = 0.8
    assert two_stage(prob, 0.9, 0.5, 0.5, 4).sum() == 4
    assert two_stage(prob, 0.5, 0.5, 0.5, 4).sum() == 0  # score must be above the threshold
    assert two_stage(prob, 0.9, 0.5, 0.5, 5).sum() == 0


def test_triplet_shape_errors():
    with pytest.raises(ValueError, match="triplet_batch"):
        triplet(np.zeros((2, 3, 3)), 0.5, 0, 0.5)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        triplet_batch(np.zeros((3, 3)), 0.5, 0, 0.5)


def test_structure_rules():
    from common.post.postprocess import clean_mask, fill_holes, largest_component, largest_per_side

    mask = np.zeros((20, 20), np.uint8)
    mask[2:5, 2:5] = 1  # left, small
    mask[10:18, 1:6] = 1  # left, large
    mask[3:6, 14:16] = 1  # right, small
    mask[10:12, 12:19] = 1  # right, large
    assert largest_component(mask).sum() == 40 and largest_component(mask)[12, 3] == 1
    per_side = largest_per_side(mask)
    assert per_side.sum() == 40 + 14 and per_side[11, 15] == 1 and per_side[3, 3] == 0
    ring = np.zeros((10, 10), np.uint8)
    ring[2:8, 2:8], ring[4:6, 4:6] = 1, 0
    assert fill_holes(ring).sum() == 36
    assert clean_mask(ring, "all", fill=False).sum() == 32
    assert np.array_equal(clean_mask(np.zeros((4, 4)), "largest", True), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="unknown component rule 'biggest'"):
        clean_mask(ring, "biggest")
