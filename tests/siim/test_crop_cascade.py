"""The SIIM lung crop (3rd place) on a tiny synthetic set: prepare cuts the crops from the lung
stage's boxes (cached, incremental), a fold trains on crops and its out-of-fold maps are pasted
back into the whole frame, the ensemble's prediction pastes the same way, and the Kaggle bundle
carries the crop stage to the offline notebook."""

from __future__ import annotations

import copy
import json
import os
import shutil
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import common.infer.cascade
from common.config import load_config
from common.data.crops import crop_dir, crop_mask, crop_spec, read_box_table
from common.io.images import read_mask, read_png, resize_image
from common.post import image_oof
from competitions.siim.loaders import FRAMES
from competitions.siim.prepare import main as prepare_main
from tests.conftest import REPO
from tests.siim.tiny import constant_stage, tiny_siim

run_fold = partial(image_oof.run_fold, cases=FRAMES)
CONFIGS = REPO / "competitions" / "siim" / "configs"
TINY = ["data.batch_size=4", "data.val_batch_size=8", "data.num_workers=0", "train.epochs=1",
        "train.max_steps=2", "predict.overlays=2"]  # fmt: skip


def _dark_lungs(stage, images):
    """A stand-in for the lung model: the darkest 30% of each half of the image."""
    out = []
    for image in images:
        grey = resize_image(image if image.ndim == 2 else image[..., 0], stage.size)
        dark = (grey < np.percentile(grey, 30)).astype(np.float32)
        half = stage.size // 2
        left, right = dark.copy(), dark.copy()
        left[:, half:], right[:, :half] = 0, 0
        out.append(np.stack([left, right]))
    return np.stack(out)


@pytest.fixture(scope="module")
def workspace(module_tmp):
    root = module_tmp
    tiny_siim(root, n_train=40, n_test=4, size=64)
    constant_stage(root / "models" / "lung" / "lungs", 64)
    return root


def _args(workspace, *extra):
    return [
        f"data.prepared={workspace / 'prepared'}",
        f"data.folds={workspace / 'folds.csv'}",
        f"output={workspace / 'models' / 'siim'}",
        f"data.crop_stage.run={workspace / 'models' / 'lung' / 'lungs'}",
        "data.crop_stage.frame=64",
        "data.size=32",
        *TINY,
        *extra,
    ]


def _inputs(workspace) -> list[str]:
    inputs = ["--raw", str(workspace / "raw"), "--synthetic", str(workspace / "synthetic")]
    return [*inputs, "--synthetic-size=64", "--synthetic-train=40", "--synthetic-test=4",
            "--jobs=1"]  # fmt: skip


def _prepare(workspace, *extra):
    config = str(CONFIGS / "lung_crop.yaml")
    prepare_main(
        ["--config", config, *_inputs(workspace), *_args(workspace, *extra), "data.n_folds=4"]
    )
    return load_config(config, _args(workspace, *extra))


def test_prepare_cuts_crops_from_the_stage_boxes_once(workspace, monkeypatch, capsys):
    monkeypatch.setattr(common.infer.cascade, "stage_masks", _dark_lungs)
    config = _prepare(workspace)
    folder = crop_dir(config.data)
    assert folder.parent == workspace / "prepared" / "64"
    boxes = read_box_table(folder)
    train = pd.read_csv(folder / "train.csv", dtype={"ImageId": str})
    test = pd.read_csv(folder / "test.csv", dtype={"ImageId": str})
    assert len(train) == 40 and len(test) == 4 and set(boxes) == {*train.ImageId, *test.ImageId}
    assert all(b.shape == (64, 64) and not b.fallback for b in boxes.values())
    assert 0.4 < np.mean([b.kept() for b in boxes.values()]) < 0.9  # the lungs, not the image
    frame = workspace / "prepared" / "64"
    for row in train.head(8).itertuples():
        box = boxes[row.ImageId]
        assert (row.box_y0, row.box_y1, row.box_x0, row.box_x1) == (box.y0, box.y1, box.x0, box.x1)
        assert read_png(folder / "images" / f"{row.ImageId}.png").shape == (32, 32)
        expected = crop_mask(read_mask(frame / "masks" / f"{row.ImageId}.png"), box, 32)
        assert (read_mask(folder / "masks" / f"{row.ImageId}.png") == expected).all()
    assert not (folder / "masks" / f"{test.ImageId[0]}.png").exists()
    assert "40 train + 4 test" in capsys.readouterr().out

    calls = []
    monkeypatch.setattr(
        common.infer.cascade, "stage_masks", lambda s, i: calls.append(1) or _dark_lungs(s, i)
    )
    _prepare(workspace)  # nothing changed: no prediction, no crop
    assert calls == [] and "0 boxes predicted, 0 cut" in capsys.readouterr().out
    weights = workspace / "models" / "lung" / "lungs" / "fold0" / "final.pt"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    _prepare(workspace)  # a retrained stage: every box again
    assert "44 boxes predicted" in capsys.readouterr().out
    other = crop_dir(_prepare(workspace, "data.crop_stage.margin=0.2").data)
    assert other != folder and (other / "boxes.csv").is_file()  # other rules, other crops


