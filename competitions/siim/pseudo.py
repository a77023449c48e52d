"""Pseudo-labels for SIIM (3rd and 5th place) from an ensemble (``common.submit.pseudo``).

    python -m competitions.siim.pseudo --config competitions/siim/configs/ensembles/default.yaml \
        [pseudo.images=FOLDER] [pseudo.positive_above=0.9 ...]

Labels the competition's test images (or every PNG of ``pseudo.images``, e.g. NIH ChestX-ray14)
with the ensemble's fold models and its searched triplet, leaves out unsure images and any that
is a training image or a near duplicate of one, and writes ``data/siim/pseudo/<ensemble>/``:
``<size>/images/``, ``<size>/masks/``, ``<size>/train.csv`` and ``provenance.json`` (outside images
are first resized into ``data/siim/pseudo/<ensemble>.source/``). Train with
``data.pseudo.folder=data/siim/pseudo/<ensemble>`` (``configs/pseudo.yaml``): the set joins every
fold's training images, never its validation.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from common.config import Config
from common.io.images import read_png, resize_image, write_png
from common.io.paths import check_id, data_dir
from common.submit.pseudo import build_pseudo
from common.train.runner import config_main
from competitions.siim.ensemble import crop_members, ensure_crops, tables, task


def pseudo_folder(config: Config) -> Path:
    return data_dir("siim", "pseudo", config.name)


def _stage_folder(folder: Path, size: int, staging: Path):
    """Every PNG of ``folder`` at ``size`` under ``staging/<size>/images`` (ids: file stems)."""
    files = sorted(folder.glob("*.png"))
    if not files:
        raise ValueError(f"pseudo.images {folder}: no PNG images")
    ids = []
    for path in files:
        image_id = check_id(path.stem, str(path))
        write_png(
            staging / str(size) / "images" / f"{image_id}.png", resize_image(read_png(path), size)
        )
        ids.append(image_id)
    return pd.DataFrame({"id": ids, "height": size, "width": size})


def make_pseudo(config: Config, *, log=print) -> dict:
    root, train, _, data = tables(config)
    source = task(config, None, with_train=False)
    out = pseudo_folder(config)
    where = "the competition's test set"
    if config.pseudo.images and crop_members(config):
        raise ValueError("pseudo.images with members trained on crops: label the test set instead")
    ensure_crops(config, log)
    if config.pseudo.images:
        staging = data_dir("siim", "pseudo", f"{config.name}.source")  # the images at the size
        source = replace(source, test=_stage_folder(Path(config.pseudo.images), data.size, staging),
                         prepared=str(staging))  # fmt: skip
        where = str(config.pseudo.images)
    return build_pseudo(config, source, train_images=root / "images",
                        train_ids=set(train["ImageId"]), out=out, source=where, log=log)  # fmt: skip


def main(argv=None) -> None:
    config_main(__doc__, argv, make_pseudo, label="siim pseudo", what="ensemble YAML")


if __name__ == "__main__":
    main()
