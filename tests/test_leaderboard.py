"""The experiment dashboard: runs in every state, ensembles, submissions and public scores; a fold
whose training raises is recorded as crashed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from common.config import load_config
from common.submit import leaderboard
from common.train.runner import ERROR, train_fold, write_fold_score
from tests.conftest import REPO

BASE = REPO / "competitions" / "siim" / "configs" / "base.yaml"


def _fold(run, fold, config, *, score=None, trained=False, epochs=3, error=None):
    folder = run / f"fold{fold}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    pd.DataFrame({"epoch": range(1, epochs + 1)}).to_csv(folder / "log.csv", index=False)
    if trained or score is not None:
        (folder / "final.pt").write_bytes(b"weights")
        (folder / "metrics.json").write_text(json.dumps({"epochs_run": epochs, "wall_seconds": 60}))
    if score is not None:
        write_fold_score(folder, metric="OOF Dice", score=score, thresholds={"top": 0.6})
    if error:
        (folder / ERROR).write_text(json.dumps({"error": error}))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("KSEG_WORKSPACE", str(tmp_path))
    base = load_config(BASE).to_dict()
    changed = json.loads(json.dumps(base))
    changed["model"]["encoder"] = "resnet34"
    changed["optim"]["lr"] = 0.0005
    models = tmp_path / "models" / "siim"
    for fold, score in enumerate((0.80, 0.84, 0.82)):
        _fold(models / "resnet34", fold, changed, score=score)
    _fold(models / "baseline", 0, base, score=0.86)
    _fold(models / "baseline", 1, base, trained=True)
    _fold(models / "broken", 0, changed, epochs=1, error="RuntimeError: CUDA out of memory")
    _fold(models / "killed", 0, base, epochs=2)
    (models / "blend").mkdir()
    (models / "blend" / "thresholds.yaml").write_text(
        yaml.safe_dump({"oof_dice": 0.85, "top": 0.5})
    )
    subs = tmp_path / "submissions" / "siim"
    subs.mkdir(parents=True)
    (subs / "blend.csv").write_text("ImageId,EncodedPixels\na,-1\nb,1 2\nc, 5 3\nd,-1\n")
    (subs / "blend.json").write_text(json.dumps({"oof_dice": 0.85}))
    (subs / "old.csv").write_text("ImageId,EncodedPixels\na,1 2\n")
    return tmp_path


def test_every_run_and_submission_in_one_table(workspace):
    runs, subs, path = leaderboard.write_leaderboard("siim")
    assert list(runs["experiment"]) == ["baseline", "blend", "resnet34", "broken", "killed"]
    row = runs.set_index("experiment")
    assert row.loc["resnet34", "cv"] == pytest.approx(0.82)
    assert row.loc["resnet34", "spread"] == pytest.approx(np.std([0.80, 0.84, 0.82], ddof=1))
    assert row.loc["resnet34", "status"] == "done" and row.loc["resnet34", "epochs"] == "3,3,3"
    assert row.loc["resnet34", "wall_minutes"] == pytest.approx(3.0)
    assert row.loc["resnet34", "changes"] == "model.encoder=resnet34, optim.lr=0.0005"
    assert row.loc["resnet34", "thresholds"].startswith("0: top 0.6")
    assert row.loc["baseline", "changes"] == "" and np.isnan(row.loc["baseline", "spread"])
    assert row.loc["baseline", "status"] == "fold 1 trained"  # final.pt, not scored yet
    assert row.loc["broken", "status"] == "fold 0 crashed (RuntimeError: CUDA out of memory)"
    assert row.loc["killed", "status"] == "fold 0 unfinished" and row.loc["killed", "epochs"] == "2"
    assert row.loc["blend", "kind"] == "ensemble" and row.loc["blend", "cv"] == 0.85
    assert list(subs["submission"]) == ["blend", "old"]
    blend = subs.set_index("submission").loc["blend"]
    assert (blend["rows"], blend["predicted_positive"], blend["cv"]) == (4, 2, 0.85)
    assert subs.set_index("submission").loc["old", "note"] == "no provenance .json"
    text = path.read_text()
    assert "| resnet34 | run | done | 0.82 | 0.02 |" in text and "## Submissions" in text
    models = workspace / "models" / "siim"
    assert (models / "leaderboard.png").stat().st_size > 0
    assert pd.read_csv(models / "leaderboard.csv")["experiment"].tolist() == list(
        runs["experiment"]
    )


def test_public_scores_recorded_and_refused(workspace, capsys):
    leaderboard.main(["--competition", "siim", "--record", "blend=0.8612"])
    assert "-> " in capsys.readouterr().out
    leaderboard.main(["--competition", "siim", "--record", "blend=0.8700", "old=0.81"])
    _, subs, _ = leaderboard.write_leaderboard("siim")
    public = subs.set_index("submission")["public"]
    assert public["blend"] == 0.87 and public["old"] == 0.81
    with pytest.raises(SystemExit, match=r"nothing recorded: 'blend': expected NAME=SCORE"):
        leaderboard.main(["--competition", "siim", "--record", "blend"])
    with pytest.raises(SystemExit, match="need --competition"):
        leaderboard.main(["--record", "blend=1"])
    (workspace / "submissions" / "siim" / "public_scores.csv").write_text("name,score\nx,1\n")
    with pytest.raises(SystemExit, match=r"public_scores\.csv: missing column\(s\) public_score"):
        leaderboard.main(["--competition", "siim"])


def test_a_fold_that_raises_is_recorded_and_cleared(tmp_path):
    config = load_config(BASE, [f"output={tmp_path}", "name=x"])

    def loaders(*_):
        raise RuntimeError("no images\nsecond line")

    folder = tmp_path / "x" / "fold0"
    with pytest.raises(RuntimeError):  # before the run wrote anything: no run, no folder
        train_fold(config, 0, folder, loaders, log=lambda _: None)
    assert not folder.exists()
    folder.mkdir(parents=True)  # a run under way (or resumed) that fails
    with pytest.raises(RuntimeError):
        train_fold(config, 0, folder, loaders, log=lambda _: None)
    assert json.loads((folder / ERROR).read_text()) == {"error": "RuntimeError: no images"}
    assert leaderboard.read_fold(folder).status == "crashed"

    def loaders_later(*_):
        assert not (folder / ERROR).exists()  # cleared when the fold starts again
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(config, 0, folder, loaders_later, log=lambda _: None)
    assert json.loads((folder / ERROR).read_text())["error"] == "KeyboardInterrupt:"


def test_corrupt_files_are_named_in_their_row(workspace):
    models = workspace / "models" / "siim"
    (models / "resnet34" / "fold1" / "metrics.json").write_text("{not json")
    (models / "killed" / "fold0" / "config.yaml").write_text("a: [unclosed")
    (models / "blend" / "thresholds.yaml").write_text("- a list\n")
    (workspace / "submissions" / "siim" / "blend.json").write_text("{")
    runs, subs, _ = leaderboard.write_leaderboard("siim")
    row = runs.set_index("experiment")
    assert row.loc["resnet34", "status"].startswith("fold 1 unreadable (metrics.json unreadable: ")
    assert row.loc["resnet34", "cv"] == pytest.approx(0.81)  # the readable folds still count
    assert row.loc["killed", "changes"].startswith("config.yaml unreadable: ")
    assert row.loc["blend", "status"] == "thresholds.yaml unreadable: not a mapping"
    assert subs.set_index("submission").loc["blend", "note"].startswith("blend.json unreadable: ")
