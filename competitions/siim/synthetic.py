"""The embedded synthetic SIIM dataset, written in the Kaggle stage-1 layout with its quirks.

    data/siim/synthetic/
      dicom-images-train/<study>/<series>/<ImageId>.dcm   real DICOMs (pydicom): some MONOCHROME1,
      dicom-images-test/<study>/<series>/<ImageId>.dcm    some JPEG Baseline compressed
      train-rle.csv          header 'ImageId, EncodedPixels', values with a leading space, ' -1'
                             for empty, one row per annotation (2-3 rows for some positives)
      sample_submission.csv  the test ids, every value -1
      test-rle.csv           the test truth, same format as train-rle.csv (kept apart: scoring only)
      manifest.json          the generation parameters; a re-run with the same ones does nothing

Images look enough like chest X-rays to make the task non-trivial: two dark lung fields with
vessel texture, rib arcs, a bright mediastinum and heart, exposure and contrast that vary, noise.
A pneumothorax is a smooth region along a lung's outer edge where the lung markings vanish and the
field is darker (air), bounded by a thin bright pleural line; sizes go from under 0.1% of the
image to over 10%.

    python -m competitions.siim.synthetic [--size 256] [--n-train 600] [--n-test 120] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from common.io.atomic import atomic_dir
from common.io.paths import data_dir
from common.io.rle import siim_rle_encode

UID_PREFIX = "1.2.826.0.1.3680043.10.511."  # synthetic, never a real patient
POSITIVE_RATE = 0.22
MONOCHROME1_RATE = 0.1
JPEG_RATE = 0.5


@dataclass(frozen=True)
class SyntheticSpec:
    size: int = 256
    n_train: int = 600
    n_test: int = 120
    seed: int = 0

    def __post_init__(self):
        # Below 64 px the lung fields and the smallest pneumothoraces no longer fit.
        for name, minimum in (("size", 64), ("n_train", 1), ("n_test", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"synthetic dataset: {name} must be an integer >= {minimum}, got {value!r}"
                )


@dataclass(frozen=True)
class _Case:
    image: np.ndarray  # uint8 display image
    annotations: list  # one uint8 mask per annotation
    sex: str
    age: int
    view: str


def _smooth_noise(rng, size: int, sigma: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _lung_masks(rng, size: int) -> list[np.ndarray]:
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    lungs = []
    for side in (-1, 1):  # image left (patient's right), image right
        cx = 0.5 + side * rng.uniform(0.17, 0.21)
        cy = rng.uniform(0.44, 0.5)
        rx, ry = rng.uniform(0.12, 0.15), rng.uniform(0.27, 0.32)
        ellipse = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        lungs.append(ellipse & (yy < cy + ry * 0.85))  # flat diaphragm at the base
    return lungs


def _pneumothorax(rng, lung: np.ndarray, side: int, area_fraction: float) -> np.ndarray:
    """A smooth region of ``lung`` along its outer (lateral) edge covering about ``area_fraction``
    of the image."""
    size = lung.shape[0]
    rows, cols = np.nonzero(lung)
    edge_x = cols.max() if side > 0 else cols.min()
    cy = rng.uniform(np.percentile(rows, 10), np.percentile(rows, 70))
    radius = max(1.5, np.sqrt(area_fraction * size * size / np.pi) * 1.6)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    blob = ((xx - edge_x) / radius) ** 2 + ((yy - cy) / (radius * rng.uniform(1.2, 2.2))) ** 2 < 1
    region = (blob & lung).astype(np.float32)
    smooth = cv2.GaussianBlur(region, (0, 0), max(1.0, radius / 6)) > 0.5
    return (smooth & lung).astype(np.uint8)


def _case(spec: SyntheticSpec, index: int, positive: bool) -> _Case:
    rng = np.random.default_rng([spec.seed, index])
    size = spec.size
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    lungs = _lung_masks(rng, size)
    annotations: list[np.ndarray] = []
    if positive:
        n_regions = rng.choice([1, 2, 3], p=[0.75, 0.18, 0.07])
        sides = rng.permutation(2)
        for k in range(n_regions):
            side_index = sides[k % 2]
            fraction = float(np.exp(rng.uniform(np.log(0.0004), np.log(0.08))))
            region = _pneumothorax(rng, lungs[side_index], -1 if side_index == 0 else 1, fraction)
            taken = (
                np.logical_or.reduce(annotations).astype(np.uint8)
                if annotations
                else np.zeros_like(region)
            )
            region = region & (cv2.dilate(taken, np.ones((5, 5), np.uint8)) == 0)
            if region.sum() >= 4:
                annotations.append(region.astype(np.uint8))
        if not annotations:  # keep the requested positive rate
            annotations.append(_pneumothorax(rng, lungs[0], -1, 0.01))
    ptx = np.logical_or.reduce(annotations) if annotations else np.zeros((size, size), bool)
    lung = (lungs[0] | lungs[1]).astype(np.float32)
    lung_soft = cv2.GaussianBlur(lung, (0, 0), size / 80)
    body = 0.75 - 0.25 * (np.abs(xx - 0.5) > 0.42) + 0.1 * yy
    image = body - 0.42 * lung_soft
    heart = ((xx - 0.55) / 0.14) ** 2 + ((yy - 0.68) / 0.12) ** 2 < 1
    spine = np.abs(xx - 0.5) < 0.05
    image += 0.25 * cv2.GaussianBlur((heart | spine).astype(np.float32), (0, 0), size / 60)
    ribs = np.zeros_like(image)
    for k in range(9):
        y0 = 0.16 + 0.075 * k + rng.normal(0, 0.006)
        curve = y0 + 1.4 * (xx - 0.5) ** 2 + 0.05 * np.abs(xx - 0.5)
        ribs += np.exp(-(((yy - curve) / 0.011) ** 2))
    markings = 0.06 * _smooth_noise(rng, size, size / 90) * lung_soft * (1 - ptx)
    image += 0.12 * ribs * (1 - 0.6 * ptx) + markings
    if ptx.any():
        air = cv2.GaussianBlur(ptx.astype(np.float32), (0, 0), size / 256 + 0.5)
        edge = cv2.morphologyEx(ptx.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        image += -rng.uniform(0.06, 0.12) * air + 0.08 * cv2.GaussianBlur(
            edge.astype(np.float32), (0, 0), 0.7
        )
    exposure = rng.uniform(0.8, 1.25)
    contrast = rng.uniform(0.75, 1.3)
    image = np.clip((image - 0.45) * contrast + 0.45, 0, 1) ** exposure
    image = image + rng.normal(0, rng.uniform(0.01, 0.035), image.shape)
    image = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return _Case(
        image=image,
        annotations=annotations,
        sex=str(rng.choice(["M", "F"])),
        age=int(rng.integers(12, 90)),
        view=str(rng.choice(["PA", "AP"], p=[0.6, 0.4])),
    )


def _uid(spec: SyntheticSpec, kind: str, index: int) -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[f"{spec.seed}:{spec.size}:{kind}:{index}"])


def _write_dicom(path: Path, case: _Case, image_id: str, study: str, series: str, rng) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = image_id
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, image_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID = ds.PatientName = image_id.rsplit(".", 1)[-1]
    ds.PatientAge, ds.PatientSex, ds.ViewPosition = f"{case.age:03d}Y", case.sex, case.view
    ds.Modality, ds.BodyPartExamined, ds.ConversionType = "CR", "CHEST", "WSD"
    ds.Rows, ds.Columns = case.image.shape
    ds.PixelSpacing = [0.168 * 1024 / case.image.shape[0]] * 2
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.PixelRepresentation = 0
    monochrome1 = rng.random() < MONOCHROME1_RATE
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    stored = 255 - case.image if monochrome1 else case.image
    if rng.random() < JPEG_RATE:
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, format="JPEG", quality=95)
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _make_one(spec: SyntheticSpec, root: Path, split: str, index: int, positive: bool) -> list[str]:
    case = _case(spec, index, positive)
    image_id = _uid(spec, "image", index)
    study, series = _uid(spec, "study", index), _uid(spec, "series", index)
    rng = np.random.default_rng([spec.seed, index, 1])
    folder = root / f"dicom-images-{split}" / study / series
    _write_dicom(folder / f"{image_id}.dcm", case, image_id, study, series, rng)
    if not case.annotations:
        return [f"{image_id}, -1"]
    return [f"{image_id}, {siim_rle_encode(mask)}" for mask in case.annotations]


def generate(out: str | Path, spec: SyntheticSpec = SyntheticSpec(), *, n_jobs: int = 2) -> Path:
    """Write the synthetic set to ``out`` (atomically: built beside it, then renamed) unless it
    already holds one made with the same spec. Returns ``out``."""
    out = Path(out)
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) == asdict(spec):
        return out
    with atomic_dir(out) as build:
        total = spec.n_train + spec.n_test
        positives = np.random.default_rng([spec.seed, 999]).random(total) < POSITIVE_RATE
        jobs = [
            delayed(_make_one)(
                spec, build, "train" if i < spec.n_train else "test", i, bool(positives[i])
            )
            for i in range(total)
        ]
        rows = Parallel(n_jobs=n_jobs)(jobs)
        header = "ImageId, EncodedPixels\n"
        train = [line for lines in rows[: spec.n_train] for line in lines]
        test = [line for lines in rows[spec.n_train :] for line in lines]
        (build / "train-rle.csv").write_text(header + "\n".join(train) + "\n")
        (build / "test-rle.csv").write_text(header + "\n".join(test) + "\n")
        test_ids = [lines[0].split(",")[0] for lines in rows[spec.n_train :]]
        sample = "ImageId,EncodedPixels\n" + "".join(f"{i},-1\n" for i in test_ids)
        (build / "sample_submission.csv").write_text(sample)
        (build / "manifest.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SyntheticSpec()
    parser.add_argument("--out", default=str(data_dir("siim", "synthetic")))
    parser.add_argument(
        "--size", type=int, default=defaults.size, help="image side (1024 for full size)"
    )
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--n-test", type=int, default=defaults.n_test)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        spec = SyntheticSpec(
            size=args.size, n_train=args.n_train, n_test=args.n_test, seed=args.seed
        )
    except ValueError as error:
        parser.error(str(error))
    print(f"SIIM: writing the synthetic dataset ({spec}) to {args.out}")
    generate(args.out, spec, n_jobs=args.jobs)


if __name__ == "__main__":
    main()
