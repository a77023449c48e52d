"""Ensemble SIIM models: out-of-fold search, then the test submission.

    python -m competitions.siim.ensemble --config competitions/siim/configs/ensembles/default.yaml

1. Out of fold: each fold's validation images are predicted by that fold's model of every member
   (weighted mean, TTA, native size) into ``models/siim/<name>/oof/``, and the grid of the
   chosen combination is searched on them: ``thresholds.yaml``, ``search.csv``, ``search.png``.
2. Test: every fold of every member predicts the test images into ``models/siim/<name>/test/``;
   the thresholds read back from ``thresholds.yaml`` make the masks, written as
   ``submissions/siim/<name>.csv`` with ``<name>.json`` (members, folds, weights, TTA,
   thresholds, scores) and ``<name>.png`` (predicted masks over test images). The CSV is
   validated against the sample submission and, when the test truth is known (the synthetic
   set), scored.

Combinations (``combine``): ``triplet`` on the averaged maps; a score gating the mask
(``two_stage``) from ``classifier`` models, the members' classification ``head``, or the map's
``max_pixel``; or ``product``, each map multiplied by the classifiers' score (8th place).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from common.atomic import write_text_atomic
from common.checkpoints import load_checkpoint
from common.config import Config, load_config, load_run_config, to_config
from common.folds import read_folds
from common.images import read_mask, read_png, write_png
from common.paths import data_dir
from common.plots import mask_overlays
from common.postprocess import quantise, triplet, two_stage
from common.rle import siim_rle_encode
from common.runner import resolve_device
from common.submission import write_submission
from common.threshold_search import (
    reduce_pairs,
    search_triplets_from_stats,
    search_two_stage_from_stats,
)
from competitions.siim import submission
from competitions.siim.layout import find_sample as find_sample_in
from competitions.siim.predict import (
    FoldModel,
    Prediction,
    final_path,
    load_fold_model,
    predict_ids,
)
from competitions.siim.prepare import main as prepare_main
from competitions.siim.raw import read_rle_csv
from competitions.siim.submission import native_shapes
from competitions.siim.train import run_fold

COMBINES = ("triplet", "classifier", "head", "max_pixel", "product")
TWO_STAGE = ("classifier", "head", "max_pixel")


@dataclass(frozen=True)
class Member:
    experiment: str
    folds: tuple[int, ...]
    weight: float


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


def check_combination(config: Config, members: list[Member], classifiers: list[Member]) -> None:
    if config.combine not in COMBINES:
        raise ValueError(f"combine {config.combine!r} is unknown; valid: {', '.join(COMBINES)}")
    if not members:
        raise ValueError("members: an ensemble needs at least one segmentation member")
    if config.combine in ("classifier", "product") and not classifiers:
        raise ValueError(f"combine: {config.combine} needs at least one entry in classifiers")


def ensure_trained(config: Config, members: list[Member], log=print) -> None:
    """Every member fold must have its final.pt; with ``train_missing`` the missing ones are
    trained from ``configs/<experiment>.yaml`` first, else the error lists them."""
    missing = [
        (m.experiment, fold)
        for m in members
        for fold in m.folds
        if not final_path(config.output, m.experiment, fold).is_file()
    ]
    if not missing:
        return
    if not config.train_missing:
        listed = ", ".join(f"{e} fold {k}" for e, k in missing)
        raise ValueError(f"not trained yet: {listed} (train them, or set train_missing: true)")
    for experiment, fold in missing:
        path = Path(config.configs) / f"{experiment}.yaml"
        if not path.is_file():
            raise ValueError(f"{experiment} fold {fold} is not trained and {path} does not exist")
        log(f"ensemble: training {experiment} fold {fold} first")
        experiment_config = load_config(path, [f"output={config.output}", f"name={experiment}"])
        data = experiment_config.data
        if not (Path(data.prepared) / str(data.size) / "train.csv").is_file():
            prepare_main(["--config", str(path)])
        run_fold(experiment_config, fold, log=log)


def _fold_models(config, members, fold, device) -> list[FoldModel]:
    return [
        load_fold_model(
            config.output, m.experiment, fold, m.weight, device, prepared=config.prepared
        )
        for m in members
        if fold in m.folds
    ]


def _score(combine: str, pred: Prediction) -> float:
    if combine == "classifier":
        return pred.classifier
    if combine == "head":
        if pred.head is None:
            raise ValueError("combine: head needs members trained with model.cls_head: true")
        return pred.head
    return float(pred.mask.max()) / 255.0  # max_pixel


def _map(combine: str, pred: Prediction) -> np.ndarray:
    if combine == "product":
        return quantise(pred.mask.astype(np.float32) / 255.0 * pred.classifier)
    return pred.mask


def apply_thresholds(thresholds: dict, pred: Prediction) -> np.ndarray:
    """The submitted mask of one prediction, from the searched thresholds (never literals)."""
    combine = thresholds["combine"]
    if combine in TWO_STAGE:
        t = thresholds
        score = _score(combine, pred)
        return two_stage(pred.mask, score, t["cls_threshold"], t["seg_threshold"], t["min_area"])
    t = thresholds
    return triplet(_map(combine, pred), t["top"], t["min_area"], t["bottom"])


def search_oof(config: Config, members, classifiers, tables, device, out: Path, log) -> dict:
    """Predict every fold's validation images, search the grid, write thresholds.yaml."""
    folds = read_folds(tables["folds_csv"]).set_index("ImageId")["fold"]
    train = tables["train"]
    shapes = native_shapes(train)
    scores: list[float] = []

    def pairs():
        for fold in sorted({k for m in members for k in m.folds}):
            ids = [i for i in train["ImageId"] if folds.get(i) == fold]
            predictions = predict_ids(
                ids,
                shapes,
                _fold_models(config, members, fold, device),
                _fold_models(config, classifiers, fold, device),
                device=device,
                tta=tuple(config.tta),
                scales=tuple(config.scales),
                batch_size=config.batch_size,
                num_workers=config.num_workers,
            )
            log(f"ensemble: out-of-fold maps of fold {fold} ({len(ids)} images)")
            for pred in tqdm(predictions, total=len(ids), desc=f"oof fold {fold}", disable=None):
                q = _map(config.combine, pred)
                write_png(out / "oof" / f"{pred.image_id}.png", q)
                if config.combine in TWO_STAGE:
                    scores.append(_score(config.combine, pred))
                truth = read_mask(tables["full_masks"] / f"{pred.image_id}.png", q.shape)
                yield q, truth

    stats = reduce_pairs(pairs())
    grid = {k: config.search[k] for k in ("tops", "min_areas", "bottoms")}
    if config.combine in TWO_STAGE:
        result = search_two_stage_from_stats(
            stats, scores, grid["tops"], grid["bottoms"], grid["min_areas"]
        )
    else:
        result = search_triplets_from_stats(stats, grid["tops"], grid["min_areas"], grid["bottoms"])
    result.to_csv(out / "search.csv")
    result.heatmap(out / "search.png")
    best = {k: (int(v) if k == "min_area" else float(v)) for k, v in result.best.items()}
    thresholds = {"combine": config.combine} | {k: v for k, v in best.items() if k != "dice"}
    thresholds |= {"oof_dice": best["dice"], "empty_dice": float(result.empty_dice)}
    thresholds["n_images"] = result.n_images
    header = "# written by competitions.siim.ensemble from the out-of-fold search; do not edit\n"
    write_text_atomic(out / "thresholds.yaml", header + yaml.safe_dump(thresholds, sort_keys=False))
    return thresholds


