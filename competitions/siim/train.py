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

from pathlib import Path

from common.config import Config
from common.train.runner import fold_dir, train_main, write_fold_score
from common.train.runner import run_fold as common_run_fold
from competitions.siim.loaders import make_loaders
from competitions.siim.oof import predict_oof


def _held_out(trainer, last: Config, fold: int, out: Path) -> dict:
    return predict_oof(trainer, last, fold, out)


def run_fold(config: Config, fold: int, *, resume: bool = False, log=print) -> dict | None:
    """Train (all parts), predict the fold's validation images, search, write metrics.json.
    Under DDP the ranks other than 0 return None after training."""
    metrics = common_run_fold(config, fold, make_loaders, _held_out, resume=resume, log=log)
    if metrics is None:
        return None
    if "oof_dice" in metrics:
        score = {"metric": "OOF Dice (mean per image, searched triplet)",
                 "score": metrics["oof_dice"], "thresholds": metrics["best_triplet"]}  # fmt: skip
    else:
        score = {"metric": "OOF AUC (classifier)", "score": metrics["auc"]}
    return write_fold_score(fold_dir(config, fold), **score)


def _run(config: Config, folds: list[int], args) -> None:
    for fold in folds:
        metrics = run_fold(config, fold, resume=args.resume)
        if metrics is not None:
            print(_report(config, metrics))


def main(argv=None) -> None:
    train_main(__doc__, argv, _run, label="siim train")


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
