"""Out-of-fold prediction and scoring of a one-channel image competition (SIIM, or any with one
mask per image and Kaggle's empty-image rule): after each fold, its held-out images are predicted
with TTA into uint8 maps (``fold<k>/oof/<id>.png``), the triplet grid (the experiment's
``search``) is searched on them (``search.csv``, ``search.png``), the overlays are drawn and the
fold's ``metrics.json`` gets its score. A model trained on crops (``data.crop_stage``) has its maps
pasted back into the whole frame first, so the search and the Dice are those of whole images. A
classifier (``model.task: classification``) writes ``oof.csv`` (id, prob, has_mask) and its AUC.

The competition gives its folds and items as a ``common.post.channel_evaluate.CaseSet``
(``fold_cases``, ``items``, ``make_loaders``; the held-out table has ``id``, ``has_mask`` and
``mask_area``).

    python -m common.cli train --competition siim --config competitions/siim/configs/unet_resnet18_cpu.yaml --folds 0 [--resume] [key=value ...]
    torchrun --nproc_per_node=N -m common.cli train --competition siim --config ...   (DDP: NCCL or gloo)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.config import Config
from common.data.crops import crop_spec, frame_root, read_box_table
from common.data.loaders import eval_loader
from common.infer.cascade import paste_batches
from common.infer.inference import predict_batches, roc_auc, write_maps
from common.io.atomic import atomic_path
from common.io.images import read_mask, read_png
from common.plots import mask_overlays
from common.post.channel_evaluate import CaseSet
from common.post.postprocess import triplet
from common.post.threshold_search import search_triplets, search_triplets_from_stats
from common.train.runner import fold_dir, train_main, write_fold_score
from common.train.runner import run_fold as common_run_fold
from common.train.training import Trainer


def run_fold(config: Config, fold: int, cases: CaseSet, *, resume: bool = False, log=print
             ) -> dict | None:  # fmt: skip
    """Train (all parts), predict the fold's held-out images, search, write metrics.json.
    Under DDP the ranks other than 0 return None after training."""

    def held_out(trainer, last: Config, fold: int, out: Path) -> dict:
        return predict_oof(trainer, last, fold, out, cases)

    metrics = common_run_fold(config, fold, cases.make_loaders, held_out, resume=resume, log=log)
    if metrics is None:
        return None
    if "oof_dice" in metrics:
        score = {"metric": "OOF Dice (mean per image, searched triplet)", "score": metrics["oof_dice"],
                 "thresholds": metrics["best_triplet"], "empty_score": metrics["empty_dice"]}  # fmt: skip
    else:
        score = {"metric": "OOF AUC (classifier)", "score": metrics["auc"]}
    return write_fold_score(fold_dir(config, fold), **score)


def report(config: Config, metrics: dict) -> str:
    """The fold's line on the console."""
    if "oof_dice" in metrics:
        t = metrics["best_triplet"]
        return (
            f"fold {metrics['fold']} ({config.name}): OOF Dice {metrics['oof_dice']:.4f} at "
            f"top {t['top']:g} / min area {t['min_area']} / bottom {t['bottom']:g}; "
            f"all-empty baseline {metrics['empty_dice']:.4f}; Dice at 0.5 {metrics['dice_at_0.5']:.4f}; "
            f"{metrics['wall_seconds']:.0f}s -> {Path(config.output) / config.name}/fold{metrics['fold']}"
        )
    return f"fold {metrics['fold']} ({config.name}): AUC {metrics['auc']:.4f}, accuracy {metrics['accuracy']:.4f}"


def main(argv=None, *, competition) -> None:
    """``train``: every fold of ``--folds``, each followed by its out-of-fold search."""
    cases = competition.data_spec()

    def run(config: Config, folds: list[int], args) -> None:
        for fold in folds:
            metrics = run_fold(config, fold, cases, resume=args.resume)
            if metrics is not None:
                print(report(config, metrics))

    train_main(__doc__, argv, run, label=f"{competition.name} train")


def predict_oof(
    trainer: Trainer, config: Config, fold: int, fold_dir: Path, cases: CaseSet
) -> dict:
    """Predict the validation images with TTA into oof/, then search thresholds on them."""
    root, _, val = cases.fold_cases(config, fold)
    val_loader = eval_loader(config, cases.items(config, root, val))
    tta = tuple(config.predict.tta)
    ids = val["id"].tolist()
    batches = predict_batches(
        trainer.model,
        val_loader,
        device=trainer.device,
        tta=tta,
        channels_last=trainer.settings.channels_last,
    )
    if config.model.task == "classification":
        scores = np.concatenate([probs["label"] for _, probs in batches])
        frame = pd.DataFrame({cases.header[0]: ids, "prob": scores, "has_mask": val["has_mask"]})
        with atomic_path(fold_dir / "oof.csv") as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6f")
        labels = val["has_mask"].to_numpy() > 0
        return {
            "fold": fold,
            "n_images": len(ids),
            "auc": roc_auc(labels, scores),
            "accuracy": float(np.mean((scores > 0.5) == labels)),
            "tta": list(tta),
        }
    oof, whole = fold_dir / "oof", frame_root(config.data)
    spec = crop_spec(config.data)
    if spec:  # maps of crops back in the whole frame before scoring
        batches = paste_batches(batches, ids, read_box_table(root), spec.frame)
    maps = write_maps(batches, ids, ["mask"], lambda i, _: oof / f"{i}.png")
    truths = (read_mask(whole / "masks" / f"{i}.png") for i in ids)
    grid = config.search
    result = search_triplets(
        (m[0] for _, m in maps), truths, grid.tops, grid.min_areas, grid.bottoms
    )
    result.to_csv(fold_dir / "search.csv")
    result.heatmap(fold_dir / "search.png")
    dice_05 = search_triplets_from_stats(result.stats, [0.5], [0], [0.5]).best["dice"]
    best = result.best
    _overlays(config, whole, val, oof, best, fold_dir / "overlays.png")
    return {
        "fold": fold,
        "n_images": len(ids),
        "oof_dice": best["dice"],
        "empty_dice": result.empty_dice,
        "dice_at_0.5": dice_05,
        "best_triplet": {k: best[k] for k in ("top", "min_area", "bottom")},
        "map_size": int(whole.name),
        "tta": list(tta),
    }


def _overlays(config, root, val, oof, best, path) -> None:
    """Positives first (largest masks), then a few negatives, with the chosen triplet applied."""
    count = config.predict.overlays
    if count <= 0:
        return
    ordered = val.sort_values("mask_area", ascending=False)
    n_pos = min(count - count // 4, int((ordered["has_mask"] > 0).sum()))
    chosen = pd.concat([ordered.head(n_pos), ordered[ordered["has_mask"] == 0].head(count - n_pos)])
    panels = []
    for row in chosen.itertuples():
        q = read_png(oof / f"{row.id}.png")
        pred = triplet(q, best["top"], int(best["min_area"]), best["bottom"])
        title = f"{row.id[-12:]} area {row.mask_area}"
        panels.append((title, read_png(root / "images" / f"{row.id}.png"),
                       read_mask(root / "masks" / f"{row.id}.png"), pred))  # fmt: skip
    mask_overlays(panels, path)
