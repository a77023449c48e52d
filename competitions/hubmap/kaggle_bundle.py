"""Freeze a HuBMAP ensemble for a Kaggle notebook that runs with the internet off
(``common.submit.kaggle``); the notebook reads the competition's test slides.

    python -m competitions.hubmap.kaggle_bundle build --ensemble competitions/hubmap/configs/ensembles/default.yaml
"""

from __future__ import annotations

from functools import partial

from common.submit import kaggle

COMPETITION = "hubmap-kidney-segmentation"

SPEC = kaggle.BundleSpec(
    package="hubmap",
    title="HuBMAP",
    input_slug=COMPETITION,
    competition=COMPETITION,
    wheels={
        "tifffile": "tifffile",
        "zarr": "zarr",
        "imagecodecs": "imagecodecs",
        "numcodecs": "numcodecs",
        "donfig": "donfig",
        "google-crc32c": "google_crc32c",
    },
)

build = partial(kaggle.build, spec=SPEC)
main = partial(kaggle.main, SPEC)

if __name__ == "__main__":
    main()
