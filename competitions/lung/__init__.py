"""Chest X-ray anatomy on JSRT images with SCR masks (second competition)."""

from pathlib import Path

from common.competition import Competition

COMPETITION = Competition(
    name="lung",
    unit="image",
    source="download",  # data/lung/raw/, else the embedded synthetic set
    metric="jaccard",  # the SCR benchmark's (Dice reported beside it)
    configs=Path(__file__).resolve().parent / "configs",
    default_experiment="clavicles_refine",
    default_ensemble="default",
    channels=("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle"),
    tta=("none", "hflip"),  # hflip with left and right swapped back
    stages={
        "prepare": "competitions.lung.prepare:main",
        "train": "common.train.channel_runner:main",
        "evaluate": "common.post.channel_evaluate:main",
        "ensemble": "common.submit.image_ensemble:main",
        "offline": "common.submit.image_ensemble:offline",
        "bundle": "common.submit.kaggle:competition_main",
        "leaderboard": "common.submit.leaderboard:main",
    },
    data="competitions.lung.evaluate:CASES",
    ensemble="competitions.lung.ensemble:ENSEMBLE",
    bundle={"title": "Lung", "input_slug": "jsrt-scr-chest-xrays"},  # a Kaggle dataset, JSRT layout
)
