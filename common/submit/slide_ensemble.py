"""The slide back end of the ensemble: the out-of-fold search on the members' blended maps, then
the test slides, predicted in tiles and encoded strip by strip.

    python -m common.cli ensemble --competition hubmap --config competitions/hubmap/configs/ensembles/default.yaml

1. Out of fold: each training slide's map is the weighted mean of the maps its fold's model of
   every member wrote (``fold<k>/oof/<id>.tiff``; no second forward pass); the threshold and
   minimum object size (the ensemble's ``search.bottoms`` and ``search.min_areas``) are searched
   on them and the full-resolution Dice scored (``common.post.slide_search``):
   ``<output>/<name>/thresholds.yaml``, ``search.csv``, ``search.png``.
2. Test: every fold of every member predicts each test slide in tiles (the ensemble's TTA,
   Gaussian blending) and the mask is encoded strip by strip (``common.infer.slide_inference``),
   never held whole: ``<submissions>/<name>.csv`` (``id,<prediction>``), validated against the
   sample submission, scored when the test truth (``test_truth.csv``) is known, with
   ``<name>.json`` beside it. Under ``torchrun`` the test slides are shared out across ranks and
   gathered on rank 0.

``predict_submission`` is the same test stage from a Kaggle bundle (the offline notebook).
Members must share ``data.window`` and ``data.size``: their maps are on one grid.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch
import yaml

from common.config import Config, load_run_config, to_config
from common.data.datasets import check_preprocess
from common.data.slide_tiles import DEFAULT_SLIDES, SlideSet, source
from common.infer.predict import final_config, load_fold_model
from common.infer.slide_inference import (
    TilePlan,
    map_bands,
    predict_slide,
    rle_from_bands,
    tile_predictor,
)
from common.io.atomic import remove_stale_temps, write_text_atomic
from common.io.locks import exclusive
from common.io.rle import rle_runs
from common.io.slides import open_slide, slide_shape
from common.post.metrics import dice_of_runs
from common.post.slide_evaluate import METRIC, oof_slides, slide_grid
from common.post.slide_objects import flag_missing, objects_in_bands, rle_bands, write_geojson
from common.post.slide_search import score_honestly, search_maps
from common.submit.ensemble import check_trained, frozen_ensemble, train_missing
from common.submit.submission import SubmissionFormat, validate_submission, write_rows
from common.train import distributed
from common.train.runner import resolve_device


def submission_format(slides: SlideSet) -> SubmissionFormat:
    return SubmissionFormat("id", slides.prediction_column, "", rle_runs)


def member_config(config: Config, member) -> Config:
    """The resolved config a member's first fold was trained with (``final.yaml``), its runs
    under the ensemble's ``output``."""
    stored = final_config(config.output, member.experiment, member.folds[0])
    return to_config(stored.to_dict() | {"output": str(config.output)})


def preprocess_of(config: Config) -> dict:
    """A member's ``data.preprocess`` (none for runs from before it existed)."""
    return check_preprocess(config.data.get("preprocess"))


def tile_plan(config: Config, configs: Sequence[Config]) -> TilePlan:
    """The ensemble's tile plan for members trained with ``configs`` (one tile grid)."""
    grids = {(c.data.window, c.data.size) for c in configs}
    if len(grids) != 1:
        raise ValueError(
            f"members tile differently {sorted(grids)}: an ensemble needs one data.window/data.size"
        )
    if len({str(preprocess_of(c)) for c in configs}) != 1:
        raise ValueError("members preprocess differently (data.preprocess): an ensemble needs one")
    (window, size), = grids  # fmt: skip
    return TilePlan(tile=size, scale=window / size, overlap=config.overlap, blend=config.blend,
                    batch_size=config.batch_size, min_tissue=float(config.get("min_tissue", 0.0)))  # fmt: skip


