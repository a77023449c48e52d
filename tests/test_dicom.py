"""common.io.dicom: real SIIM files, pydicom's own files of other syntaxes and depths, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from common.io.dicom import read_dicom
from tests.conftest import shared_path

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped in the wheel
SIIM_6904 = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"


def _write(path: Path, pixels: np.ndarray, photometric="MONOCHROME2", **tags) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = tags.pop("BitsStored", ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_real_siim_files_decode_as_stored():
    folder = shared_path("siim", "dicom")
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 13
    for path in files:
        image = read_dicom(path)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
        assert image.shape == (1024, 1024) and image.dtype == np.uint8 and image.flags.c_contiguous
        np.testing.assert_array_equal(image, ds.pixel_array)  # 8-bit MONOCHROME2: used as stored


def test_monochrome1_is_inverted():
    normal = read_dicom(shared_path("siim", "dicom", f"{SIIM_6904}.dcm"))
    fake = read_dicom(shared_path("siim", "edge_cases", "Fake_MONOHR1.dcm"))
    np.testing.assert_array_equal(fake, 255 - normal)


def test_stage2_ids():
    files = sorted(shared_path("siim", "stage2_test_dicom").glob("ID_*.dcm"))
    assert len(files) == 8
    for path in files:
        assert read_dicom(path).shape == (1024, 1024)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_syntaxes_agree_with_uncompressed(name):
    reference = read_dicom(PYDICOM_FILES / "MR_small.dcm")
    np.testing.assert_array_equal(read_dicom(PYDICOM_FILES / name), reference)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("JPEG2000.dcm", (1024, 256)),  # JPEG 2000, 16-bit
        ("JPGExtended.dcm", (1024, 256)),  # JPEG Extended, 12-bit
        ("693_J2KI.dcm", (512, 512)),  # JPEG 2000 lossy, 14-bit signed with rescale
        ("JPEGLSNearLossless_16.dcm", (50, 10)),  # JPEG-LS near-lossless
        ("SC_rgb_jpeg.dcm", (256, 256)),  # colour JPEG Baseline -> grey
        ("CT_small.dcm", (128, 128)),
    ],
)
def test_other_syntaxes_and_depths(name, shape):
    image = read_dicom(PYDICOM_FILES / name)
    assert image.shape == shape and image.dtype == np.uint8
    assert image.max() > image.min()


def test_window_is_applied(tmp_path):
    pixels = np.array([[0, 1000], [1500, 2000]], dtype=np.uint16)
    path = _write(tmp_path / "w.dcm", pixels, BitsStored=12, WindowCenter=1000, WindowWidth=1000)
    np.testing.assert_array_equal(read_dicom(path), [[0, 128], [255, 255]])
    path = _write(
        tmp_path / "r.dcm",
        pixels,
        BitsStored=12,
        WindowCenter=0,
        WindowWidth=100,
        RescaleSlope=1,
        RescaleIntercept=-1000,
    )
    np.testing.assert_array_equal(read_dicom(path), [[0, 128], [255, 255]])


def test_deep_image_without_window_is_scaled_by_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(1000, 3000, (64, 64)).astype(np.uint16)
    pixels[0, 0] = 65535  # one burnt-in marker does not squash the rest
    image = read_dicom(_write(tmp_path / "p.dcm", pixels, PhotometricInterpretation="MONOCHROME2"))
    assert image[1:].min() <= 2 and image[1:].max() >= 253 and 100 < image.mean() < 155
    inverted = read_dicom(_write(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(inverted, 255 - image)
    flat = read_dicom(_write(tmp_path / "flat.dcm", np.full((8, 8), 7, np.uint16)))
    assert flat.max() == 0


def test_non_square_size_is_kept(tmp_path):
    pixels = np.arange(30 * 50, dtype=np.uint8).reshape(30, 50)
    np.testing.assert_array_equal(read_dicom(_write(tmp_path / "ns.dcm", pixels)), pixels)


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.dcm: DICOM file not found"):
        read_dicom(tmp_path / "missing.dcm")
    (tmp_path / "text.dcm").write_text("not a dicom")
    with pytest.raises(ValueError, match=r"text\.dcm: not a DICOM file"):
        read_dicom(tmp_path / "text.dcm")
    with pytest.raises(ValueError, match=r"MR_truncated\.dcm: pixel data cannot be decoded"):
        read_dicom(PYDICOM_FILES / "MR_truncated.dcm")
    with pytest.raises(
        ValueError, match=r"JPEG-lossy\.dcm: pixel data cannot be decoded \(JPEG Extended"
    ):
        read_dicom(PYDICOM_FILES / "JPEG-lossy.dcm")
    with pytest.raises(ValueError, match=r"rtplan\.dcm: pixel data cannot be decoded"):
        read_dicom(PYDICOM_FILES / "rtplan.dcm")
    with pytest.raises(ValueError, match=r"SC_rgb_rle_2frame\.dcm: multi-frame DICOM \(2 frames\)"):
        read_dicom(PYDICOM_FILES / "SC_rgb_rle_2frame.dcm")


def test_truncated_real_file(tmp_path):
    source = shared_path("siim", "dicom", f"{SIIM_6904}.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(source[: len(source) // 2])
    with pytest.raises(ValueError, match=r"cut\.dcm: "):
        read_dicom(cut)
    header_only = tmp_path / "header.dcm"
    header_only.write_bytes(source[:200])
    with pytest.raises(ValueError, match=r"header\.dcm: "):
        read_dicom(header_only)
