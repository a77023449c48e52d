"""Ensemble lung models (``common.submit.ensemble``): per-structure thresholds on the held-out maps,
then the test submission.

    python -m competitions.lung.ensemble --config competitions/lung/configs/ensembles/default.yaml

The lung package wires its data into the generic ensemble: the prepared cases with their SCR (or
k-fold) folds, the reference masks at the scoring size, the five structure channels with the
side-swapping flip (``loaders.tta_policy``), the per-structure post-processing of the members'
config, the ``id,structure,rle`` CSV, and, when ``raw/test/masks/`` holds the test truth (the
synthetic set), Dice and Jaccard per structure on the test cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import Config, load_config
from common.infer.predict import final_config
from common.io.rle import rle_encode
from common.post.channel_evaluate import (
    HEADER,
    read_submission,
    reference_mask,
    summarise,
    validate_long,
)
from common.post.metrics import dice_jaccard
from common.submit.ensemble import EnsembleTask, check_trained, ensemble_members, train_missing
from common.submit.ensemble import run_ensemble as run_common
from common.train.runner import config_main
from competitions.lung.evaluate import GROUPS
from competitions.lung.loaders import read_cases, tta_policy
from competitions.lung.prepare import sample_centres
from competitions.lung.raw import (
    TEST_FOLDER,
    find_test_images,
    mask_file,
    read_image,
    read_structure,
)
from competitions.lung.train import prepare_sizes, run_fold


def member_config(config: Config) -> Config:
    """The resolved config of the first member's first fold (all members share the data)."""
    members, _ = ensemble_members(config)
    first = members[0]
    member = final_config(config.output, first.experiment, first.folds[0])
    if config.prepared:
        member["data"]["prepared"] = config.prepared
    return member


def ensure_trained(config: Config, log=print) -> None:
    """Train the member folds that are missing (``train_missing``), preparing their data first."""

    def train(path: Path, fold: int) -> None:
        experiment = load_config(path, [f"output={config.output}", f"name={path.stem}"])
        prepare_sizes(experiment)
        run_fold(experiment, fold, log=log)

    train_missing(config, train, log)


def _source(member: Config) -> Path:
    """The folder the member's data was prepared from (the download or the synthetic set)."""
    stamp = Path(member.data.prepared) / str(member.data.size) / "source.json"
    return Path(json.loads(stamp.read_text())["root"])


def score_test(csv: Path, member: Config, ids: list[str]) -> dict:
    """Dice and Jaccard per structure and group of a submission against ``raw/test/masks/``
    (empty when the test truth is not known)."""
    truth_root = _source(member) / TEST_FOLDER
    structures, size = list(member.data.structures), member.data.score_size
    if not ids or not (truth_root / "masks").is_dir():
        return {}
    masks = read_submission(csv, size)
    images = find_test_images(_source(member))
    rows = []
    for case in ids:
        shape = read_image(images[case], case).shape
        for structure in structures:
            truth = read_structure(mask_file(truth_root, structure, case), shape, case)
            scores = dice_jaccard(masks[(case, structure)], sample_centres(truth, size))
            rows.append({"structure": structure} | scores)
    table = pd.DataFrame(rows)
    per_structure, groups = summarise(table, GROUPS)
    return {
        "test_dice": float(table["dice"].mean()),
        "test_jaccard": float(table["jaccard"].mean()),
        "test_structures": per_structure,
        "test_groups": groups,
    }


def task(config: Config, *, with_train: bool = True) -> EnsembleTask:
    """The lung data for ``common.submit.ensemble``."""
    member = member_config(config)
    structures, size = tuple(member.data.structures), member.data.score_size
    root = Path(member.data.prepared) / str(member.data.size)
    cases = read_cases(member)[1] if with_train else None
    test_csv = root / "test.csv"
    test = (
        pd.read_csv(test_csv, dtype={"id": str})
        if test_csv.is_file()
        else pd.DataFrame(columns=["id", "height", "width"])
    )
    ids = test["id"].tolist()
    return EnsembleTask(
        channels=structures,
        test=test,
        encode=lambda i, masks: [
            (i, s, rle_encode(m, order="F")) for s, m in zip(structures, masks, strict=True)
        ],
        header=HEADER,
        train=cases.assign(height=size, width=size) if cases is not None else None,
        truth=lambda i, shape: np.stack([reference_mask(root, s, i, size) for s in structures]),
        policy=tta_policy(structures),
        postprocess=member.predict.postprocess,
        validate=lambda csv: validate_long(csv, ids, list(structures), size),
        score=lambda csv: score_test(csv, member, ids),
        images=root / "images",
        prepared=config.prepared or None,
    )


def run_ensemble(config: Config, *, log=print) -> dict:
    ensure_trained(config, log)
    check_trained(config)
    return run_common(config, task(config), log=log)


def main(argv=None) -> None:
    config, report = config_main(__doc__, argv, lambda c: (c, run_ensemble(c)),
                                 label="lung ensemble", what="ensemble YAML")  # fmt: skip
    line = f"lung ensemble {config.name}: held-out Dice {report['oof_dice']:.4f} (per structure, thresholds searched on them)"
    if "test_dice" in report:
        groups = ", ".join(f"{g} {v['jaccard']:.4f}" for g, v in report["test_groups"].items())
        line += f"; test Dice {report['test_dice']:.4f}, Jaccard {groups}"
    print(f"{line} -> {report['csv']}")


if __name__ == "__main__":
    main()
