"""SIIM training entry point on a tiny synthetic set: segmentation, classification, multi-part
runs, the files each writes, and config errors."""

from __future__ import annotations

import json
import shutil
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from common.config import load_config
from common.post import image_oof
from competitions.siim import COMPETITION
from competitions.siim.loaders import FRAMES
from tests.conftest import REPO
from tests.siim.tiny import tiny_siim

run_fold = partial(image_oof.run_fold, cases=FRAMES)
main = COMPETITION.entry("train")
BASE = REPO / "competitions" / "siim" / "configs" / "base.yaml"
TINY = [
    "data.size=64",
    "data.batch_size=4",
    "data.val_batch_size=8",
    "data.num_workers=0",
    "train.epochs=2",
    "train.max_steps=2",
    "predict.overlays=4",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim_train")
    tiny_siim(root, n_train=40, n_test=4)
    return root


def _config(workspace, tmp_path, *extra):
    paths = [
        f"data.prepared={workspace / 'prepared'}",
        f"data.folds={workspace / 'folds.csv'}",
        f"output={tmp_path / 'models'}",
        "name=tiny",
    ]
    return load_config(BASE, [*paths, *TINY, *extra])


def test_segmentation_fold_writes_every_file(workspace, tmp_path):
    config = _config(workspace, tmp_path, "model.cls_head=true", "loss.cls_weight=0.1")
    metrics = run_fold(config, 1, log=lambda _: None)
    fold = tmp_path / "models" / "tiny" / "fold1"
    expected = {"config.yaml", "checkpoints", "final.pt", "log.csv", "curves.png", "oof"}
    assert expected | {"search.csv", "search.png", "overlays.png", "metrics.json"} <= {
        p.name for p in fold.iterdir()
    }
    assert json.loads((fold / "metrics.json").read_text()) == metrics
    assert {"oof_dice", "empty_dice", "dice_at_0.5", "best_triplet", "wall_seconds"} <= set(metrics)
    assert metrics["oof_dice"] >= metrics["empty_dice"] - 1e-12  # the grid contains "all empty"
    assert (
        metrics["score"] == metrics["oof_dice"] and metrics["thresholds"] == metrics["best_triplet"]
    )
    val = pd.read_csv(workspace / "folds.csv").query("fold == 1")
    assert sorted(p.stem for p in (fold / "oof").iterdir()) == sorted(val["ImageId"])
    saved = yaml.safe_load((fold / "config.yaml").read_text())
    assert saved == config.to_dict()
    assert torch.load(fold / "final.pt", weights_only=True)["config"] == config.to_dict()


def test_classification_fold(workspace, tmp_path):
    config = _config(
        workspace, tmp_path, "model.task=classification", "loss.cls_weight=1.0", "train.monitor=auc"
    )
    metrics = run_fold(config, 0, log=lambda _: None)
    oof = pd.read_csv(tmp_path / "models" / "tiny" / "fold0" / "oof.csv")
    assert list(oof.columns) == ["ImageId", "prob", "has_mask"] and oof["prob"].between(0, 1).all()
    assert 0 <= metrics["auc"] <= 1 and "oof_dice" not in metrics
    assert metrics["score"] == metrics["auc"] and "AUC" in metrics["metric"]


def test_multi_part_run_chains_weights(workspace, tmp_path):
    parts = (
        "train.parts=[{train: {epochs: 1}}, "
        "{optim: {lr: 0.0001}, data: {sample_rate: {kind: fixed, start: 0.5}}}]"
    )
    run_fold(_config(workspace, tmp_path, parts), 0, log=lambda _: None)
    fold = tmp_path / "models" / "tiny" / "fold0"
    first = load_config(fold / "part0" / "config.yaml", schema=load_config(BASE).to_dict())
    second = yaml.safe_load((fold / "part1" / "config.yaml").read_text())
    assert first.train.epochs == 1 and second["optim"]["lr"] == 0.0001
    assert second["model"]["weights"] == str(fold / "part0" / "final.pt")
    final = torch.load(fold / "final.pt", weights_only=True)["model"]
    last = torch.load(fold / "part1" / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], last[k]) for k in final)


def test_config_errors_exit_with_one_clear_line(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"unknown key 'train\.epoch'; valid keys here: "):
        main(["--config", str(BASE), "train.epoch=3"])
    with pytest.raises(SystemExit, match=r"train\.csv not found: run `make siim-prepare"):
        main(["--config", str(BASE), f"data.prepared={tmp_path}"])
    bad_part = "train.parts=[{train: {epoks: 1}}]"
    with pytest.raises(SystemExit, match=r"train\.parts\[0\]: unknown key 'train\.epoks'"):
        main(
            [
                "--config",
                str(BASE),
                *TINY,
                f"data.prepared={workspace / 'prepared'}",
                f"data.folds={workspace / 'folds.csv'}",
                f"output={tmp_path}",
                bad_part,
            ]
        )


RECIPES = ["siim_1st_place_parts", "siim_4th_place", "siim_two_stage_cls", "siim_two_stage_seg"]


