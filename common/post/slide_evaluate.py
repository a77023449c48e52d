"""Out-of-fold search and score of a slide experiment, from its folds' held-out slide maps.

    <output>/<name>/thresholds.yaml    threshold and min_size (full-resolution pixels) chosen on
                                       the out-of-fold maps, with their scores
    <output>/<name>/search.csv, .png   every (threshold, min size) with its mean Dice
    <output>/<name>/oof.csv            id,<prediction>: the full-resolution RLE of each slide
    <output>/<name>/oof.json           per-slide full-resolution Dice, mean, all-empty
    <output>/<name>/oof.png            each slide with its truth (green) and prediction (red)

The grid is the experiment's ``search`` section as a slide reads it: ``search.bottoms`` are the
probability thresholds and ``search.min_areas`` the minimum object sizes in full-resolution
pixels (``search.tops`` has no meaning for a slide). The search runs at model scale
(``common.post.slide_search``); the score is the competition's: the mean over slides of the Dice
of the full-resolution masks, each made strip by strip from the map and compared run by run with
``train.csv``, OR-ed with ``data.extra_annotations`` when ``data.extra_use`` counts them for
the score (``both`` or ``score``; ``oof.json`` says which truth it scored against).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import tifffile
import yaml

from common.config import Config
from common.data.slide_tiles import (
    DEFAULT_SLIDES,
    SlideSet,
    extra_file,
    extra_polygons,
    read_tiles,
    read_train,
    source_root,
)
from common.io.atomic import write_text_atomic
from common.io.polygons import union_rle
from common.io.slides import open_slide, thumbnail
from common.plots import mask_overlays
from common.post.slide_search import score_honestly, search_maps, truth_at_scale
from common.submit.submission import write_rows
from common.train.runner import fold_dir, write_fold_score

THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)  # when search.bottoms is null
MIN_SIZES = (0, 1000, 2000, 4000, 8000, 16000)  # full-resolution pixels, when min_areas is null
METRIC = "OOF Dice (full resolution, mean over slides)"


def slide_grid(search) -> tuple[list[float], list[int]]:
    """(thresholds, min sizes) of a ``search`` section: its ``bottoms`` and ``min_areas``."""
    thresholds = list(search.get("bottoms") or THRESHOLDS)
    min_sizes = [int(v) for v in (search.get("min_areas") or MIN_SIZES)]
    return thresholds, min_sizes


def run_dir(config: Config) -> Path:
    return Path(config.output) / config.name


def oof_slides(config: Config, slides_set: SlideSet = DEFAULT_SLIDES) -> list[dict]:
    """Every slide with an out-of-fold map from the fold that holds it out."""
    _, slides, _ = read_tiles(config)
    truth = dict(read_train(source_root(config), slides_set).itertuples(index=False))
    out = []
    for row in slides.itertuples(index=False):
        path = fold_dir(config, row.fold) / "oof" / f"{row.id}.tiff"
        if path.is_file():
            shape = (int(row.height), int(row.width))
            rle, extra = truth[row.id], extra_file(config.data, "score", row.id)
            if extra is not None:  # the organisers' mask and the glomeruli it missed
                stat = extra.stat()
                rle = _with_extras(rle, shape, str(extra), (stat.st_mtime_ns, stat.st_size))
            out.append({"id": row.id, "fold": int(row.fold), "map": path, "shape": shape,
                        "rle": rle, "extra": extra is not None})  # fmt: skip
    return out


@functools.lru_cache(maxsize=32)
def _with_extras(rle: str, shape: tuple[int, int], extra: str, stamp: tuple[int, int]) -> str:
    """``rle`` OR-ed with the polygons in ``extra``: once a slide, however many ensemble members
    are scored against it (``stamp``, the file's time and size, makes an edit count)."""
    return union_rle(rle, shape, extra_polygons(extra, shape))


def _read(slide: dict) -> np.ndarray:
    return tifffile.imread(slide["map"])


def evaluate(config: Config, slides_set: SlideSet = DEFAULT_SLIDES, *, log=print) -> dict:
    slides = oof_slides(config, slides_set)
    if not slides:
        raise ValueError(
            f"no out-of-fold maps under {run_dir(config)}/fold*/oof/: train a fold first"
        )
    scale = config.data.window / config.data.size
    search = search_maps(slides, _read, *slide_grid(config.search), scale * scale)
    out = run_dir(config)
    search.to_csv(out / "search.csv")
    search.heatmap(out / "search.png")
    threshold, min_size = float(search.best["threshold"]), int(search.best["min_size"])
    scored, mode = score_honestly(slides, _read, search)
    root = source_root(config)
    rows, scores, panels = [], {}, []
    for s, prob, rle, dice, pair in scored:
        scores[s["id"]] = dice
        rows.append((s["id"], rle))
        with open_slide(slides_set.slide(root, "train", s["id"])) as slide:
            image = thumbnail(slide, 768)
        small = cv2.resize(prob, image.shape[1::-1], interpolation=cv2.INTER_AREA)
        truth = truth_at_scale(s["rle"], s["shape"], image.shape[:2])
        panels.append((f"{s['id']} (fold {s['fold']}): Dice {dice:.3f}", image, truth,
                       (small > pair["threshold"] * 255).astype(np.uint8)))  # fmt: skip
    write_rows(rows, out / "oof.csv", slides_set.header)
    mask_overlays(panels, out / "oof.png", columns=min(3, len(panels)))
    empty = float(np.mean([1.0 if not str(s["rle"]).strip() else 0.0 for s in slides]))
    by_fold = {s["fold"]: pair for s, *_, pair in scored}
    summary = {
        "metric": "Dice at full resolution, mean over slides",
        "oof_dice": round(float(np.mean(list(scores.values()))), 4),
        "threshold_search": mode,
        "empty_dice": empty,
        "truth": "train.csv" + (" + data.extra_annotations" * any(s["extra"] for s in slides)),
        "search_dice_model_scale": round(float(search.best["dice"]), 4),
        "threshold": threshold,
        "min_size": min_size,
        "fold_thresholds": {str(k): v for k, v in sorted(by_fold.items())},
        "folds": sorted(by_fold),
        "per_slide": {k: round(v, 4) for k, v in scores.items()},
    }
    write_text_atomic(out / "oof.json", json.dumps(summary, indent=2) + "\n")
    for fold in summary["folds"]:
        held_out = {s["id"]: scores[s["id"]] for s in slides if s["fold"] == fold}
        write_fold_score(fold_dir(config, fold), metric=f"{METRIC}, {mode} threshold",
                         score=float(np.mean(list(held_out.values()))), thresholds=by_fold[fold],
                         per_slide={k: round(v, 4) for k, v in held_out.items()}, empty_score=empty)  # fmt: skip
    thresholds = {key: summary[key]
                  for key in ("threshold", "min_size", "oof_dice", "threshold_search", "empty_dice", "folds")}  # fmt: skip
    write_text_atomic(
        out / "thresholds.yaml",
        "# written by common.post.slide_evaluate: the pair searched on every out-of-fold slide (for "
        "test slides); oof_dice scores each slide with a pair searched without it when folds allow\n"
        + yaml.safe_dump(thresholds, sort_keys=False),
    )
    log(f"{config.name}: OOF Dice {summary['oof_dice']:.4f} ({mode} threshold; full resolution, mean "
        f"over {len(slides)} slide(s)) against {empty:.4f} all-empty; for the test slides threshold "
        f"{threshold:g}, min size {min_size} px -> {out}/oof.json")  # fmt: skip
    return summary
