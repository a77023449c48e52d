"""Where the SIIM inputs are: the Kaggle download in either stage's layout, or the synthetic set.

Stage 1: ``dicom-images-train/<study>/<series>/<ImageId>.dcm``, ``dicom-images-test/...``,
``train-rle.csv`` (and, in the synthetic set, ``sample_submission.csv``).
Stage 2: the stage-1 folders plus a flat folder of ``ID_*.dcm`` test files (any name),
``stage_2_train.csv`` (stage-1 train and test labels) and ``stage_2_sample_submission.csv``.

DICOMs are found anywhere below the root by ImageId = file stem. Training ids are the ids of the
training CSV; test ids are those of the sample submission, or, with none, the DICOMs under
``dicom-images-test``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from common.data.sources import raw_or_synthetic
from common.io.dicom import find_dicoms
from common.io.rle_csv import read_rle_csv
from competitions.siim.synthetic import SyntheticSpec, generate

TRAIN_CSVS = ("stage_2_train.csv", "train-rle.csv")  # first found wins: stage 2 extends stage 1
SAMPLE_CSVS = ("stage_2_sample_submission.csv", "sample_submission.csv")
STAGE1_TEST_FOLDER = "dicom-images-test"


@dataclass(frozen=True)
class Inputs:
    """Everything the prepare stage reads, resolved to files."""

    root: Path
    synthetic: bool
    train_csv: Path
    annotations: pd.DataFrame  # one row per annotation: ImageId, EncodedPixels, line
    test_ids: tuple[str, ...]
    dicoms: dict[str, Path]  # ImageId -> file, every DICOM below root

    @property
    def train_ids(self) -> list[str]:
        return list(dict.fromkeys(self.annotations["ImageId"]))

    def unlabelled(self) -> list[str]:
        """DICOMs that are neither in the training CSV nor test images."""
        known = set(self.annotations["ImageId"]) | set(self.test_ids)
        return sorted(set(self.dicoms) - known)


def has_competition_data(raw: str | os.PathLike) -> bool:
    raw = Path(raw)
    return raw.is_dir() and any((raw / name).is_file() for name in TRAIN_CSVS)


def resolve_inputs(
    raw: str | os.PathLike,
    synthetic: str | os.PathLike,
    spec: SyntheticSpec | None = None,
    *,
    n_jobs: int = 2,
    log=print,
) -> Inputs:
    """The real download at ``raw`` when it holds a training CSV; otherwise the synthetic set at
    ``synthetic`` (generated from ``spec``, default ``SyntheticSpec()``, if needed), announced
    loudly through ``log``."""
    spec = spec or SyntheticSpec()
    source = raw_or_synthetic(
        raw,
        synthetic,
        has_data=has_competition_data,
        expected=" or ".join(TRAIN_CSVS),
        generate=lambda root: generate(root, spec, n_jobs=n_jobs),
        describe=f"SIIM: {spec.n_train} train + {spec.n_test} test images at "
        f"{spec.size}x{spec.size}, seed {spec.seed},",
        log=log,
    )
    return read_inputs(source.root, synthetic=source.synthetic)


def find_sample(root: Path) -> Path | None:
    """The sample submission in ``root`` (stage 2 first), or None."""
    return next((root / name for name in SAMPLE_CSVS if (root / name).is_file()), None)


def find_test_ids(root: Path) -> tuple[str, ...]:
    """Test ids: the sample submission's, else the DICOMs under dicom-images-test, else none."""
    sample = find_sample(root)
    if sample is not None:
        return tuple(dict.fromkeys(read_rle_csv(sample)["ImageId"]))
    if (root / STAGE1_TEST_FOLDER).is_dir():
        return tuple(find_dicoms(root / STAGE1_TEST_FOLDER))
    return ()


def read_inputs(root: Path, *, synthetic: bool) -> Inputs:
    train_csv = next(root / name for name in TRAIN_CSVS if (root / name).is_file())
    annotations = read_rle_csv(train_csv)
    dicoms = find_dicoms(root)
    test_ids = find_test_ids(root)
    overlap = set(test_ids) & set(annotations["ImageId"])
    if overlap:
        raise ValueError(
            f"{len(overlap)} image id(s) are both training ({train_csv.name}) and test images, "
            f"e.g. {sorted(overlap)[0]!r}"
        )
    return Inputs(root, synthetic, train_csv, annotations, test_ids, dicoms)
