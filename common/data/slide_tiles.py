"""A slide competition's data: huge TIFFs with one RLE per slide, cut into training tiles.

    <raw> (or <synthetic>)              train/<id>.tiff, test/<id>.tiff, train.csv (id,<rle>),
                                        sample_submission.csv (id,<prediction column>)
    <prepared>/<window>_<size>/
      images/<tile>.png, masks/<tile>.png   tiles of `window` full-resolution pixels at `size`
      tiles/<id>.csv                    one slide's tiles: id, slide, y, x, kind (grid | object),
                                        tissue, mask_area (full-resolution pixels)
      slides.csv                        id, height, width, tiles, object_tiles, positives, key
      source.json                       where the slides were read from

Grid tiles cover each slide (``data.grid_overlap``); those with less stained tissue than
``data.min_tissue`` are skipped. With ``data.object_tiles`` every object (a cell of the RLE's
mask pixels) adds a tile centred on it, shifted by up to ``data.jitter`` of a window. Each slide
is one cache entry (``common.io.cache``): re-running redoes only slides whose file, RLE or tile
settings changed. Tiles are read through ``common.io.slides`` one window at a time. Folds are
grouped by slide (``data.n_folds``, ``data.fold_seed``). With ``data.extra_annotations`` (a
folder of ``<id>.json`` GeoJSON in full-resolution pixels, as QuPath writes them), each slide's
extra polygons are drawn by pixel centres (``common.io.polygons``) and OR-ed into its training
masks, and each adds an object tile; the files are part of the cache key. ``data.extra_use``
says where they count: ``both`` (the default: training masks and the out-of-fold truth, since
the organisers' test masks hold the glomeruli their train masks missed), ``train`` or ``score``
(the truth only: a run without them scored against the same corrected truth).

What differs between slide competitions is a ``SlideSet``: the column names and the embedded
synthetic set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, DataLoader

from common.config import Config
from common.data.folds import group_folds
from common.data.datasets import WithExtraSampler
from common.data.frames import pseudo_items
from common.data.loaders import Extra, Items, dataset, eval_loader, load_pipeline, loader_args
from common.data.loaders import make_loaders as common_loaders
from common.data.slide_windows import (
    SAMPLING,
    EpochWindowSampler,
    SlideSource,
    SlideWindowDataset,
    object_table,
)
from common.data.sources import Source, raw_or_synthetic
from common.data.tiles import object_centres, tissue_fraction, training_windows
from common.io.atomic import write_text_atomic, write_text_if_changed
from common.io.cache import Entry, Table, refresh, source_key
from common.io.images import resize_mask, write_mask, write_png
from common.io.paths import check_id
from common.io.polygons import bounds, check_inside, rasterize, read_geojson
from common.io.rle import rle_decode_window, rle_runs
from common.io.slides import SlideError, open_slide
from common.post.tile_filter import FILE as FILTER_FILE
from common.post.tile_filter import kept_items
from common.train import distributed

VERSION = 4  # 2: object tiles numbered (two clipped to one corner no longer share a name), extras;
# 3: objects/<id>.csv (each object's centre and area, for data.sampling: epoch); 4: a pyramid
# slide's tiles come from its level at the tile's scale (common.io.slides)
SLIDES = Table("slides.csv", ("id", "height", "width", "tiles", "object_tiles", "positives",
                              "extra_objects"))  # fmt: skip
TILE_COLUMNS = ["id", "slide", "y", "x", "kind", "tissue", "mask_area"]
TRANSFORMS = Path(__file__).resolve().parents[1] / "configs" / "transforms"


@dataclass(frozen=True)
class SlideSet:
    """What a slide competition's files look like: the RLE column of ``train.csv``, the
    prediction column of the submission, the slides' extension, and its synthetic set
    (``generate(folder, data)``: the data section's ``synthetic_*`` keys, described in one line
    for the banner)."""

    truth_column: str = "encoding"
    prediction_column: str = "predicted"
    extension: str = ".tiff"
    generate: Callable[[Path, Config], object] | None = None  # (folder, the data section)
    describe: str = "synthetic slides"
    patients: str = "HuBMAP-20-dataset_information.csv"  # image_file, patient_number (optional)

    @property
    def header(self) -> tuple[str, str]:
        return ("id", self.prediction_column)

    def slide(self, root: Path, split: str, image_id: str) -> Path:
        return root / split / f"{image_id}{self.extension}"


DEFAULT_SLIDES = SlideSet()  # HuBMAP's names, the form Kaggle's slide competitions use


def source(slides: SlideSet, data: Config, log=print) -> Source:
    """``data.raw`` when it holds the download, else the synthetic set (at ``synthetic_scale``)."""
    scale = float(data.get("synthetic_scale", 1.0))
    if slides.generate is None:
        raise ValueError(f"{data.raw}: no slides there and no synthetic set for this competition")
    return raw_or_synthetic(
        data.raw,
        data.synthetic,
        has_data=lambda root: (root / "train.csv").is_file() or (root / "test").is_dir(),
        expected=f"train.csv, train/<id>{slides.extension}, test/<id>{slides.extension}",
        generate=lambda root: slides.generate(root, data),
        describe=f"{slides.describe} ({scale:g} x scale),",
        log=log,
    )


def read_train(root: Path, slides: SlideSet = DEFAULT_SLIDES) -> pd.DataFrame:
    """train.csv as (id, encoding), each id safe as a file name and with its slide present."""
    path = root / "train.csv"
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:  # pandas' parser and UTF-8 errors are ValueErrors
        raise ValueError(f"{path}: cannot read ({str(error).splitlines()[0]})") from None
    if list(table.columns[:2]) != ["id", slides.truth_column]:
        raise ValueError(
            f"{path}: columns {list(table.columns)}, expected id,{slides.truth_column}"
        )
    for row, image_id in enumerate(table["id"], start=2):
        check_id(image_id, f"{path} line {row}")
        if not slides.slide(root, "train", image_id).is_file():
            raise ValueError(
                f"{path} line {row}: {slides.slide(root, 'train', image_id)} not found"
            )
    if table["id"].duplicated().any():
        raise ValueError(f"{path}: id {table['id'][table['id'].duplicated()].iloc[0]!r} repeats")
    return table[["id", slides.truth_column]].set_axis(["id", "encoding"], axis=1)


def folder(config: Config) -> Path:
    return Path(config.data.prepared) / f"{config.data.window}_{config.data.size}"


def source_root(config: Config) -> Path:
    """Where the prepared tiles' slides were read from (raw or synthetic)."""
    return Path(json.loads((folder(config) / "source.json").read_text())["root"])


