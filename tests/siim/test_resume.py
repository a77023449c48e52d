"""Resume after SIGKILL: a real training process is killed mid-run, resumed with --resume, and
must end with the same top-k list and final weights as an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from tests.conftest import REPO
from tests.siim.tiny import tiny_siim

BASE = REPO / "competitions" / "siim" / "configs" / "base.yaml"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim_resume")
    tiny_siim(root, n_train=40, n_test=2)
    return root


def _command(workspace, output, *extra):
    return [
        sys.executable, "-m", "common.cli", "train", "--competition", "siim", "--config", str(BASE), "--folds", "0",
        f"data.prepared={workspace / 'prepared'}", f"data.folds={workspace / 'folds.csv'}",
        f"output={output}", "name=run", "data.size=64", "data.batch_size=4",
        "data.num_workers=0", "train.epochs=5", "train.top_k=2", "train.ema=0.9",
        "predict.overlays=0", "data.sample_rate.kind=linear", *extra,
    ]  # fmt: skip


def _env():
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_killed_run_resumes_to_the_same_result(workspace, tmp_path):
    reference = subprocess.run(
        _command(workspace, tmp_path / "reference"), cwd=REPO, env=_env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr

    killed_dir = tmp_path / "killed"
    log = killed_dir / "run" / "fold0" / "log.csv"
    process = subprocess.Popen(
        _command(workspace, killed_dir), cwd=REPO, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:  # header + epochs 0 and 1
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "run" / "fold0" / "final.pt").exists()

    resumed = subprocess.run(
        [*_command(workspace, killed_dir), "--resume"], cwd=REPO, env=_env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout

    expected = torch.load(tmp_path / "reference" / "run" / "fold0" / "final.pt", weights_only=True)
    got = torch.load(killed_dir / "run" / "fold0" / "final.pt", weights_only=True)
    assert got["averaged_epochs"] == expected["averaged_epochs"]
    for key, value in expected["model"].items():
        assert torch.equal(got["model"][key], value), key
    log_expected = pd.read_csv(tmp_path / "reference" / "run" / "fold0" / "log.csv")
    log_got = pd.read_csv(log)
    pd.testing.assert_frame_equal(
        log_got.drop(columns=["seconds", "images_per_s"]),
        log_expected.drop(columns=["seconds", "images_per_s"]),
    )
    kept = sorted(p.name for p in (killed_dir / "run" / "fold0" / "checkpoints").iterdir())
    assert kept == sorted(f"epoch{e:03d}.pt" for e in expected["averaged_epochs"])
