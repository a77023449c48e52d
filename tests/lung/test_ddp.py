"""Lung under torchrun: 2 gloo processes train like 1 with the same global batch (the loaders
come from common.data.loaders, sharded), and only the main process prepares the data."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from tests.conftest import REPO

BASE = REPO / "competitions" / "lung" / "configs" / "base.yaml"


def _overrides(root, output):
    return [
        f"data.raw={root / 'raw'}", f"data.synthetic={root / 'synthetic'}",
        f"data.prepared={root / 'prepared'}", f"output={output}", "name=run",
        "data.size=64", "data.score_size=64", "data.batch_size=4", "data.val_batch_size=4",
        "data.num_workers=0", "data.transforms=none", "train.epochs=2", "train.top_k=1",
        "predict.overlays=0", "model.encoder=vgg11", "model.params={decoder_use_norm: false}",
        "loss.terms=[{name: bce}]", "optim.name=sgd", "optim.lr=0.05", "sched.name=none",
    ]  # fmt: skip


def _train(launcher, root, output):
    command = [
        *launcher,
        "-m",
        "common.cli",
        "train",
        "--competition",
        "lung",
        "--config",
        str(BASE),
        "--folds",
        "0",
    ]
    result = subprocess.run(
        [*command, "--no-evaluate", *_overrides(root, output)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env=os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    fold = output / "run" / "fold0"
    model = torch.load(fold / "final.pt", weights_only=True)["model"]
    return model, pd.read_csv(fold / "log.csv"), result.stdout


def test_two_process_run_matches_one_process(tmp_path):
    """As SIIM's test: no batch statistics, a per-pixel loss, SGD; 2 ranks x 2 cases against
    1 process x 4 cases give the same weights and curves up to float rounding. The two-process
    run starts from an unprepared workspace: exactly one process prepares it."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    double, double_log, out = _train(torchrun, tmp_path, tmp_path / "ddp")
    assert out.count("lung prepare:") == 1, out
    single, single_log, _ = _train([sys.executable], tmp_path, tmp_path / "single")
    assert (double_log["images"] == single_log["images"]).all()
    for key, value in single.items():
        if value.dtype.is_floating_point:
            assert torch.allclose(double[key], value, rtol=1e-3, atol=1e-5), key
    for column in ("train_loss", "val_loss", "dice_05", "dice_05_heart"):
        assert double_log[column].to_numpy() == pytest.approx(single_log[column], rel=1e-3)