def search_oof(config: Config, members, configs, plan: TilePlan, slides_set: SlideSet, out: Path,
               log=print) -> dict:  # fmt: skip
    """Weighted mean of the members' out-of-fold maps per slide, searched and scored; with
    ``geojson.write``, each slide's predicted objects as GeoJSON, the likely missing
    annotations flagged."""
    slides, mean_map = oof_maps(members, configs, slides_set)
    search = search_maps(slides, mean_map, *slide_grid(config.search), plan.scale**2)
    search.to_csv(out / "search.csv")
    search.heatmap(out / "search.png")
    threshold, min_size = float(search.best["threshold"]), int(search.best["min_size"])
    scored, mode = score_honestly(slides, mean_map, search)
    scores = [dice for _, _, _, dice, _ in scored]
    result = {"threshold": threshold, "min_size": min_size, "oof_dice": round(float(np.mean(scores)), 4),
              "threshold_search": mode, "empty_dice": search.empty_dice, "n_slides": len(slides)}  # fmt: skip
    write_text_atomic(out / "thresholds.yaml", "# written by common.submit.slide_ensemble from the "
                      "out-of-fold search; do not edit\n" + yaml.safe_dump(result, sort_keys=False))  # fmt: skip
    log(f"ensemble: OOF Dice {result['oof_dice']:.4f} ({mode} threshold; full resolution, {len(slides)} slides; "
        f"all-empty {search.empty_dice:.4f}), threshold {threshold:g}, min size {min_size} px")  # fmt: skip
    if config.geojson.write:
        export_oof_geojson(
            config.geojson, slides, mean_map, result, plan.scale, out / "geojson", log
        )
    return result


def oof_maps(members, configs, slides_set: SlideSet):
    """The slides every member has an out-of-fold map of, and their weighted mean map (uint8,
    model scale) as a function of the slide."""
    per_member = [{s["id"]: s for s in oof_slides(c, slides_set)} for c in configs]
    ids = sorted(set.intersection(*(set(v) for v in per_member)))
    if not ids:
        raise ValueError(
            "no slide has an out-of-fold map from every member: train their folds first"
        )
    total_weight = sum(m.weight for m in members)

    def mean_map(slide: dict) -> np.ndarray:
        total = sum(m.weight * tifffile.imread(maps[slide["id"]]["map"]).astype(np.float32)
                    for m, maps in zip(members, per_member, strict=True))  # fmt: skip
        return np.rint(total / total_weight).astype(np.uint8)

    return [per_member[0][i] for i in ids], mean_map


def export_oof_geojson(settings, slides, mean_map, thresholds: dict, scale: float, out: Path,
                       log=print) -> pd.DataFrame:  # fmt: skip
    """``<out>/train/<id>.geojson`` for each slide: its out-of-fold objects (the searched
    threshold and minimum size), each with the share an annotation covers; confident ones
    (``settings.confident``) with less than ``settings.covered_below`` covered are flagged as
    likely missing annotations. ``flags.csv`` counts them per slide."""
    rows = []
    for slide in slides:
        array = mean_map(slide)
        objects = objects_in_bands(map_bands(array), array.shape[1],
                                   threshold=thresholds["threshold"], min_area=thresholds["min_size"],
                                   scale=scale, shape=slide["shape"])  # fmt: skip
        flagged = flag_missing(objects, slide["rle"], slide["shape"], confident=settings.confident,
                               covered_below=settings.covered_below)  # fmt: skip
        counts = write_geojson(out / "train" / f"{slide['id']}.geojson", flagged)
        rows.append({"id": slide["id"], **counts})
    table = pd.DataFrame(rows, columns=["id", "objects", "flagged"])
    write_text_atomic(out / "flags.csv", table.to_csv(index=False))
    log(f"geojson: {int(table['objects'].sum())} predicted objects on {len(table)} training slides, "
        f"{int(table['flagged'].sum())} flagged as likely missing annotations -> {out}")  # fmt: skip
    return table