def predict_test(config, members, classifiers, tables, thresholds, device, out: Path, log):
    """Predict the test images, apply the thresholds, write and check the submission."""
    test = tables["test"]
    ids = test["ImageId"].tolist()
    segmenters = [m for member in members for m in _fold_models_all(config, member, device)]
    gates = [m for member in classifiers for m in _fold_models_all(config, member, device)]
    log(f"ensemble: test images ({len(ids)}) x {len(segmenters) + len(gates)} fold models")
    panels: list = []
    rows = []
    predictions = predict_ids(
        ids,
        native_shapes(test),
        segmenters,
        gates,
        device=device,
        tta=tuple(config.tta),
        scales=tuple(config.scales),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
    )
    for pred in tqdm(predictions, total=len(ids), desc="test", disable=None):
        write_png(out / "test" / f"{pred.image_id}.png", pred.mask)
        mask = apply_thresholds(thresholds, pred)
        rows.append((pred.image_id, siim_rle_encode(mask)))
        if mask.any() and len(panels) < config.overlays:
            image = read_png(tables["images"] / f"{pred.image_id}.png")
            panels.append((pred.image_id[-12:], image, None, _at(mask, image.shape)))
    return rows, panels


def _at(mask: np.ndarray, shape) -> np.ndarray:
    """A native-size mask at the size of the prepared image it is drawn over."""
    if mask.shape == tuple(shape):
        return mask
    return cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def _fold_models_all(config, member: Member, device) -> list[FoldModel]:
    weight = member.weight / len(member.folds)  # each member counts by its weight, not folds
    return [
        load_fold_model(
            config.output, member.experiment, k, weight, device, prepared=config.prepared
        )
        for k in member.folds
    ]


