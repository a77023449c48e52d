"""Pseudo-labels for slides (1st and 4th place of "Hacking the Kidney"): an ensemble's confident
regions of unlabelled slides become extra training windows.

    python -m common.cli pseudo --competition hubmap --config competitions/hubmap/configs/ensembles/default.yaml

    test slides (or every TIFF of pseudo.images) --leakage rules--> kept slides
        --the ensemble's fold models and TTA, in tiles (common.infer.slide_inference)--> map at model scale
        --windows of the members' data.window, on a grid--> confident windows
        --> data/<competition>/pseudo/<ensemble>/<window>_<size>/images/<id>.png, masks/<id>.png,
            train.csv (id, has_mask, slide, y, x, max_prob, mask_area); provenance.json;
            <slide>.png (the slide's thumbnail with its windows drawn)

Confidence is judged per object, not per pixel (every glomerulus has an unsure rim): a *blob* is
a connected region of the map above ``pseudo.negative_below``; it is confident when its peak is
at least ``pseudo.positive_above``. A window (on the tissue, by the thumbnail rule of
``predict.min_tissue``, the members' ``data.min_tissue``) is

- a positive when every blob it touches is confident and the label has pixels there: the label is
  the ensemble's searched threshold and minimum object size (``thresholds.yaml``) on the whole
  map, so an object cut by the window's edge is labelled as on the slide;
- a negative when it touches no blob at all;
- left out otherwise (an unsure blob, or confident blobs all under the minimum size).

Negatives are many on tissue; at most ``pseudo.negatives_per_positive`` times the positives are
kept per slide (a seeded draw). Leakage rules as for images (``common.submit.pseudo``): the test
slides are in no fold; extra slides that are training slides (by id) or near duplicates of one
(their thumbnails correlate at ``pseudo.duplicate_correlation`` or more) are left out and counted.
Training adds the set to every fold's training windows (``data.pseudo``), never to validation,
and refuses a window of a labelled slide.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml
from scipy import ndimage
from tqdm import tqdm

from common.config import Config, to_config
from common.data.slide_tiles import SlideSet, read_train, source
from common.data.tiles import Tile, tile_grid
from common.infer.predict import load_fold_model
from common.infer.slide_inference import (
    TilePlan,
    full_window,
    predict_slide,
    tile_predictor,
    tissue_tiles,
)
from common.io.images import write_mask, write_png
from common.io.paths import check_id, data_dir
from common.io.slides import open_slide, thumbnail
from common.post.postprocess import PROB_SCALE, quantise
from common.submit.ensemble import check_trained
from common.submit.pseudo import Rules, leakage_filter, publish, write_table
from common.submit.pseudo import thumbnail as thumb_vector
from common.submit.slide_ensemble import member_config, preprocess_of, test_slides, tile_plan
from common.train.runner import resolve_device

COLUMNS = ("id", "has_mask", "slide", "y", "x", "max_prob", "mask_area")
POSITIVE, NEGATIVE, UNSURE = 1, 0, -1


def set_key(window: int, size: int) -> str:
    """A slide pseudo set's sub-folder: the members' ``<window>_<size>`` (as the tiles')."""
    return f"{int(window)}_{int(size)}"


def confident_labels(prob: np.ndarray, rules: Rules, *, threshold: float, min_size: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """For a uint8 map at model scale (``PROB_SCALE`` = 1.0): the label (uint8 0/1: above
    ``threshold``, objects under ``min_size`` model pixels removed, 8-connected), the pixels of
    unsure blobs, and the pixels of any blob (see the module docs)."""
    blobs, n = ndimage.label(prob > rules.negative_below * PROB_SCALE, np.ones((3, 3), bool))
    peaks = ndimage.maximum(prob, blobs, np.arange(1, n + 1)) if n else np.zeros(0)
    unsure_ids = np.concatenate([[False], np.asarray(peaks) < rules.positive_above * PROB_SCALE])
    unsure = unsure_ids[blobs]
    above = prob.astype(np.float32) / PROB_SCALE > threshold
    count, objects, stats, _ = cv2.connectedComponentsWithStats(
        above.astype(np.uint8), connectivity=8
    )
    big = np.concatenate([[False], stats[1:, cv2.CC_STAT_AREA] >= min_size]) if count else [False]
    return np.asarray(big)[objects].astype(np.uint8), unsure, blobs > 0


def window_kinds(label: np.ndarray, unsure: np.ndarray, blob: np.ndarray, tiles: list[Tile]
                 ) -> list[int]:  # fmt: skip
    """POSITIVE, NEGATIVE or UNSURE for each model-scale window (the module docs' rules)."""
    kinds = []
    for t in tiles:
        box = np.s_[t.y0 : t.y1, t.x0 : t.x1]
        if unsure[box].any():
            kinds.append(UNSURE)
        elif label[box].any():
            kinds.append(POSITIVE)
        else:
            kinds.append(UNSURE if blob[box].any() else NEGATIVE)
    return kinds


def pick(kinds: list[int], negatives_per_positive: float, seed: int) -> list[int]:
    """Indices of the windows kept: every positive and at most ``negatives_per_positive`` times
    as many negatives (a seeded draw, in raster order); a negative ratio < 0 keeps them all."""
    positives = [i for i, k in enumerate(kinds) if k == POSITIVE]
    negatives = [i for i, k in enumerate(kinds) if k == NEGATIVE]
    if negatives_per_positive >= 0:
        n = min(len(negatives), round(negatives_per_positive * len(positives)))
        negatives = sorted(np.random.default_rng(seed).choice(negatives, n, replace=False).tolist())
    return sorted(positives + negatives)


def slide_windows(slide_id: str, path: Path, predictor, plan: TilePlan, rules: Rules,
                  thresholds: dict, negatives_per_positive: float, seed: int, out: Path
                  ) -> tuple[list[tuple], dict]:  # fmt: skip
    """Predict one slide, choose its windows, write their tiles and masks under ``out``; returns
    the table rows and the counts."""
    with open_slide(path) as slide:
        model_shape = plan.model_shape(slide.shape)
        prob = np.zeros(model_shape, np.uint8)  # the map at model scale (1/scale^2 of the slide)
        small = np.ascontiguousarray(thumbnail(slide, 1024))  # tissue rules and the picture
        for start, band in predict_slide(slide, predictor, plan, small_rgb=small):
            prob[start : start + len(band)] = quantise(band)
        scale2 = slide.shape[0] * slide.shape[1] / (model_shape[0] * model_shape[1])
        label, unsure, blob = confident_labels(prob, rules, threshold=thresholds["threshold"],
                                               min_size=thresholds["min_size"] / scale2)  # fmt: skip
        tiles = [t for t in tile_grid(*model_shape, plan.tile) if t.shape == (plan.tile, plan.tile)]
        tissue = (
            tissue_tiles(slide, plan, tiles, small_rgb=small)
            if plan.min_tissue > 0
            else [True] * len(tiles)
        )
        kinds = [k if on else None for k, on in zip(window_kinds(label, unsure, blob, tiles),
                                                    tissue, strict=True)]  # fmt: skip
        kept = pick([k if k is not None else UNSURE for k in kinds], negatives_per_positive, seed)
        rows = []
        for i in kept:
            t = tiles[i]
            y0, y1, x0, x1 = full_window(t, model_shape, slide.shape)
            name = f"{slide_id}_{y0}_{x0}_p"
            mask = label[t.y0 : t.y1, t.x0 : t.x1]
            write_png(
                out / "images" / f"{name}.png", slide.read(y0, y1, x0, x1, shape=(plan.tile,) * 2)
            )
            write_mask(out / "masks" / f"{name}.png", mask)
            rows.append((name, int(kinds[i] == POSITIVE), slide_id, y0, x0,
                         round(float(prob[t.y0 : t.y1, t.x0 : t.x1].max()) / PROB_SCALE, 4),
                         round(float(mask.sum()) * scale2)))  # fmt: skip
        picture(small, tiles, kinds, kept, model_shape, out.parent / f"{slide_id}.png")
    counts = {"windows": len(tiles), "background": kinds.count(None),
              "positive": sum(kinds[i] == POSITIVE for i in kept),
              "negative": sum(kinds[i] == NEGATIVE for i in kept),
              "negative_not_kept": kinds.count(NEGATIVE) - sum(kinds[i] == NEGATIVE for i in kept),
              "unsure": kinds.count(UNSURE)}  # fmt: skip
    return rows, counts


def picture(small: np.ndarray, tiles, kinds, kept, model_shape, path: Path) -> None:
    """The slide's thumbnail ``small`` (drawn on) with its windows: kept positives green, kept
    negatives blue, unsure red (background and negatives not kept are not drawn)."""
    fy, fx = small.shape[0] / model_shape[0], small.shape[1] / model_shape[1]
    colours = {POSITIVE: (0, 200, 0), NEGATIVE: (0, 90, 255), UNSURE: (230, 0, 0)}
    kept = set(kept)
    for i, (t, kind) in enumerate(zip(tiles, kinds, strict=True)):
        if kind == UNSURE or (kind is not None and i in kept):
            corner = (round(t.x0 * fx), round(t.y0 * fy))
            cv2.rectangle(small, corner, (round(t.x1 * fx) - 1, round(t.y1 * fy) - 1),
                          colours[kind], 1)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))