def _shrunk(recipe: str, workspace, tmp_path):
    """The recipe as written, shrunk to the tiny set: 64 px, one step per epoch and per part."""
    config = load_config(REPO / "competitions" / "siim" / "configs" / f"{recipe}.yaml")
    tiny = ["data.batch_size=4", "data.val_batch_size=8", "train.max_steps=1", "train.epochs=1"]
    shrink = {"data": {"size": 64, "batch_size": 4, "val_batch_size": 8}}
    shrink["train"] = {"epochs": 1, "max_steps": 1}
    parts = []
    for part in config.train.parts:
        part = json.loads(json.dumps(part))  # a deep copy
        for section, values in shrink.items():
            part.setdefault(section, {}).update(values)
        parts.append(part)
    overrides = [*TINY, *tiny, f"train.parts={json.dumps(parts)}"]
    overrides += ["train.amp=none", "train.channels_last=false", "data.num_workers=0"]
    return load_config(
        REPO / "competitions" / "siim" / "configs" / f"{recipe}.yaml",
        [
            f"data.prepared={workspace / 'prepared'}",
            f"data.folds={workspace / 'folds.csv'}",
            f"output={tmp_path}",
            f"name={recipe}",
            *overrides,
        ],
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_run_shrunk(recipe, workspace, tmp_path):
    config = _shrunk(recipe, workspace, tmp_path)
    metrics = run_fold(config, 2, log=lambda _: None)
    assert ("auc" if config.model.task == "classification" else "oof_dice") in metrics
    if recipe == "siim_1st_place_parts":
        fold = tmp_path / recipe / "fold2"
        assert sorted(p.name for p in fold.glob("part*")) == ["part0", "part1", "part2", "part3"]
        rates = [
            yaml.safe_load((fold / f"part{i}" / "config.yaml").read_text())["data"]["sample_rate"]
            for i in range(4)
        ]
        assert [r["start"] for r in rates] == [0.8, 0.6, 0.4, 0.4]


def test_corrupt_cached_image_names_the_file(workspace, tmp_path):
    images = sorted((workspace / "prepared" / "64" / "images").iterdir())
    broken = tmp_path / "prepared" / "64"
    shutil.copytree(workspace / "prepared" / "64", broken)
    (broken / "images" / images[0].name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    overrides = [f"data.prepared={tmp_path / 'prepared'}", f"data.folds={workspace / 'folds.csv'}"]
    overrides += [f"output={tmp_path / 'models'}", "train.max_steps=0", "data.transforms=none"]
    with pytest.raises(SystemExit, match=rf"{images[0].name}: not a readable PNG"):
        main(["--config", str(BASE), "--folds", "0,1,2,3", *TINY, *overrides])


def test_resume_skips_finished_parts(workspace, tmp_path):
    config = _config(workspace, tmp_path, "train.parts=[{}, {optim: {lr: 0.0001}}]")
    run_fold(config, 0, log=lambda _: None)
    fold = tmp_path / "models" / "tiny" / "fold0"
    stamps = {p: p.stat().st_mtime_ns for p in fold.glob("part*/final.pt")}
    messages = []
    run_fold(config, 0, resume=True, log=messages.append)
    assert sum("is finished" in m for m in messages) == 2
    assert stamps == {p: p.stat().st_mtime_ns for p in fold.glob("part*/final.pt")}


def test_distance_losses_with_learned_weights_train_and_log(workspace, tmp_path):
    terms = "loss.terms=[{name: dice, weight: 1}, {name: boundary, weight: 1}, {name: hausdorff, weight: 1}]"
    config = _config(workspace, tmp_path, terms, "loss.learned_weights=true")
    run_fold(config, 0, log=lambda _: None)
    fold = tmp_path / "models" / "tiny" / "fold0"
    log = pd.read_csv(fold / "log.csv")
    assert {
        "train_boundary",
        "train_hausdorff",
        "train_weight_dice",
        "train_weight_hausdorff",
    } <= set(log.columns)
    assert (log["train_weight_boundary"] > 0).all()
    state = torch.load(fold / "last.pt", weights_only=True)
    assert state["loss"]["log_vars"].shape == (3,)  # kept for a resumed run
    assert state["loss"]["log_vars"].abs().sum() > 0  # they were trained


def test_preprocess_is_the_same_in_training_and_ensemble_prediction(workspace, tmp_path):
    from common.infer.predict import PredictOptions, load_fold_model, predict_ids
    from common.io.images import read_png

    config = _config(workspace, tmp_path, "data.preprocess.name=clahe")
    run_fold(config, 1, log=lambda _: None)
    model = load_fold_model(tmp_path / "models", "tiny", 1, 1.0, torch.device("cpu"))
    assert model.config.data.preprocess.name == "clahe"  # carried by the checkpoint
    image_id = sorted(p.stem for p in (tmp_path / "models" / "tiny" / "fold1" / "oof").iterdir())[0]
    options = PredictOptions(device=torch.device("cpu"), tta=tuple(config.predict.tta))
    (pred,) = predict_ids([image_id], {image_id: (64, 64)}, [model], [], options)
    oof = read_png(tmp_path / "models" / "tiny" / "fold1" / "oof" / f"{image_id}.png")
    assert np.abs(pred.mask[0].astype(int) - oof).max() <= 1  # the ensemble sees what training saw


def test_cutmix_and_cutout_reach_the_training_batches(workspace, tmp_path, monkeypatch):
    import common.train.training

    calls = []
    real = common.train.training.apply_mix

    def spy(batch, mix, rng):
        calls.append(mix)
        return real(batch, mix, rng)

    monkeypatch.setattr(common.train.training, "apply_mix", spy)
    mix = ["data.mix.cutmix.p=0.5", "data.mix.cutout.p=0.5", "data.mix.cutout.mask=erase"]
    run_fold(_config(workspace, tmp_path, *mix), 0, log=lambda _: None)
    assert len(calls) == 4  # 2 epochs x 2 steps, training only
    assert calls[0].cutmix_p == 0.5 and calls[0].cutout_mask == "erase"
