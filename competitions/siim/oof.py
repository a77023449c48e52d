"""Out-of-fold prediction for a trained SIIM fold: uint8 maps with TTA, the threshold search on
them, the overlays picture and the fold's metrics. A model trained on crops (``data.crop_stage``)
has its maps pasted back into the whole frame first, so the search and the Dice are those of
whole images."""

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
from common.post.postprocess import triplet
from common.post.threshold_search import search_triplets, search_triplets_from_stats
from common.train.training import Trainer
from competitions.siim.loaders import fold_frames, items


def predict_oof(trainer: Trainer, config: Config, fold: int, fold_dir: Path) -> dict:
    """Predict the validation images with TTA into oof/, then search thresholds on them."""
    root, _, val = fold_frames(config, fold)
    val_loader = eval_loader(config, items(root, val))
    tta = tuple(config.predict.tta)
    ids = val["ImageId"].tolist()
    batches = predict_batches(
        trainer.model,
        val_loader,
        device=trainer.device,
        tta=tta,
        channels_last=trainer.settings.channels_last,
    )
    if config.model.task == "classification":
        scores = np.concatenate([probs["label"] for _, probs in batches])
        frame = pd.DataFrame({"ImageId": ids, "prob": scores, "has_mask": val["has_mask"]})
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
        q = read_png(oof / f"{row.ImageId}.png")
        pred = triplet(q, best["top"], int(best["min_area"]), best["bottom"])
        title = f"{row.ImageId[-12:]} area {row.mask_area}"
        panels.append(
            (
                title,
                read_png(root / "images" / f"{row.ImageId}.png"),
                read_mask(root / "masks" / f"{row.ImageId}.png"),
                pred,
            )
        )
    mask_overlays(panels, path)