EXTRA_USES = ("both", "train", "score")


def extra_folder(data: Config, use: str) -> Path | None:
    """``data.extra_annotations`` when it counts for ``use`` (``train`` masks or the ``score``'s
    truth) under ``data.extra_use``, else None; a folder that is not there is refused."""
    folder, where = str(data.get("extra_annotations") or ""), str(data.get("extra_use", "both"))
    if where not in EXTRA_USES:
        raise ValueError(f"data.extra_use = {where!r}: expected one of {', '.join(EXTRA_USES)}")
    if not folder or where not in ("both", use):
        return None
    if not Path(folder).is_dir():
        raise ValueError(f"data.extra_annotations: {folder} is not a folder")
    return Path(folder)


def extra_file(data: Config, use: str, image_id: str) -> Path | None:
    """One slide's extra annotations for ``use`` (None when off or the slide has none)."""
    folder = extra_folder(data, use)
    path = folder / f"{image_id}.json" if folder is not None else None
    return path if path is not None and path.is_file() else None


def _check_sizes(data: Config) -> None:
    for key in ("window", "size"):
        if int(data[key]) <= 0:
            raise ValueError(f"data.{key} = {data[key]}: must be a positive number of pixels")


def _settings(config: Config) -> dict:
    d = config.data
    _check_sizes(d)
    return {"window": d.window, "size": d.size, "grid_overlap": d.grid_overlap,
            "object_tiles": d.object_tiles, "jitter": d.jitter, "min_tissue": d.min_tissue,
            "seed": config.seed, "extra_annotations": str(extra_folder(d, "train") or "")}  # fmt: skip


