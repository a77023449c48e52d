"""Offline inference from a Kaggle bundle of a lung ensemble: chest X-rays in, ``submission.csv``
(``id,structure,rle``) out.

This is what the bundle's notebook runs (``make kaggle-bundle ENSEMBLE=<a lung ensemble>``). It
reads only the bundle (code, fold weights, the resolved ensemble, ``thresholds.yaml``) and an
input folder in the JSRT layout whose ``test/images/`` holds the X-rays (JSRT names, PNG, palette
or greyscale), and writes into the working folder. The steps are those of ``make ensemble``'s
test stage: images prepared by ``prepare_test`` at each member's size, the same weighted
prediction with the side-swapping flip, the thresholds from the file, so for the same ensemble and
images the CSV is byte-identical.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.infer.predict import final_config
from common.post.channel_evaluate import HEADER
from common.submit.ensemble import frozen_ensemble, predict_test
from common.submit.submission import write_rows
from competitions.lung.ensemble import task
from competitions.lung.prepare import prepare_test
from competitions.lung.raw import find_test_images


def predict_submission(
    bundle: str | os.PathLike, data: str | os.PathLike, working: str | os.PathLike, *, log=print
) -> Path:
    """Write ``<working>/submission.csv`` from the bundle's ensemble; returns its path."""
    bundle, data, working = Path(bundle), Path(data), Path(working)
    config, thresholds, members, classifiers = frozen_ensemble(bundle, working)
    tests = find_test_images(data)
    if not tests:
        raise ValueError(f"{data}: no chest X-rays in test/images/")
    for m in members + classifiers:
        for k in m.folds:
            stored = final_config(config.output, m.experiment, k).data
            out = working / "prepared" / str(stored["size"])
            if not (out / "test.csv").is_file():
                prepare_test(tests, out, int(stored["size"]), int(stored["score_size"]))
    lung = task(config, with_train=False)
    rows, _ = predict_test(config, lung, members, classifiers, thresholds, working / "maps", log)
    path = working / "submission.csv"
    write_rows(rows, path, HEADER)
    log(f"wrote {path}: {len(rows)} rows for {len(tests)} images")
    return path
