"""Ensemble SIIM models (``common.submit.ensemble``): out-of-fold search, then the test submission.

    python -m competitions.siim.ensemble --config competitions/siim/configs/ensembles/default.yaml

SIIM wires its data into the generic ensemble: the prepared ``train.csv`` / ``test.csv`` (native
sizes), ``folds.csv``, the native-size truth masks, the relative RLE (``-1`` for empty), the
validator against the sample submission and, on the synthetic set, the score against the
held-back test truth. Member folds that are not trained yet are trained first with
``train_missing: true``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from common.config import Config, load_config, load_run_config
from common.data.crops import crop_spec, frame_root, prepared_root
from common.data.folds import read_folds
from common.infer.cascade import prepare_crops
from common.infer.predict import final_config
from common.io.images import read_mask
from common.io.paths import data_dir
from common.io.rle import siim_rle_encode
from common.post.image_oof import run_fold
from common.submit.ensemble import (
    EnsembleTask,
    check_trained,
    ensemble_members,
    run_ensemble,
    train_missing,
)
from competitions.siim import submission
from competitions.siim.layout import find_sample as find_sample_in
from competitions.siim.loaders import FRAMES
from competitions.siim.prepare import full_mask_path
from competitions.siim.prepare import main as prepare_main
from competitions.siim.raw import read_rle_csv


def ensure_trained(config: Config, log=print) -> None:
    """Train the member folds that are missing (``train_missing``), preparing their data first."""

    def train(path: Path, fold: int) -> None:
        experiment = load_config(path, [f"output={config.output}", f"name={path.stem}"])
        if not (prepared_root(experiment.data, fold=fold) / "train.csv").is_file():
            prepare_main(["--config", str(path)])
        run_fold(experiment, fold, FRAMES, log=log)

    train_missing(config, train, log)


def crop_members(config: Config) -> list[tuple[Config, int]]:
    """(data section, fold) of each member fold trained on crops (``data.crop_stage``)."""
    members, classifiers = ensemble_members(config)
    found = []
    for member in members + classifiers:
        for fold in member.folds:
            data = final_config(config.output, member.experiment, fold).data
            if crop_spec(data):
                found.append((data, fold))
    return found


def ensure_crops(config: Config, log=print) -> None:
    """Bring the crops of the members trained on crops up to date: a no-op that only reads
    tables and stats files when nothing changed."""
    for data, fold in crop_members(config):
        prepare_crops(data, ["train.csv", "test.csv"], prepared=config.prepared or None,
                      fold=fold, log=log)  # fmt: skip


def tables(config: Config) -> tuple[Path, pd.DataFrame, pd.DataFrame, Config]:
    """The prepared folder, train and test tables (``id``, native ``height``/``width``) of the
    first member's data, and that data section."""
    members, _ = ensemble_members(config)
    first = members[0]
    data = final_config(config.output, first.experiment, first.folds[0]).data
    root = frame_root(data, config.prepared or None)  # whole images, also for crop members
    train = pd.read_csv(root / "train.csv", dtype={"ImageId": str})
    test = pd.read_csv(root / "test.csv", dtype={"ImageId": str})
    train, test = train.assign(id=train["ImageId"]), test.assign(id=test["ImageId"])
    return root, train, test, data


def task(config: Config, sample: Path | None, *, with_train: bool = True) -> EnsembleTask:
    """SIIM's data for ``common.submit.ensemble``."""
    root, train, test, data = tables(config)
    if with_train:
        folds = read_folds(data.folds).set_index("ImageId")["fold"]
        train = train.assign(fold=train["ImageId"].map(folds))
    truth_csv = Path(config.test_truth)

    def score(csv: Path) -> dict:
        if not truth_csv.is_file() or not set(read_rle_csv(truth_csv)["ImageId"]) <= set(test.id):
            return {}
        scored = submission.score(csv, truth_csv, submission.native_shapes(test))
        return {"test_dice": scored["dice"], "test_empty_dice": scored["empty_dice"]}

    return EnsembleTask(
        channels=("mask",),
        test=test,
        train=train,
        truth=lambda i, shape: read_mask(full_mask_path(root, i, shape, int(root.name)), shape)[
            None
        ],
        encode=lambda i, masks: [(i, siim_rle_encode(masks[0]))],
        header=(submission.FORMAT.id_column, submission.FORMAT.value_column),
        validate=(lambda csv: submission.validate(csv, sample, root / "test.csv"))
        if sample
        else None,
        score=score,
        images=root / "images",
        prepared=config.prepared or None,
    )


def find_sample(config: Config) -> Path | None:
    """The sample submission of the data the members were trained on (raw, else synthetic)."""
    roots = (data_dir("siim", "raw"), Path(config.test_truth).parent)
    return next((s for s in map(find_sample_in, roots) if s is not None), None)


def ensemble(config: Config, *, sample: Path | None, log=print) -> dict:
    ensure_trained(config, log)
    check_trained(config)
    ensure_crops(config, log)
    report = run_ensemble(config, task(config, sample), log=log)
    report["n_test_non_empty"] = sum(
        1 for line in Path(report["csv"]).read_text().splitlines()[1:] if not line.endswith(",-1")
    )
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="ensemble YAML")
    parser.add_argument("--sample", help="sample submission to validate against (found if omitted)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
        sample = Path(args.sample) if args.sample else find_sample(config)
        report = ensemble(config, sample=sample)
    except (ValueError, FloatingPointError) as error:
        sys.exit(f"siim ensemble: {error}")
    line = (
        f"ensemble {config.name}: OOF Dice {report['oof_dice']:.4f} "
        f"(all-empty {report['oof_empty_dice']:.4f})"
    )
    if "test_dice" in report:
        line += f"; test Dice {report['test_dice']:.4f} (all-empty {report['test_empty_dice']:.4f})"
    print(f"{line}; {report['n_test_non_empty']}/{report['n_test']} test masks -> {report['csv']}")


if __name__ == "__main__":
    main()
