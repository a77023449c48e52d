"""Lung prepare: both layouts into training and reference masks, caching, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from common.io.images import read_mask, read_png
from competitions.lung.prepare import prepare, resolve_raw, sample_centres
from competitions.lung.raw import STRUCTURES, find_cases, load_case
from tests.conftest import shared_path


def _link_cases(source, target, ids, image_suffix, mask_suffix):
    (target / "images").mkdir(parents=True)
    for case in ids:
        (target / "images" / f"{case}{image_suffix}").symlink_to(
            source / "images" / f"{case}{image_suffix}"
        )
        for structure in STRUCTURES:
            folder = target / "masks" / structure
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{case}{mask_suffix}").symlink_to(
                source / "masks" / structure / f"{case}{mask_suffix}"
            )
    return target


def test_native_layout_reference_masks_equal_the_published_512_masks(tmp_path):
    native, published = shared_path("jsrt_scr", "native"), shared_path("jsrt_scr", "512")
    ids = ["JPCLN001", "JPCNN002"]
    raw = _link_cases(native, tmp_path / "raw", ids, ".IMG.png", ".gif")
    out = prepare(256, 512, raw=raw, prepared=tmp_path / "prepared", log=lambda _: None)
    cases = pd.read_csv(out / "cases.csv")
    assert cases["case"].tolist() == ids and cases["height"].tolist() == [2048, 2048]
    assert cases["scr_fold"].tolist() == [0, 1] and cases["nodule"].tolist() == [1, 0]
    for case in ids:
        for structure in STRUCTURES:
            reference = read_mask(out / "reference" / structure / f"{case}.png", (512, 512))
            expected = read_mask(published / "masks" / structure / f"{case}.png", (512, 512))
            assert np.array_equal(reference, expected), (case, structure)
            row = cases.set_index("case").loc[case]
            assert row[f"area_{structure}"] == expected.sum()
        image = read_png(out / "images" / f"{case}.png", (256, 256))
        downsized = read_png(published / "images" / f"{case}.png")[::2, ::2]
        assert abs(float(image.mean()) - float(downsized.mean())) < 3  # not inverted


def test_512_layout_and_cache(tmp_path):
    published = shared_path("jsrt_scr", "512")
    raw = _link_cases(published, tmp_path / "raw", ["JPCLN003", "JPCNN004"], ".png", ".png")
    out = prepare(384, 512, raw=raw, prepared=tmp_path / "prepared", log=lambda _: None)
    _, masks = load_case(find_cases(raw)[0])
    reference = read_mask(out / "reference" / "heart" / "JPCLN003.png")
    assert np.array_equal(reference, masks[2])
    assert read_mask(out / "masks" / "heart" / "JPCLN003.png").shape == (384, 384)
    stamp = (out / "cases.csv").stat().st_mtime_ns
    said = []
    prepare(384, 512, raw=raw, prepared=tmp_path / "prepared", log=said.append)
    assert not said and (out / "cases.csv").stat().st_mtime_ns == stamp  # nothing redone


def test_synthetic_default_is_announced(tmp_path, monkeypatch):
    said = []
    source = resolve_raw(tmp_path / "raw", tmp_path / "synthetic", log=said.append)
    assert source.root == tmp_path / "synthetic" and source.synthetic and "SYNTHETIC" in said[0]
    out = prepare(
        128,
        256,
        raw=tmp_path / "raw",
        synthetic=tmp_path / "synthetic",
        prepared=tmp_path / "prepared",
        log=lambda _: None,
    )
    cases = pd.read_csv(out / "cases.csv")
    assert len(cases) == 40 and set(cases["nodule"]) == {0, 1}
    assert json.loads((out / "source.json").read_text())["score_size"] == 256


def test_a_raw_folder_without_images_is_refused(tmp_path):
    (tmp_path / "raw" / "masks").mkdir(parents=True)
    with pytest.raises(ValueError, match="does not hold images/"):
        resolve_raw(tmp_path / "raw", tmp_path / "synthetic")


def test_a_missing_mask_names_the_case_and_nothing_is_written(tmp_path):
    published = shared_path("jsrt_scr", "512")
    raw = _link_cases(published, tmp_path / "raw", ["JPCLN003"], ".png", ".png")
    (raw / "masks" / "heart" / "JPCLN003.png").unlink()
    with pytest.raises(ValueError, match="case JPCLN003: no heart mask"):
        prepare(128, 512, raw=raw, prepared=tmp_path / "prepared", log=lambda _: None)
    assert not (tmp_path / "prepared" / "128").exists()  # found while listing the cases


def test_sample_centres():
    mask = np.zeros((8, 8), np.uint8)
    mask[1::4, 1::4] = 1  # wrong phase: dropped
    mask[2::4, 2::4] = 1
    assert sample_centres(mask, 2).tolist() == [[1, 1], [1, 1]]
    assert sample_centres(mask[:2, :2], 4).shape == (4, 4)
