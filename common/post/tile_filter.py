"""The seed's tile filter (HuBMAP): after a first model, drop the training tiles it already
predicts perfectly and train on the rest, for faster convergence.

``tile_dice`` scores every item of a table with a trained model (Dice at a threshold, an empty
prediction on an empty mask scoring 1); ``kept_items`` drops those at or above ``min_dice``.
The scores are data: a stage writes them beside the run that made them (``tile_filter.csv``),
and the next run's loaders read them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from common.config import Config
from common.data.loaders import Items, eval_loader
from common.infer.inference import predict_tensor
from common.post.metrics import dice_per_image
from common.post.postprocess import remove_small_components

FILE = "tile_filter.csv"


@torch.no_grad()
def tile_dice(
    model: torch.nn.Module,
    config: Config,
    items: Items,
    device: torch.device,
    *,
    threshold: float = 0.5,
    min_size: int = 0,
) -> pd.DataFrame:
    """(id, dice) of every item: the model's mask (probability above ``threshold``, components
    under ``min_size`` pixels removed: the run's own post-processing) against the truth."""
    model.to(device).eval()
    scores = []
    for batch in tqdm(eval_loader(config, items), desc="tile filter", leave=False):
        prob = predict_tensor(model, batch["image"], device=device)["mask"]
        pred = np.stack([remove_small_components(p, min_size) for p in (prob[:, 0] > threshold)])
        truth = batch["mask"].numpy().astype(np.uint8)
        scores.append(
            dice_per_image(pred.reshape(-1, *pred.shape[-2:]), truth.reshape(-1, *truth.shape[-2:]))
        )
    return pd.DataFrame({"id": items.ids, "dice": np.concatenate(scores) if scores else []})


def kept_items(frame: pd.DataFrame, scores: pd.DataFrame, min_dice: float) -> pd.DataFrame:
    """The rows of ``frame`` whose tile is not perfect (scores below ``min_dice``); a tile
    without a score is kept."""
    perfect = set(scores.loc[scores["dice"] >= min_dice, "id"].astype(str))
    kept = frame[~frame["id"].astype(str).isin(perfect)].reset_index(drop=True)
    if len(frame) and not len(kept):
        raise ValueError(
            f"the tile filter (Dice >= {min_dice:g}) would drop every tile: no training tiles left"
        )
    return kept
