"""Read a DICOM radiograph as a 2-D uint8 image in display orientation.

pydicom decodes the pixel data, with the maintained plugins in requirements.txt for compressed
transfer syntaxes (Pillow / pylibjpeg-libjpeg: JPEG Baseline, Extended, Lossless and JPEG-LS;
pylibjpeg-openjpeg: JPEG 2000; pydicom itself or pylibjpeg-rle: RLE Lossless).

Conversion to uint8, in this order:

1. 8-bit unsigned data is used as stored.
2. Deeper data (12-, 14-, 16-bit, signed or not) goes through the modality LUT (Rescale Slope /
   Intercept), then is windowed linearly with the file's first Window Center / Width when it has
   one, else scaled linearly between its 0.5th and 99.5th percentiles (robust to a few extreme
   pixels such as burnt-in markers); values outside are clipped.
3. Colour images (RGB, YBR) are converted to grey (ITU-R 601 luma).
4. MONOCHROME1 (white means low values) is inverted, so bone is always bright.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from common.io.images import window_to_uint8
from common.io.paths import check_id

PERCENTILES = (0.5, 99.5)  # scaling range for deep images that carry no window


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """The image of a single-frame DICOM file as a C-contiguous (rows, columns) uint8 array.

    Raises ``ValueError`` naming the file and the reason for a missing, truncated or non-DICOM
    file, or pixel data that cannot be decoded.
    """
    return read_dicom_with_tags(path, ())[0]


def read_dicom_with_tags(
    path: str | os.PathLike, keywords: tuple[str, ...]
) -> tuple[np.ndarray, dict[str, str]]:
    """``read_dicom``'s image plus the named tags as stripped strings ("" when absent)."""
    dataset = _read_dataset(path)
    tags = {keyword: _tag_text(dataset.get(keyword)) for keyword in keywords}
    return _decode(dataset, path), tags


def _tag_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(item).strip() for item in value)
    return str(value).strip()


def _decode(dataset: pydicom.Dataset, path: str | os.PathLike) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SIIM stage-2 "Invalid value for VR UI"
            pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for undecodable data
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        name = getattr(syntax, "name", syntax)
        raise ValueError(
            f"{path}: pixel data cannot be decoded ({name}): {_first_line(error)}"
        ) from None
    return to_uint8(pixels, dataset, path)


def _read_dataset(path: str | os.PathLike) -> pydicom.Dataset:
    """The dataset of a DICOM file; ``ValueError`` if the file is missing or is not DICOM."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: DICOM file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path)
    except InvalidDicomError:
        raise ValueError(f"{path}: not a DICOM file (no DICM preamble)") from None
    except Exception as error:
        raise ValueError(f"{path}: unreadable DICOM: {_first_line(error)}") from None


def to_uint8(
    pixels: np.ndarray, dataset: pydicom.Dataset, path: str | os.PathLike = ""
) -> np.ndarray:
    """Convert decoded pixel data to a display-ready uint8 image (see the module docstring)."""
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        raise ValueError(f"{path}: multi-frame DICOM ({frames} frames), expected one radiograph")
    expected = 3 if samples == 3 else 2
    if pixels.ndim != expected or pixels.size == 0:
        raise ValueError(f"{path}: unexpected pixel array shape {pixels.shape}")
    image = _scale(pixels, dataset)
    if samples == 3:  # pydicom returns colour as RGB
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    if str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        image = 255 - image
    return np.ascontiguousarray(image, dtype=np.uint8)


def _scale(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    window = _window(dataset)
    if window is not None:
        center, width = window
        low, high = center - width / 2, center + width / 2
    else:
        low, high = np.percentile(values, PERCENTILES)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return window_to_uint8(values, low, high)


def _window(dataset: pydicom.Dataset) -> tuple[float, float] | None:
    center = dataset.get("WindowCenter")
    width = dataset.get("WindowWidth")
    if center is None or width is None:
        return None
    center = float(center[0] if isinstance(center, MultiValue) else center)
    width = float(width[0] if isinstance(width, MultiValue) else width)
    return (center, width) if width > 0 else None


def _first_line(error: Exception) -> str:
    """The error's message on one line (pydicom lists one line per decoder plugin)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines)[:400] if lines else type(error).__name__


def find_dicoms(folder: str | os.PathLike) -> dict[str, Path]:
    """ImageId (file stem) -> path of every ``*.dcm`` below ``folder``, searched recursively."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: DICOM folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.dcm")):
        image_id = check_id(path.stem, str(path))
        if image_id in found:
            raise ValueError(
                f"ImageId {image_id!r} has two DICOM files: {found[image_id]} and {path}"
            )
        found[image_id] = path
    return found
