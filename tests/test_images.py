"""common.io.images: PNG round trips, clear errors for bad files, resizing that keeps mask area."""

from __future__ import annotations

import numpy as np
import pytest

from common.io.dicom import read_dicom, read_dicom_with_tags
from common.io.images import read_mask, read_png, resize_image, resize_mask, write_mask, write_png
from tests.conftest import shared_path


def test_png_round_trip_and_no_temp_left(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    write_png(tmp_path / "a" / "x.png", image)
    np.testing.assert_array_equal(read_png(tmp_path / "a" / "x.png", (37, 53)), image)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.png"]
    write_png(tmp_path / "m.png", (image > 128).astype(np.uint8) * 255)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), image > 128)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), (b"", "not a readable PNG"), (b"\x89PNG\r\n\x1a\nxx", "not a readable")],
)
def test_bad_png_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        read_png(path)
    assert str(path) in str(caught.value)


def test_wrong_size_and_wrong_dtype_are_refused(tmp_path):
    write_png(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"expected \(16, 16\)"):
        read_png(tmp_path / "x.png", (16, 16))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 3\) uint8"):
        write_png(tmp_path / "y.png", np.zeros((8, 8), np.float32))


def test_resize_mask_keeps_area_on_average():
    rng = np.random.default_rng(1)
    areas = []
    for _ in range(20):
        mask = np.zeros((1024, 1024), np.uint8)
        y, x, r = [*rng.integers(200, 800, 2).tolist(), int(rng.integers(10, 150))]
        yy, xx = np.ogrid[:1024, :1024]
        mask[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = 1
        small = resize_mask(mask, 256)
        assert set(np.unique(small)) <= {0, 1}
        areas.append((small.sum() * 16, mask.sum()))
    ratio = np.array(areas, dtype=float)
    assert abs(ratio[:, 0].sum() / ratio[:, 1].sum() - 1) < 0.02
    assert resize_image(np.zeros((64, 64), np.uint8), 64).shape == (64, 64)
    assert resize_image(np.zeros((64, 64), np.uint8), 128).shape == (128, 128)


def test_dicom_tags_come_with_the_same_image():
    path = shared_path("siim", "dicom", "1.2.276.0.7230010.3.1.4.8323329.307.1517875162.311533.dcm")
    image, tags = read_dicom_with_tags(path, ("PatientSex", "ViewPosition", "NoSuchTag"))
    np.testing.assert_array_equal(image, read_dicom(path))
    assert tags == {"PatientSex": "M", "ViewPosition": "PA", "NoSuchTag": ""}


def test_rgb_round_trip_channels_and_resize(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)  # pure red stays red: the channel order is RGB on both sides
    write_png(tmp_path / "c.png", rgb)
    back = read_png(tmp_path / "c.png", (21, 34), channels=0)
    np.testing.assert_array_equal(back, rgb)
    assert tuple(back[0, 0]) == (255, 0, 0)
    grey = read_png(tmp_path / "c.png", channels=1)
    assert grey.shape == (21, 34) and abs(int(grey[0, 0]) - 76) <= 1  # 0.299 * 255
    write_png(tmp_path / "g.png", grey)
    assert read_png(tmp_path / "g.png", channels=3).shape == (21, 34, 3)
    assert read_png(tmp_path / "g.png", channels=0).shape == (21, 34)
    assert resize_image(rgb, 8).shape == (8, 8, 3)
    with pytest.raises(ValueError, match=r"c\.png: image is \(21, 34\), expected \(34, 21\)"):
        read_png(tmp_path / "c.png", (34, 21), channels=0)
    with pytest.raises(ValueError, match="uint8 array"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8))


def test_masks_are_one_bit_pngs_any_reader_sees_as_0_255(tmp_path):
    from PIL import Image

    mask = np.zeros((7, 9), bool)
    mask[2:5, 1:6] = True
    for given in (mask, mask.astype(np.uint8), mask.astype(np.uint8) * 255):
        write_mask(tmp_path / "m.png", given)
        np.testing.assert_array_equal(read_mask(tmp_path / "m.png", (7, 9)), mask)
        with Image.open(tmp_path / "m.png") as image:
            assert image.mode == "1"
            assert set(np.unique(np.asarray(image.convert("L")))) == {0, 255}
    with pytest.raises(ValueError, match=r"m3\.png: expected a \(H, W\) mask"):
        write_mask(tmp_path / "m3.png", np.zeros((4, 4, 3), np.uint8))
    assert not (tmp_path / "m3.png").exists()
