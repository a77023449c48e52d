"""HuBMAP kidney glomeruli: RGB slides of up to 50,000 px a side, in tiles (third competition).

A slide competition: every stage is common (``common.data.slide_tiles``, ``common.train.
slide_runner``, ``common.post.slide_evaluate``, ``common.submit.slide_ensemble``); this package
states its files (``data.py``: columns and the synthetic slides), configs and Kaggle bundle."""

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
    data="competitions.hubmap.data:SLIDES",
    stages={
        "prepare": "common.train.slide_runner:prepare_main",
        "train": "common.train.slide_runner:train_fold_main",
        "tile-filter": "common.train.slide_runner:tile_filter_main",
        "ensemble": "common.submit.slide_ensemble:main",
        "offline": "common.submit.slide_ensemble:offline",
        "pseudo": "common.submit.slide_pseudo:main",
        "bundle": "common.submit.kaggle:competition_main",
        "leaderboard": "common.submit.leaderboard:main",
    },
    bundle={
        "title": "HuBMAP",
        "input_slug": "hubmap-kidney-segmentation",
        "competition": "hubmap-kidney-segmentation",
        "wheels": {"tifffile": "tifffile", "zarr": "zarr", "imagecodecs": "imagecodecs",
                   "numcodecs": "numcodecs", "donfig": "donfig", "google-crc32c": "google_crc32c"},
    },
)  # fmt: skip