def _tables(config: Config, members: list[Member]) -> dict:
    """The prepared tables and folders of the first member's data (all members share the data)."""
    first = members[0]
    state = load_checkpoint(final_path(config.output, first.experiment, first.folds[0]))
    data = to_config(state["config"]).data
    root = Path(data.prepared) / str(data.size)
    return {
        "train": pd.read_csv(root / "train.csv", dtype={"ImageId": str}),
        "test": pd.read_csv(root / "test.csv", dtype={"ImageId": str}),
        "test_csv": root / "test.csv",
        "folds_csv": data.folds,
        "full_masks": root / "full_masks",
        "images": root / "images",
    }


def run_ensemble(config: Config, *, sample: Path | None, log=print) -> dict:
    start = time.perf_counter()
    members = parse_members(config.members, "members")
    classifiers = parse_members(config.classifiers, "classifiers")
    check_combination(config, members, classifiers)
    ensure_trained(config, members + classifiers, log)
    device = resolve_device("auto")
    out = Path(config.output) / config.name
    tables = _tables(config, members)
    thresholds = search_oof(config, members, classifiers, tables, device, out, log)
    thresholds = yaml.safe_load((out / "thresholds.yaml").read_text())  # the file is the truth
    rows, panels = predict_test(config, members, classifiers, tables, thresholds, device, out, log)
    csv = Path(config.submissions) / f"{config.name}.csv"
    write_submission(rows, csv, submission.FORMAT)
    report = {
        "members": [asdict(m) for m in members],
        "classifiers": [asdict(m) for m in classifiers],
        "tta": list(config.tta),
        "scales": list(config.scales),
        "thresholds": thresholds,
        "oof_dice": thresholds["oof_dice"],
        "oof_empty_dice": thresholds["empty_dice"],
        "n_test": len(rows),
        "n_test_non_empty": sum(rle != "-1" for _, rle in rows),
    }
    if sample is not None:
        report["validated"] = submission.validate(csv, sample, tables["test_csv"])
    truth = Path(config.test_truth)
    if truth.is_file() and set(read_rle_csv(truth)["ImageId"]) <= {r[0] for r in rows}:
        shapes = native_shapes(tables["test"])
        scored = submission.score(csv, truth, shapes)
        report |= {"test_dice": scored["dice"], "test_empty_dice": scored["empty_dice"]}
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_text_atomic(csv.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    mask_overlays(panels, csv.with_suffix(".png"))
    return report | {"csv": str(csv)}


def find_sample(config: Config) -> Path | None:
    """The sample submission of the data the members were trained on (raw, else synthetic)."""
    roots = (data_dir("siim", "raw"), Path(config.test_truth).parent)
    return next((s for s in map(find_sample_in, roots) if s is not None), None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="ensemble YAML")
    parser.add_argument("--sample", help="sample submission to validate against (found if omitted)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
        sample = Path(args.sample) if args.sample else find_sample(config)
        report = run_ensemble(config, sample=sample)
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
