"""The seed's tile filter as a stage: score every training tile of each fold with that fold's
model of a finished run, and write ``models/hubmap/<run>/fold<k>/tile_filter.csv`` (id, dice).

    python -m competitions.hubmap.tile_filter --config competitions/hubmap/configs/unet_resnet18_cpu.yaml --folds 0

A later experiment with ``data.tile_filter.run: <run>`` trains each fold only on the tiles whose
Dice is below ``data.tile_filter.min_dice`` (starting from the run's weights with ``init``):
``make hubmap-filter`` runs both steps (``competitions/hubmap/configs/filtered.yaml``).
"""

from __future__ import annotations

import sys

import yaml

from common.config import Config, load_run_config
from common.data.loaders import Items
from common.infer.predict import load_fold_model
from common.io.atomic import atomic_path
from common.post.tile_filter import FILE, tile_dice
from common.train.runner import config_parser, fold_dir, parse_folds, resolve_device
from competitions.hubmap.evaluate import run_dir
from competitions.hubmap.prepare import read_tiles


def score_fold(config: Config, fold: int, *, log=print) -> dict:
    device = resolve_device(config.train.device)
    model = load_fold_model(config.output, config.name, fold, 1.0, device).model
    out, _, tiles = read_tiles(config)
    train = tiles[tiles["fold"] != fold].reset_index(drop=True)
    searched = run_dir(config) / "thresholds.yaml"  # the run's own out-of-fold threshold
    chosen = yaml.safe_load(searched.read_text()) if searched.is_file() else {}
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


def main(argv=None) -> None:
    parser = config_parser(__doc__, "the finished run's experiment file")
    parser.add_argument("--folds", default="0")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
        for fold in parse_folds(args.folds):
            score_fold(config, fold)
    except ValueError as error:
        sys.exit(f"hubmap tile filter: {error}")


if __name__ == "__main__":
    main()
