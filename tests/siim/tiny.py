"""A tiny synthetic SIIM workspace (64 px set, prepared, folds) shared by the stage tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.data.folds import ensure_folds
from competitions.siim.layout import read_inputs
from competitions.siim.prepare import prepare
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
    ensure_folds(train["ImageId"], train["mask_area"], root / "folds.csv", n_folds, 0)
    return synthetic


def constant_stage(run: Path, size: int, biases=(10.0, 10.0)) -> Path:
    """A two-channel lung-stage checkpoint ``run/fold0/final.pt`` (the lungs-only config at
    ``size``) whose head outputs the constant logits ``biases`` everywhere: a stage that finds
    each channel everywhere (positive bias) or nowhere (negative), without training."""
    import torch

    from common.config import load_config
    from common.train.checkpoints import save_checkpoint
    from common.train.models import build_model
    from tests.conftest import REPO

    lungs = REPO / "competitions" / "lung" / "configs" / "lungs_only.yaml"
    config = load_config(lungs, [f"data.size={size}"]).to_dict()
    model = build_model(task="segmentation", arch="Unet", encoder="resnet18",
                        in_channels=config["data"]["in_channels"], classes=len(biases))  # fmt: skip
    head = model.net.segmentation_head[0]
    torch.nn.init.zeros_(head.weight)
    head.bias.data = torch.tensor(list(biases))
    (run / "fold0").mkdir(parents=True, exist_ok=True)
    save_checkpoint(run / "fold0" / "final.pt", {"model": model.state_dict(), "config": config})
    return run
