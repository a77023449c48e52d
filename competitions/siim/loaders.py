"""SIIM data for training: a fold's rows of the prepared tables as ``common.data.loaders.Items``
(``id`` is the ImageId), and the fold's loaders built by ``common.data.loaders``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.config import Config
from common.data.crops import prepared_root
from common.data.folds import read_folds
from common.data.loaders import Extra, Items, load_pipeline
from common.data.loaders import make_loaders as common_loaders
from common.infer.inference import TtaPolicy
from common.post.channel_evaluate import CaseSet
from common.submit.pseudo import read_pseudo_set

TRANSFORMS = Path(__file__).resolve().parent / "transforms"


def fold_frames(config: Config, fold: int) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """The prepared folder and the (train, validation) rows of train.csv for ``fold``."""
    root = prepared_root(
        config.data, fold=fold
    )  # the crops, with a crop stage (common.infer.cascade)
    if not (root / "train.csv").is_file():
        raise ValueError(
            f"{root}/train.csv not found: run `make siim-prepare CONFIG=...` (or "
            f"`python -m common.cli prepare --competition siim --size {config.data.size}`) first"
        )
    table = pd.read_csv(root / "train.csv", dtype={"ImageId": str})
    folds = read_folds(config.data.folds)
    table = table.merge(folds, on="ImageId", how="left", validate="one_to_one")
    if table["fold"].isna().any():
        missing = table.loc[table["fold"].isna(), "ImageId"].iloc[0]
        raise ValueError(f"{config.data.folds}: image {missing!r} has no fold; re-run prepare")
    if fold not in set(table["fold"]):
        raise ValueError(
            f"fold {fold} is not in {config.data.folds} (folds: {sorted(set(table.fold))})"
        )
    table["id"] = table["ImageId"]
    train, val = table[table["fold"] != fold], table[table["fold"] == fold]
    if config.data.positives_only:
        train = train[train["has_mask"] == 1]
    return root, train.reset_index(drop=True), val.reset_index(drop=True)


def items(root: Path, frame: pd.DataFrame) -> Items:
    return Items(frame, root / "images", root / "masks")


def pseudo_items(config: Config, labelled: set[str]) -> Extra | None:
    """``data.pseudo``'s set at the training size, or None; an id that is a labelled image is
    refused (its pseudo-label could come from a model that validated on it)."""
    folder = config.data.pseudo.folder
    if not folder:
        return None
    table = read_pseudo_set(Path(folder), config.data.size)
    leaking = sorted(set(table["id"]) & labelled)
    if leaking:
        raise ValueError(f"{folder}: pseudo-labelled images are training images, e.g. {leaking[0]}")
    root = Path(folder) / str(config.data.size)
    return Extra(Items(table, root / "images", root / "masks"), config.data.pseudo.share)


def make_loaders(config: Config, fold: int, seed: int):
    """The fold's training loader (with ``data.pseudo``'s images, training only) and this
    rank's share of its validation images."""
    root, train, val = fold_frames(config, fold)
    transform = load_pipeline(config, TRANSFORMS)
    extra = pseudo_items(config, set(train["id"]) | set(val["id"]))
    return common_loaders(config, items(root, train), items(root, val), seed, transform, extra)


FRAMES = CaseSet(
    read_cases=None,
    fold_cases=fold_frames,
    items=lambda config, root, frame: items(root, frame),
    policy=lambda channels: TtaPolicy(),
    make_loaders=make_loaders,
    header=("ImageId", "EncodedPixels", ""),
    label="siim",
)
