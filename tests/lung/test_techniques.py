"""The ablation driver: one fresh `lung-folds` process per variant with its overrides (refine on
its own config and the baseline's boxes), finished variants not rerun, the table's changes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from experiments import lung_techniques as techniques

CONFIG = Path(__file__).resolve().parents[2] / "competitions" / "lung" / "configs"


def test_variants_run_once_each_and_make_the_table(tmp_path, monkeypatch, capsys):
    commands = []

    def fake_run(command):
        commands.append(command)
        name = next(a for a in command if a.startswith("name=")).split("=", 1)[1]
        shift = 0.01 if name.endswith("refine") else 0.0
        groups = {g: {"jaccard": 0.8 + shift, "dice": 0.9} for g in techniques.GROUPS}
        report = {"cv": 0.8 + shift, "groups": groups}
        (tmp_path / "subs" / f"{name}.json").write_text(json.dumps(report))
        return subprocess.CompletedProcess(command, 0)

    (tmp_path / "subs").mkdir()
    monkeypatch.setattr(techniques.subprocess, "run", fake_run)
    args = ["--config", str(CONFIG / "unet_resnet18_cpu.yaml"), "--prefix", "t",
            "--variants", "baseline,refine,clahe,boundary", f"submissions={tmp_path / 'subs'}",
            f"output={tmp_path / 'models'}", "train.epochs=2"]  # fmt: skip
    techniques.main(args)
    assert len(commands) == 4 and all("train.epochs=2" in c for c in commands)
    refine = commands[1]
    assert refine[refine.index("--config") + 1].endswith("clavicles_refine.yaml")
    assert "data.crop_stage.run=models/lung/t_baseline" in refine
    assert "data.preprocess.name=clahe" in commands[2]
    assert any(a.startswith("loss.terms=[{name: bce") and "boundary" in a for a in commands[3])
    table = (tmp_path / "models" / "t_techniques.md").read_text()
    assert "| refine | 0.8100 | 0.8100 | 0.8100 | 0.8100 | +0.0100 | 0.9000 | ? |" in table
    summary = json.loads((tmp_path / "models" / "t_techniques.json").read_text())
    assert summary["clahe"]["jaccard"]["heart"] == 0.8
    techniques.main(args)  # every variant is done: nothing runs again
    assert len(commands) == 4
    capsys.readouterr()


def test_unknown_variant_and_failed_run(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="unknown variant"):
        techniques.main(["--config", str(CONFIG / "base.yaml"), "--prefix", "t", "--variants", "x"])
    monkeypatch.setattr(techniques.subprocess, "run", lambda c: subprocess.CompletedProcess(c, 1))
    with pytest.raises(SystemExit, match="variant t_baseline failed"):
        techniques.main(["--config", str(CONFIG / "base.yaml"), "--prefix", "t",
                         "--variants", "baseline", f"submissions={tmp_path}"])  # fmt: skip
