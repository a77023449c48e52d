"""Out-of-fold search and score of a HuBMAP experiment, from its folds' held-out slide maps.

    models/hubmap/<name>/thresholds.yaml    threshold and min_size (full-resolution pixels)
                                            chosen on the out-of-fold maps, with their scores
    models/hubmap/<name>/search.csv, .png   every (threshold, min size) with its mean Dice
    models/hubmap/<name>/oof.csv            id,predicted: the full-resolution RLE of each slide
    models/hubmap/<name>/oof.json           per-slide full-resolution Dice, mean, all-empty
    models/hubmap/<name>/oof.png            each slide with its truth (green) and prediction (red)

The search runs at model scale (``common.post.slide_search``); the score is the competition's: the
mean over slides of the Dice of the full-resolution masks, each made strip by strip from the map
and compared run by run with ``train.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import tifffile
import yaml

from common.config import Config
from common.io.atomic import write_text_atomic
from common.io.slides import open_slide, thumbnail
from common.plots import mask_overlays
from common.post.slide_search import score_maps, search_maps, truth_at_scale
from common.submit.submission import write_rows
from common.train.runner import fold_dir, write_fold_score
from competitions.hubmap.prepare import folder, read_tiles, read_train

HEADER = ("id", "predicted")


def run_dir(config: Config) -> Path:
    return Path(config.output) / config.name


def source_root(config: Config) -> Path:
    """Where the prepared tiles' slides were read from (raw or synthetic)."""
    return Path(json.loads((folder(config) / "source.json").read_text())["root"])


def oof_slides(config: Config) -> list[dict]:
    """Every slide with an out-of-fold map from the fold that holds it out."""
    _, slides, _ = read_tiles(config)
    truth = dict(read_train(source_root(config)).itertuples(index=False))
    out = []
    for row in slides.itertuples(index=False):
        path = fold_dir(config, row.fold) / "oof" / f"{row.id}.tiff"
        if path.is_file():
            out.append({"id": row.id, "fold": int(row.fold), "map": path,
                        "shape": (int(row.height), int(row.width)), "rle": truth[row.id]})  # fmt: skip
    return out


def _read(slide: dict) -> np.ndarray:
    return tifffile.imread(slide["map"])


def evaluate(config: Config, *, log=print) -> dict:
    slides = oof_slides(config)
    if not slides:
        raise ValueError(
            f"no out-of-fold maps under {run_dir(config)}/fold*/oof/: train a fold first"
        )
    scale = config.data.window / config.data.size
    p = config.predict
    search = search_maps(slides, _read, p.thresholds, p.min_sizes, scale * scale)
    out = run_dir(config)
    search.to_csv(out / "search.csv")
    search.heatmap(out / "search.png")
    threshold, min_size = float(search.best["threshold"]), int(search.best["min_size"])
    root = source_root(config)
    rows, scores, panels = [], {}, []
    for s, prob, rle, dice in score_maps(slides, _read, threshold=threshold, min_size=min_size):
        scores[s["id"]] = dice
        rows.append((s["id"], rle))
        with open_slide(root / "train" / f"{s['id']}.tiff") as slide:
            image = thumbnail(slide, 768)
        small = cv2.resize(prob, image.shape[1::-1], interpolation=cv2.INTER_AREA)
        truth = truth_at_scale(s["rle"], s["shape"], image.shape[:2])
        panels.append((f"{s['id']} (fold {s['fold']}): Dice {dice:.3f}", image, truth,
                       (small > threshold * 255).astype(np.uint8)))  # fmt: skip
    write_rows(rows, out / "oof.csv", HEADER)
    mask_overlays(panels, out / "oof.png", columns=min(3, len(panels)))
    empty = float(np.mean([1.0 if not str(s["rle"]).strip() else 0.0 for s in slides]))
    summary = {
        "metric": "Dice at full resolution, mean over slides",
        "oof_dice": round(float(np.mean(list(scores.values()))), 4),
        "empty_dice": empty,
        "search_dice_model_scale": round(float(search.best["dice"]), 4),
        "threshold": threshold,
        "min_size": min_size,
        "folds": sorted({s["fold"] for s in slides}),
        "per_slide": {k: round(v, 4) for k, v in scores.items()},
    }
    write_text_atomic(out / "oof.json", json.dumps(summary, indent=2) + "\n")
    for fold in summary["folds"]:
        held_out = {s["id"]: scores[s["id"]] for s in slides if s["fold"] == fold}
        write_fold_score(fold_dir(config, fold), metric="OOF Dice (full resolution, mean over slides)",
                         score=float(np.mean(list(held_out.values()))),
                         thresholds={"threshold": threshold, "min_size": min_size},
                         per_slide={k: round(v, 4) for k, v in held_out.items()})  # fmt: skip
    thresholds = {
        key: summary[key] for key in ("threshold", "min_size", "oof_dice", "empty_dice", "folds")
    }
    write_text_atomic(
        out / "thresholds.yaml",
        "# written by competitions.hubmap.evaluate\n" + yaml.safe_dump(thresholds, sort_keys=False),
    )
    log(f"hubmap {config.name}: OOF Dice {summary['oof_dice']:.4f} (full resolution, mean over "
        f"{len(slides)} slide(s)) against {empty:.4f} all-empty; threshold {threshold:g}, "
        f"min size {min_size} px -> {out}/oof.json")  # fmt: skip
    return summary
