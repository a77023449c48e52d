"""The synthetic lung set: read by the real readers, the anatomy's geometry, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from competitions.lung.raw import STRUCTURES, find_cases, load_case, scr_fold
from competitions.lung.synthetic import SyntheticSpec, generate

SPEC = SyntheticSpec(size=128, n_cases=8, seed=1)


def test_synthetic_set_reads_like_the_real_one(tmp_path):
    root = generate(tmp_path / "lung", SPEC)
    cases = find_cases(root)
    assert len(cases) == 8 and sum(c.nodule for c in cases) == 4
    assert sorted(scr_fold(c) for c in cases) == [0] * 4 + [1] * 4
    for case in cases:
        image, masks = load_case(case)
        assert image.shape == (128, 128) and masks.shape == (5, 128, 128)
        area = dict(zip(STRUCTURES, masks.sum(axis=(1, 2)), strict=True))
        assert min(area.values()) > 0 and area["left_clavicle"] < area["heart"] < area["left_lung"]
        columns = np.arange(128)
        centre = {
            s: (masks[i].sum(0) * columns).sum() / masks[i].sum() for i, s in enumerate(STRUCTURES)
        }
        assert centre["left_lung"] > 64 > centre["right_lung"]  # the patient's left: image right
        assert centre["left_clavicle"] > 64 > centre["right_clavicle"]
        lungs = masks[0] | masks[1]
        assert (masks[2] & lungs).any()  # the heart overlaps the lungs: a multi-label problem
        inside, outside = image[lungs == 1].mean(), image[lungs == 0].mean()
        assert inside < outside - 20  # lung fields are darker


def test_deterministic_and_validated(tmp_path):
    first = generate(tmp_path / "a", SPEC)
    second = generate(tmp_path / "b", SPEC)
    for path in sorted(first.rglob("*.png")):
        assert path.read_bytes() == (second / path.relative_to(first)).read_bytes()
    with pytest.raises(ValueError, match="size 32"):
        SyntheticSpec(size=32)
