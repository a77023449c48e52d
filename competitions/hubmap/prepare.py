"""HuBMAP data: the download (or the synthetic set), its slides, and the training tiles.

    data/hubmap/raw/ (or synthetic/)    train/<id>.tiff, test/<id>.tiff, train.csv (id,encoding),
                                        sample_submission.csv (id,predicted)
    data/hubmap/prepared/<window>_<size>/
      images/<tile>.png, masks/<tile>.png   tiles of `window` full-resolution pixels at `size`
      tiles/<id>.csv                    one slide's tiles: id, slide, y, x, kind (grid | object),
                                        tissue, mask_area (full-resolution pixels)
      slides.csv                        id, height, width, tiles, object_tiles, positives, key
      source.json                       where the slides were read from

Grid tiles cover each slide (``data.grid_overlap``); those with less stained tissue than
``data.min_tissue`` are skipped. With ``data.object_tiles`` every glomerulus (a cell of the
RLE's mask pixels) adds a tile centred on it, shifted by up to ``data.jitter`` of a window.
Each slide is one cache entry (``common.io.cache``): re-running redoes only slides whose file,
RLE or tile settings changed. Tiles are read through ``common.io.slides`` one window at a time.

    python -m competitions.hubmap.prepare --config competitions/hubmap/configs/unet_resnet18_cpu.yaml
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from common.config import Config
from common.data.folds import group_folds
from common.data.sources import Source, raw_or_synthetic
from common.data.tiles import object_centres, tissue_fraction, training_windows
from common.io.atomic import write_text_atomic, write_text_if_changed
from common.io.cache import Entry, Table, refresh, source_key
from common.io.images import resize_mask, write_mask, write_png
from common.io.paths import check_id
from common.io.rle import rle_decode_window, rle_runs
from common.io.slides import SlideError, open_slide
from common.train.runner import config_main
from competitions.hubmap.synthetic import SyntheticSpec, generate

VERSION = 1
SLIDES = Table("slides.csv", ("id", "height", "width", "tiles", "object_tiles", "positives"))
TILE_COLUMNS = ["id", "slide", "y", "x", "kind", "tissue", "mask_area"]


def source(raw, synthetic, scale: float = 1.0, log=print) -> Source:
    """``raw`` when it holds the download, else the synthetic set (made at ``scale``)."""
    spec = SyntheticSpec(scale=scale)
    return raw_or_synthetic(
        raw,
        synthetic,
        has_data=lambda root: (root / "train.csv").is_file() or (root / "test").is_dir(),
        expected="train.csv, train/<id>.tiff, test/<id>.tiff (the Kaggle download)",
        generate=lambda root: generate(root, spec),
        describe=f"HuBMAP: 5 train and 2 test slides ({scale:g} x 3,000-15,000 px) in six TIFF layouts,",
        log=log,
    )


def read_train(root: Path) -> pd.DataFrame:
    """train.csv as (id, encoding), each id safe as a file name and with its TIFF present."""
    path = root / "train.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns[:2]) != ["id", "encoding"]:
        raise ValueError(f"{path}: columns {list(table.columns)}, expected id,encoding")
    for row, image_id in enumerate(table["id"], start=2):
        check_id(image_id, f"{path} line {row}")
        if not (root / "train" / f"{image_id}.tiff").is_file():
            raise ValueError(f"{path} line {row}: {root / 'train' / f'{image_id}.tiff'} not found")
    if table["id"].duplicated().any():
        raise ValueError(f"{path}: id {table['id'][table['id'].duplicated()].iloc[0]!r} repeats")
    return table[["id", "encoding"]]


def folder(config: Config) -> Path:
    return Path(config.data.prepared) / f"{config.data.window}_{config.data.size}"


def _settings(config: Config) -> dict:
    d = config.data
    return {"window": d.window, "size": d.size, "grid_overlap": d.grid_overlap,
            "object_tiles": d.object_tiles, "jitter": d.jitter, "min_tissue": d.min_tissue,
            "seed": config.seed}  # fmt: skip


def _work(entry: Entry, out: Path) -> dict:
    path, encoding, s = entry.source
    image_id = entry.id
    try:
        with open_slide(path) as slide:
            shape = slide.shape
            try:
                runs = rle_runs(encoding, shape)
            except ValueError as error:
                raise ValueError(
                    f"train.csv, id {image_id} ({shape[0]}x{shape[1]}): {error}"
                ) from None
            centres = object_centres(runs, shape, s["window"] // 2) if s["object_tiles"] else None
            windows = training_windows(shape, s["window"], overlap=s["grid_overlap"],
                                       centres=centres, jitter=s["jitter"], seed=s["seed"])  # fmt: skip
            rows = []
            for tile, kind in windows:
                image = slide.read(tile.y0, tile.y1, tile.x0, tile.x1, shape=(s["size"],) * 2)
                tissue = tissue_fraction(image)
                if kind == "grid" and tissue < s["min_tissue"]:
                    continue
                full = rle_decode_window(encoding, shape, (tile.y0, tile.y1, tile.x0, tile.x1))
                name = f"{image_id}_{tile.y0}_{tile.x0}_{kind[0]}"
                write_png(out / "images" / f"{name}.png", image)
                write_mask(out / "masks" / f"{name}.png", resize_mask(full, s["size"]))
                rows.append(
                    [name, image_id, tile.y0, tile.x0, kind, round(tissue, 3), int(full.sum())]
                )
    except SlideError as error:
        raise ValueError(str(error)) from None
    tiles = pd.DataFrame(rows, columns=TILE_COLUMNS)
    write_text_atomic(out / entry.files[0], tiles.to_csv(index=False))
    return {"id": image_id, "height": shape[0], "width": shape[1], "tiles": len(tiles),
            "object_tiles": int((tiles["kind"] == "object").sum()),
            "positives": int((tiles["mask_area"] > 0).sum())}  # fmt: skip


def prepare(config: Config, *, n_jobs: int = 2, log=print) -> Path:
    """Bring ``<prepared>/<window>_<size>/`` up to date; returns the folder."""
    d = config.data
    src = source(d.raw, d.synthetic, d.synthetic_scale, log=log)
    train = read_train(src.root)
    out = folder(config)
    settings = _settings(config)
    entries = []
    for image_id, encoding in zip(train["id"], train["encoding"], strict=True):
        tiff = src.root / "train" / f"{image_id}.tiff"
        digest = hashlib.sha1(encoding.encode()).hexdigest()
        key = source_key(VERSION, [tiff], digest, sorted(settings.items()))
        entries.append(Entry(image_id, SLIDES.name, key, (f"tiles/{image_id}.csv",),
                             (str(tiff), encoding, settings)))  # fmt: skip
    result = refresh(out, [SLIDES], entries, _work, n_jobs=n_jobs, chunk=1,
                     desc="hubmap tiles")  # fmt: skip
    stamp = {"root": str(src.root), "synthetic": src.synthetic} | settings
    write_text_if_changed(out / "source.json", json.dumps(stamp) + "\n")
    slides = result.tables[SLIDES.name]
    if result.done:
        log(f"hubmap prepare: {len(slides)} slides from {src.root} -> {out}: {int(slides['tiles'].sum())} "
            f"tiles of {config.data.window} px at {config.data.size} px ({result.done} slides tiled, "
            f"{result.cached} unchanged)")  # fmt: skip
    return out


def read_tiles(config: Config) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """The prepared folder, its slides (with ``fold``, grouped by slide) and every tile (with
    its slide's ``fold`` and ``has_mask``)."""
    out = folder(config)
    if not (out / "slides.csv").is_file():
        raise ValueError(f"{out}/slides.csv not found: run `python -m competitions.hubmap.prepare`")
    slides = pd.read_csv(out / "slides.csv", dtype={"id": str})
    folds = group_folds(
        slides["id"], slides["tiles"].to_numpy(), config.data.n_folds, config.data.fold_seed
    )
    slides["fold"] = slides["id"].map(folds)
    tiles = pd.concat([pd.read_csv(out / "tiles" / f"{i}.csv", dtype={"id": str, "slide": str})
                       for i in slides["id"]], ignore_index=True)  # fmt: skip
    tiles["fold"] = tiles["slide"].map(folds)
    tiles["has_mask"] = (tiles["mask_area"] > 0).astype(int)
    return out, slides, tiles


def main(argv=None) -> None:
    config_main(__doc__, argv, prepare, label="hubmap prepare")


if __name__ == "__main__":
    main()