def extra_polygons(path: str | Path | None, shape: tuple[int, int]) -> list:
    """The extra annotations of one slide (none without a file), checked to lie on it."""
    if not path:
        return []
    polygons = read_geojson(path, log=lambda _: None)  # lines and points enclose nothing
    check_inside(polygons, shape, str(path))
    return polygons


def _work(entry: Entry, out: Path) -> dict:
    path, encoding, s, extra = entry.source
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
            polygons = extra_polygons(extra, shape)
            centres = object_centres(runs, shape, s["window"] // 2) if s["object_tiles"] else None
            if centres is not None and polygons:  # one more object tile per extra polygon
                middle = [((b + t) / 2, (r + left) / 2) for t, b, left, r in map(bounds, polygons)]
                centres = np.concatenate([centres, np.rint(middle).astype(np.int64)])
            windows = training_windows(shape, s["window"], overlap=s["grid_overlap"],
                                       centres=centres, jitter=s["jitter"], seed=s["seed"])  # fmt: skip
            rows = []
            for number, (tile, kind) in enumerate(windows):
                image = slide.read(tile.y0, tile.y1, tile.x0, tile.x1, shape=(s["size"],) * 2)
                tissue = tissue_fraction(image)
                if kind == "grid" and tissue < s["min_tissue"]:
                    continue
                box = (tile.y0, tile.y1, tile.x0, tile.x1)
                full = rle_decode_window(encoding, shape, box)
                if polygons:
                    full |= rasterize(polygons, shape, box)
                name = f"{image_id}_{tile.y0}_{tile.x0}_" + (
                    "g" if kind == "grid" else f"o{number}"
                )
                write_png(out / "images" / f"{name}.png", image)
                write_mask(out / "masks" / f"{name}.png", resize_mask(full, s["size"]))
                rows.append(
                    [name, image_id, tile.y0, tile.x0, kind, round(tissue, 3), int(full.sum())]
                )
    except SlideError as error:
        raise ValueError(str(error)) from None
    tiles = pd.DataFrame(rows, columns=TILE_COLUMNS)
    write_text_atomic(out / entry.files[0], tiles.to_csv(index=False))
    objects = object_table(encoding, shape, polygons)
    write_text_atomic(out / entry.files[1], objects.to_csv(index=False))
    return {"id": image_id, "height": shape[0], "width": shape[1], "tiles": len(tiles),
            "object_tiles": int((tiles["kind"] == "object").sum()),
            "positives": int((tiles["mask_area"] > 0).sum()), "extra_objects": len(polygons)}  # fmt: skip


def prepare(config: Config, slides: SlideSet, *, n_jobs: int = 2, skip_bad: bool = False,
            log=print) -> Path:  # fmt: skip
    """Bring ``<prepared>/<window>_<size>/`` up to date; returns the folder. A slide that
    cannot be read stops it (every one named), or with ``skip_bad`` is left out; a slide without
    a ``train.csv`` row is named and left out, its old tiles with it."""
    _check_sizes(config.data)  # before anything is written
    src = source(slides, config.data, log=log)
    settings = _settings(config)  # after the source: extras may live in the synthetic set
    train = read_train(src.root, slides)
    out = folder(config)
    entries = []
    for image_id, encoding in zip(train["id"], train["encoding"], strict=True):
        tiff = slides.slide(src.root, "train", image_id)
        extra = extra_file(config.data, "train", image_id)
        digest = hashlib.sha1(encoding.encode()).hexdigest()
        key = source_key(VERSION, [tiff, extra], digest, sorted(settings.items()))
        entries.append(Entry(image_id, SLIDES.name, key, (f"tiles/{image_id}.csv", f"objects/{image_id}.csv"),
                             (str(tiff), encoding, settings, extra and str(extra))))  # fmt: skip
    unlisted = sorted(p.name for p in (src.root / "train").glob(f"*{slides.extension}")
                      if p.name[: -len(slides.extension)] not in set(train["id"]))  # fmt: skip
    if unlisted:
        log(f"prepare: {len(unlisted)} slide(s) in {src.root / 'train'} have no train.csv row "
            f"and are left out: {', '.join(unlisted[:5])}{' ...' if len(unlisted) > 5 else ''}")  # fmt: skip
    result = refresh(out, [SLIDES], entries, _work, n_jobs=n_jobs, chunk=1, desc="slide tiles",
                     skip_bad=skip_bad)  # fmt: skip
    stamp = {"root": str(src.root), "synthetic": src.synthetic} | settings
    write_text_if_changed(out / "source.json", json.dumps(stamp) + "\n")
    table = result.tables[SLIDES.name]
    if result.done:
        log(f"prepare: {len(table)} slides from {src.root} -> {out}: {int(table['tiles'].sum())} "
            f"tiles of {config.data.window} px at {config.data.size} px ({result.done} slides tiled, "
            f"{result.cached} unchanged)")  # fmt: skip
    return out


def patients(root: Path, ids, slides: SlideSet = DEFAULT_SLIDES) -> dict[str, str] | None:
    """Slide id -> patient, from the dataset's information file when it names them (the real
    download's ``HuBMAP-20-dataset_information.csv`` does), else None; an id it does not list
    keeps a group of its own."""
    path = root / slides.patients
    if not path.is_file():
        return None
    info = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"image_file", "patient_number"} <= set(info.columns):
        return None
    stems = info["image_file"].str.rsplit(".", n=1).str[0]
    known = dict(zip(stems, info["patient_number"], strict=True))
    return {i: f"patient {known[i]}" if known.get(i) else f"slide {i}" for i in ids}


