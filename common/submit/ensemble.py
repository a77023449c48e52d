"""Ensembles for any competition: the out-of-fold threshold search, then the test submission.

A competition describes its data once (``EnsembleTask``: its items with folds and sizes, how to
read a truth mask, its mask channels and TTA policy, how a mask becomes submission rows, its
validator and scorer); ``run_ensemble`` then does the rest from the ensemble config
(``common/configs/ensemble.yaml``):

1. Out of fold: each fold's validation items are predicted by that fold's model of every member
   (weighted mean, TTA, multi-scale, at the items' sizes) into ``<output>/<name>/oof/``; the
   grid of the chosen combination is searched on them, per mask channel: ``thresholds.yaml``,
   ``search.csv`` and ``search.png`` (the first channel's heatmap).
2. Test: every fold of every member predicts the test items into ``<output>/<name>/test/``; the
   thresholds read back from ``thresholds.yaml`` (then the competition's per-channel
   post-processing) make the masks, written through the competition's encoder as
   ``<submissions>/<name>.csv`` with ``<name>.json`` (members, folds, weights, TTA,
   thresholds, scores) and ``<name>.png`` (predicted masks over test images). The CSV is checked
   by the competition's validator and, when the test truth is known, scored.

Combinations (``combine``): ``triplet`` on the averaged maps; a score gating the mask
(``two_stage``) from ``classifier`` models, the members' classification ``head``, or the map's
``max_pixel``; or ``product``, each map multiplied by the classifiers' score (8th place in SIIM).
The gated combinations are for one mask channel.

``thresholds.yaml``: ``combine``, ``oof_dice``, ``empty_dice``, ``n_images`` and, per channel, the
searched values (``top``, ``min_area``, ``bottom``; or ``cls_threshold``, ``seg_threshold``,
``min_area``): at the top level for one channel, under ``channels: {name: {...}}`` for several.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from common.config import Config
from common.infer.inference import TtaPolicy
from common.infer.predict import FoldModel, Prediction, PredictOptions, final_path, load_fold_model
from common.infer.predict import predict_ids as predict_with
from common.io.atomic import remove_stale_temps, write_text_atomic
from common.io.images import read_png, write_png
from common.io.locks import exclusive
from common.plots import mask_overlays
from common.post.postprocess import clean_mask, quantise, triplet, two_stage
from common.post.threshold_search import (
    ImageStats,
    reduce_pairs,
    search_triplets_from_stats,
    search_two_stage_from_stats,
)
from common.submit.submission import write_rows

COMBINES = ("triplet", "classifier", "head", "max_pixel", "product")
TWO_STAGE = ("classifier", "head", "max_pixel")
HEADER = "# written by common.submit.ensemble from the out-of-fold search; do not edit\n"


@dataclass(frozen=True)
class Member:
    experiment: str
    folds: tuple[int, ...]
    weight: float


@dataclass
class EnsembleTask:
    """What a competition tells the generic ensemble.

    ``train``: one row per training item with ``id``, ``fold``, ``height``, ``width`` (the size
    its maps are predicted, searched and scored at); ``test``: ``id``, ``height``, ``width``.
    ``truth(id, (H, W))`` is the (C, H, W) {0, 1} truth of a training item. ``encode(id, masks)``
    turns the (C, H, W) {0, 1} masks of a test item into its submission rows under ``header``.
    ``validate(csv)`` and ``score(csv)`` check and score the written CSV (None: not possible).
    ``images``: the prepared images drawn under the predicted masks (None: no picture).
    """

    channels: tuple[str, ...]
    test: pd.DataFrame
    encode: Callable[[str, np.ndarray], list[tuple[str, ...]]]
    header: tuple[str, ...]
    train: pd.DataFrame | None = None  # None: test prediction only (an offline notebook)
    truth: Callable[[str, tuple[int, int]], np.ndarray] | None = None
    policy: TtaPolicy | None = None
    postprocess: Mapping[str, Mapping] = field(default_factory=dict)
    validate: Callable[[Path], dict] | None = None
    score: Callable[[Path], dict] | None = None
    images: Path | None = None
    prepared: str | None = None  # replaces the members' prepared folder (e.g. a notebook's)


def parse_members(items, key: str) -> list[Member]:
    members = []
    for index, item in enumerate(items):
        where = f"{key}[{index}]"
        if not isinstance(item, dict) or set(item) - {"experiment", "folds", "weight"}:
            raise ValueError(f"{where}: expected {{experiment, folds, weight}}, got {item!r}")
        folds = item.get("folds", [0])
        weight = item.get("weight", 1.0)
        if not isinstance(item.get("experiment"), str) or not item["experiment"]:
            raise ValueError(f"{where}: 'experiment' must name a run under the output folder")
        if not isinstance(folds, list) or not folds or not all(isinstance(f, int) for f in folds):
            raise ValueError(f"{where}: 'folds' must be a non-empty list of fold numbers")
        if not isinstance(weight, int | float) or weight <= 0:
            raise ValueError(f"{where}: 'weight' must be a positive number, got {weight!r}")
        members.append(Member(item["experiment"], tuple(folds), float(weight)))
    return members


def ensemble_members(config: Config) -> tuple[list[Member], list[Member]]:
    """The segmentation members and the classifiers, checked against ``combine``."""
    members = parse_members(config.members, "members")
    classifiers = parse_members(config.classifiers, "classifiers")
    if config.combine not in COMBINES:
        raise ValueError(f"combine {config.combine!r} is unknown; valid: {', '.join(COMBINES)}")
    if not members:
        raise ValueError("members: an ensemble needs at least one segmentation member")
    if config.combine in ("classifier", "product") and not classifiers:
        raise ValueError(f"combine: {config.combine} needs at least one entry in classifiers")
    return members, classifiers


def missing_folds(output: str | Path, members: list[Member], *, finished: bool = False
                  ) -> list[tuple[str, int]]:  # fmt: skip
    """(experiment, fold) of every member fold without its ``final.pt`` (with ``finished``,
    also without the ``metrics.json`` its fold run writes last: a run killed between the two
    has not finished)."""

    def done(folder: Path) -> bool:
        return (folder / "final.pt").is_file() and (
            not finished or (folder / "metrics.json").is_file()
        )

    return [(m.experiment, k) for m in members for k in m.folds
            if not done(final_path(output, m.experiment, k).parent)]  # fmt: skip


def train_missing(config: Config, train: Callable[[Path, int], None], log=print) -> None:
    """With ``train_missing``, call ``train(experiment file, fold)`` for every member fold whose
    run has not finished (no final.pt, or killed before its metrics.json); the files are
    ``<configs>/<experiment>.yaml`` (``configs`` under the repository when relative)."""
    from common.io.paths import REPO

    members, classifiers = ensemble_members(config)
    missing = missing_folds(config.output, members + classifiers, finished=True)
    if not missing or not config.train_missing:
        return
    for experiment, fold in missing:
        path = REPO / config.configs / f"{experiment}.yaml"
        if not path.is_file():
            raise ValueError(f"{experiment} fold {fold} is not trained and {path} does not exist")
        log(f"ensemble: training {experiment} fold {fold} first")
        train(path, fold)


def frozen_ensemble(bundle: Path, working: Path) -> tuple[Config, dict, list, list]:
    """A bundle's ensemble as an offline notebook runs it: its config (models from the bundle,
    prepared data in the working folder, no pictures), thresholds, members and classifiers."""
    from common.config import to_config

    config = to_config(yaml.safe_load((bundle / "ensemble.yaml").read_text()))
    config["output"] = str(bundle / "models")
    config["prepared"] = str(working / "prepared")
    config["overlays"] = 0
    thresholds = yaml.safe_load((bundle / "thresholds.yaml").read_text())
    members, classifiers = ensemble_members(config)
    return config, thresholds, members, classifiers


def check_trained(config: Config) -> tuple[list[Member], list[Member]]:
    """``ensemble_members``, with an error listing every member fold not trained yet."""
    members, classifiers = ensemble_members(config)
    missing = missing_folds(config.output, members + classifiers)
    if missing:
        listed = ", ".join(f"{e} fold {k}" for e, k in missing)
        raise ValueError(f"not trained yet: {listed} (train them, or set train_missing: true)")
    return members, classifiers


def channel_thresholds(thresholds: Mapping, channels: Sequence[str]) -> list[dict]:
    """The searched values of each channel, in channel order."""
    if len(channels) == 1:
        return [dict(thresholds)]
    return [dict(thresholds["channels"][name]) for name in channels]


def _score(combine: str, pred: Prediction) -> float:
    if combine == "classifier":
        return pred.classifier
    if combine == "head":
        if pred.head is None:
            raise ValueError("combine: head needs members trained with model.cls_head: true")
        return pred.head
    return float(pred.mask.max()) / 255.0  # max_pixel


def _maps(combine: str, pred: Prediction) -> np.ndarray:
    if combine == "product":
        return quantise(pred.mask.astype(np.float32) / 255.0 * pred.classifier)
    return pred.mask


def apply_thresholds(
    thresholds: Mapping, pred: Prediction, channels: Sequence[str], postprocess: Mapping = {}
) -> np.ndarray:
    """The submitted (C, H, W) masks of one prediction, from the searched thresholds (never
    literals), then each channel's post-processing rule ({keep, fill}) if the task has one."""
    combine = thresholds["combine"]
    maps = _maps(combine, pred)
    masks = []
    for c, t in enumerate(channel_thresholds(thresholds, channels)):
        if combine in TWO_STAGE:
            score = _score(combine, pred)
            mask = two_stage(maps[c], score, t["cls_threshold"], t["seg_threshold"], t["min_area"])
        else:
            mask = triplet(maps[c], t["top"], t["min_area"], t["bottom"])
        rule = postprocess.get(channels[c])
        masks.append(clean_mask(mask, rule["keep"], rule["fill"]) if rule else mask)
    return np.stack(masks)


