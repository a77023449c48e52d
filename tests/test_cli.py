"""The competition descriptors and the one command line: every stage of every competition
resolves to a function, errors list what is valid, a run's config is read without its weights."""

from __future__ import annotations

import importlib

import pytest
import yaml

from common.cli import main
from common.competition import STAGES, Competition, load_competition
from tests.conftest import REPO

NAMES = sorted(p.parent.name for p in (REPO / "competitions").glob("*/__init__.py"))


def test_every_competition_exports_a_descriptor_whose_stages_resolve():
    assert NAMES == ["folder", "hubmap", "lung", "siim"]
    for name in NAMES:
        competition = load_competition(name)
        assert competition.name == name and competition.unit in ("image", "slide")
        assert (competition.configs / f"{competition.default_experiment}.yaml").is_file()
        ensembles = competition.configs / "ensembles" / f"{competition.default_ensemble}.yaml"
        assert ensembles.is_file(), ensembles
        for stage, entry in competition.stages.items():
            module, function = entry.split(":")
            assert callable(getattr(importlib.import_module(module), function)), (name, stage)
    assert load_competition("hubmap").unit == "slide"


def test_errors_list_what_is_valid(capsys):
    with pytest.raises(ValueError, match=r"competition 'kaggle' is unknown; valid: folder, hubmap"):
        load_competition("kaggle")
    with pytest.raises(
        ValueError, match=r"siim has no stage 'evaluate'; its stages: prepare, train"
    ):
        load_competition("siim").run("evaluate", [])
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['deploy'\]"):
        Competition("x", "image", "folder", "dice", REPO, "a", "b", {"deploy": "m:f"})
    with pytest.raises(SystemExit, match=r"stage 'fit' is unknown; valid: prepare, train"):
        main(["fit", "--competition", "siim"])
    with pytest.raises(SystemExit, match="say --competition NAME or --dataset FOLDER"):
        main(["train"])
    main(["list"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in NAMES) and "slide" in listed
    assert set(STAGES) >= {"prepare", "train", "ensemble", "bundle", "leaderboard"}


def test_final_config_is_read_without_the_weights(tmp_path):
    from common.infer.predict import final_config
    from common.train.checkpoints import save_checkpoint

    fold = tmp_path / "run" / "fold0"
    fold.mkdir(parents=True)
    save_checkpoint(fold / "final.pt", {"model": {}, "config": {"data": {"size": 64}}})
    assert final_config(tmp_path, "run", 0).data.size == 64  # an older run: from the checkpoint
    (fold / "final.yaml").write_text(yaml.safe_dump({"data": {"size": 96}}))
    (fold / "final.pt").write_bytes(b"not even a checkpoint")  # never opened now
    assert final_config(tmp_path, "run", 0).data.size == 96
    with pytest.raises(ValueError, match=r"other/fold0/final\.pt not found"):
        final_config(tmp_path, "other", 0)
