"""Offline inference from a Kaggle bundle: test DICOMs in, ``submission.csv`` out.

This is what the bundle's notebook runs (``make kaggle-bundle``). It reads only the bundle
(code, fold weights, the resolved ensemble, ``thresholds.yaml``) and the competition's input
folder (test DICOMs found anywhere below it, the sample submission), and writes into the working
folder. The steps are those of ``make ensemble``'s test stage, so for the same ensemble and data
the CSV is byte-identical: DICOMs decoded and resized by the prepare stage at each member's
size, the same weighted prediction, the thresholds from the file. A test image whose DICOM is
missing or cannot be decoded is reported and gets an empty mask (``-1``). A member trained on
crops (``data.crop_stage``) gets its crops from the bundle's copy of the crop stage
(``stages/<run>/``), cut as prepare cuts them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from common.data.crops import crop_dir, crop_spec, frame_root
from common.infer.cascade import prepare_crops
from common.infer.predict import final_config
from common.submit.ensemble import frozen_ensemble, predict_test
from common.submit.kaggle import STAGES
from common.submit.submission import write_submission
from competitions.siim.ensemble import task
from competitions.siim.layout import STAGE1_TEST_FOLDER, Inputs, find_sample, find_test_ids
from competitions.siim.prepare import prepare
from competitions.siim.raw import RLE_COLUMNS, find_dicoms
from competitions.siim.submission import FORMAT


def test_inputs(competition: Path) -> Inputs:
    """Test ids (the sample submission's, else the DICOMs under dicom-images-test) and files."""
    dicoms = find_dicoms(competition)
    ids = find_test_ids(competition)
    if not ids:
        raise ValueError(f"{competition}: no sample submission and no {STAGE1_TEST_FOLDER}/")
    no_labels = pd.DataFrame(columns=[*RLE_COLUMNS, "line"])
    source = find_sample(competition) or competition
    return Inputs(competition, False, source, no_labels, ids, dicoms)


def predict_submission(
    bundle: str | os.PathLike,
    data: str | os.PathLike,
    working: str | os.PathLike,
    *,
    n_jobs: int = 2,
    log=print,
) -> Path:
    """Write ``<working>/submission.csv`` from the bundle's ensemble; returns its path."""
    bundle, data, working = Path(bundle), Path(data), Path(working)
    config, thresholds, members, classifiers = frozen_ensemble(bundle, working)
    inputs = test_inputs(data)
    datas = [
        (final_config(config.output, m.experiment, k).data, k)
        for m in members + classifiers
        for k in m.folds
    ]
    prepared = working / "prepared"
    for size in sorted({int(frame_root(data, prepared).name) for data, _ in datas}):
        counts = prepare(inputs, prepared / str(size), size, n_jobs=n_jobs, skip_bad=True)
        if counts["bad"]:
            log(f"{counts['bad']} test image(s) could not be read; they are submitted empty")
    crops = {crop_dir(data, prepared, k): (data, k) for data, k in datas if crop_spec(data)}
    for data, fold in crops.values():  # the lung crops, by the bundle's copy of the crop stage
        prepare_crops(data, ["test.csv"], prepared=prepared, stages=bundle / STAGES, fold=fold,
                      log=log)  # fmt: skip
    siim = task(config, None, with_train=False)
    rows, _ = predict_test(config, siim, members, classifiers, thresholds, working / "maps", log)
    predicted = dict(rows)
    path = working / "submission.csv"
    write_submission(((i, predicted.get(i, FORMAT.empty)) for i in inputs.test_ids), path, FORMAT)
    log(f"wrote {path}: {len(inputs.test_ids)} rows, {len(predicted)} predicted")
    return path
