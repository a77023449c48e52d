"""Kill and re-run (slow: ``make test-all``): each stage that writes files is killed (SIGKILL to
its whole process group) at several points spread over its run, then run again; every file it
writes must then be byte for byte what an uninterrupted run wrote. Inputs are made once and kept
(same paths, same times), so the cache keys of both runs agree.

The stages: the prepare of SIIM, lung and a dataset folder, and HuBMAP's tiling. Training
resumes to the same weights (``tests/siim/test_resume.py``); the ensemble's CSV is written
atomically after its maps (``tests/siim/test_ensemble.py``)."""

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


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}  # fmt: skip


def _run(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    return time.perf_counter() - start


def kill_and_rerun(command: list[str], env: dict, outputs: Path) -> dict:
    """Reference run, then for each kill point: clean outputs, start, SIGKILL the process group
    at that share of the reference time, re-run, compare every file. Returns the counts."""
    shutil.rmtree(outputs, ignore_errors=True)
    seconds = _run(command, env)
    reference = _files(outputs)
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
        again = _files(outputs)
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