def export_test_geojson(rows, shapes: dict, out: Path, log=print) -> None:
    """``<out>/test/<id>.geojson``: each test slide's predicted objects, from its RLE."""
    total = 0
    for image_id, rle in rows:
        shape = shapes[image_id]
        objects = objects_in_bands(rle_bands(rle, shape), shape[1], probabilities=False)
        total += write_geojson(out / "test" / f"{image_id}.geojson", objects)["objects"]
    log(f"geojson: {total} predicted objects on {len(rows)} test slides -> {out / 'test'}")


def predict_slides(models, plan: TilePlan, tta, paths: dict[str, Path], thresholds: dict, device,
                   *, weights=None, preprocess=None, log=print) -> list[tuple[str, str]]:  # fmt: skip
    """(id, RLE) of this rank's share of the slides, in bounded memory; gathered on rank 0 in
    the order of ``paths``."""
    predictor = tile_predictor(
        models, device=device, weights=weights, tta=tta, preprocess=preprocess
    )
    ids = list(paths)[distributed.rank() :: distributed.world_size()]
    rows = []
    for image_id in ids:
        start = time.perf_counter()
        with open_slide(paths[image_id]) as slide:
            bands = predict_slide(slide, predictor, plan)
            rle = rle_from_bands(bands, plan.model_shape(slide.shape), slide.shape,
                                 threshold=thresholds["threshold"], min_size=thresholds["min_size"])  # fmt: skip
        rows.append((image_id, rle))
        log(
            f"{image_id}: {slide.height}x{slide.width} predicted in {time.perf_counter() - start:.0f}s"
        )
    gathered = (
        dict(row for part in distributed.gather(rows) for row in part)
        if distributed.active()
        else dict(rows)
    )
    return [(i, gathered[i]) for i in paths if i in gathered]


def test_slides(
    folder: Path, slides: SlideSet = DEFAULT_SLIDES
) -> tuple[list[str], dict[str, Path]]:
    """The ids of ``sample_submission.csv`` and their test slides (an error names one absent)."""
    sample = pd.read_csv(folder / "sample_submission.csv", dtype=str, keep_default_na=False)
    paths = {i: slides.slide(folder, "test", i) for i in sample["id"]}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(
            f"{folder}/sample_submission.csv names slides that are absent, e.g. {missing[0]}"
        )
    return list(sample["id"]), paths


def score(csv: Path, truth_csv: Path, shapes: dict, slides: SlideSet = DEFAULT_SLIDES) -> float:
    """Mean full-resolution Dice over the slides of ``truth_csv`` (``id,<truth column>``)."""

    def read(path: Path, column: str) -> pd.Series:
        return pd.read_csv(path, dtype=str, keep_default_na=False).set_index("id")[column]

    pred, truth = read(csv, slides.prediction_column), read(truth_csv, slides.truth_column)
    return float(np.mean([dice_of_runs(rle_runs(pred[i], shapes[i]), rle_runs(truth[i], shapes[i]))
                          for i in truth.index]))  # fmt: skip


def _predict_test(config, members, thresholds, paths, device, log) -> list[tuple[str, str]]:
    configs = [member_config(config, m) for m in members]
    plan = tile_plan(config, configs)
    folds = [load_fold_model(config.output, m.experiment, k, m.weight, device)
             for m in members for k in m.folds]  # fmt: skip
    return predict_slides([f.model for f in folds], plan, config.tta, paths, thresholds, device,
                          weights=[f.weight for f in folds], preprocess=preprocess_of(configs[0]),
                          log=log)  # fmt: skip


def run(config: Config, slides: SlideSet, *, log=print) -> dict:
    """Train missing members (``train_missing``), search out of fold, predict and write the test
    submission; returns its summary (empty on ranks other than 0). One run per ensemble at a
    time: a second stops with one line."""
    lock = (exclusive(Path(config.output) / f".{config.name}.lock", f"ensemble {config.name}")
            if distributed.is_main() else contextlib.nullcontext())  # fmt: skip
    with lock:
        if distributed.is_main():
            for folder in (Path(config.output) / config.name, Path(config.submissions)):
                remove_stale_temps(folder)  # what a killed run was writing
        return _run(config, slides, log)


