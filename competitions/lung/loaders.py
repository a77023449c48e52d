"""Lung data for training: the prepared cases with their folds as ``common.data.loaders.Items``, the
loaders (built by ``common.data.loaders``, sharded under DDP), and the TTA policy (a mirrored chest
X-ray swaps the patient's left and right).

Folds (``data.split``): ``scr``, the SCR benchmark's two halves: fold 0 trains on the
odd-numbered cases and holds out (validates on, predicts) the even-numbered ones, fold 1 the
reverse; or ``kfold``, ``data.n_folds`` folds stratified by case type (``JPCLN`` nodule / ``JPCNN``
no nodule), fold k holding out its k-th part. Here as in SIIM a case's ``fold`` is the run that
holds it out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.config import Config
from common.data.crops import frame_root, prepared_root
from common.data.folds import make_folds
from common.data.loaders import Items, load_pipeline
from common.data.loaders import make_loaders as common_loaders
from common.infer.inference import ORIENTING, TtaPolicy, side_swap

TRANSFORMS = Path(__file__).resolve().parent / "transforms"
SPLITS = ("scr", "kfold")
_SIDES = "a mirrored chest X-ray swaps the patient's left and right, so the left/right masks would be wrong"
MIRRORING = dict.fromkeys(
    ("HorizontalFlip", "VerticalFlip", "Transpose", "D4", "RandomRotate90", "SquareSymmetry"),
    _SIDES,
)


def tta_policy(structures) -> TtaPolicy:
    """hflip is allowed only with the left/right channels swapped back; no other D4 view (chest
    X-rays are never upside down or sideways)."""
    return TtaPolicy(
        forbidden=ORIENTING,
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
    """The prepared folder and its cases.csv with ``fold`` (the fold that holds each case out),
    ``id`` (the case) and ``has_mask`` (every case has lungs)."""
    root = frame_root(config.data)  # whole images (a refinement stage's crops: prepared_root)
    if not (root / "cases.csv").is_file():
        raise ValueError(f"{root}/cases.csv not found: run the prepare stage (`make lung-prepare`)")
    cases = pd.read_csv(root / "cases.csv", dtype={"case": str})
    cases["fold"] = assign_folds(
        cases, config.data.split, config.data.n_folds, config.data.fold_seed
    )
    cases["id"] = cases["case"]
    areas = [c for c in cases.columns if c.startswith("area_")]
    cases["has_mask"] = (cases[areas].sum(axis=1) > 0).astype(int) if areas else 1
    return root, cases


def fold_cases(config: Config, fold: int) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """The folder the fold's model reads (the whole images, or with a crop stage the fold's
    crops) and the (train, held-out) cases of ``fold``."""
    _, cases = read_cases(config)
    if fold not in set(cases["fold"]):
        raise ValueError(f"fold {fold} does not exist for data.split={config.data.split}")
    train, held_out = cases[cases["fold"] != fold], cases[cases["fold"] == fold]
    root = prepared_root(config.data, fold=fold)
    return root, train.reset_index(drop=True), held_out.reset_index(drop=True)


def items(config: Config, root: Path, frame: pd.DataFrame) -> Items:
    return Items(frame, root / "images", root / "masks", tuple(config.data.structures))


def transforms(config: Config):
    """The training pipeline; any mirroring transform is refused."""
    return load_pipeline(config, TRANSFORMS, forbidden=MIRRORING)


def make_loaders(config: Config, fold: int, seed: int):
    """The training loader (augmented, drawn by ``data.sample_rate``) and this rank's share of
    the held-out cases."""
    root, train, held_out = fold_cases(config, fold)
    return common_loaders(
        config, items(config, root, train), items(config, root, held_out), seed, transforms(config)
    )
