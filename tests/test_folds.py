"""common.data.folds: stratification by has-mask and area bin, determinism, real SIIM ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.data.folds import area_bins, make_folds, read_folds, write_folds
from common.io.rle import siim_rle_decode
from tests.conftest import shared_path


def _check_balanced(folds: pd.DataFrame, areas: pd.Series, n_folds: int, tolerance: float):
    assert sorted(folds["fold"].unique()) == list(range(n_folds))
    assert folds["ImageId"].is_unique
    areas = areas.loc[folds["ImageId"]].to_numpy()
    sizes = folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1 + len(folds) * 0.002
    overall = (areas > 0).mean()
    bins = area_bins(areas, 8)
    for k in range(n_folds):
        in_fold = folds["fold"].to_numpy() == k
        assert abs((areas[in_fold] > 0).mean() - overall) < tolerance
        share = np.bincount(bins[in_fold] + 1, minlength=9) / in_fold.sum()
        np.testing.assert_allclose(
            share, np.bincount(bins + 1, minlength=9) / len(bins), atol=tolerance
        )


def test_synthetic_folds_are_balanced_and_deterministic():
    rng = np.random.default_rng(0)
    ids = [f"img{i:04d}" for i in range(1000)]
    areas = np.where(rng.random(1000) < 0.22, rng.lognormal(8, 1.5, 1000).astype(int) + 1, 0)
    folds = make_folds(ids, areas, n_folds=5, seed=3)
    _check_balanced(folds, pd.Series(areas, index=ids), 5, tolerance=0.02)
    pd.testing.assert_frame_equal(folds, make_folds(ids, areas, n_folds=5, seed=3))
    assert not folds["fold"].equals(make_folds(ids, areas, n_folds=5, seed=4)["fold"])


def test_real_siim_ids_and_areas():
    frame = pd.read_csv(shared_path("siim", "train-rle.reconstructed.csv"), dtype=str)
    frame.columns = [c.strip() for c in frame.columns]
    areas = {}
    for image_id, encoded in zip(frame["ImageId"], frame["EncodedPixels"], strict=True):
        mask = siim_rle_decode(encoded)
        areas[image_id] = areas[image_id] | mask if image_id in areas else mask
    areas = pd.Series({k: int(v.sum()) for k, v in areas.items()})
    assert len(areas) == 10675 and (areas > 0).sum() == 2379
    folds = make_folds(areas.index, areas.to_numpy(), n_folds=5, seed=42)
    assert set(folds["ImageId"]) == set(frame["ImageId"])  # each multi-row id is one sample
    _check_balanced(folds, areas, 5, tolerance=0.01)


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match=r"'b' appears more than once.*merge"):
        make_folds(["a", "b", "b", "c", "d"], [0, 1, 2, 0, 0], n_folds=2)


@pytest.mark.parametrize(
    ("areas", "message"),
    [
        ([0, 1, -1, 0], "non-negative"),
        ([0, 1, 0], "3 mask areas"),
    ],
)
def test_bad_areas(areas, message):
    with pytest.raises(ValueError, match=message):
        make_folds(["a", "b", "c", "d"], areas, n_folds=2)


def test_csv_round_trip_and_validation(tmp_path):
    folds = make_folds([f"i{k}" for k in range(20)], [0] * 15 + [5] * 5, n_folds=4)
    write_folds(folds, tmp_path / "folds.csv")
    pd.testing.assert_frame_equal(read_folds(tmp_path / "folds.csv"), folds)
    (tmp_path / "dup.csv").write_text("ImageId,fold\na,0\na,1\n")
    with pytest.raises(ValueError, match=r"dup.csv: image id 'a' is in more than one row"):
        read_folds(tmp_path / "dup.csv")
    (tmp_path / "cols.csv").write_text("id,fold\na,0\n")
    with pytest.raises(ValueError, match=r"cols.csv: missing column\(s\) \['ImageId'\]"):
        read_folds(tmp_path / "cols.csv")
    (tmp_path / "neg.csv").write_text("ImageId,fold\na,-1\n")
    with pytest.raises(ValueError, match=r"neg.csv: fold must be"):
        read_folds(tmp_path / "neg.csv")
