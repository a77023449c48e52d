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
        "train": "common.post.image_oof:main",  # the out-of-fold search follows each fold
        "ensemble": "common.submit.image_ensemble:main",
        "offline": "common.submit.image_ensemble:offline",
        "bundle": "common.submit.kaggle:competition_main",
        "submit": "common.submit.kaggle:submit_main",
        "validate": "competitions.siim.submission:validate_found",
        "pseudo": "common.submit.image_ensemble:pseudo_main",
        "leaderboard": "common.submit.leaderboard:main",
    },
    data="competitions.siim.loaders:FRAMES",
    ensemble="competitions.siim.ensemble:ENSEMBLE",
    bundle={
        "title": "SIIM",
        "input_slug": "siim-acr-pneumothorax-segmentation",
        "competition": "siim-acr-pneumothorax-segmentation",
        "wheels": {"pydicom": "pydicom", "pylibjpeg": "pylibjpeg", "pylibjpeg-libjpeg": "libjpeg",
                   "pylibjpeg-openjpeg": "openjpeg", "pylibjpeg-rle": "rle"},  # DICOM and decoders
    },
)  # fmt: skip
