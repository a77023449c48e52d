"""HuBMAP kidney glomeruli: RGB slides of up to 50,000 px a side, in tiles (third competition)."""

from pathlib import Path

from common.competition import Competition

COMPETITION = Competition(
    name="hubmap",
    unit="slide",
    source="download",  # data/hubmap/raw/, else seven synthetic slides
    metric="dice",
    configs=Path(__file__).resolve().parent / "configs",
    default_experiment="unet_resnet18_cpu",
    default_ensemble="default",
    channels=("mask",),
    tta=("none", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose"),
    stages={
        "prepare": "competitions.hubmap.prepare:main",
        "train": "competitions.hubmap.train:main",
        "ensemble": "competitions.hubmap.ensemble:main",
        "offline": "competitions.hubmap.offline:predict_submission",
        "bundle": "competitions.hubmap.kaggle_bundle:main",
        "leaderboard": "common.submit.leaderboard:main",
    },
)