def fold_models(config: Config, task: EnsembleTask, members, fold=None) -> list[FoldModel]:
    """Every fold model of ``members`` (each member counting by its weight, not its folds), or
    only those of ``fold``."""
    from common.train.runner import resolve_device

    device = resolve_device("auto")
    models = []
    for member in members:
        folds = member.folds if fold is None else [k for k in member.folds if k == fold]
        weight = member.weight / len(member.folds) if fold is None else member.weight
        for k in folds:
            model = load_fold_model(
                config.output,
                member.experiment,
                k,
                weight,
                device,
                classes=len(task.channels),
                prepared=task.prepared or config.prepared or None,
                channels=task.channels,
            )
            models.append(model)
    return models


def predict_options(config: Config, task: EnsembleTask) -> PredictOptions:
    from common.train.runner import resolve_device

    return PredictOptions(
        device=resolve_device("auto"),
        tta=tuple(config.tta),
        scales=tuple(config.scales),
        policy=task.policy,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
    )


def _shapes(table: pd.DataFrame) -> dict[str, tuple[int, int]]:
    return {
        str(i): (int(h), int(w))
        for i, h, w in zip(table["id"], table["height"], table["width"], strict=True)
    }


def search_oof(config: Config, task: EnsembleTask, members, classifiers, out: Path, log) -> dict:
    """Predict every fold's validation items, search the grid per channel, write
    ``thresholds.yaml``; returns it."""
    if task.train is None or task.truth is None:
        raise ValueError("the out-of-fold search needs the training items and their truth")
    train, shapes = task.train, _shapes(task.train)
    channels = len(task.channels)
    if config.combine in TWO_STAGE and channels > 1:
        raise ValueError(
            f"combine: {config.combine} gates one mask channel, this task has {channels}"
        )
    scores: list[float] = []

    def pairs():  # image-major, channel-minor: one streamed reduction for every channel
        for fold in sorted({k for m in members for k in m.folds}):
            ids = train.loc[train["fold"] == fold, "id"].astype(str).tolist()
            predictions = predict_with(
                ids,
                shapes,
                fold_models(config, task, members, fold),
                fold_models(config, task, classifiers, fold),
                predict_options(config, task),
            )
            log(f"ensemble: out-of-fold maps of fold {fold} ({len(ids)} items)")
            for pred in tqdm(predictions, total=len(ids), desc=f"oof fold {fold}", disable=None):
                maps = _maps(config.combine, pred)
                for c, name in enumerate(task.channels):
                    write_png(map_path(out / "oof", name, pred.image_id, channels), maps[c])
                if config.combine in TWO_STAGE:
                    scores.append(_score(config.combine, pred))
                yield from zip(maps, task.truth(pred.image_id, maps.shape[1:]), strict=True)

    every = reduce_pairs(pairs())
    metric = config.get("metric", "dice")  # oof_dice below holds this metric's score
    grid = {k: config.search[k] for k in ("tops", "min_areas", "bottoms")}
    per_channel, dices, empties, n_images = {}, [], [], 0
    for c, name in enumerate(task.channels):
        above, above_true = every.above[c::channels], every.above_true[c::channels]
        stats = ImageStats(above=above, above_true=above_true, n_true=above_true[:, 0])
        if config.combine in TWO_STAGE:
            result = search_two_stage_from_stats(
                stats, scores, grid["tops"], grid["bottoms"], grid["min_areas"]
            )
        else:
            result = search_triplets_from_stats(
                stats, grid["tops"], grid["min_areas"], grid["bottoms"], metric=metric
            )
        suffix = "" if channels == 1 else f"_{name}"
        result.to_csv(out / f"search{suffix}.csv")
        if c == 0:
            result.heatmap(out / "search.png")
        best = {k: (int(v) if k == "min_area" else float(v)) for k, v in result.best.items()}
        score = best.pop(metric if metric in best else "dice")
        per_channel[name] = best | {"oof_dice": score}
        dices.append(score)
        empties.append(float(result.empty_dice))
        n_images = result.n_images
    thresholds: dict = {"combine": config.combine}
    if channels == 1:
        thresholds |= {k: v for k, v in per_channel[task.channels[0]].items() if k != "oof_dice"}
    else:
        thresholds["channels"] = per_channel
    thresholds |= {
        "oof_dice": float(np.mean(dices)),
        "empty_dice": float(np.mean(empties)),
        "n_images": n_images,
    }
    write_text_atomic(out / "thresholds.yaml", HEADER + yaml.safe_dump(thresholds, sort_keys=False))
    return thresholds


