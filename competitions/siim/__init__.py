"""SIIM-ACR Pneumothorax Segmentation: 1024x1024 chest X-ray DICOMs, relative RLE, mean Dice."""

from pathlib import Path

from common.competition import Competition

COMPETITION = Competition(
    name="siim",
    unit="image",
    source="download",  # data/siim/raw/, else the embedded synthetic set
    metric="dice",
    configs=Path(__file__).resolve().parent / "configs",
    default_experiment="unet_resnet18_cpu",
    default_ensemble="default",
    channels=("mask",),
    stages={
        "prepare": "competitions.siim.prepare:main",
        "train": "competitions.siim.train:main",  # the out-of-fold search follows each fold
        "ensemble": "competitions.siim.ensemble:main",
        "offline": "competitions.siim.offline:predict_submission",
        "bundle": "competitions.siim.kaggle_bundle:main",
        "submit": "competitions.siim.submit:main",
        "pseudo": "competitions.siim.pseudo:main",
        "leaderboard": "common.submit.leaderboard:main",
    },
)
