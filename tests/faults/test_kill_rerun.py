"""Kill and re-run (slow: ``make test-all``): each stage that writes files is killed (SIGKILL to
its whole process group) at several points spread over its run, then run again; every file it
writes must then be byte for byte what an uninterrupted run wrote. Inputs are made once and kept
(same paths, same times), so the cache keys of both runs agree.

The stages: the prepare of SIIM, lung and a dataset folder, HuBMAP's tiling, and SIIM's
ensemble with its missing members trained first (training, out-of-fold maps, search, test
maps, submission). Training also resumes to the same weights (``tests/siim/test_resume.py``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
FRACTIONS = (0.3, 0.5, 0.7, 0.9)  # of an uninterrupted run's wall time


def _normalised(path: Path, timed: tuple[str, ...]) -> bytes:
    """A file's bytes; for the files named in ``timed`` without what differs between two runs
    by design: the model weights of a checkpoint (not its history of epoch times), a training
    log without its time columns, a JSON report without its wall times."""
    import re

    data = path.read_bytes()
    if path.name not in timed and path.suffix not in timed:
        return data
    if path.suffix == ".pt":
        import torch

        state = torch.load(path, weights_only=True)["model"]
        return b"".join(k.encode() + state[k].numpy().tobytes() for k in sorted(state))
    if path.suffix == ".csv":
        import pandas as pd

        table = pd.read_csv(path).drop(columns=["seconds", "images_per_s"], errors="ignore")
        return table.to_csv(index=False).encode()
    return re.sub(
        rb'("(wall_seconds|seconds|train_seconds|images_per_s)": *)[0-9.e+-]+', rb"\1T", data
    )


def _files(root: Path, timed: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(root)): _normalised(p, timed) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}  # fmt: skip


def _run(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    return time.perf_counter() - start


def kill_and_rerun(
    command: list[str], env: dict, outputs: Path, timed: tuple[str, ...] = ()
) -> dict:
    """Reference run, then for each kill point: clean outputs, start, SIGKILL the process group
    at that share of the reference time, re-run, compare every file. Returns the counts."""
    shutil.rmtree(outputs, ignore_errors=True)
    seconds = _run(command, env)
    reference = _files(outputs, timed)
    assert reference, f"{command} wrote nothing under {outputs}"
    landed = 0
    for fraction in FRACTIONS:
        shutil.rmtree(outputs, ignore_errors=True)
        process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            process.wait(timeout=fraction * seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            landed += 1
        _run(command, env)
        again = _files(outputs, timed)
        extra, missing = sorted(set(again) - set(reference)), sorted(set(reference) - set(again))
        assert not extra and not missing, (
            f"killed at {fraction:.0%}: extra {extra[:5]}, missing {missing[:5]}"
        )
        differ = [name for name in reference if again[name] != reference[name]]
        assert not differ, f"killed at {fraction:.0%}: {differ[:5]} differ"
    counts = {"kill_points": len(FRACTIONS), "killed_mid_run": landed, "files": len(reference),
              "seconds": round(seconds, 1)}  # fmt: skip
    print(f"\nkill and re-run: {' '.join(command[3:6])}: {counts}, every file identical")
    return counts


def _env(workspace: Path) -> dict:
    return {"PATH": os.environ["PATH"], "HOME": str(workspace), "PYTHONPATH": str(REPO),
            "KSEG_WORKSPACE": str(workspace), "NO_ALBUMENTATIONS_UPDATE": "1",
            "HF_HUB_OFFLINE": "1"}  # fmt: skip


CLI = [sys.executable, "-m", "common.cli", "prepare"]


def test_siim_prepare(tmp_path):
    from competitions.siim.synthetic import SyntheticSpec, generate

    synthetic = generate(tmp_path / "synthetic", SyntheticSpec(size=96, n_train=80, n_test=16))
    out = tmp_path / "prepared"
    command = [*CLI, "--competition", "siim", "--config", "competitions/siim/configs/base.yaml",
               "--size", "64", "--raw", str(tmp_path / "raw"), "--synthetic", str(synthetic),
               "--synthetic-size", "96", "--synthetic-train", "80", "--synthetic-test", "16",
               f"data.prepared={out}", f"data.folds={out / 'folds.csv'}"]  # fmt: skip
    kill_and_rerun(command, _env(tmp_path), out)


def test_lung_prepare(tmp_path):
    from competitions.lung.synthetic import SyntheticSpec, generate

    synthetic = tmp_path / "synthetic"
    generate(synthetic, SyntheticSpec())
    out = tmp_path / "prepared"
    command = [*CLI, "--competition", "lung", "--config", "competitions/lung/configs/unet_resnet18_cpu.yaml",
               "data.size=128", "data.score_size=128", f"data.raw={tmp_path / 'raw'}",
               f"data.synthetic={synthetic}", f"data.prepared={out}"]  # fmt: skip
    kill_and_rerun(command, _env(tmp_path), out)


def test_hubmap_tiling(tmp_path):
    from competitions.hubmap.synthetic import SyntheticSpec, generate

    synthetic = generate(tmp_path / "synthetic", SyntheticSpec(scale=0.2))
    out = tmp_path / "prepared"
    command = [*CLI, "--competition", "hubmap", "--config", "competitions/hubmap/configs/unet_resnet18_cpu.yaml",
               "data.window=256", "data.size=64", "data.synthetic_scale=0.2",
               f"data.raw={tmp_path / 'raw'}", f"data.synthetic={synthetic}", f"data.prepared={out}"]  # fmt: skip
    kill_and_rerun(command, _env(tmp_path), out)


def test_dataset_folder_prepare(tmp_path):
    from tests.folder.layouts import write_folder

    folder = write_folder(
        tmp_path / "salt", "csv", n_train=120, n_test=20, classes=1, shape=(96, 96)
    )
    command = [*CLI, "--dataset", str(folder), "plan.throughput=20.0"]
    env = _env(tmp_path)
    kill_and_rerun(command, env, tmp_path / "data")


def test_siim_ensemble_with_training_oof_and_test_prediction(tmp_path):
    """``ensemble`` with ``train_missing``: two member folds trained, their out-of-fold maps, the
    search, the test maps and the submission; killed anywhere, a re-run writes the same files
    (weights, maps, thresholds, CSV and report; the wall times in the JSON files aside). Then the
    same for its pseudo-labels and its Kaggle bundle."""
    import yaml

    from common.config import load_run_config
    from tests.siim.tiny import tiny_siim

    tiny_siim(tmp_path, n_train=24, n_test=6, size=48)
    configs = REPO / "competitions" / "siim" / "configs"
    data = {"size": 48, "prepared": str(tmp_path / "prepared"), "folds": str(tmp_path / "folds.csv"),
            "batch_size": 4, "val_batch_size": 8, "num_workers": 0}  # fmt: skip
    (tmp_path / "configs").mkdir()
    member = {"base": str(configs / "base.yaml"), "data": data, "predict": {"overlays": 0},
              "train": {"epochs": 2, "max_steps": 3}}  # fmt: skip
    (tmp_path / "configs" / "tiny_seg.yaml").write_text(yaml.safe_dump(member))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "common.cli", "ensemble", "--competition", "siim",
               "--config", str(configs / "ensembles" / "base.yaml"), "name=tiny",
               f"output={out / 'models'}", f"submissions={out / 'submissions'}",
               f"configs={tmp_path / 'configs'}", f"test_truth={tmp_path / 'synthetic' / 'test-rle.csv'}",
               "train_missing=true", "members=[{experiment: tiny_seg, folds: [0, 1], weight: 1.0}]",
               "classifiers=[]", "num_workers=0", "overlays=0"]  # fmt: skip
    env = _env(tmp_path)
    timed = (".pt", "metrics.json", "done.json", "tiny.json", "log.csv")
    kill_and_rerun(command, env, out, timed=timed)
    # then its pseudo-labels and its Kaggle bundle, from the trained ensemble
    rules = ["pseudo.positive_above=0.02", "pseudo.negative_below=0.01"]
    found = out / "models" / "tiny" / "thresholds.yaml"  # a 2-epoch search keeps nothing: widen it
    searched = yaml.safe_load(found.read_text())
    found.write_text(yaml.safe_dump(searched | {"top": 0.3, "min_area": 1, "bottom": 0.3}))
    pseudo = [*command[:3], "pseudo", *command[4:], *rules]
    kill_and_rerun(pseudo, env, tmp_path / "data" / "siim" / "pseudo", timed=("provenance.json",))
    ensemble = load_run_config(configs / "ensembles" / "base.yaml", command[8:])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(ensemble.to_dict()))
    bundle = [sys.executable, "-m", "common.cli", "bundle", "--competition", "siim", "build",
              "--ensemble", str(tmp_path / "tiny.yaml"), "--no-wheels", "--out", str(tmp_path / "dist")]  # fmt: skip
    kill_and_rerun(bundle, env, tmp_path / "dist")
