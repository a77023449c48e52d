"""The slide search against a brute-force reference, and its cross-fitting: each fold's pair is
the best on the other folds' slides only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from common.post.postprocess import quantised_cutoff
from common.post.slide_search import score_honestly, search_slides

THRESHOLDS = [0.3, 0.5, 0.7]
MIN_SIZES = [0, 40, 400]  # full-resolution pixels
SCALE = 4.0  # full-resolution pixels per model pixel


def _slides(seed: int, n: int = 6, high: float = 0.85, low: float = 0.15):
    """Maps near ``high`` on the truth and ``low`` elsewhere, with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        truth = np.zeros((48, 64), np.uint8)
        for _ in range(rng.integers(0, 4)):
            y, x, r = rng.integers(6, 42), rng.integers(6, 58), rng.integers(2, 7)
            yy, xx = np.ogrid[:48, :64]
            truth[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 1
        noise = rng.normal(0, 0.1, truth.shape)
        prob = np.clip(truth * (high - low) + low + noise, 0, 1)
        out.append((np.rint(prob * 255).astype(np.uint8), truth))
    return out


def _reference(prob, truth, threshold, min_size):
    binary = prob >= quantised_cutoff(threshold)
    labels, n = ndimage.label(binary, structure=np.ones((3, 3)))
    areas = ndimage.sum(binary, labels, range(1, n + 1))
    keep = np.isin(labels, [i + 1 for i, a in enumerate(areas) if a >= min_size / SCALE])
    total = keep.sum() + truth.sum()
    return 1.0 if total == 0 else 2 * (keep & (truth > 0)).sum() / total


def test_search_matches_a_brute_force_reference():
    pairs = _slides(0)
    search = search_slides(pairs, THRESHOLDS, MIN_SIZES, SCALE)
    for i, t in enumerate(THRESHOLDS):
        for j, m in enumerate(MIN_SIZES):
            expected = [_reference(p, truth, t, m) for p, truth in pairs]
            np.testing.assert_allclose(search.per_slide[:, i, j], expected, atol=1e-12)
    assert search.best["dice"] == pytest.approx(search.per_slide.mean(axis=0).max())


def test_cross_fitted_pairs_come_from_the_other_folds_only():
    # fold 0: five dim slides (best threshold low); folds 1 and 2: bright ones (best high), so
    # fold 0's pair searched without it differs from the pair searched on every slide
    pairs = _slides(1, 5, high=0.4, low=0.05) + _slides(2, 4, high=0.95, low=0.6)
    folds = [0, 0, 0, 0, 0, 1, 1, 2, 2]
    search = search_slides(pairs, THRESHOLDS, MIN_SIZES, SCALE)
    chosen = search.cross_fitted(folds)
    for fold in (0, 1, 2):
        others = [k for k, f in enumerate(folds) if f != fold]
        means = {(t, m): np.mean([_reference(*pairs[k], t, m) for k in others])
                 for t in THRESHOLDS for m in MIN_SIZES}  # fmt: skip
        best = max(means.values())
        assert means[(chosen[fold]["threshold"], chosen[fold]["min_size"])] == pytest.approx(best)
    assert chosen[0]["threshold"] != search.best["threshold"]
    assert search.cross_fitted([0] * 9) is None  # one fold: nothing to cross-fit with


def test_honest_score_says_how_it_was_chosen():
    pairs = _slides(2, 4)
    shape = pairs[0][0].shape
    from common.io.rle import rle_encode

    slides = [{"id": str(k), "fold": k % 2, "shape": shape, "rle": rle_encode(truth, order="F"),
               "map": prob} for k, (prob, truth) in enumerate(pairs)]  # fmt: skip
    search = search_slides(pairs, THRESHOLDS, MIN_SIZES, 1.0)
    scored, mode = score_honestly(slides, lambda s: s["map"], search)
    assert mode == "cross-fitted"
    chosen = search.cross_fitted([s["fold"] for s in slides])
    assert [pair for *_, pair in scored] == [chosen[s["fold"]] for s in slides]
    single = [s | {"fold": 0} for s in slides]
    scored, mode = score_honestly(single, lambda s: s["map"], search)
    assert mode == "in-sample (one fold)"
    assert {pair["threshold"] for *_, pair in scored} == {search.best["threshold"]}
