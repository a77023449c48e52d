"""Training a slide competition: tiles in, each fold's held-out slides predicted whole, then the
out-of-fold search and score; and the command lines of its prepare, train and tile-filter stages.

    python -m common.cli prepare --competition hubmap --config competitions/hubmap/configs/unet_resnet18_cpu.yaml
    python -m common.cli train --competition hubmap --config ... --folds 0 [--resume] [key=value ...]
    python -m common.cli tile-filter --competition hubmap --config ... --folds 0

Folds are grouped by slide: fold k validates on the tiles of its held-out slides, then predicts
those slides whole (``common.infer.slide_inference``: overlapping tiles, Gaussian blending, the
TTA of ``predict.tta``) into ``<output>/<name>/fold<k>/oof/<id>.tiff``, a quantised map at model
scale; ``common.post.slide_evaluate`` then searches the threshold and the minimum object size on
every fold's maps and scores the full-resolution RLE they make against ``train.csv``.

With ``data.tile_filter.run`` set, each fold trains only on the tiles that run's model of the
same fold did not already predict perfectly (``common.post.tile_filter``), starting from its
weights when ``data.tile_filter.init``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from common.config import Config, load_run_config, to_config
from common.data.loaders import Items
from common.data.slide_tiles import (
    DEFAULT_SLIDES,
    SlideSet,
    make_loaders,
    prepare,
    read_tiles,
    source_root,
)
from common.infer.inference import TtaPolicy
from common.infer.predict import final_path, load_fold_model
from common.infer.slide_inference import TilePlan, predict_slide, tile_predictor, write_map
from common.io.atomic import atomic_path
from common.io.slides import open_slide
from common.post.slide_evaluate import evaluate, run_dir
from common.post.tile_filter import FILE, tile_dice
from common.train import distributed
from common.train.runner import (
    config_main,
    config_parser,
    fold_dir,
    parse_folds,
    resolve_device,
    train_main,
)
from common.train.runner import run_fold as common_run_fold

POLICY = TtaPolicy()  # a slide has no orientation: all of D4 is allowed


def tile_plan(config: Config) -> TilePlan:
    p = config.predict
    return TilePlan(tile=config.data.size, scale=config.data.window / config.data.size,
                    overlap=p.overlap, blend=p.blend, batch_size=p.batch_size,
                    min_tissue=float(p.get("min_tissue", 0.0)))  # fmt: skip


def predict_held_out(model, config: Config, fold: int, device, slides: SlideSet = DEFAULT_SLIDES,
                     *, log=print) -> list[str]:  # fmt: skip
    """Each held-out slide of ``fold`` predicted whole into ``fold<k>/oof/<id>.tiff``."""
    _, table, _ = read_tiles(config)
    root = source_root(config)
    plan = tile_plan(config)
    predictor = tile_predictor([model], device=device, tta=POLICY.check(config.predict.tta),
                               channels_last=config.train.channels_last,
                               preprocess=config.data.get("preprocess"))  # fmt: skip
    ids = table.loc[table["fold"] == fold, "id"].tolist()
    for image_id in ids:
        start = time.perf_counter()
        with open_slide(slides.slide(root, "train", image_id)) as slide:
            shape = plan.model_shape(slide.shape)
            write_map(fold_dir(config, fold) / "oof" / f"{image_id}.tiff",
                      predict_slide(slide, predictor, plan), shape)  # fmt: skip
        log(f"fold {fold}: {image_id} predicted at {shape[0]}x{shape[1]} in "
            f"{time.perf_counter() - start:.0f}s")  # fmt: skip
    return ids


def run_fold(config: Config, fold: int, slides: SlideSet = DEFAULT_SLIDES, *, resume: bool = False,
             log=print) -> dict | None:  # fmt: skip
    """Train one fold on tiles and predict its held-out slides (None on DDP ranks other than 0)."""
    tile_filter = config.data.tile_filter
    if tile_filter.run and tile_filter.init:
        weights = final_path(config.output, tile_filter.run, fold)
        config = to_config(
            config.to_dict() | {"model": config.model.to_dict() | {"weights": str(weights)}}
        )
    start = time.perf_counter()

    def held_out(trainer, last: Config, fold: int, out: Path) -> dict:
        train_seconds = time.perf_counter() - start
        ids = predict_held_out(trainer.model, last, fold, trainer.device, slides, log=log)
        return {"fold": fold, "held_out": ids, "train_images": len(trainer.train_loader.dataset),
                "train_seconds": round(train_seconds, 1)}  # fmt: skip

    return common_run_fold(config, fold, make_loaders, held_out, resume=resume, log=log)


def train_folds(config: Config, folds, slides: SlideSet, *, resume: bool = False,
                skip_bad: bool = False) -> None:  # fmt: skip
    """Prepare the tiles (one process), then train and predict each fold."""
    if distributed.is_main():
        prepare(config, slides, skip_bad=skip_bad)
    distributed.barrier()
    for fold in folds:
        metrics = run_fold(config, fold, slides, resume=resume)
        if metrics is not None:
            print(f"fold {fold}: {metrics['train_images']} training tiles, held-out slides "
                  f"{', '.join(metrics['held_out'])} predicted in {metrics['wall_seconds']:.0f}s")  # fmt: skip


def fold_pair(config: Config, fold: int) -> dict:
    """The threshold and minimum size the finished run scored ``fold``'s held-out slides with:
    searched on the other folds' slides when it cross-fitted (so the fold's own held-out truth
    chooses nothing the next run trains on), else its ``thresholds.yaml``; {} before a search."""
    oof = run_dir(config) / "oof.json"
    summary = json.loads(oof.read_text()) if oof.is_file() else {}
    pair = summary.get("fold_thresholds", {}).get(str(fold))
    if pair is not None and summary.get("threshold_search") == "cross-fitted":
        return pair
    searched = run_dir(config) / "thresholds.yaml"
    return yaml.safe_load(searched.read_text()) if searched.is_file() else {}


def score_fold(config: Config, fold: int, *, log=print) -> dict:
    """The tile filter's first step: every training tile of ``fold`` scored with that fold's
    model of the finished run ``config``, into ``fold<k>/tile_filter.csv`` (id, dice)."""
    device = resolve_device(config.train.device)
    model = load_fold_model(config.output, config.name, fold, 1.0, device).model
    out, _, tiles = read_tiles(config)
    train = tiles[tiles["fold"] != fold].reset_index(drop=True)
    chosen = fold_pair(config, fold)
    threshold = float(chosen.get("threshold", 0.5))
    scale = config.data.window / config.data.size
    min_size = round(chosen.get("min_size", 0) / scale**2)  # full-resolution pixels -> tile pixels
    items = Items(train, out / "images", out / "masks")
    scores = tile_dice(model, config, items, device, threshold=threshold, min_size=min_size)
    with atomic_path(fold_dir(config, fold) / FILE) as tmp:
        scores.to_csv(tmp, index=False, float_format="%.5f")
    perfect = float((scores["dice"] >= config.data.tile_filter.min_dice).mean())
    log(f"tile filter, {config.name} fold {fold}: {perfect:.1%} of {len(scores)} training tiles "
        f"predicted perfectly (Dice >= {config.data.tile_filter.min_dice:g} at threshold {threshold:g})")  # fmt: skip
    return {"fold": fold, "tiles": len(scores), "perfect_share": perfect, "threshold": threshold}


def prepare_main(argv=None, *, competition) -> None:
    """``prepare``: tile the slides at the config's window and size (``--skip-bad``)."""
    slides = competition.data_spec()
    config_main(__doc__, argv, lambda c, skip_bad: prepare(c, slides, skip_bad=skip_bad),
                label=f"{competition.name} prepare", skip_bad=True)  # fmt: skip


def train_fold_main(argv=None, *, competition) -> None:
    """``train``: prepare, train and predict each fold, then the out-of-fold search and score."""
    slides = competition.data_spec()

    def run(config: Config, folds: list[int], args) -> None:
        POLICY.check(config.predict.tta)
        start = time.perf_counter()
        train_folds(config, folds, slides, resume=args.resume, skip_bad=args.skip_bad)
        if distributed.is_main() and not args.no_evaluate:
            evaluate(config, slides)
            print(f"{competition.name}: {len(folds)} fold(s) in "
                  f"{time.perf_counter() - start:.0f}s wall time")  # fmt: skip

    train_main(__doc__, argv, run, label=f"{competition.name} train", evaluate=True, skip_bad=True)


def tile_filter_main(argv=None, *, competition) -> None:
    """``tile-filter``: score each fold's training tiles with the finished run's model."""
    parser = config_parser(__doc__, "the finished run's experiment file")
    parser.add_argument("--folds", default="0")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
        for fold in parse_folds(args.folds):
            score_fold(config, fold)
    except ValueError as error:
        sys.exit(f"{competition.name} tile filter: {error}")
