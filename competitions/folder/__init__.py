"""Any dataset folder in the documented layout (``common.io.folder``, docs/DATASETS.md), no code:
``python -m common.cli train --dataset FOLDER`` or ``make fold0 DATASET=FOLDER``."""

from pathlib import Path

from common.competition import Competition

COMPETITION = Competition(
    name="folder",
    unit="image",
    source="folder",
    metric="dice",  # or dataset.yaml's metric
    configs=Path(__file__).resolve().parent / "configs",
    default_experiment="auto",
    default_ensemble="default",
    stages={
        "prepare": "competitions.folder.run:prepare",
        "train": "competitions.folder.run:train",
        "evaluate": "competitions.folder.run:evaluate",
        "ensemble": "competitions.folder.run:ensemble",
        "offline": "competitions.folder.offline:predict_submission",
        "bundle": "competitions.folder.run:bundle",
        "leaderboard": "competitions.folder.run:leaderboard",
    },
)
