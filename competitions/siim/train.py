"""Train SIIM folds from a config, then predict each fold's validation images and search thresholds.

    python -m competitions.siim.train --config competitions/siim/configs/unet_resnet18_cpu.yaml \
        --folds 0 [--resume] [key.sub=value ...]
    torchrun --nproc_per_node=N -m competitions.siim.train --config ... (DDP: NCCL or gloo)

Reads ``data/siim/prepared/<size>/`` and ``data/siim/folds.csv`` (from ``competitions.siim.
prepare``) and writes ``models/siim/<name>/fold<k>/``: ``config.yaml``, ``checkpoints/``,
``final.pt``, ``log.csv``, ``curves.png``, ``oof/<ImageId>.png`` (uint8 probability maps at the
training size, hflip TTA), ``search.csv`` and ``search.png`` (the triplet grid),
``overlays.png`` and ``metrics.json``. A classifier writes ``oof.csv`` (ImageId, prob, has_mask).
``--resume`` continues each part from its ``last.pt`` and skips parts already finished
(``done.json``). Under DDP only rank 0 writes files and predicts the out-of-fold maps.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from common.config import Config, load_run_config
from common.io.atomic import write_text_atomic
from common.train import distributed
from common.train.runner import (
    METRICS,
    check_run_config,
    parse_folds,
    train_fold,
    train_parser,
    write_fold_score,
)
from competitions.siim.loaders import make_loaders
from competitions.siim.oof import predict_oof


def run_fold(config: Config, fold: int, *, resume: bool = False, log=print) -> dict | None:
    """Train (all parts), predict the fold's validation images, search, write metrics.json.
    Under DDP the ranks other than 0 return None after training."""
    start = time.perf_counter()
    fold_dir = Path(config.output) / config.name / f"fold{fold}"
    trainer, last = train_fold(config, fold, fold_dir, make_loaders, resume=resume, log=log)
    if not distributed.is_main():
        return None
    metrics = predict_oof(trainer, last, fold, fold_dir)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    metrics["epochs_run"] = len(trainer.history)
    write_text_atomic(fold_dir / METRICS, json.dumps(metrics, indent=2) + "\n")
    if "oof_dice" in metrics:
        score = {"metric": "OOF Dice (mean per image, searched triplet)",
                 "score": metrics["oof_dice"], "thresholds": metrics["best_triplet"]}  # fmt: skip
    else:
        score = {"metric": "OOF AUC (classifier)", "score": metrics["auc"]}
    return write_fold_score(fold_dir, **score)


def main(argv=None) -> None:
    parser = train_parser(__doc__)
    args = parser.parse_args(argv)
    try:
        distributed.start()  # before anything asks which rank is the main one
        config = check_run_config(load_run_config(args.config, args.overrides))
        for fold in parse_folds(args.folds):
            metrics = run_fold(config, fold, resume=args.resume)
            if metrics is not None:
                print(_report(config, metrics))
    except (ValueError, FloatingPointError) as error:
        sys.exit(f"siim train: {error}")
    finally:
        distributed.stop()


def _report(config: Config, metrics: dict) -> str:
    if "oof_dice" in metrics:
        t = metrics["best_triplet"]
        return (
            f"fold {metrics['fold']} ({config.name}): OOF Dice {metrics['oof_dice']:.4f} at "
            f"top {t['top']:g} / min area {t['min_area']} / bottom {t['bottom']:g}; "
            f"all-empty baseline {metrics['empty_dice']:.4f}; Dice at 0.5 {metrics['dice_at_0.5']:.4f}; "
            f"{metrics['wall_seconds']:.0f}s -> {Path(config.output) / config.name}/fold{metrics['fold']}"
        )
    return f"fold {metrics['fold']} ({config.name}): AUC {metrics['auc']:.4f}, accuracy {metrics['accuracy']:.4f}"


if __name__ == "__main__":
    main()
