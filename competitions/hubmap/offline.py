"""Offline inference from a Kaggle bundle of a HuBMAP ensemble: test slides in, ``submission.csv``
(``id,predicted``) out.

This is what the bundle's notebook runs (``make kaggle-bundle
ENSEMBLE=competitions/hubmap/configs/ensembles/default.yaml``). It reads only the bundle (code,
fold weights, the resolved ensemble, ``thresholds.yaml``) and the competition folder
(``test/<id>.tiff`` and ``sample_submission.csv``), and predicts each slide in tiles with the
mask encoded strip by strip: memory is bounded by the slide's width, not its area, which is what
lets a 2-gigapixel slide run in a Kaggle notebook's 13 GB (``docs/HUBMAP.md``).
"""

from __future__ import annotations

import os
from pathlib import Path

from common.infer.predict import load_fold_model
from common.io.slides import slide_shape
from common.submit.ensemble import frozen_ensemble
from common.submit.submission import validate_submission, write_rows
from common.train.runner import resolve_device
from competitions.hubmap.ensemble import (
    FORMAT,
    member_config,
    predict_slides,
    preprocess_of,
    test_slides,
    tile_plan,
)
from competitions.hubmap.evaluate import HEADER


def predict_submission(
    bundle: str | os.PathLike, data: str | os.PathLike, working: str | os.PathLike, *, log=print
) -> Path:
    """Write ``<working>/submission.csv`` from the bundle's ensemble; returns its path."""
    bundle, data, working = Path(bundle), Path(data), Path(working)
    config, thresholds, members, _ = frozen_ensemble(bundle, working)
    ids, paths = test_slides(data)
    device = resolve_device("auto")
    folds = [
        load_fold_model(config.output, m.experiment, k, m.weight, device)
        for m in members
        for k in m.folds
    ]
    configs = [member_config(config, m) for m in members]
    plan = tile_plan(config, configs)
    rows = predict_slides([f.model for f in folds], plan, config.tta, paths, thresholds, device,
                          weights=[f.weight for f in folds], preprocess=preprocess_of(configs[0]),
                          log=log)  # fmt: skip
    path = working / "submission.csv"
    write_rows(rows, path, HEADER)
    counts = validate_submission(path, ids, FORMAT, lambda i: slide_shape(paths[i]))
    log(f"wrote {path}: {counts['rows']} slides, {counts['non_empty']} with glomeruli")
    return path
