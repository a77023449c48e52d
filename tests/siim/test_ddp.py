"""DDP on the CPU with gloo: disjoint shards that cover each epoch, and a 2-process torchrun run
that matches a single-process run with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.config import load_config
from common.data.loaders import eval_loader, train_loader
from competitions.siim.loaders import FRAMES
from tests.conftest import REPO
from tests.siim.tiny import tiny_siim

BASE = REPO / "competitions" / "siim" / "configs" / "base.yaml"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim_ddp")
    tiny_siim(root, n_train=40, n_test=2)
    return root


def _overrides(workspace, *extra):
    return [
        f"data.prepared={workspace / 'prepared'}", f"data.folds={workspace / 'folds.csv'}",
        "data.size=64", "data.batch_size=4", "data.num_workers=0", "name=run",
        "data.sample_rate.kind=fixed", "data.sample_rate.start=0.5", "data.sample_rate.epoch_size=24",
        *extra,
    ]  # fmt: skip


def _shards(rank: int, workspace, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    config = load_config(BASE, _overrides(workspace))
    root, train, val = FRAMES.fold_cases(config, 0)
    seen = {}
    loader = train_loader(config, FRAMES.items(config, root, train), seed=5)
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        seen[epoch] = [int(i) for batch in loader for i in batch["index"]]
        seen[f"order{epoch}"] = loader.sampler.epoch_indices().tolist()
    shard = eval_loader(config, FRAMES.items(config, root, val), shard=True)
    seen["val"] = [shard.dataset.ids[i] for batch in shard for i in batch["index"]]
    seen["all_val"] = val["ImageId"].tolist()
    gathered = [None, None]
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


def test_ranks_see_disjoint_data_covering_the_epoch(workspace, tmp_path):
    out = tmp_path / "seen.json"
    mp.spawn(_shards, args=(workspace, str(tmp_path / "store"), str(out)), nprocs=2)
    rank0, rank1 = json.loads(out.read_text())
    for epoch in ("0", "1"):
        order = rank0[f"order{epoch}"]
        assert order == rank1[f"order{epoch}"] and len(order) == 24
        # rank r takes positions r, r + 2, ... of the shared epoch order: disjoint, and together
        # the whole epoch (images may repeat within an epoch: positives are oversampled)
        assert rank0[epoch] == order[0::2] and rank1[epoch] == order[1::2]
    assert rank0["0"] != rank0["1"]
    assert not set(rank0["val"]) & set(rank1["val"])
    assert sorted(rank0["val"] + rank1["val"]) == sorted(rank0["all_val"])


def _train(command, output, env=None):
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900,
        env=os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"} | (env or {}),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    fold = output / "run" / "fold0"
    return torch.load(fold / "final.pt", weights_only=True), pd.read_csv(fold / "log.csv")


def test_two_process_run_matches_one_process(workspace, tmp_path):
    """Same global batch of 4: 2 ranks x 2 images against 1 process x 4 images. The model has
    no batch statistics and no dropout (VGG-11 encoder, decoder without BatchNorm) and the loss
    is a per-pixel mean, so the averaged gradients are the single-process ones up to float
    rounding; with BatchNorm or a batch-level Dice the two runs differ by design. SGD, because
    Adam's first steps are sign-like and turn rounding noise on near-zero gradients into
    full-size steps."""
    args = [
        "-m",
        "common.cli",
        "train",
        "--competition",
        "siim",
        "--config",
        str(BASE),
        "--folds",
        "0",
    ]
    common = _overrides(
        workspace,
        "train.epochs=2",
        "data.transforms=none",
        "predict.overlays=0",
        "train.top_k=1",
        "model.encoder=vgg11",
        "model.params={decoder_use_norm: false}",
        "loss.terms=[{name: bce}]",
        "optim.name=sgd",
        "optim.lr=0.01",
    )
    single, single_log = _train(
        [sys.executable, *args, *common, f"output={tmp_path / 'single'}"], tmp_path / "single"
    )
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    double, double_log = _train(
        [*run, *args, *common, f"output={tmp_path / 'ddp'}"], tmp_path / "ddp"
    )
    assert (double_log["images"] == single_log["images"]).all()
    for key, value in single["model"].items():
        if value.dtype.is_floating_point:
            assert torch.allclose(double["model"][key], value, rtol=1e-3, atol=1e-5), key
    for column in ("train_loss", "val_loss", "dice_triplet"):
        assert double_log[column].to_numpy() == pytest.approx(single_log[column], rel=1e-3)