def map_path(folder: Path, channel: str, image_id: str, channels: int) -> Path:
    """Where a map is written: ``<folder>/<id>.png`` for one channel, else per channel."""
    return folder / f"{image_id}.png" if channels == 1 else folder / channel / f"{image_id}.png"


def predict_test(
    config: Config, task: EnsembleTask, members, classifiers, thresholds: Mapping, out: Path, log
) -> tuple[list, list]:
    """Predict the test items, apply the thresholds and post-processing, encode the rows;
    returns (rows, overlay panels, the number of items with a mask)."""
    ids = task.test["id"].astype(str).tolist()
    segmenters = fold_models(config, task, members)
    gates = fold_models(config, task, classifiers)
    log(f"ensemble: test items ({len(ids)}) x {len(segmenters) + len(gates)} fold models")
    panels: list = []
    rows: list = []
    non_empty = 0
    channels = len(task.channels)
    predictions = predict_with(
        ids, _shapes(task.test), segmenters, gates, predict_options(config, task)
    )
    for pred in tqdm(predictions, total=len(ids), desc="test", disable=None):
        for c, name in enumerate(task.channels):
            write_png(map_path(out / "test", name, pred.image_id, channels), pred.mask[c])
        masks = apply_thresholds(thresholds, pred, task.channels, task.postprocess)
        rows.extend(task.encode(pred.image_id, masks))
        non_empty += bool(masks.any())
        if task.images is not None and masks.any() and len(panels) < config.overlays:
            image = read_png(task.images / f"{pred.image_id}.png")
            panels.append((pred.image_id[-12:], image, None, _at(masks, image.shape[:2])))
    return rows, panels, non_empty


