"""The ensemble, offline and pseudo-label stages of every image competition: one engine
(``common.submit.ensemble``) over what the competition tells it in an ``ImageEnsemble``.

    python -m common.cli ensemble --competition NAME --config <ensemble YAML> [key=value ...]
    python -m common.cli pseudo --competition NAME --config <ensemble YAML> [pseudo.images=DIR]

``ensemble``: member folds without their ``final.pt`` are trained first (``train_missing``), the
crops of members trained on crops (``data.crop_stage``) are brought up to date, then the
out-of-fold search, the test prediction and the checked submission (``run_ensemble``).
``offline`` (what a Kaggle notebook runs, ``common.submit.kaggle``): the same test stage on a
bundle and the competition's input folder, so the CSV is byte-identical to the ensemble's for
the same ensemble and images; a test image the competition lists but could not read gets an
empty mask. ``pseudo``: the ensemble's confident predictions on the test images (or on every
PNG of ``pseudo.images``) become a training-only set in ``data/<competition>/pseudo/<ensemble>/``
(``common.submit.pseudo``).

The slide back end of the same stages is ``common.submit.slide_ensemble``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import Config, load_config
from common.data.crops import crop_dir, crop_spec
from common.infer.cascade import prepare_crops
from common.infer.predict import final_config
from common.io.images import read_png, resize_image, write_png
from common.io.paths import check_id, data_dir
from common.submit.ensemble import (
    EnsembleTask,
    check_trained,
    ensemble_members,
    frozen_ensemble,
    predict_test,
    run_ensemble,
    train_missing,
)
from common.submit.submission import write_rows


def channel_task(
    config: Config, with_train: bool = True, *, cases, test_truth=None
) -> EnsembleTask:
    """The ``EnsembleTask`` of a multi-channel competition (``common.post.channel_evaluate``'s
    ``CaseSet``; channels ``data.structures``): its cases with their folds and reference masks
    at the scoring size, the prepared test images, the long ``id,<channel>,rle`` CSV checked
    for every (case, channel) pair, the TTA policy and per-channel post-processing of the
    members, and, where ``test_truth(member config)`` gives the test masks (``truth(case,
    channel, size)`` at the scoring size; None when unknown), Dice and Jaccard per channel and
    group."""
    from common.io.rle import rle_encode
    from common.post.channel_evaluate import HEADER, reference_mask, score_channels, validate_long

    member = member_runs(config)[0][0]  # all members share the data
    if config.prepared:
        member["data"]["prepared"] = config.prepared
    structures, size = tuple(member.data.structures), member.data.score_size
    root = Path(member.data.prepared) / str(member.data.size)
    train = cases.read_cases(member)[1].assign(height=size, width=size) if with_train else None
    test_csv = root / "test.csv"
    test = (pd.read_csv(test_csv, dtype={"id": str}) if test_csv.is_file()
            else pd.DataFrame(columns=["id", "height", "width"]))  # fmt: skip
    ids = test["id"].tolist()
    truth = test_truth(member) if test_truth and with_train else None

    def encode(image_id: str, masks) -> list[tuple[str, str, str]]:
        return [
            (image_id, s, rle_encode(m, order="F")) for s, m in zip(structures, masks, strict=True)
        ]

    return EnsembleTask(
        channels=structures,
        test=test,
        encode=encode,
        header=HEADER,
        train=train,
        truth=lambda i, shape: np.stack([reference_mask(root, s, i, size) for s in structures]),
        policy=cases.policy(structures),
        postprocess=member.predict.postprocess,
        validate=lambda csv: validate_long(csv, ids, list(structures), size),
        score=(lambda csv: score_channels(csv, ids, structures, size, truth, cases.groups)) if truth and ids else None,
        images=root / "images",
        prepared=config.prepared or None,
    )  # fmt: skip


@dataclass(frozen=True)
class ImageEnsemble:
    """What an image competition tells its ensemble, offline and pseudo stages.

    ``task(config, with_train)``: the ``EnsembleTask`` of the ensemble ``config`` (without the
    training items when ``with_train`` is false: an offline notebook, pseudo-labels).
    ``train_fold(experiment, fold, log)``: prepare what a member fold needs, train it and predict
    its held-out items (``train_missing``). ``prepare_test(data, prepared, runs, log)``: write the
    test images of the input folder ``data`` under ``prepared`` at every size the member ``runs``
    (their configs) need; returns the test ids in the submission's order, or None for the
    task's order. ``crop_tables``: the prepared tables whose crops the ensemble brings up to
    date for members trained on crops."""

    task: Callable[[Config, bool], EnsembleTask]
    train_fold: Callable[[Config, int, Callable], None]
    prepare_test: Callable[[Path, Path, list[Config], Callable], Sequence[str] | None]
    crop_tables: tuple[str, ...] = ()


def member_runs(config: Config) -> list[tuple[Config, int]]:
    """(resolved config, fold) of every member fold and classifier fold of the ensemble."""
    members, classifiers = ensemble_members(config)
    return [(final_config(config.output, m.experiment, k), k) for m in members + classifiers
            for k in m.folds]  # fmt: skip


def ensure_crops(config: Config, tables: Sequence[str], *, stages=None, log=print) -> None:
    """Bring the crops of the members trained on crops up to date with ``tables``: a no-op that
    only reads tables and stats files when nothing changed. ``stages``: a bundle's copy of the
    crop stages (offline)."""
    runs = {crop_dir(run.data, config.prepared or None, k): (run.data, k)
            for run, k in member_runs(config) if crop_spec(run.data)}  # fmt: skip
    for data, fold in runs.values():  # multi-label masks per structure (lung), else one mask
        prepare_crops(data, list(tables), prepared=config.prepared or None, stages=stages,
                      fold=fold, channels=list(data.get("structures") or ()), log=log)  # fmt: skip


def ensemble(config: Config, spec: ImageEnsemble, *, log=print) -> dict:
    """Train the missing member folds, bring crops up to date, then ``run_ensemble``."""

    def train(path: Path, fold: int) -> None:
        experiment = load_config(path, [f"output={config.output}", f"name={path.stem}"])
        spec.train_fold(experiment, fold, log)

    train_missing(config, train, log)
    check_trained(config)
    if spec.crop_tables:
        ensure_crops(config, spec.crop_tables, log=log)
    return run_ensemble(config, spec.task(config, True), log=log)


def summary_line(label: str, config: Config, report: dict) -> str:
    """The line the ensemble stage prints."""
    line = (f"{label} ensemble {config.name}: OOF Dice {report['oof_dice']:.4f} "
            f"(all-empty {report['oof_empty_dice']:.4f})")  # fmt: skip
    if "test_dice" in report:
        line += f"; test Dice {report['test_dice']:.4f}"
        if "test_empty_dice" in report:
            line += f" (all-empty {report['test_empty_dice']:.4f})"
    if "test_groups" in report:
        line += ", Jaccard " + ", ".join(f"{g} {v['jaccard']:.4f}"
                                         for g, v in report["test_groups"].items())  # fmt: skip
    return (f"{line}; {report['n_test_non_empty']}/{report['n_test']} test images with a mask "
            f"-> {report['csv']}")  # fmt: skip


def main(argv=None, *, competition) -> dict:
    """The ``ensemble`` stage: ``--config`` (an ensemble YAML) and overrides."""
    from common.train.runner import config_main

    spec = competition.data_spec("ensemble")
    config, report = config_main(__doc__, argv, lambda c: (c, ensemble(c, spec)),
                                 label=f"{competition.name} ensemble", what="ensemble YAML")  # fmt: skip
    print(summary_line(competition.name, config, report))
    return report


def offline(bundle: str | os.PathLike, data: str | os.PathLike, working: str | os.PathLike, *,
            competition, log=print) -> Path:  # fmt: skip
    """The ``offline`` stage: ``<working>/submission.csv`` from the bundle's ensemble for the
    test images of the input folder ``data``; returns its path."""
    spec = competition.data_spec("ensemble")
    bundle, data, working = Path(bundle), Path(data), Path(working)
    config, thresholds, members, classifiers = frozen_ensemble(bundle, working)
    from common.submit.kaggle import STAGES

    ids = spec.prepare_test(data, working / "prepared", [r for r, _ in member_runs(config)], log)
    if spec.crop_tables:  # by the bundle's copy of the crop stage
        ensure_crops(config, ["test.csv"], stages=bundle / STAGES, log=log)
    task = spec.task(config, False)
    rows, _, _ = predict_test(config, task, members, classifiers, thresholds, working / "maps", log)
    predicted = len({row[0] for row in rows})
    if ids is not None:  # the listed order; an image that could not be read is empty
        by_id: dict[str, list] = {}
        for row in rows:
            by_id.setdefault(row[0], []).append(row)
        empty = np.zeros((len(task.channels), 1, 1), np.uint8)
        rows = [row for i in ids for row in by_id.get(i) or task.encode(i, empty)]
    path = working / "submission.csv"
    write_rows(rows, path, task.header)
    log(f"wrote {path}: {len(rows)} rows, {predicted} test images predicted")
    return path


def _stage_folder(folder: Path, size: int, staging: Path) -> pd.DataFrame:
    """Every PNG of ``folder`` at ``size`` under ``staging/<size>/images`` (ids: file stems)."""
    files = sorted(folder.glob("*.png"))
    if not files:
        raise ValueError(f"pseudo.images {folder}: no PNG images")
    ids = []
    for path in files:
        image_id = check_id(path.stem, str(path))
        write_png(
            staging / str(size) / "images" / f"{image_id}.png", resize_image(read_png(path), size)
        )
        ids.append(image_id)
    return pd.DataFrame({"id": ids, "height": size, "width": size})


def pseudo_folder(competition: str, config: Config) -> Path:
    return data_dir(competition, "pseudo", config.name)


def make_pseudo(config: Config, spec: ImageEnsemble, competition: str, *, log=print) -> dict:
    """Pseudo-labels from the ensemble ``config`` (``common.submit.pseudo.build_pseudo``) on the
    competition's test images, or on every PNG of ``pseudo.images``."""
    from common.submit.pseudo import build_pseudo

    labelled = spec.task(config, True)
    source = spec.task(config, False)
    where = "the competition's test set"
    runs = member_runs(config)
    if config.pseudo.images and any(crop_spec(run.data) for run, _ in runs):
        raise ValueError("pseudo.images with members trained on crops: label the test set instead")
    if spec.crop_tables:
        ensure_crops(config, spec.crop_tables, log=log)
    if config.pseudo.images:
        staging = data_dir(competition, "pseudo", f"{config.name}.source")  # at the size
        test = _stage_folder(Path(config.pseudo.images), runs[0][0].data.size, staging)
        source = replace(source, test=test, prepared=str(staging))
        where = str(config.pseudo.images)
    return build_pseudo(config, source, train_images=labelled.images,
                        train_ids=set(labelled.train["id"]), out=pseudo_folder(competition, config),
                        source=where, log=log)  # fmt: skip


def pseudo_main(argv=None, *, competition) -> None:
    """The ``pseudo`` stage: ``--config`` (an ensemble YAML) and overrides."""
    from common.train.runner import config_main

    spec = competition.data_spec("ensemble")
    config_main(__doc__, argv, lambda c: make_pseudo(c, spec, competition.name),
                label=f"{competition.name} pseudo", what="ensemble YAML")  # fmt: skip
