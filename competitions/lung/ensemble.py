"""The lung data for the image ensemble, offline and pseudo stages
(``common.submit.image_ensemble``): the prepared cases with their SCR (or k-fold) folds, the
reference masks at the scoring size, the five structure channels with the side-swapping flip
(``loaders.tta_policy``), the per-structure post-processing of the members' config, the
``id,structure,rle`` CSV, when ``raw/test/masks/`` holds the test truth (the synthetic set) Dice
and Jaccard per structure on the test cases, and, offline, the test X-rays of an input folder in
the JSRT layout prepared at each member's size.

    python -m common.cli ensemble --competition lung --config competitions/lung/configs/ensembles/default.yaml
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from common.config import Config
from common.data.crops import frame_root
from common.submit.image_ensemble import ImageEnsemble, channel_task
from common.train import channel_runner
from competitions.lung.evaluate import CASES
from competitions.lung.prepare import prepare_test as prepare_images
from competitions.lung.prepare import sample_centres
from competitions.lung.raw import (
    TEST_FOLDER,
    find_test_images,
    mask_file,
    read_image,
    read_structure,
)


def prepare_test(data: Path, prepared: Path, runs: list[Config], log=print) -> None:
    """The X-rays of ``data/test/images/`` at every member size (the task's order)."""
    tests = find_test_images(data)
    if not tests:
        raise ValueError(f"{data}: no chest X-rays in test/images/")
    for run in runs:
        out = frame_root(run.data, prepared)
        if not (out / "test.csv").is_file():
            prepare_images(tests, out, int(out.name), int(run.data.score_size))
    return None


def test_truth(member: Config):
    """The test cases' masks of ``raw/test/masks/`` (the synthetic set has them) at the scoring
    size, or None when the test truth is not known."""
    stamp = Path(member.data.prepared) / str(member.data.size) / "source.json"
    source = Path(json.loads(stamp.read_text())["root"])  # the download or the synthetic set
    if not (source / TEST_FOLDER / "masks").is_dir():
        return None
    images, shapes = find_test_images(source), {}

    def truth(case: str, structure: str, size: int):
        if case not in shapes:
            shapes[case] = read_image(images[case], case).shape
        mask = read_structure(mask_file(source / TEST_FOLDER, structure, case), shapes[case], case)
        return sample_centres(mask, size)

    return truth


ENSEMBLE = ImageEnsemble(task=partial(channel_task, cases=CASES, test_truth=test_truth), prepare_test=prepare_test,
                         crop_tables=CASES.tables,
                         train_fold=lambda c, k, log: channel_runner.train_fold(c, k, CASES, log))  # fmt: skip
