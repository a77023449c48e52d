"""Held-out evaluation of a multi-channel image competition (lung anatomy, or any other with
several mask channels scored per channel): probability maps, a threshold per channel,
post-processing, per-channel Dice and Jaccard, groups of channels, and the held-out submission.

Reads each trained fold's ``oof/<channel>/<case>.png`` (uint8 probabilities at the scoring size,
written by ``predict_held_out``) and the prepared reference masks
(``<prepared>/reference/<channel>/<case>.png``). Thresholds: with ``predict.search: cross`` each
fold's are searched on the other folds' maps (so no case's score comes from a threshold chosen on
it); with a single fold, or ``search: fixed``, they are ``predict.threshold``. Writes:

    <submissions>/<name>.csv   id,<channel>,rle: one row per (case, channel), the mask at the
                               scoring size in the absolute RLE (column-major, 1-indexed)
    <submissions>/<name>.json  per-channel Dice and Jaccard, per group (the mean of its channels'
                               figures) and per group as one object ("objects": the union of its
                               channels), thresholds, folds, published figures
    <submissions>/<name>.png   predicted (red) and true (green) contours over a few cases

A competition gives its data and its reporting as a ``CaseSet``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from common.config import Config
from common.data.crops import crop_spec, read_box_table
from common.data.loaders import eval_loader
from common.infer.cascade import paste_batches
from common.infer.inference import predict_batches, write_maps
from common.io.atomic import write_text_atomic
from common.io.images import read_mask, read_png
from common.io.rle import rle_decode, rle_encode
from common.plots import mask_overlays
from common.post.metrics import dice_jaccard
from common.post.postprocess import binarize, clean_mask
from common.post.threshold_search import cross_fitted_thresholds, reduce_pairs
from common.submit.submission import write_rows
from common.train.runner import fold_dir, write_fold_score

HEADER = ("id", "structure", "rle")


@dataclass(frozen=True)
class CaseSet:
    """A multi-channel competition's held-out contract: ``read_cases(config)`` -> (prepared
    folder, cases with ``case`` and ``fold``), ``fold_cases(config, fold)`` -> (folder the fold's
    model reads, train, held-out), ``items(config, root, frame)`` -> loader items,
    ``policy(channels)`` -> its ``TtaPolicy``, ``make_loaders(config, fold, seed)`` -> the
    fold's (train, held-out) loaders, ``prepare(config, size, skip_bad)`` -> the folder of the
    whole images prepared at ``size`` (the train stage, ``common.train.channel_runner``),
    ``configs``: the folder of its experiments (a crop stage's first stage is trained from
    there), ``tables``: the prepared tables crops are cut for; and how it reports: ``groups`` (name -> channels,
    the figures the literature gives), ``published`` (who -> group -> Jaccard), the CSV
    ``header``, the headline metric's name and the label its report starts with."""

    read_cases: Callable | None
    fold_cases: Callable
    items: Callable
    policy: Callable
    make_loaders: Callable | None = None
    prepare: Callable | None = None
    configs: str | Path = ""
    tables: tuple[str, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    published: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    header: tuple[str, str, str] = HEADER
    cv_metric: str = "Jaccard, mean of the groups"
    label: str = ""


def map_path(config: Config, fold: int, structure: str, case: str) -> Path:
    """Where fold ``fold`` keeps its held-out probability map of ``structure`` for ``case``; for
    a refinement stage (``data.crop_stage``: a second model on crops around some structures),
    the first stage's map of each structure it does not refine."""
    spec = crop_spec(config.data)
    if spec is not None and structure not in config.data.structures:
        return Path(spec.run) / f"fold{fold}" / "oof" / structure / f"{case}.png"
    return fold_dir(config, fold) / "oof" / structure / f"{case}.png"


def scored_structures(config: Config) -> list[str]:
    """The structures a run is scored on: its own, or for a refinement stage, the first stage's
    (the refined ones from this run, the others from the first stage)."""
    spec = crop_spec(config.data)
    if spec is None:
        return list(config.data.structures)
    path = Path(spec.run) / f"fold{spec.stage_folds(0)[0]}" / "config.yaml"
    if not path.is_file():
        raise ValueError(f"refinement stage: {path} not found: train {Path(spec.run).name} first")
    first = list(yaml.safe_load(path.read_text())["data"]["structures"])
    missing = [s for s in config.data.structures if s not in first]
    if missing:
        raise ValueError(f"refinement stage: {missing} are not structures of {spec.run}")
    return first


def reference_mask(root: Path, structure: str, case: str, size: int) -> np.ndarray:
    """The prepared ground truth of ``structure`` for ``case`` at the scoring size."""
    return read_mask(root / "reference" / structure / f"{case}.png", (size, size))


def predict_held_out(model, config: Config, fold: int, cases: CaseSet, *, device,
                     channels_last=False) -> list[str]:  # fmt: skip
    """Predict fold ``fold``'s held-out cases with the config's TTA; writes each structure's
    uint8 map at the scoring size to ``oof/<structure>/<case>.png``. Returns the case ids."""
    root, _, held_out = cases.fold_cases(config, fold)
    structures = list(config.data.structures)
    batches = predict_batches(
        model,
        eval_loader(config, cases.items(config, root, held_out)),
        device=device,
        tta=tuple(config.predict.tta),
        channels_last=channels_last,
        policy=cases.policy(structures),
    )
    ids = held_out["case"].tolist()
    if crop_spec(config.data):  # crops' maps back in the whole image, zero outside the box
        batches = paste_batches(batches, ids, read_box_table(root), config.data.score_size)

    def path(case: str, structure: str) -> Path:
        return map_path(config, fold, structure, case)

    for _ in write_maps(batches, ids, structures, path, size=config.data.score_size):
        pass
    return ids


def _held_out_maps(
    config: Config, folds: list[int], case_set: CaseSet
) -> tuple[Path, pd.DataFrame]:
    """The prepared folder and the held-out cases of ``folds`` whose maps exist (fold column)."""
    root, cases = case_set.read_cases(config)
    cases = cases[cases["fold"].isin(folds)].reset_index(drop=True)
    first = scored_structures(config)[0]
    for fold in folds:
        ids = cases.loc[cases["fold"] == fold, "case"]
        missing = [i for i in ids if not map_path(config, fold, first, i).is_file()]
        if missing:
            raise ValueError(
                f"fold {fold}: no held-out map for {len(missing)} case(s), e.g. {missing[0]} "
                f"(expected {map_path(config, fold, first, missing[0])}): train the fold first"
            )
    return root, cases


def _map(config: Config, fold: int, structure: str, case: str) -> np.ndarray:
    size = config.data.score_size
    return read_png(map_path(config, fold, structure, case), (size, size))


def fold_thresholds(config: Config, root: Path, cases: pd.DataFrame, folds: list[int]) -> dict:
    """{fold: {structure: threshold}}: cross-fitted on the other folds, or the fixed default."""
    structures, size = scored_structures(config), config.data.score_size
    if config.predict.search not in ("cross", "fixed"):
        raise ValueError(f"predict.search {config.predict.search!r}: valid: cross, fixed")
    if config.predict.search == "fixed" or len(folds) < 2:
        return {fold: {s: float(config.predict.threshold) for s in structures} for fold in folds}
    by_structure = {}
    for structure in structures:
        pairs = (
            (_map(config, f, structure, c), reference_mask(root, structure, c, size))
            for c, f in zip(cases["case"], cases["fold"], strict=True)
        )
        by_structure[structure] = cross_fitted_thresholds(reduce_pairs(pairs), cases["fold"])
    return {fold: {s: by_structure[s][fold] for s in structures} for fold in folds}


def final_mask(config: Config, prob: np.ndarray, structure: str, threshold: float) -> np.ndarray:
    rule = config.predict.postprocess.get(structure)
    mask = binarize(prob, threshold)
    if rule is None:
        return mask
    return clean_mask(mask, rule.keep, rule.fill)


def evaluate(config: Config, folds: list[int], case_set: CaseSet, *, name: str | None = None,
             log=print) -> dict:  # fmt: skip
    """Score the held-out cases of ``folds`` and write the submission files; returns the report."""
    root, cases = _held_out_maps(config, folds, case_set)
    groups_of = case_set.groups
    structures = scored_structures(config)
    size = config.data.score_size
    thresholds = fold_thresholds(config, root, cases, folds)
    rows, scores, objects, panels = [], [], [], []
    picked = set(
        cases["case"].iloc[:: max(1, len(cases) // max(1, config.predict.overlays))][
            : config.predict.overlays
        ]
    )
    for case, fold in zip(cases["case"], cases["fold"], strict=True):
        preds, truths = [], []
        for structure in structures:
            pred = final_mask(
                config, _map(config, fold, structure, case), structure, thresholds[fold][structure]
            )
            truth = reference_mask(root, structure, case, size)
            scores.append(
                {"case": case, "fold": int(fold), "structure": structure}
                | dice_jaccard(pred, truth)
            )
            rows.append((case, structure, rle_encode(pred, order="F")))
            preds.append(pred)
            truths.append(truth)
        objects += [{"case": case, "fold": int(fold)} | row
                    for row in object_scores(dict(zip(structures, preds, strict=True)),
                                             dict(zip(structures, truths, strict=True)), groups_of)]  # fmt: skip
        if case in picked:
            image = read_png(root / "images" / f"{case}.png")
            panels.append((case, image, np.stack(truths), np.stack(preds)))
    table = pd.DataFrame(scores)
    report = _report(config, table, thresholds, folds, case_set)
    if objects:  # lungs and clavicles as one object each, the benchmark's form
        per = pd.DataFrame(objects).groupby("group", sort=False)[["dice", "jaccard"]].mean()
        report["objects"] = {g: {k: float(v) for k, v in row.items()} for g, row in per.iterrows()}
    for fold in folds:
        _, groups = summarise(table[table["fold"] == fold], groups_of)
        write_fold_score(fold_dir(config, fold), metric=case_set.cv_metric, score=_cv(groups),
                         thresholds=thresholds[fold],
                         held_out_jaccard={g: round(v["jaccard"], 4) for g, v in groups.items()})  # fmt: skip
    report["synthetic"] = bool(json.loads((root / "source.json").read_text()).get("synthetic"))
    name = name or _default_name(config, folds, cases_all=case_set.read_cases(config)[1])
    out = Path(config.submissions)
    write_rows(rows, out / f"{name}.csv", case_set.header)
    write_text_atomic(out / f"{name}.json", json.dumps(report, indent=2) + "\n")
    mask_overlays(panels, out / f"{name}.png")
    log(format_report(report, case_set.label))
    log(f"-> {out / name}.csv / .json / .png")
    return report


def _default_name(config: Config, folds: list[int], cases_all: pd.DataFrame) -> str:
    if sorted(folds) == sorted(set(cases_all["fold"])):
        return config.name
    return f"{config.name}_fold{'_'.join(map(str, folds))}"


def object_scores(preds: dict, truths: dict, groups: Mapping[str, Sequence[str]]) -> list[dict]:
    """Dice and Jaccard of each group of several channels (e.g. left and right lung) of one case
    scored as one object: the union of its members' masks, as the SCR benchmark's three classes
    are scored (``summarise``'s groups are the mean of the members' figures instead)."""
    out = []
    for group, members in groups.items():
        if len(members) > 1 and all(m in preds for m in members):
            pred = np.logical_or.reduce([preds[m] > 0 for m in members])
            truth = np.logical_or.reduce([truths[m] > 0 for m in members])
            out.append({"group": group} | dice_jaccard(pred, truth))
    return out


def summarise(table: pd.DataFrame, groups_of: Mapping[str, Sequence[str]]) -> tuple[dict, dict]:
    """Mean Dice and Jaccard per structure and per group (``groups_of``: group -> channels) of a
    table with ``structure``, ``dice``, ``jaccard`` columns."""
    per = table.groupby("structure", sort=False)[["dice", "jaccard"]].mean()
    structures = {s: {k: float(v) for k, v in row.items()} for s, row in per.iterrows()}
    if not groups_of:  # each channel is its own group
        return structures, dict(structures)
    groups = {}
    for group, members in groups_of.items():
        rows = table[table["structure"].isin(members)]
        if len(rows):
            groups[group] = {k: float(rows[k].mean()) for k in ("dice", "jaccard")}
    return structures, groups


def _cv(groups: dict) -> float:
    return float(np.mean([values["jaccard"] for values in groups.values()]))


def _report(config: Config, table: pd.DataFrame, thresholds: dict, folds: list[int],
            case_set: CaseSet) -> dict:  # fmt: skip
    per_structure, groups = summarise(table, case_set.groups)
    return {
        "cv": _cv(groups),
        "cv_metric": case_set.cv_metric,
        "name": config.name,
        "folds": folds,
        "n_cases": int(table["case"].nunique()),
        "score_size": config.data.score_size,
        "train_size": config.data.size,
        "model": f"{config.model.arch}/{config.model.encoder}",
        "tta": list(config.predict.tta),
        "structures": per_structure,
        "groups": groups,
        "published_jaccard": case_set.published,
        "thresholds": {str(f): t for f, t in thresholds.items()},
        "threshold_search": config.predict.search if len(folds) > 1 else "fixed",
    }


def format_report(report: dict, label: str = "") -> str:
    lines = [
        f"{label} {report['name']}: {report['n_cases']} held-out cases (folds {report['folds']}), "
        f"scored at {report['score_size']}px",
        f"{'structure':<16}{'Dice':>8}{'Jaccard':>9}",
    ]
    for structure, values in report["structures"].items():
        lines.append(f"{structure:<16}{values['dice']:>8.4f}{values['jaccard']:>9.4f}")
    for group, values in report["groups"].items():
        published = "  ".join(
            f"{who.split(' (')[0]} {figures[group]:.3f}"
            for who, figures in report.get("published_jaccard", {}).items()
            if group in figures
        )
        shown = "" if report.get("synthetic") or not published else f"   (Jaccard: {published})"
        lines.append(f"{group:<16}{values['dice']:>8.4f}{values['jaccard']:>9.4f}{shown}")
    for group, values in report.get("objects", {}).items():
        lines.append(f"{group + ' as one':<16}{values['dice']:>8.4f}{values['jaccard']:>9.4f}"
                     "   (left and right scored as one object)")  # fmt: skip
    if report.get("synthetic"):
        lines.append("SYNTHETIC data: these scores test the pipeline; they are not the benchmark's")
    return "\n".join(lines)


def read_submission(path: str | Path, size: int = 512, header: Sequence[str] = HEADER
                    ) -> dict[tuple[str, str], np.ndarray]:  # fmt: skip
    """The masks of a long-form submission CSV (``id,<channel>,rle``, absolute column-major RLE
    at ``size``) by (case, channel); ``ValueError`` naming the line on a wrong header, a
    malformed row, a repeated pair or an RLE that does not decode."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != ",".join(header):
        raise ValueError(f"{path}: line 1 must be {','.join(header)!r}")
    masks = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != 3:
            raise ValueError(f"{path}, line {number}: {len(fields)} fields, expected 3")
        case, structure, rle = fields
        if (case, structure) in masks:
            raise ValueError(f"{path}, line {number}: ({case}, {structure}) repeats")
        try:
            masks[(case, structure)] = rle_decode(rle, (size, size), order="F")
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: {error}") from None
    return masks


def score_channels(csv: Path, ids: Sequence[str], channels: Sequence[str], size: int,
                   truth: Callable, groups: Mapping[str, Sequence[str]]) -> dict:  # fmt: skip
    """Dice and Jaccard per channel and group of a long submission against ``truth(case,
    channel, size)`` for the cases ``ids``."""
    masks = read_submission(csv, size)
    rows = [{"structure": channel} | dice_jaccard(masks[(case, channel)], truth(case, channel, size))
            for case in ids for channel in channels]  # fmt: skip
    table = pd.DataFrame(rows)
    per_channel, by_group = summarise(table, groups)
    return {"test_dice": float(table["dice"].mean()), "test_jaccard": float(table["jaccard"].mean()),
            "test_structures": per_channel, "test_groups": by_group}  # fmt: skip


def validate_long(csv: Path, ids: Sequence[str], channels: Sequence[str], size: int,
                  header: Sequence[str] = HEADER) -> dict:  # fmt: skip
    """A long-form submission holds exactly one row per (id, channel); returns its counts."""
    masks = read_submission(csv, size, header)
    expected = {(case, c) for case in ids for c in channels}
    if set(masks) != expected:
        missing, extra = expected - set(masks), set(masks) - expected
        raise ValueError(
            f"{csv}: {len(missing)} (case, structure) pair(s) missing, {len(extra)} extra"
        )
    return {"rows": len(masks), "non_empty": sum(bool(m.any()) for m in masks.values())}


def main(argv=None, *, competition) -> None:
    """``evaluate``: score the held-out maps of ``--folds`` again (a new threshold rule,
    post-processing or name) without training."""
    import argparse
    import sys

    from common.config import load_run_config
    from common.train.runner import parse_folds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--folds", default="0,1")
    parser.add_argument("--name", default=None, help="submission name (default: from the config)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
        evaluate(config, parse_folds(args.folds), competition.data_spec(), name=args.name)
    except ValueError as error:
        sys.exit(f"{competition.name} evaluate: {error}")