def _run(config: Config, slides: SlideSet, log) -> dict:
    from common.train.slide_runner import run_fold

    if distributed.is_main():
        train_missing(config, lambda path, fold: run_fold(
            load_run_config(path, [f"output={config.output}"]), fold), log=log)  # fmt: skip
    distributed.barrier()
    members, _ = check_trained(config)
    configs = [member_config(config, m) for m in members]
    out = Path(config.output) / config.name
    if distributed.is_main():
        search_oof(config, members, configs, tile_plan(config, configs), slides, out, log)
    distributed.barrier()
    thresholds = yaml.safe_load((out / "thresholds.yaml").read_text())
    src = source(slides, to_config({"raw": config.raw, "synthetic": config.synthetic,
                                    "synthetic_scale": config.synthetic_scale}), log=log)  # fmt: skip
    ids, paths = test_slides(src.root, slides)
    rows = _predict_test(config, members, thresholds, paths, resolve_device("auto"), log)
    if not distributed.is_main():
        return {}
    csv = Path(config.submissions) / f"{config.name}.csv"
    write_rows(rows, csv, slides.header)
    shapes = {image_id: slide_shape(path) for image_id, path in paths.items()}
    counts = validate_submission(csv, ids, submission_format(slides), shapes.__getitem__)
    summary = {"members": [m.__dict__ | {"folds": list(m.folds)} for m in members], "tta": list(config.tta),
               "thresholds": thresholds, "rows": counts, "source": str(src.root),
               "cv": thresholds.get("oof_dice"), "cv_metric": METRIC}  # fmt: skip
    if config.geojson.write:
        export_test_geojson(rows, shapes, Path(config.output) / config.name / "geojson", log)
    truth = src.root / "test_truth.csv"
    if truth.is_file():
        summary["test_dice"] = round(score(csv, truth, shapes, slides), 4)
    write_text_atomic(csv.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    log(f"wrote {csv}: {counts['rows']} slides ({counts['non_empty']} with objects)"
        + (f"; test Dice {summary['test_dice']:.4f} (full resolution, mean over slides)" if "test_dice" in summary else ""))  # fmt: skip
    return summary


def predict_submission(bundle: str | os.PathLike, data: str | os.PathLike, working: str | os.PathLike,
                       *, slides: SlideSet = DEFAULT_SLIDES, log=print) -> Path:  # fmt: skip
    """Offline, from a Kaggle bundle: ``<working>/submission.csv`` for the test slides of the
    competition folder ``data``, the same steps as ``run``'s test stage (byte-identical CSV).
    Memory is bounded by a slide's width, not its area (``docs/HUBMAP.md``)."""
    bundle, data, working = Path(bundle), Path(data), Path(working)
    config, thresholds, members, _ = frozen_ensemble(bundle, working)
    ids, paths = test_slides(data, slides)
    rows = _predict_test(config, members, thresholds, paths, resolve_device("auto"), log)
    path = working / "submission.csv"
    write_rows(rows, path, slides.header)
    counts = validate_submission(
        path, ids, submission_format(slides), lambda i: slide_shape(paths[i])
    )
    log(f"wrote {path}: {counts['rows']} slides, {counts['non_empty']} with objects")
    return path


def main(argv=None, *, competition) -> None:
    """``ensemble``: ``--config`` (an ensemble YAML) and overrides; DDP when under torchrun."""
    from common.train.runner import config_main

    slides = competition.data_spec()

    def distributed_run(config: Config) -> None:
        distributed.start()
        try:
            with torch.no_grad():
                run(config, slides)
        finally:
            distributed.stop()

    config_main(__doc__, argv, distributed_run, label=f"{competition.name} ensemble",
                what="ensemble YAML")  # fmt: skip


def offline(bundle, data, working, *, competition, log=print) -> Path:
    """The descriptor's ``offline`` stage: ``predict_submission`` with its slide spec."""
    return predict_submission(bundle, data, working, slides=competition.data_spec(), log=log)
