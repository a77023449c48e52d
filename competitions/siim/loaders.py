"""SIIM data for training: a fold's rows of the prepared tables, and its data loaders.

Under DDP (``common.distributed``) ``data.batch_size`` is the global batch: each of the N ranks
loads ``batch_size / N`` images of its own interleaved share of each epoch, and validates its own
share of the fold's validation images.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from common import distributed
from common.config import Config
from common.data import (
    NonEmptyRateSampler,
    SegmentationDataset,
    linear_rate,
    load_transforms,
    seed_worker,
)
from common.folds import read_folds

TRANSFORMS = Path(__file__).resolve().parent / "transforms"


def fold_frames(config: Config, fold: int) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """The prepared folder and the (train, validation) rows of train.csv for ``fold``."""
    root = Path(config.data.prepared) / str(config.data.size)
    if not (root / "train.csv").is_file():
        raise ValueError(
            f"{root}/train.csv not found: run `make siim-prepare CONFIG=...` (or "
            f"`python -m competitions.siim.prepare --size {config.data.size}`) first"
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
    train, val = table[table["fold"] != fold], table[table["fold"] == fold]
    if config.data.positives_only:
        train = train[train["has_mask"] == 1]
    return root, train.reset_index(drop=True), val.reset_index(drop=True)


def _datasets_args(config: Config) -> dict:
    return {"size": config.data.size, "in_channels": config.data.in_channels}


def _loader_args(config: Config) -> dict:
    return {
        "num_workers": config.data.num_workers,
        "worker_init_fn": seed_worker,
        "pin_memory": torch.cuda.is_available(),
    }


def train_loader(config: Config, root: Path, train: pd.DataFrame, seed: int) -> DataLoader:
    """Augmented training batches, drawn by the non-empty rate schedule."""
    data = config.data
    name = data.transforms
    transform = None if name == "none" else load_transforms(TRANSFORMS / f"{name}.json", data.size)
    dataset = SegmentationDataset(
        train["ImageId"],
        root / "images",
        root / "masks",
        transform=transform,
        **_datasets_args(config),
    )
    rate = data.sample_rate
    schedule = {
        "none": None,
        "fixed": lambda epoch: rate.start,
        "linear": linear_rate(rate.start, rate.end, config.train.epochs),
    }
    if rate.kind not in schedule:
        raise ValueError(f"data.sample_rate.kind {rate.kind!r}; valid: {', '.join(schedule)}")
    world, rank = distributed.world_size(), distributed.rank()
    if data.batch_size % world:
        raise ValueError(f"data.batch_size {data.batch_size} is not divisible by {world} processes")
    sampler = NonEmptyRateSampler(
        train["has_mask"].to_numpy() > 0,
        schedule[rate.kind],
        epoch_size=rate.epoch_size,
        seed=seed,
        num_replicas=world,
        rank=rank,
    )
    batch_size = data.batch_size // world
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=len(sampler) > batch_size,
        generator=torch.Generator().manual_seed(seed + 1000 * rank),  # worker augmentation seeds
        **_loader_args(config),
    )


def eval_loader(
    config: Config, root: Path, frame: pd.DataFrame, *, shard: bool = False
) -> DataLoader:
    """Un-augmented batches in table order; with ``shard``, only this rank's share (rank, rank +
    N, ...) of the rows, so that DDP ranks validate disjoint images."""
    if shard:
        frame = frame.iloc[distributed.rank() :: distributed.world_size()]
    dataset = SegmentationDataset(
        frame["ImageId"], root / "images", root / "masks", **_datasets_args(config)
    )
    return DataLoader(
        dataset, batch_size=config.data.val_batch_size, shuffle=False, **_loader_args(config)
    )
