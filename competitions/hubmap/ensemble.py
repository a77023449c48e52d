"""A HuBMAP ensemble: the out-of-fold search on the members' blended maps, then the test slides.

    python -m competitions.hubmap.ensemble --config competitions/hubmap/configs/ensembles/default.yaml

1. Out of fold: each training slide's map is the weighted mean of the maps its fold's model of
   every member wrote (``fold<k>/oof/<id>.tiff``; no second forward pass); the threshold and
   minimum object size are searched on them and the full-resolution Dice scored
   (``common.post.slide_search``): ``models/hubmap/<name>/thresholds.yaml``, ``search.csv``,
   ``search.png``.
2. Test: every fold of every member predicts each test slide in tiles (D4 TTA, Gaussian
   blending) and the mask is encoded strip by strip (``common.infer.slide_inference``), never held
   whole: ``submissions/hubmap/<name>.csv`` (``id,predicted``), validated against the sample
   submission, scored when the test truth is known, with ``<name>.json`` beside it. Under
   ``torchrun`` the test slides are shared out across ranks and gathered on rank 0.

Members must share ``data.window`` and ``data.size``: their maps are on one grid.
"""

from __future__ import annotations

import json
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
from common.infer.predict import final_config, load_fold_model
from common.infer.slide_inference import TilePlan, predict_slide, rle_from_bands, tile_predictor
from common.io.atomic import write_text_atomic
from common.io.rle import rle_runs
from common.io.slides import open_slide, slide_shape
from common.post.metrics import dice_of_runs
from common.post.slide_search import score_maps, search_maps
from common.submit.ensemble import check_trained, train_missing
from common.submit.submission import SubmissionFormat, validate_submission, write_rows
from common.train import distributed
from common.train.runner import config_main, resolve_device
from competitions.hubmap.evaluate import HEADER, oof_slides
from competitions.hubmap.prepare import source as slides_source

FORMAT = SubmissionFormat("id", "predicted", "", rle_runs)


def member_config(config: Config, member) -> Config:
    """The resolved config a member's first fold was trained with (stored in its checkpoint),
    its runs under the ensemble's ``output``."""
    stored = final_config(config.output, member.experiment, member.folds[0])
    return to_config(stored.to_dict() | {"output": str(config.output)})


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
                    batch_size=config.batch_size)  # fmt: skip


def search_oof(config: Config, members, configs, plan: TilePlan, out: Path, log=print) -> dict:
    """Weighted mean of the members' out-of-fold maps per slide, searched and scored."""
    per_member = [{s["id"]: s for s in oof_slides(c)} for c in configs]
    ids = sorted(set.intersection(*(set(v) for v in per_member)))
    if not ids:
        raise ValueError(
            "no slide has an out-of-fold map from every member: train their folds first"
        )
    slides = [per_member[0][i] for i in ids]
    total_weight = sum(m.weight for m in members)

    def mean_map(slide: dict) -> np.ndarray:
        total = sum(m.weight * tifffile.imread(maps[slide["id"]]["map"]).astype(np.float32)
                    for m, maps in zip(members, per_member, strict=True))  # fmt: skip
        return np.rint(total / total_weight).astype(np.uint8)

    search = search_maps(slides, mean_map, config.thresholds, config.min_sizes, plan.scale**2)
    search.to_csv(out / "search.csv")
    search.heatmap(out / "search.png")
    threshold, min_size = float(search.best["threshold"]), int(search.best["min_size"])
    scores = [
        dice for *_, dice in score_maps(slides, mean_map, threshold=threshold, min_size=min_size)
    ]
    result = {"threshold": threshold, "min_size": min_size, "oof_dice": round(float(np.mean(scores)), 4),
              "empty_dice": search.empty_dice, "n_slides": len(slides)}  # fmt: skip
    write_text_atomic(out / "thresholds.yaml", "# written by competitions.hubmap.ensemble from the out-of-fold "
                      "search; do not edit\n" + yaml.safe_dump(result, sort_keys=False))  # fmt: skip
    log(f"hubmap ensemble: OOF Dice {result['oof_dice']:.4f} (full resolution, {len(slides)} slides; "
        f"all-empty {search.empty_dice:.4f}), threshold {threshold:g}, min size {min_size} px")  # fmt: skip
    return result


