"""SIIM's data for the image ensemble, offline and pseudo stages (``common.submit.image_ensemble``):
the prepared ``train.csv`` / ``test.csv`` (native sizes), ``folds.csv``, the native-size truth
masks, the relative RLE (``-1`` for empty), the validator against the sample submission, the
score against the held-back test truth of the synthetic set, and, offline, the test DICOMs
decoded by the prepare stage at each member's size.

    python -m common.cli ensemble --competition siim --config competitions/siim/configs/ensembles/default.yaml
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.config import Config
from common.data.crops import frame_root, prepared_root
from common.data.folds import read_folds
from common.io.dicom import find_dicoms
from common.io.images import read_mask
from common.io.paths import data_dir
from common.io.rle import siim_rle_encode
from common.io.rle_csv import RLE_COLUMNS, read_rle_csv
from common.post.image_oof import run_fold
from common.submit.ensemble import EnsembleTask
from common.submit.image_ensemble import ImageEnsemble, member_runs
from competitions.siim import submission
from competitions.siim.layout import STAGE1_TEST_FOLDER, Inputs, find_sample, find_test_ids
from competitions.siim.loaders import FRAMES
from competitions.siim.prepare import full_mask_path, prepare, prepare_config


def task(config: Config, with_train: bool = True) -> EnsembleTask:
    """SIIM's data for ``common.submit.ensemble``: the frames of the first member's data (whole
    images, also for members trained on crops)."""
    data = member_runs(config)[0][0].data
    root = frame_root(data, config.prepared or None)
    test = pd.read_csv(root / "test.csv", dtype={"ImageId": str})
    test = test.assign(id=test["ImageId"])
    train, sample = None, None
    if with_train:
        train = pd.read_csv(root / "train.csv", dtype={"ImageId": str})
        folds = read_folds(data.folds).set_index("ImageId")["fold"]
        train = train.assign(id=train["ImageId"], fold=train["ImageId"].map(folds))
        roots = (data_dir("siim", "raw"), Path(config.test_truth).parent)  # raw, else synthetic
        sample = next((s for s in map(find_sample, roots) if s is not None), None)
    truth_csv = Path(config.test_truth)

    def score(csv: Path) -> dict:
        if not truth_csv.is_file() or not set(read_rle_csv(truth_csv)["ImageId"]) <= set(test.id):
            return {}
        scored = submission.score(csv, truth_csv, submission.native_shapes(test))
        return {"test_dice": scored["dice"], "test_empty_dice": scored["empty_dice"]}

    def truth(image_id: str, shape):
        return read_mask(full_mask_path(root, image_id, shape, int(root.name)), shape)[None]

    return EnsembleTask(
        channels=("mask",),
        test=test,
        train=train,
        truth=truth,
        encode=lambda i, masks: [(i, siim_rle_encode(masks[0]))],
        header=(submission.FORMAT.id_column, submission.FORMAT.value_column),
        validate=(lambda csv: submission.validate(csv, sample, root / "test.csv")) if sample else None,
        score=score if with_train else None,
        images=root / "images",
        prepared=config.prepared or None,
    )  # fmt: skip


def train_fold(experiment: Config, fold: int, log=print) -> None:
    if not (prepared_root(experiment.data, fold=fold) / "train.csv").is_file():
        prepare_config(experiment, log=log)
    run_fold(experiment, fold, FRAMES, log=log)


def prepare_test(data: Path, prepared: Path, runs: list[Config], log=print) -> tuple[str, ...]:
    """The competition folder's test DICOMs (found anywhere below it) decoded at every member
    size; the test ids are the sample submission's, else the DICOMs under dicom-images-test."""
    ids = find_test_ids(data)
    if not ids:
        raise ValueError(f"{data}: no sample submission and no {STAGE1_TEST_FOLDER}/")
    no_labels = pd.DataFrame(columns=[*RLE_COLUMNS, "line"])
    inputs = Inputs(data, False, find_sample(data) or data, no_labels, ids, find_dicoms(data))
    for size in sorted({int(frame_root(run.data, prepared).name) for run in runs}):
        counts = prepare(inputs, prepared / str(size), size, skip_bad=True)
        if counts["bad"]:
            log(f"{counts['bad']} test image(s) could not be read; they are submitted empty")
    return ids


ENSEMBLE = ImageEnsemble(task=task, train_fold=train_fold, prepare_test=prepare_test,
                         crop_tables=("train.csv", "test.csv"))  # fmt: skip
