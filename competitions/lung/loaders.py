"""Lung data for training: the prepared cases with their folds, the data loaders, and the TTA
policy (a mirrored chest X-ray swaps the patient's left and right).

Folds (``data.split``): ``scr``, the SCR benchmark's two halves: fold 0 trains on the
odd-numbered cases and holds out (validates on, predicts) the even-numbered ones, fold 1 the
reverse; or ``kfold``, ``data.n_folds`` folds stratified by case type (``JPCLN`` nodule / ``JPCNN``
no nodule), fold k holding out its k-th part. Here as in SIIM a case's ``fold`` is the run that
holds it out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, RandomSampler

from common.config import Config
from common.data import SegmentationDataset, load_transforms, seed_worker, transform_names
from common.folds import make_folds
from common.inference import TtaPolicy, side_swap

TRANSFORMS = Path(__file__).resolve().parent / "transforms"
SPLITS = ("scr", "kfold")
MIRRORING = (
    "HorizontalFlip",
    "VerticalFlip",
    "Transpose",
    "D4",
    "RandomRotate90",
    "SquareSymmetry",
)


def tta_policy(structures) -> TtaPolicy:
    """hflip is allowed only with the left/right channels swapped back; vflip never (chest
    X-rays are not upside down)."""
    return TtaPolicy(
        forbidden=frozenset({"vflip"}),
        remap={"hflip": side_swap(structures)},
        reason="chest X-rays are never upside down",
    )


def assign_folds(cases: pd.DataFrame, split: str, n_folds: int = 5, seed: int = 42) -> pd.Series:
    """The fold that holds each case out: ``scr`` gives fold 0 the even-numbered cases (its
    model trains on the odd ones) and fold 1 the odd ones; ``kfold`` stratifies by case type."""
    if split == "scr":
        return pd.Series(1 - cases["scr_fold"].to_numpy(), index=cases.index, name="fold")
    if split == "kfold":
        folds = make_folds(
            cases["case"], cases["nodule"], n_folds=n_folds, n_area_bins=1, seed=seed
        )
        return pd.Series(folds["fold"].to_numpy(), index=cases.index, name="fold")
    raise ValueError(f"data.split {split!r} is unknown; valid: {', '.join(SPLITS)}")


def read_cases(config: Config) -> tuple[Path, pd.DataFrame]:
    """The prepared folder and its cases.csv with a ``fold`` column (the fold that holds each
    case out)."""
    root = Path(config.data.prepared) / str(config.data.size)
    if not (root / "cases.csv").is_file():
        raise ValueError(
            f"{root}/cases.csv not found: run `python -m competitions.lung.prepare --config ...`"
        )
    cases = pd.read_csv(root / "cases.csv", dtype={"case": str})
    cases["fold"] = assign_folds(cases, config.data.split, config.data.n_folds, config.seed)
    return root, cases


def fold_cases(config: Config, fold: int) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """The prepared folder and the (train, held-out) cases of ``fold``."""
    root, cases = read_cases(config)
    if fold not in set(cases["fold"]):
        raise ValueError(f"fold {fold} does not exist for data.split={config.data.split}")
    train, held_out = cases[cases["fold"] != fold], cases[cases["fold"] == fold]
    return root, train.reset_index(drop=True), held_out.reset_index(drop=True)


def _dataset(config: Config, root: Path, frame: pd.DataFrame, transform=None):
    return SegmentationDataset(
        frame["case"],
        root / "images",
        root / "masks",
        size=config.data.size,
        transform=transform,
        in_channels=config.data.in_channels,
        mask_channels=list(config.data.structures),
    )


def _transforms(config: Config):
    name = config.data.transforms
    if name == "none":
        return None
    pipeline = load_transforms(TRANSFORMS / f"{name}.json", config.data.size, config.data.crop)
    mirrors = sorted(set(transform_names(pipeline)) & set(MIRRORING))
    if mirrors:
        raise ValueError(
            f"data.transforms {name!r} has {', '.join(mirrors)}: a mirrored chest X-ray swaps "
            "the patient's left and right, so the left/right masks would be wrong"
        )
    return pipeline


def make_loaders(config: Config, fold: int, seed: int) -> tuple[DataLoader, DataLoader]:
    """The training loader (augmented, shuffled) and the held-out cases' loader."""
    root, train, held_out = fold_cases(config, fold)
    generator = torch.Generator().manual_seed(seed)
    args = {"num_workers": config.data.num_workers, "worker_init_fn": seed_worker}
    dataset = _dataset(config, root, train, _transforms(config))
    loader = DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        sampler=RandomSampler(dataset, generator=generator),
        drop_last=len(dataset) > config.data.batch_size,
        generator=generator,
        **args,
    )
    return loader, eval_loader(config, root, held_out)


def eval_loader(config: Config, root: Path, frame: pd.DataFrame) -> DataLoader:
    return DataLoader(
        _dataset(config, root, frame),
        batch_size=config.data.val_batch_size,
        shuffle=False,
        num_workers=config.data.num_workers,
    )
