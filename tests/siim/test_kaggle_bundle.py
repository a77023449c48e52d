"""`make kaggle-bundle`: the generated notebook, run offline in a Kaggle-like folder with the
repository not importable, writes the same submission.csv as `make ensemble`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import partial

import pytest
import yaml

from common.config import load_config
from common.submit import kaggle
from common.submit.image_ensemble import ensemble as run_ensemble
from competitions.siim import COMPETITION
from competitions.siim.ensemble import ENSEMBLE
from tests.conftest import REPO
from tests.notebook import run_offline
from tests.siim.tiny import tiny_siim

build = partial(kaggle.build, spec=kaggle.BundleSpec(package="siim", **COMPETITION.bundle))
main = COMPETITION.entry("bundle")

CONFIGS = REPO / "competitions" / "siim" / "configs"


@pytest.fixture(scope="module")
def ensemble(module_tmp):
    root = module_tmp
    synthetic = tiny_siim(root, n_train=30, n_test=6, size=48, n_folds=3)
    data = {"size": 48, "prepared": str(root / "prepared"), "folds": str(root / "folds.csv")}
    data |= {"batch_size": 4, "num_workers": 0}
    experiment = {"base": str(CONFIGS / "base.yaml"), "data": data, "predict": {"overlays": 0}}
    experiment["train"] = {"epochs": 1, "max_steps": 2}
    (root / "configs").mkdir()
    (root / "configs" / "tiny.yaml").write_text(yaml.safe_dump(experiment))
    config = load_config(
        CONFIGS / "ensembles" / "base.yaml",
        [
            "name=tiny",
            f"output={root / 'models'}",
            f"submissions={root / 'submissions'}",
            f"configs={root / 'configs'}",
            f"test_truth={synthetic / 'test-rle.csv'}",
            "train_missing=true",
            "members=[{experiment: tiny, folds: [0, 1], weight: 1.0}]",
            "num_workers=0",
        ],
    )
    run_ensemble(config, ENSEMBLE, log=lambda _: None)
    return root, config


def test_notebook_offline_matches_make_ensemble(ensemble, tmp_path, monkeypatch):
    root, config = ensemble
    monkeypatch.setenv("KAGGLE_API_TOKEN", "secret-token-never-bundled")
    bundle = build(config, tmp_path / "dist", "someone", wheels=False, log=lambda _: None)
    dataset = bundle / "dataset"
    weights = sorted(p.relative_to(dataset).as_posix() for p in (dataset / "models").rglob("*.*"))
    assert weights == [f"models/tiny/fold{k}/final.{ext}" for k in (0, 1) for ext in ("pt", "yaml")]
    assert not any(p.suffix == ".dcm" or p.name == "train.csv" for p in dataset.rglob("*"))
    for path in dataset.rglob("*"):
        if path.is_file() and path.suffix in {".py", ".json", ".yaml"}:
            assert "secret-token-never-bundled" not in path.read_text()
    kernel = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] is False and kernel["enable_gpu"] is True
    assert kernel["competition_sources"] == ["siim-acr-pneumothorax-segmentation"]
    assert kernel["dataset_sources"] == [
        json.loads((dataset / "dataset-metadata.json").read_text())["id"]
    ]

    kaggle = tmp_path / "kaggle"
    shutil.copytree(dataset, kaggle / "input" / "siim-tiny")
    competition = kaggle / "input" / "siim-acr-pneumothorax-segmentation"
    shutil.copytree(root / "synthetic" / "dicom-images-test", competition / "dicom-images-test")
    shutil.copy(root / "synthetic" / "sample_submission.csv", competition)
    written = run_offline(bundle / "kernel" / "inference.ipynb", kaggle, tmp_path)
    assert written == (root / "submissions" / "tiny.csv").read_bytes()


def test_bundle_needs_the_ensemble_run_and_push_needs_credentials(ensemble, tmp_path):
    _, config = ensemble
    missing = config.to_dict() | {"name": "never_run"}
    (tmp_path / "never_run.yaml").write_text(yaml.safe_dump(missing))
    with pytest.raises(SystemExit, match=r"thresholds\.yaml not found: run `make ensemble"):
        main(["build", "--ensemble", str(tmp_path / "never_run.yaml"), "--no-wheels"])
    build(config, tmp_path / "dist", "someone", wheels=False, log=lambda _: None)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config.to_dict()))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "common.cli", "bundle", "--competition", "siim", "push", "--ensemble",
         str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "dist")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    err = result.stderr.strip()
    assert result.returncode == 1 and err.startswith("siim kaggle-bundle: no Kaggle credentials")
    assert "\n" not in err
