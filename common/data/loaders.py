"""Data loaders for any competition, built from its table of items and the config's ``data``.

A competition supplies, per split, an ``Items``: one row per item with the columns ``id`` (the
file stem of ``images/<id>.png`` and of each mask), ``has_mask`` (0/1: any mask pixel, what the
non-empty rate counts) and, for ``sample_rate.kind: weighted``, ``weight``; plus the folder of
images, the folder of masks and the mask channel names of a multi-label task. ``common`` builds
the datasets, the sampler and the loaders:

- ``data.sample_rate.kind``: ``none`` (plain shuffle), ``fixed`` / ``linear`` (share of
  non-empty images per epoch: fixed, or linear from ``start`` to ``end`` over the epochs),
  ``weighted`` (draws with replacement in proportion to the ``weight`` column);
- under DDP (``common.train.distributed``) ``data.batch_size`` is the global batch: each of the N ranks
  loads ``batch_size / N`` images of its own interleaved share of each epoch, and validates its
  own share of the validation items, so that N processes train like one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, DataLoader

from common.config import Config
from common.data.datasets import (
    NonEmptyRateSampler,
    SegmentationDataset,
    WithExtraSampler,
    linear_rate,
    load_transforms,
    seed_worker,
    transform_names,
)
from common.train import distributed

SAMPLE_KINDS = ("none", "fixed", "linear", "weighted")


@dataclass(frozen=True)
class Items:
    """One split's items: ``frame`` has ``id``, ``has_mask`` (and ``weight`` for weighted
    sampling); images are ``images/<id>.png``, masks ``masks/<id>.png`` or, with
    ``mask_channels``, ``masks/<channel>/<id>.png`` (``masks`` None: images only)."""

    frame: pd.DataFrame
    images: Path
    masks: Path | None = None
    mask_channels: tuple[str, ...] | None = None

    def __post_init__(self):
        if "id" not in self.frame.columns:
            raise ValueError(f"an item table needs an 'id' column, got {list(self.frame.columns)}")

    @property
    def ids(self) -> list[str]:
        return self.frame["id"].astype(str).tolist()

    def rows(self, start: int = 0, step: int = 1) -> Items:
        """The items at positions start, start + step, ... (a rank's shard)."""
        frame = self.frame.iloc[start::step].reset_index(drop=True)
        return Items(frame, self.images, self.masks, self.mask_channels)


@dataclass(frozen=True)
class Extra:
    """Training-only items (pseudo-labels) and the share of every epoch they fill."""

    items: Items
    share: float


def load_pipeline(config: Config, folder: str | Path, *, forbidden: dict[str, str] | None = None):
    """The training augmentation ``data.transforms`` from ``folder/<name>.json`` at
    ``data.size`` (with ``data.crop``), or None for ``none``. ``forbidden`` maps transform class
    names a competition refuses to the reason (e.g. a flip that swaps the patient's sides)."""
    data = config.data
    if data.transforms == "none":
        return None
    pipeline = load_transforms(Path(folder) / f"{data.transforms}.json", data.size, data.crop)
    refused = sorted(set(transform_names(pipeline)) & set(forbidden or {}))
    if refused:
        reasons = "; ".join(sorted({forbidden[name] for name in refused}))
        raise ValueError(f"data.transforms {data.transforms!r} has {', '.join(refused)}: {reasons}")
    return pipeline


def dataset(config: Config, items: Items, transform=None) -> SegmentationDataset:
    return SegmentationDataset(
        items.ids,
        items.images,
        items.masks,
        size=config.data.size,
        transform=transform,
        in_channels=config.data.in_channels,
        mask_channels=list(items.mask_channels) if items.mask_channels else None,
        preprocess=config.data.get("preprocess"),
    )


def sampler(config: Config, items: Items, seed: int) -> NonEmptyRateSampler:
    """This rank's sampler for ``data.sample_rate`` (see the module docs)."""
    rate, frame = config.data.sample_rate, items.frame
    if rate.kind not in SAMPLE_KINDS:
        raise ValueError(f"data.sample_rate.kind {rate.kind!r}; valid: {', '.join(SAMPLE_KINDS)}")
    schedule = {
        "fixed": lambda epoch: rate.start,
        "linear": linear_rate(rate.start, rate.end, config.train.epochs),
    }.get(rate.kind)
    weights = None
    if rate.kind == "weighted":
        if "weight" not in frame.columns:
            raise ValueError("data.sample_rate.kind weighted needs a 'weight' column in the items")
        weights = frame["weight"].to_numpy(dtype=np.float64)
    has_mask = frame["has_mask"].to_numpy() > 0 if "has_mask" in frame.columns else None
    if has_mask is None:
        if schedule is not None:
            raise ValueError(f"data.sample_rate.kind {rate.kind} needs a 'has_mask' column")
        has_mask = np.zeros(len(frame), bool)
    return NonEmptyRateSampler(
        has_mask,
        schedule,
        weights=weights,
        epoch_size=rate.epoch_size,
        seed=seed,
        num_replicas=distributed.world_size(),
        rank=distributed.rank(),
    )


def loader_args(config: Config) -> dict:
    return {
        "num_workers": config.data.num_workers,
        "worker_init_fn": seed_worker,
        "pin_memory": torch.cuda.is_available(),
    }


def train_loader(
    config: Config, items: Items, seed: int, transform=None, extra: Extra | None = None
) -> DataLoader:
    """Augmented training batches drawn by ``data.sample_rate``, this rank's share under DDP;
    with ``extra``, its items (pseudo-labelled images) fill ``extra.share`` of every epoch."""
    world, rank = distributed.world_size(), distributed.rank()
    batch_size = config.data.batch_size
    if batch_size % world:
        raise ValueError(f"data.batch_size {batch_size} is not divisible by {world} processes")
    draw = sampler(config, items, seed)
    data = dataset(config, items, transform)
    if extra is not None and len(extra.items.frame):
        draw = WithExtraSampler(draw, len(extra.items.frame), extra.share)
        data = ConcatDataset([data, dataset(config, extra.items, transform)])
    per_rank = batch_size // world
    return DataLoader(
        data,
        batch_size=per_rank,
        sampler=draw,
        drop_last=len(draw) > per_rank,
        generator=torch.Generator().manual_seed(seed + 1000 * rank),  # worker augmentation seeds
        **loader_args(config),
    )


def eval_loader(config: Config, items: Items, *, shard: bool = False) -> DataLoader:
    """Un-augmented batches in table order; with ``shard``, only this rank's share (rank,
    rank + N, ...) of the items, so that DDP ranks validate disjoint items."""
    if shard:
        items = items.rows(distributed.rank(), distributed.world_size())
    return DataLoader(
        dataset(config, items),
        batch_size=config.data.val_batch_size,
        shuffle=False,
        **loader_args(config),
    )


def make_loaders(
    config: Config, train: Items, validation: Items, seed: int, transform=None,
    extra: Extra | None = None,
) -> tuple[DataLoader, DataLoader]:  # fmt: skip
    """The training loader (with ``extra`` training-only items) and this rank's shard of the
    validation loader; ``extra`` never reaches validation."""
    return (
        train_loader(config, train, seed, transform, extra),
        eval_loader(config, validation, shard=True),
    )
