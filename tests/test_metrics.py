"""common.post.metrics against the per-image reference on random, empty and full batches."""

from __future__ import annotations

import numpy as np
import pytest

from common.post.metrics import (
    dice_jaccard,
    dice_per_class,
    dice_per_image,
    jaccard_per_class,
    jaccard_per_image,
    mean_dice,
    mean_dice_multiclass,
)
from tests.reference import ref_dice, ref_jaccard


def _batch(rng, n=12, shape=(17, 23)):
    pred = rng.random((n, *shape)) < rng.random((n, 1, 1)) * 0.5
    truth = rng.random((n, *shape)) < rng.random((n, 1, 1)) * 0.5
    pred[0] = truth[0] = False  # both empty
    pred[1], truth[1] = False, True  # empty prediction, full truth
    pred[2], truth[2] = True, False
    pred[3] = truth[3] = True
    return pred, truth


@pytest.mark.parametrize(
    "convert",
    [
        lambda m: m,
        lambda m: m.astype(np.uint8),
        lambda m: m.astype(np.uint8) * 255,
        lambda m: m.astype(np.float32),
    ],
)
def test_dice_and_jaccard_match_reference(convert):
    pred, truth = _batch(np.random.default_rng(0))
    expected_dice = [ref_dice(p, t) for p, t in zip(pred, truth, strict=True)]
    expected_iou = [ref_jaccard(p, t) for p, t in zip(pred, truth, strict=True)]
    np.testing.assert_allclose(
        dice_per_image(convert(pred), convert(truth)), expected_dice, rtol=1e-12
    )
    np.testing.assert_allclose(
        jaccard_per_image(convert(pred), convert(truth)), expected_iou, rtol=1e-12
    )
    assert mean_dice(convert(pred), convert(truth)) == pytest.approx(
        np.mean(expected_dice), abs=1e-12
    )


def test_kaggle_empty_rule():
    empty = np.zeros((1, 4, 4), np.uint8)
    some = empty.copy()
    some[0, 1, 1] = 1
    assert dice_per_image(empty, empty)[0] == 1.0
    assert dice_per_image(empty, some)[0] == 0.0
    assert dice_per_image(some, empty)[0] == 0.0
    assert dice_per_image(some, some)[0] == 1.0
    assert jaccard_per_image(empty, empty)[0] == 1.0


def test_multiclass_averages_image_class_pairs():
    rng = np.random.default_rng(1)
    pred = rng.random((5, 4, 9, 11)) < 0.3
    truth = rng.random((5, 4, 9, 11)) < 0.3
    pred[:, 2] = truth[:, 2] = False
    expected = np.array([[ref_dice(pred[i, c], truth[i, c]) for c in range(4)] for i in range(5)])
    np.testing.assert_allclose(dice_per_class(pred, truth), expected, rtol=1e-12)
    assert mean_dice_multiclass(pred, truth) == pytest.approx(expected.mean(), abs=1e-12)
    iou = np.array([[ref_jaccard(pred[i, c], truth[i, c]) for c in range(4)] for i in range(5)])
    np.testing.assert_allclose(jaccard_per_class(pred, truth), iou, rtol=1e-12)


def test_non_contiguous_input():
    pred, truth = _batch(np.random.default_rng(2), shape=(20, 20))
    expected = [ref_dice(p.T, t.T) for p, t in zip(pred, truth, strict=True)]
    np.testing.assert_allclose(
        dice_per_image(pred.transpose(0, 2, 1), truth.transpose(0, 2, 1)), expected
    )


def test_shape_errors():
    with pytest.raises(ValueError, match="does not match"):
        dice_per_image(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        dice_per_image(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        dice_per_class(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))


def test_dice_jaccard_of_one_mask():
    rng = np.random.default_rng(5)
    pred, truth = rng.random((9, 7)) < 0.4, rng.random((9, 7)) < 0.5
    scores = dice_jaccard(pred, truth.astype(np.uint8) * 255)
    assert scores == {
        "dice": pytest.approx(ref_dice(pred, truth)),
        "jaccard": pytest.approx(ref_jaccard(pred, truth)),
    }
    assert dice_jaccard(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == {
        "dice": 1.0,
        "jaccard": 1.0,
    }