def _extra_slides(folder: Path, extension: str) -> dict[str, Path]:
    paths = sorted(p for p in folder.glob(f"*{extension}") if p.is_file())
    if not paths:
        raise ValueError(f"pseudo.images {folder}: no {extension} slides")
    return {check_id(p.name[: -len(extension)], str(p)): p for p in paths}


def build_slide_pseudo(config: Config, slides: SlideSet, competition: str, *, log=print) -> dict:
    """The ensemble ``config``'s pseudo set (see the module docs); returns its provenance."""
    p = config.pseudo
    rules = Rules(p.positive_above, p.negative_below, p.duplicate_correlation)
    ratio = float(p.negatives_per_positive)
    found = Path(config.output) / config.name / "thresholds.yaml"
    if not found.is_file():
        raise ValueError(f"{found} not found: run the ensemble (make ensemble) first")
    thresholds = yaml.safe_load(found.read_text())
    members, _ = check_trained(config)
    configs = [member_config(config, m) for m in members]
    plan = tile_plan(config, configs)
    plan = TilePlan(plan.tile, plan.scale, plan.overlap, plan.blend, plan.batch_size,
                    float(configs[0].data.min_tissue))  # fmt: skip
    window = int(configs[0].data.window)
    src = source(slides, to_config({"raw": config.raw, "synthetic": config.synthetic,
                                    "synthetic_scale": config.synthetic_scale}), log=log)  # fmt: skip
    train_ids = set(read_train(src.root, slides)["id"])
    if p.images:
        paths, where = _extra_slides(Path(p.images), slides.extension), str(p.images)
    else:
        paths, where = test_slides(src.root, slides)[1], "the competition's test slides"
    references = np.stack([thumb_vector(_thumb(slides.slide(src.root, "train", i)))
                           for i in sorted(train_ids)])  # fmt: skip
    excluded = leakage_filter(list(paths), (_thumb(paths[i]) for i in paths), train_ids,
                              references, rules.duplicate_correlation)  # fmt: skip
    kept = [i for i in paths if i not in excluded]
    device = resolve_device("auto")
    folds = [load_fold_model(config.output, m.experiment, k, m.weight, device)
             for m in members for k in m.folds]  # fmt: skip
    predictor = tile_predictor([f.model for f in folds], device=device, weights=[f.weight for f in folds],
                               tta=config.tta, preprocess=preprocess_of(configs[0]))  # fmt: skip
    log(f"pseudo: {len(paths)} slides from {where}, {len(excluded)} left out as training slides or "
        f"their near duplicates; predicting {len(kept)} with {len(folds)} fold model(s)")  # fmt: skip
    key = set_key(window, plan.tile)
    provenance = {"ensemble": config.name, "source": where, "window": window, "size": plan.tile,
                  "members": [asdict(m) for m in members], "tta": list(config.tta)}  # fmt: skip

    def build(folder: Path) -> dict:
        rows, per_slide = [], {}
        for n, slide_id in enumerate(tqdm(kept, desc="pseudo slides", disable=None)):
            found_rows, per_slide[slide_id] = slide_windows(
                slide_id, paths[slide_id], predictor, plan, rules, thresholds, ratio,
                int(configs[0].seed) + n, folder / key)  # fmt: skip
            rows += found_rows
        table = pd.DataFrame(rows, columns=COLUMNS)
        counts = {k: sum(c[k] for c in per_slide.values()) for k in
                  ("windows", "background", "positive", "negative", "negative_not_kept", "unsure")}  # fmt: skip
        counts |= {"kept": len(table), "slides": len(kept), "left_out_leakage": len(excluded)}
        record = provenance | {"rules": asdict(rules) | {"negatives_per_positive": ratio},
                               "thresholds": thresholds, "counts": counts, "slides": per_slide,
                               "excluded": excluded}  # fmt: skip
        return write_table(folder, key, table, record)

    out = data_dir(competition, "pseudo", config.name)
    record = publish(out, f"pseudo-labels {config.name}", build)
    c = record["counts"]
    log(f"pseudo: kept {c['kept']} windows ({c['positive']} positive, {c['negative']} negative) "
        f"of {c['windows']} on {c['slides']} slides; {c['unsure']} unsure, {c['background']} "
        f"background, {c['negative_not_kept']} negatives over the ratio -> {out / key}")  # fmt: skip
    return record


def _thumb(path: Path) -> np.ndarray:
    with open_slide(path) as slide:
        return thumbnail(slide, 256)


def main(argv=None, *, competition) -> None:
    """The ``pseudo`` stage of a slide competition: ``--config`` (an ensemble YAML)."""
    import torch

    from common.train.runner import config_main

    slides = competition.data_spec()

    def run(config: Config) -> dict:
        with torch.no_grad():
            return build_slide_pseudo(config, slides, competition.name)

    config_main(__doc__, argv, run, label=f"{competition.name} pseudo", what="ensemble YAML")
