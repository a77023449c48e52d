"""Lung readers on the real JSRT/SCR files (both layouts), the palette pitfall, the left/right
convention and bad input."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from competitions.lung.raw import (
    STRUCTURES,
    find_cases,
    load_case,
    read_image,
    read_structure,
    scr_fold,
)
from tests.conftest import shared_path


def test_512_layout_has_every_case():
    cases = find_cases(shared_path("jsrt_scr", "512"))
    assert len(cases) == 247 and sum(c.nodule for c in cases) == 154
    assert {scr_fold(c) for c in cases} == {0, 1}
    assert scr_fold(next(c for c in cases if c.case_id == "JPCLN001")) == 0
    image, masks = load_case(cases[0])
    assert image.shape == (512, 512) and masks.shape == (5, 512, 512)
    assert set(np.unique(masks)) <= {0, 1} and masks.sum(axis=(1, 2)).min() > 0


def test_native_palette_images_are_not_inverted():
    native = find_cases(shared_path("jsrt_scr", "native"))
    assert len(native) == 20
    case = native[0]
    image = read_image(case.image)
    assert image.shape == (2048, 2048)
    raw_indices = np.asarray(Image.open(case.image))  # the pitfall: palette not applied
    reference = read_image(shared_path("jsrt_scr", "512", "images", f"{case.case_id}.png"))
    small = cv2.resize(image, (512, 512), interpolation=cv2.INTER_AREA).astype(float)
    wrong = cv2.resize(raw_indices, (512, 512), interpolation=cv2.INTER_AREA).astype(float)
    assert np.corrcoef(small.ravel(), reference.ravel())[0, 1] > 0.99
    assert np.corrcoef(wrong.ravel(), reference.ravel())[0, 1] < -0.9


def test_native_masks_follow_the_image_grid_and_match_the_512_set():
    case = find_cases(shared_path("jsrt_scr", "native"))[1]
    _, masks = load_case(case)
    assert masks.shape == (5, 2048, 2048)
    for index, structure in enumerate(STRUCTURES):
        # the 512 set took the nearest 1024 pixel to each 512 pixel's centre: 1024 pixel 2i + 1,
        # which is 2048 pixel 4i + 2 on our grid
        ours = masks[index][2::4, 2::4]
        path = shared_path("jsrt_scr", "512", "masks", structure, f"{case.case_id}.png")
        np.testing.assert_array_equal(ours, read_structure(path, (512, 512)), err_msg=structure)


def test_left_lung_is_on_the_image_right():
    for case in find_cases(shared_path("jsrt_scr", "512"))[:10]:
        _, masks = load_case(case)
        columns = np.arange(512)
        left = (masks[0].sum(axis=0) * columns).sum() / masks[0].sum()
        right = (masks[1].sum(axis=0) * columns).sum() / masks[1].sum()
        assert left > 256 > right, case.case_id


def _copy_case(tmp_path, case_id="JPCLN001"):
    source = shared_path("jsrt_scr", "512")
    (tmp_path / "images").mkdir()
    shutil.copy(source / "images" / f"{case_id}.png", tmp_path / "images")
    for structure in STRUCTURES:
        (tmp_path / "masks" / structure).mkdir(parents=True)
        shutil.copy(source / "masks" / structure / f"{case_id}.png", tmp_path / "masks" / structure)
    return tmp_path


def test_bad_input_names_case_and_file(tmp_path):
    root = _copy_case(tmp_path)
    (root / "masks" / "heart" / "JPCLN001.png").unlink()
    with pytest.raises(ValueError, match=r"case JPCLN001: no heart mask"):
        find_cases(root)
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(root / "masks" / "heart" / "JPCLN001.png")
    case = find_cases(root)[0]
    with pytest.raises(ValueError, match=r"case JPCLN001: .*heart.*300x300, which does not divide"):
        load_case(case)
    (root / "images" / "JPCLN001.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"case JPCLN001: .*JPCLN001.png is not a readable image"):
        load_case(case)
    with pytest.raises(ValueError, match="no images/ folder"):
        find_cases(tmp_path / "absent")