def _at(masks: np.ndarray, shape) -> np.ndarray:
    """(C, H, W) masks at the size of the prepared image they are drawn over."""
    if masks.shape[1:] != tuple(shape):
        size = (shape[1], shape[0])
        masks = np.stack([cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in masks])
    return masks[0] if len(masks) == 1 else masks


def run_ensemble(config: Config, task: EnsembleTask, *, log=print) -> dict:
    """Search on the out-of-fold maps, predict the test items, write and check the submission
    (see the module docs); returns the report (also written beside the CSV)."""
    with exclusive(Path(config.output) / f".{config.name}.lock", f"ensemble {config.name}"):
        for folder in (Path(config.output) / config.name, Path(config.submissions)):
            remove_stale_temps(folder)  # what a killed run was writing
        return _run_ensemble(config, task, log)


def _run_ensemble(config: Config, task: EnsembleTask, log) -> dict:
    start = time.perf_counter()
    members, classifiers = check_trained(config)
    out = Path(config.output) / config.name
    search_oof(config, task, members, classifiers, out, log)
    thresholds = yaml.safe_load((out / "thresholds.yaml").read_text())  # the file is the truth
    rows, panels, non_empty = predict_test(config, task, members, classifiers, thresholds, out, log)
    csv = Path(config.submissions) / f"{config.name}.csv"
    write_rows(rows, csv, task.header)
    report = {
        "members": [asdict(m) for m in members],
        "classifiers": [asdict(m) for m in classifiers],
        "channels": list(task.channels),
        "tta": list(config.tta),
        "scales": list(config.scales),
        "thresholds": thresholds,
        "oof_dice": thresholds["oof_dice"],
        "oof_empty_dice": thresholds["empty_dice"],
        "n_test": len(task.test),
        "n_test_non_empty": non_empty,
        "n_rows": len(rows),
    }
    if task.validate is not None:
        report["validated"] = task.validate(csv)
    if task.score is not None:
        report |= task.score(csv)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_text_atomic(csv.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    mask_overlays(panels, csv.with_suffix(".png"))
    return report | {"csv": str(csv)}
