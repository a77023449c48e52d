"""Lung ensemble through common.submit.ensemble: two experiments x both SCR folds with the side-swapping
flip, per-structure thresholds from the held-out maps, the test submission and its score."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from common.config import load_config
from common.infer.predict import Prediction
from common.io.images import read_png
from common.post.channel_evaluate import read_submission
from common.submit.ensemble import apply_thresholds
from common.submit.image_ensemble import ensemble as run_ensemble
from competitions.lung.ensemble import ENSEMBLE
from tests.conftest import REPO
from tests.notebook import run_offline

CONFIGS = REPO / "competitions" / "lung" / "configs"
STRUCTURES = ["left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle"]


@pytest.fixture(scope="module")
def workspace(module_tmp):
    root = module_tmp
    data = {"raw": str(root / "raw"), "synthetic": str(root / "synthetic")}
    data |= {"prepared": str(root / "prepared"), "size": 64, "score_size": 64, "crop": 0}
    data |= {"batch_size": 4, "val_batch_size": 4, "num_workers": 0}
    tiny = {"base": str(CONFIGS / "base.yaml"), "data": data, "predict": {"overlays": 0}}
    tiny["train"] = {"epochs": 1, "max_steps": 2, "top_k": 1}
    (root / "configs").mkdir()
    (root / "configs" / "tiny_unet.yaml").write_text(yaml.safe_dump(tiny))
    fpn = tiny | {"model": {"arch": "FPN"}}
    (root / "configs" / "tiny_fpn.yaml").write_text(yaml.safe_dump(fpn))
    return root


def _ensemble(root, *extra):
    overrides = [
        "name=tiny", f"output={root / 'models'}", f"submissions={root / 'submissions'}",
        f"configs={root / 'configs'}", "train_missing=true", "num_workers=0", "overlays=2",
        "members=[{experiment: tiny_unet, folds: [0, 1], weight: 1.0},"
        " {experiment: tiny_fpn, folds: [0, 1], weight: 0.5}]",
        "tta=[none, hflip]", *extra,
    ]  # fmt: skip
    return load_config(CONFIGS / "ensembles" / "base.yaml", overrides)


@pytest.fixture(scope="module")
def ensembled(workspace):
    config = _ensemble(workspace)
    return config, run_ensemble(config, ENSEMBLE, log=lambda _: None)


def test_lung_ensemble_end_to_end(workspace, ensembled):
    _, report = ensembled
    out = workspace / "models" / "tiny"
    thresholds = yaml.safe_load((out / "thresholds.yaml").read_text())
    assert list(thresholds["channels"]) == STRUCTURES
    assert all(t["top"] == 0.0 and t["min_area"] == 0 for t in thresholds["channels"].values())
    for structure in STRUCTURES:  # every case predicted once, by the folds that held it out
        assert len(list((out / "oof" / structure).glob("*.png"))) == 40
    assert report["validated"] == {"rows": 40, "non_empty": report["validated"]["non_empty"]}
    assert 0 <= report["test_dice"] <= 1 and set(report["test_groups"]) == {
        "lungs", "heart", "clavicles"
    }  # fmt: skip
    masks = read_submission(report["csv"], 64)
    postprocess = load_config(workspace / "configs" / "tiny_unet.yaml").predict.postprocess
    for case in {case for case, _ in masks}:
        maps = np.stack([read_png(out / "test" / s / f"{case}.png") for s in STRUCTURES])
        expected = apply_thresholds(
            thresholds, Prediction(case, maps, None, None), STRUCTURES, postprocess
        )
        for c, structure in enumerate(STRUCTURES):  # the CSV comes from thresholds.yaml
            np.testing.assert_array_equal(masks[(case, structure)], expected[c])


def test_a_flip_the_lung_policy_forbids_is_refused(workspace):
    with pytest.raises(ValueError, match="'vflip' is not allowed here: chest X-rays"):
        run_ensemble(_ensemble(workspace, "name=flipped", "tta=[none, vflip]"), ENSEMBLE, log=print)


def test_lung_notebook_offline_matches_make_ensemble(workspace, ensembled, tmp_path):
    from common.submit import kaggle
    from competitions.lung import COMPETITION

    DATA = COMPETITION.bundle["input_slug"]
    spec = kaggle.BundleSpec(package="lung", **COMPETITION.bundle)
    config, report = ensembled
    bundle = kaggle.build(config, tmp_path / "dist", "someone", spec=spec, wheels=False,
                          log=lambda _: None)  # fmt: skip
    kernel = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] is False and kernel["competition_sources"] == []
    kaggle = tmp_path / "kaggle"
    shutil.copytree(bundle / "dataset", kaggle / "input" / "lung-tiny")
    images = workspace / "synthetic" / "test" / "images"
    shutil.copytree(images, kaggle / "input" / DATA / "test" / "images")  # no truth masks
    written = run_offline(bundle / "kernel" / "inference.ipynb", kaggle, tmp_path)
    assert written == open(report["csv"], "rb").read()


def test_bad_inputs_name_what_is_wrong(workspace, ensembled, tmp_path):
    from common.post.channel_evaluate import validate_long as _validate
    from competitions.lung.prepare import prepare

    _, report = ensembled
    lines = open(report["csv"]).read().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:-1]) + "\n")  # one (case, structure) row dropped
    ids = sorted({line.split(",")[0] for line in lines[1:]})
    with pytest.raises(ValueError, match=r"short\.csv: 1 \(case, structure\) pair\(s\) missing"):
        _validate(short, ids, STRUCTURES, 64)
    raw = tmp_path / "raw"  # a test image that is also a training case
    shutil.copytree(workspace / "synthetic", raw)
    shutil.copy(raw / "images" / "JPCLN001.png", raw / "test" / "images" / "JPCLN001.png")
    with pytest.raises(
        ValueError, match=r"1 case\(s\) are both a training and a test image, e\.g\. JPCLN001"
    ):
        prepare(64, 64, raw=raw, prepared=tmp_path / "prepared", log=lambda _: None)
    assert not (tmp_path / "prepared").exists()  # nothing half-written
    two_stage = _ensemble(workspace, "name=gated", "combine=max_pixel")
    with pytest.raises(
        ValueError, match="combine: max_pixel gates one mask channel, this task has 5"
    ):
        run_ensemble(two_stage, ENSEMBLE, log=lambda _: None)