def test_fold_on_crops_is_scored_on_whole_frames(workspace, monkeypatch):
    from common.infer.predict import PredictOptions, load_fold_model, predict_ids

    monkeypatch.setattr(common.infer.cascade, "stage_masks", _dark_lungs)
    config = _prepare(workspace, "name=crop")
    metrics = run_fold(config, 0, log=lambda _: None)
    fold = workspace / "models" / "siim" / "crop" / "fold0"
    assert json.loads((fold / "metrics.json").read_text())["map_size"] == 64
    assert metrics["metric"].startswith("OOF Dice") and 0 <= metrics["score"] <= 1
    boxes = read_box_table(crop_dir(config.data))
    ids = sorted(p.stem for p in (fold / "oof").iterdir())
    for image_id in ids:
        oof, box = read_png(fold / "oof" / f"{image_id}.png"), boxes[image_id]
        assert oof.shape == (64, 64)
        outside = oof.copy()
        outside[box.y0 : box.y1, box.x0 : box.x1] = 0
        assert not outside.any()  # zero outside the lung box
    model = load_fold_model(workspace / "models" / "siim", "crop", 0, 1.0, torch.device("cpu"))
    assert model.boxes is not None and model.images == crop_dir(config.data) / "images"
    options = PredictOptions(device=torch.device("cpu"), tta=tuple(config.predict.tta))
    shapes = dict.fromkeys(ids[:6], (64, 64))
    for pred in predict_ids(ids[:6], shapes, [model], [], options):
        oof = read_png(fold / "oof" / f"{pred.image_id}.png")
        assert np.abs(pred.mask[0].astype(int) - oof).max() <= 1  # the ensemble pastes the same


def test_crop_stage_errors(workspace, monkeypatch):
    monkeypatch.setattr(common.infer.cascade, "stage_masks", _dark_lungs)
    with pytest.raises(SystemExit, match=r"fold3/final\.pt not found: train lungs first"):
        _prepare(workspace, "data.crop_stage.folds=[3]")
    with pytest.raises(SystemExit, match="frame: 8 is too small"):
        _prepare(workspace, "data.crop_stage.frame=8")
    with pytest.raises(ValueError, match="a pseudo-labelled set has no crops"):
        crop_spec(load_config(CONFIGS / "lung_crop.yaml", ["data.pseudo.folder=x"]).data)
    with pytest.raises(ValueError, match="crop_stage"):
        load_config(CONFIGS / "lung_crop.yaml", ["data.crop_stage.margins=0.2"])
    assert crop_spec(load_config(CONFIGS / "unet_resnet18_cpu.yaml").data) is None


def test_bundle_carries_the_crop_stage_to_the_notebook(workspace, tmp_path):
    """A stage that finds both lungs everywhere (whole-image boxes, no fallback): the notebook
    runs the bundle's copy of it and writes what `make ensemble` wrote."""
    from common.submit.image_ensemble import ensemble as run_ensemble
    from competitions.siim.ensemble import ENSEMBLE
    from tests.notebook import run_offline
    from tests.siim.test_kaggle_bundle import build

    experiment = {"base": str(CONFIGS / "lung_crop.yaml"), "predict": {"overlays": 0}}
    experiment["data"] = {"prepared": str(workspace / "prepared"), "size": 32,
                          "folds": str(workspace / "folds.csv"), "batch_size": 4,
                          "num_workers": 0,
                          "crop_stage": {"run": str(tmp_path / "lung" / "everywhere"),
                                         "frame": 64}}  # fmt: skip
    experiment["train"] = {"epochs": 1, "max_steps": 2}
    constant_stage(tmp_path / "lung" / "everywhere", 64)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "cropped.yaml").write_text(yaml.safe_dump(experiment))
    prepare_main(
        [
            "--config",
            str(tmp_path / "configs" / "cropped.yaml"),
            *_inputs(workspace),
            "data.n_folds=4",
        ]
    )
    config = load_config(CONFIGS / "ensembles" / "base.yaml", [
        "name=cropped", f"output={tmp_path / 'models'}", f"submissions={tmp_path / 'subs'}",
        f"configs={tmp_path / 'configs'}", f"test_truth={workspace / 'synthetic' / 'test-rle.csv'}",
        "train_missing=true", "members=[{experiment: cropped, folds: [0], weight: 1.0}]",
        "num_workers=0", "tta=[none]",
    ])  # fmt: skip
    report = run_ensemble(config, ENSEMBLE, log=lambda _: None)
    assert report["n_test"] == 4
    from common.submit.image_ensemble import make_pseudo

    extra = copy.deepcopy(config)
    extra["pseudo"]["images"] = str(tmp_path)
    with pytest.raises(ValueError, match=r"pseudo\.images with members trained on crops"):
        make_pseudo(extra, ENSEMBLE, "siim", log=lambda _: None)
    bundle = build(config, tmp_path / "dist", "someone", wheels=False, log=lambda _: None)
    dataset = bundle / "dataset"
    assert (dataset / "stages" / "everywhere" / "fold0" / "final.pt").is_file()
    kaggle = tmp_path / "kaggle"
    shutil.copytree(dataset, kaggle / "input" / "siim-cropped")
    competition = kaggle / "input" / "siim-acr-pneumothorax-segmentation"
    synthetic = workspace / "synthetic"
    shutil.copytree(synthetic / "dicom-images-test", competition / "dicom-images-test")
    shutil.copy(synthetic / "sample_submission.csv", competition)
    written = run_offline(bundle / "kernel" / "inference.ipynb", kaggle, tmp_path)
    assert written == (tmp_path / "subs" / "cropped.csv").read_bytes()