def read_tiles(config: Config, slides_set: SlideSet = DEFAULT_SLIDES
               ) -> tuple[Path, pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """The prepared folder, its slides (with ``fold``: grouped by patient when the data says
    which, else by slide) and every tile (with its slide's ``fold`` and ``has_mask``)."""
    out = folder(config)
    if not (out / "slides.csv").is_file():
        raise ValueError(f"{out}/slides.csv not found: run the prepare stage first")
    slides = pd.read_csv(out / "slides.csv", dtype={"id": str})
    groups = patients(source_root(config), slides["id"], slides_set)
    slides["group"] = slides["id"].map(groups) if groups else slides["id"]
    sizes = slides.groupby("group", sort=True)["tiles"].sum()
    n_groups = len(sizes)
    if config.data.n_folds > n_groups:
        raise ValueError(f"data.n_folds = {config.data.n_folds}, but the slides come from "
                         f"{n_groups} {'patients' if groups else 'slides'}: at most {n_groups}")  # fmt: skip
    folds = group_folds(sizes.index, sizes.to_numpy(), config.data.n_folds, config.data.fold_seed)
    slides["fold"] = slides["group"].map(folds)
    folds = dict(zip(slides["id"], slides["fold"], strict=True))
    tiles = pd.concat([pd.read_csv(out / "tiles" / f"{i}.csv", dtype={"id": str, "slide": str})
                       for i in slides["id"]], ignore_index=True)  # fmt: skip
    tiles["fold"] = tiles["slide"].map(folds)
    tiles["has_mask"] = (tiles["mask_area"] > 0).astype(int)
    return out, slides, tiles


def filter_scores(config: Config, fold: int) -> pd.DataFrame | None:
    """The tile filter's scores of ``data.tile_filter.run``'s same fold (None when off)."""
    run = config.data.tile_filter.run
    if not run:
        return None
    path = Path(config.output) / run / f"fold{fold}" / FILTER_FILE
    if not path.is_file():
        raise ValueError(f"data.tile_filter.run {run!r}: {path} not found (run the tile filter)")
    return pd.read_csv(path, dtype={"id": str})


def make_loaders(config: Config, fold: int, seed: int, slides_set: SlideSet = DEFAULT_SLIDES):
    """Training tiles of the other folds' slides (less the perfect ones under the tile filter),
    or with ``data.sampling: epoch`` windows drawn from those slides every epoch
    (``common.data.slide_windows``); and this rank's share of the held-out slides' tiles."""
    out, slides, tiles = read_tiles(config, slides_set)
    if fold not in set(slides["fold"]):
        raise ValueError(f"fold {fold} does not exist: {config.data.n_folds} folds")
    sampling = config.data.get("sampling", "static")
    if sampling not in SAMPLING:
        raise ValueError(f"data.sampling {sampling!r}; valid: {', '.join(SAMPLING)}")
    train = tiles[tiles["fold"] != fold].reset_index(drop=True)
    scores = filter_scores(config, fold)
    if scores is not None:
        if sampling == "epoch":
            raise ValueError("data.tile_filter drops static tiles: it needs data.sampling: static")
        train = kept_items(train, scores, config.data.tile_filter.min_dice)
    held = tiles[tiles["fold"] == fold].reset_index(drop=True)
    pipeline = load_pipeline(config, TRANSFORMS)
    held_items = Items(held, out / "images", out / "masks")
    extra = pseudo_items(config, set(slides["id"]), key=f"{config.data.window}_{config.data.size}",
                         column="slide")  # a window of any labelled slide is refused  # fmt: skip
    if sampling == "static":
        return common_loaders(config, Items(train, out / "images", out / "masks"), held_items,
                              seed, pipeline, extra)  # fmt: skip
    d = config.data
    for key, ok, rule in (("epoch_windows", d.epoch_windows >= 0, "a count >= 0 (0: as many as the static tiles)"),
                          ("random_share", 0 <= d.random_share < 1, "a share in [0, 1)"),
                          ("area_bins", d.area_bins >= 1, "a count >= 1")):  # fmt: skip
        if not ok:
            raise ValueError(f"data.{key} = {d[key]}: must be {rule}")
    sources = slide_sources(config, slides[slides["fold"] != fold], tiles, out, slides_set)
    size = int(d.epoch_windows) or len(train)  # as many steps as static tiles
    return (window_loader(config, sources, size, seed, pipeline, extra),
            eval_loader(config, held_items, shard=True))  # fmt: skip


def slide_sources(config: Config, slides: pd.DataFrame, tiles: pd.DataFrame, out: Path,
                  slides_set: SlideSet) -> list[SlideSource]:  # fmt: skip
    """The training slides as ``SlideSource``: file, RLE, extra polygons, objects, tissue."""
    root = source_root(config)
    truth = dict(read_train(root, slides_set).itertuples(index=False))
    sources = []
    for row in slides.itertuples(index=False):
        extra = extra_file(config.data, "train", row.id)
        grid = tiles[(tiles["slide"] == row.id) & (tiles["kind"] == "grid")]
        sources.append(SlideSource(
            row.id, str(slides_set.slide(root, "train", row.id)), (int(row.height), int(row.width)),
            truth[row.id], str(extra) if extra is not None else None,
            pd.read_csv(out / "objects" / f"{row.id}.csv"), grid[["y", "x"]].to_numpy(np.int64),
        ))  # fmt: skip
    return sources


def window_loader(config: Config, sources: list[SlideSource], epoch_size: int, seed: int,
                  transform, extra: Extra | None = None) -> DataLoader:  # fmt: skip
    """The training loader of ``data.sampling: epoch``; with ``extra`` (pseudo-labelled
    windows), those fill ``extra.share`` of every epoch on top of the drawn windows."""
    d = config.data
    data = SlideWindowDataset(sources, window=d.window, epoch_size=epoch_size, jitter=d.jitter,
                              random_share=d.random_share,
                              area_bins=d.area_bins, seed=seed, size=d.size, transform=transform,
                              in_channels=d.in_channels, preprocess=d.get("preprocess"))  # fmt: skip
    draw = EpochWindowSampler(data, distributed.world_size(), distributed.rank())
    if extra is not None and len(extra.items.frame):
        draw = WithExtraSampler(draw, len(extra.items.frame), extra.share)
        data = ConcatDataset([data, dataset(config, extra.items, transform)])
    per_rank = d.batch_size // distributed.world_size()
    return DataLoader(data, batch_size=per_rank, sampler=draw, drop_last=len(draw) > per_rank,
                      generator=torch.Generator().manual_seed(seed + 1000 * distributed.rank()),
                      **loader_args(config))  # fmt: skip
