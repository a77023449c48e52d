"""common.post.threshold_search gives exactly the Dice of post-processing followed by the metric."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pandas as pd
import pytest

from common.post.metrics import dice_per_image
from common.post.postprocess import quantise, triplet, two_stage
from common.post.threshold_search import (
    cross_fitted_thresholds,
    default_min_areas,
    reduce_maps,
    search_triplets,
    search_two_stage,
)


def _maps(seed, n=36, shape=(48, 40)):
    """Blob truths on a third of the images, noisy quantised maps that partly agree with them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truths = np.zeros((n, *shape), np.uint8)
    probs = np.zeros((n, *shape), np.uint8)
    for i in range(n):
        if rng.random() < 0.35:
            cy, cx, r = (
                rng.integers(5, shape[0] - 5),
                rng.integers(5, shape[1] - 5),
                rng.integers(1, 12),
            )
            truths[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        signal = truths[i] * rng.uniform(0.2, 0.7) + rng.random(shape) * rng.uniform(0.2, 0.6)
        probs[i] = quantise(np.clip(signal, 0, 1))
    return probs, truths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_search_is_exact(seed):
    probs, truths = _maps(seed)
    rng = np.random.default_rng(100 + seed)
    tops = np.round(rng.uniform(0, 1, 5), 3)
    bottoms = np.append(np.round(rng.uniform(0, 1, 4), 3), 51 / 255)  # one exactly on a level
    areas = np.sort(rng.choice(200, 4, replace=False))
    result = search_triplets(iter(probs), iter(truths), tops, areas, bottoms)
    assert len(result.table) == 5 * 4 * 5
    for row in result.table.itertuples():
        pred = np.stack([triplet(p, row.top, row.min_area, row.bottom) for p in probs])
        assert row.dice == pytest.approx(dice_per_image(pred, truths).mean(), abs=1e-12)
    best = result.table.loc[result.table["dice"].idxmax()]
    assert result.best["dice"] == best["dice"]
    assert result.empty_dice == pytest.approx(np.mean(truths.reshape(len(truths), -1).max(1) == 0))


def test_two_stage_search_is_exact():
    probs, truths = _maps(7)
    scores = np.random.default_rng(8).random(len(probs))
    result = search_two_stage(probs, truths, scores, [0.2, 0.5, 0.8], [0.3, 0.6], [0, 10, 50])
    assert list(result.table.columns) == ["cls_threshold", "seg_threshold", "min_area", "dice"]
    for row in result.table.itertuples():
        pred = np.stack(
            [
                two_stage(p, s, row.cls_threshold, row.seg_threshold, row.min_area)
                for p, s in zip(probs, scores, strict=True)
            ]
        )
        assert row.dice == pytest.approx(dice_per_image(pred, truths).mean(), abs=1e-12)


def test_default_grid_has_over_1000_points():
    probs, truths = _maps(3, n=6)
    result = search_triplets(probs, truths)
    assert len(result.table) >= 1000
    assert result.table["top"].nunique() == 19 and result.table["bottom"].nunique() == 19
    assert default_min_areas().max() == 4096 and default_min_areas()[0] == 0
    assert default_min_areas(256 * 256).max() == 256


def test_maps_are_streamed_one_at_a_time():
    probs, truths = _maps(4, n=10)
    alive = []

    def stream():
        for p in probs:
            copy = p.copy()
            alive.append(weakref.ref(copy))
            yield copy
            del copy
            gc.collect()
            assert sum(ref() is not None for ref in alive) <= 6  # bounded in-flight window

    search_triplets(stream(), iter(truths), [0.5], [0], [0.5])


def test_outputs_written(tmp_path):
    probs, truths = _maps(5)
    result = search_triplets(probs, truths)
    result.to_csv(tmp_path / "grid.csv")
    result.heatmap(tmp_path / "heatmap.png")
    table = pd.read_csv(tmp_path / "grid.csv")
    assert list(table.columns) == ["top", "min_area", "bottom", "dice"] and len(table) == len(
        result.table
    )
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.csv", "heatmap.png"]


def test_bad_input():
    probs, truths = _maps(6, n=4)
    with pytest.raises(ValueError):
        search_triplets(probs, truths[:3])
    with pytest.raises(ValueError, match="map 0: expected uint8"):
        search_triplets(probs.astype(np.float32) / 255, truths)
    with pytest.raises(ValueError, match="map 0: map shape"):
        search_triplets(probs, truths[:, :-1])
    with pytest.raises(ValueError, match="at least one map"):
        search_triplets([], [])
    with pytest.raises(ValueError, match="3 classification scores for 4 maps"):
        search_two_stage(probs, truths, [0.1, 0.2, 0.3])


def test_cross_fitted_thresholds_never_score_an_image_with_its_own_search():
    rng = np.random.default_rng(3)
    truths = [rng.random((16, 16)) < 0.3 for _ in range(12)]
    maps = [
        quantise(np.clip(t * rng.uniform(0.3, 0.9) + rng.random((16, 16)) * 0.4, 0, 1))
        for t in truths
    ]
    folds = np.array([0, 1, 2] * 4)
    stats = reduce_maps(maps, truths)
    found = cross_fitted_thresholds(stats, folds)
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    for fold in (0, 1, 2):
        others = [i for i in range(12) if folds[i] != fold]

        def mean_dice(t, others=others):
            return np.mean(
                [
                    dice_per_image((maps[i] >= round(t * 255))[None], truths[i][None])[0]
                    for i in others
                ]
            )

        expected = max(grid, key=lambda t: (mean_dice(t), -t))  # the first best on ties
        assert found[fold] == pytest.approx(expected), fold
    with pytest.raises(ValueError, match="3 fold labels for 12 images"):
        cross_fitted_thresholds(stats, [0, 1, 2])
    with pytest.raises(ValueError, match="fold 0 holds every image"):
        cross_fitted_thresholds(stats, np.zeros(12, int))
