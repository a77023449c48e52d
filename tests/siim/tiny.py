"""A tiny synthetic SIIM workspace (64 px set, prepared, folds) shared by the stage tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from competitions.siim.layout import read_inputs
from competitions.siim.prepare import ensure_folds, prepare
from competitions.siim.synthetic import SyntheticSpec, generate


def tiny_siim(root: Path, *, n_train: int, n_test: int, size: int = 64, n_folds: int = 4) -> Path:
    """Generate ``root/synthetic`` at 64 px, prepare it at ``size`` into ``root/prepared/<size>``
    and write ``root/folds.csv``; returns the synthetic folder."""
    synthetic = generate(
        root / "synthetic", SyntheticSpec(size=64, n_train=n_train, n_test=n_test), n_jobs=1
    )
    prepared = root / "prepared" / str(size)
    prepare(read_inputs(synthetic, synthetic=True), prepared, size, n_jobs=1)
    train = pd.read_csv(prepared / "train.csv", dtype={"ImageId": str})
    ensure_folds(train, root / "folds.csv", n_folds=n_folds, seed=0)
    return synthetic
