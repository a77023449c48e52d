"""Train HuBMAP folds on tiles, predict each fold's held-out slides whole, then search and score.

    python -m competitions.hubmap.train --config competitions/hubmap/configs/unet_resnet18_cpu.yaml \
        --folds 0 [--resume] [key.sub=value ...]

Prepares the tiles first when needed (``competitions.hubmap.prepare``). Folds are grouped by
slide: fold k validates on the tiles of its held-out slides, then predicts those slides whole
(``common.infer.slide_inference``: overlapping tiles, Gaussian blending, the TTA of
``predict.tta``) into ``models/hubmap/<name>/fold<k>/oof/<id>.tiff``, a quantised map at model
scale. ``competitions.hubmap.evaluate`` then searches the threshold and the minimum object size
on every fold's maps and scores the full-resolution RLE they make against ``train.csv``.

With ``data.tile_filter.run`` set, each fold trains only on the tiles that run's model of the
same fold did not already predict perfectly (``make hubmap-filter``; ``common.post.tile_filter``),
starting from its weights when ``data.tile_filter.init``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from common.config import Config, to_config
from common.data.loaders import Items, load_pipeline
from common.data.loaders import make_loaders as common_loaders
from common.infer.inference import TtaPolicy
from common.infer.predict import final_path
from common.infer.slide_inference import TilePlan, predict_slide, tile_predictor, write_map
from common.io.slides import open_slide
from common.post.tile_filter import FILE as FILTER_FILE
from common.post.tile_filter import kept_items
from common.train import distributed
from common.train.runner import fold_dir, train_main
from common.train.runner import run_fold as common_run_fold
from competitions.hubmap.evaluate import evaluate, source_root
from competitions.hubmap.prepare import prepare, read_tiles

TRANSFORMS = Path(__file__).resolve().parent / "transforms"
POLICY = TtaPolicy()  # histology has no orientation: all of D4 is allowed


def tile_plan(config: Config) -> TilePlan:
    p = config.predict
    return TilePlan(tile=config.data.size, scale=config.data.window / config.data.size,
                    overlap=p.overlap, blend=p.blend, batch_size=p.batch_size)  # fmt: skip


def filter_scores(config: Config, fold: int) -> pd.DataFrame | None:
    run = config.data.tile_filter.run
    if not run:
        return None
    path = Path(config.output) / run / f"fold{fold}" / FILTER_FILE
    if not path.is_file():
        raise ValueError(f"data.tile_filter.run {run!r}: {path} not found (make hubmap-filter)")
    return pd.read_csv(path, dtype={"id": str})


def make_loaders(config: Config, fold: int, seed: int):
    """Training tiles of the other folds' slides (less the perfect ones under the tile filter)
    and this rank's share of the held-out slides' tiles."""
    out, slides, tiles = read_tiles(config)
    if fold not in set(slides["fold"]):
        raise ValueError(f"fold {fold} does not exist: {config.data.n_folds} folds")
    train = tiles[tiles["fold"] != fold].reset_index(drop=True)
    scores = filter_scores(config, fold)
    if scores is not None:
        train = kept_items(train, scores, config.data.tile_filter.min_dice)
    held = tiles[tiles["fold"] == fold].reset_index(drop=True)
    pipeline = load_pipeline(config, TRANSFORMS)
    return common_loaders(
        config, Items(train, out / "images", out / "masks"), Items(held, out / "images", out / "masks"),
        seed, pipeline,
    )  # fmt: skip


def predict_held_out(model, config: Config, fold: int, device, *, log=print) -> list[str]:
    """Each held-out slide of ``fold`` predicted whole into ``fold<k>/oof/<id>.tiff``."""
    _, slides, _ = read_tiles(config)
    root = source_root(config)
    plan = tile_plan(config)
    predictor = tile_predictor([model], device=device, tta=POLICY.check(config.predict.tta),
                               channels_last=config.train.channels_last,
                               preprocess=config.data.get("preprocess"))  # fmt: skip
    ids = slides.loc[slides["fold"] == fold, "id"].tolist()
    for image_id in ids:
        start = time.perf_counter()
        with open_slide(root / "train" / f"{image_id}.tiff") as slide:
            shape = plan.model_shape(slide.shape)
            write_map(fold_dir(config, fold) / "oof" / f"{image_id}.tiff",
                      predict_slide(slide, predictor, plan), shape)  # fmt: skip
        log(
            f"fold {fold}: {image_id} predicted at {shape[0]}x{shape[1]} in {time.perf_counter() - start:.0f}s"
        )
    return ids


def run_fold(config: Config, fold: int, *, resume: bool = False, log=print) -> dict | None:
    tile_filter = config.data.tile_filter
    if tile_filter.run and tile_filter.init:
        weights = final_path(config.output, tile_filter.run, fold)
        config = to_config(
            config.to_dict() | {"model": config.model.to_dict() | {"weights": str(weights)}}
        )
    start = time.perf_counter()

    def held_out(trainer, last: Config, fold: int, out: Path) -> dict:
        train_seconds = time.perf_counter() - start
        ids = predict_held_out(trainer.model, last, fold, trainer.device, log=log)
        return {"fold": fold, "held_out": ids, "train_images": len(trainer.train_loader.dataset),
                "train_seconds": round(train_seconds, 1)}  # fmt: skip

    return common_run_fold(config, fold, make_loaders, held_out, resume=resume, log=log)


def train_folds(config: Config, folds, *, resume: bool = False) -> None:
    """Prepare the tiles (one process), then train and predict each fold."""
    if distributed.is_main():
        prepare(config)
    distributed.barrier()
    for fold in folds:
        metrics = run_fold(config, fold, resume=resume)
        if metrics is not None:
            print(f"fold {fold}: {metrics['train_images']} training tiles, held-out slides "
                  f"{', '.join(metrics['held_out'])} predicted in {metrics['wall_seconds']:.0f}s")  # fmt: skip


def _run(config: Config, folds: list[int], args) -> None:
    POLICY.check(config.predict.tta)
    start = time.perf_counter()
    train_folds(config, folds, resume=args.resume)
    if distributed.is_main() and not args.no_evaluate:
        evaluate(config)
        print(f"hubmap: {len(folds)} fold(s) in {time.perf_counter() - start:.0f}s wall time")


def main(argv=None) -> None:
    train_main(__doc__, argv, _run, label="hubmap train", evaluate=True)


if __name__ == "__main__":
    main()