def preprocess_of(config: Config) -> dict:
    """A member's ``data.preprocess`` (none for runs from before it existed)."""
    return check_preprocess(config.data.get("preprocess"))


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


def test_slides(folder: Path) -> tuple[list[str], dict[str, Path]]:
    sample = pd.read_csv(folder / "sample_submission.csv", dtype=str, keep_default_na=False)
    paths = {i: folder / "test" / f"{i}.tiff" for i in sample["id"]}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(
            f"{folder}/sample_submission.csv names slides that are absent, e.g. {missing[0]}"
        )
    return list(sample["id"]), paths


def score(csv: Path, truth_csv: Path, shapes: dict) -> float:
    pred = pd.read_csv(csv, dtype=str, keep_default_na=False).set_index("id")["predicted"]
    truth = pd.read_csv(truth_csv, dtype=str, keep_default_na=False).set_index("id")["encoding"]
    return float(
        np.mean(
            [
                dice_of_runs(rle_runs(pred[i], shapes[i]), rle_runs(truth[i], shapes[i]))
                for i in truth.index
            ]
        )
    )


def run(config: Config, *, log=print) -> dict:
    from competitions.hubmap.train import run_fold

    if distributed.is_main():
        train_missing(
            config,
            lambda path, fold: run_fold(load_run_config(path, [f"output={config.output}"]), fold),
            log=log,
        )
    distributed.barrier()
    members, _ = check_trained(config)
    configs = [member_config(config, m) for m in members]
    plan = tile_plan(config, configs)
    out = Path(config.output) / config.name
    if distributed.is_main():
        search_oof(config, members, configs, plan, out, log)
    distributed.barrier()
    thresholds = yaml.safe_load((out / "thresholds.yaml").read_text())
    device = resolve_device("auto")
    source = slides_source(config.raw, config.synthetic, config.synthetic_scale, log=log)
    ids, paths = test_slides(source.root)
    folds = [
        load_fold_model(config.output, m.experiment, k, m.weight, device)
        for m in members
        for k in m.folds
    ]
    rows = predict_slides([f.model for f in folds], plan, config.tta, paths, thresholds, device,
                          weights=[f.weight for f in folds], preprocess=preprocess_of(configs[0]),
                          log=log)  # fmt: skip
    if not distributed.is_main():
        return {}
    csv = Path(config.submissions) / f"{config.name}.csv"
    write_rows(rows, csv, HEADER)
    shapes = {image_id: slide_shape(path) for image_id, path in paths.items()}
    counts = validate_submission(csv, ids, FORMAT, shapes.__getitem__)
    summary = {"members": [m.__dict__ | {"folds": list(m.folds)} for m in members], "tta": list(config.tta),
               "thresholds": thresholds, "rows": counts, "source": str(source.root),
               "cv": thresholds.get("oof_dice"), "cv_metric": "OOF Dice (full resolution, mean over slides)"}  # fmt: skip
    truth = source.root / "test_truth.csv"
    if truth.is_file():
        summary["test_dice"] = round(score(csv, truth, shapes), 4)
    write_text_atomic(csv.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    log(f"wrote {csv}: {counts['rows']} slides ({counts['non_empty']} with glomeruli)"
        + (f"; test Dice {summary['test_dice']:.4f} (full resolution, mean over slides)" if "test_dice" in summary else ""))  # fmt: skip
    return summary


def main(argv=None) -> None:
    def distributed_run(config: Config) -> None:
        distributed.start()
        try:
            run(config)
        finally:
            distributed.stop()

    config_main(__doc__, argv, distributed_run, label="hubmap ensemble", what="ensemble YAML")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
