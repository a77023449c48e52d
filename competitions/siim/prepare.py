"""Prepare SIIM for training: decode every DICOM and merge every mask once, at the training size.

    python -m common.cli prepare --competition siim --config competitions/siim/configs/unet_resnet18_cpu.yaml [--size 256] [--skip-bad] [key=value ...]

reads ``data/siim/raw/`` (or the synthetic set when it is absent) and writes

    data/siim/prepared/<size>/images/<ImageId>.png   uint8 image, size x size
    data/siim/prepared/<size>/masks/<ImageId>.png    merged mask {0, 255}, training images only
    data/siim/prepared/<size>/full_masks/<id>.png    the same at the native size, if that differs
    data/siim/prepared/<size>/train.csv              one row per training image (TRAIN_COLUMNS)
    data/siim/prepared/<size>/test.csv               one row per test image (TEST_COLUMNS)
    data/siim/prepared/<size>/bad_ids.csv            id, table, reason (when any were bad)
    data/siim/folds.csv                              ImageId, fold (kept while the ids are the same)

With ``--config`` of an experiment that has a crop stage (``data.crop_stage``), the images are
prepared at the stage's ``frame`` side and then cropped (``common.infer.cascade.prepare_crops``) to
``<prepared>/<frame>/crops<size>_<key>/``: the lung boxes, the crops and their masks.

The files are a ``common.io.cache``: each row carries a ``key`` hashing what produced it (DICOM path,
size and mtime, the RLE rows, the training size, the code version), so a re-run redoes only what
changed and, when nothing did, only stats the files; the work is spread over processes.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import load_config
from common.data.crops import crop_spec
from common.data.folds import ensure_folds
from common.infer.cascade import prepare_crops
from common.io.atomic import os_error_line
from common.io.cache import BAD_IDS, Entry, Table, bad_report, refresh, source_key
from common.io.dicom import read_dicom_with_tags
from common.io.images import resize_image, resize_mask, write_mask, write_png
from common.io.rle_csv import merged_mask_rows
from common.train.runner import add_skip_bad
from competitions.siim.layout import Inputs, resolve_inputs
from competitions.siim.synthetic import SyntheticSpec

VERSION = 3  # bump when the output of _prepare_one changes, to redo every cached image
TAGS = ("PatientAge", "PatientSex", "ViewPosition", "PhotometricInterpretation", "BitsStored")
TEST_COLUMNS = ("ImageId", "height", "width", *TAGS)
TRAIN_COLUMNS = ("ImageId", "has_mask", "mask_area", "n_annotations", *TEST_COLUMNS[1:])
TABLES = (Table("train.csv", TRAIN_COLUMNS), Table("test.csv", TEST_COLUMNS))
BASE = Path(__file__).resolve().parent / "configs" / "base.yaml"


@dataclass(frozen=True)
class Source:
    dicom: Path | None
    rles: tuple[tuple[str, int], ...]  # (EncodedPixels, line in the CSV); empty for test
    csv: str  # the training CSV, for errors


def full_mask_path(out: Path, image_id: str, shape: tuple[int, int], size: int) -> Path:
    """The mask at the image's native ``shape`` (scoring): ``masks/`` when that is the training
    ``size``, else ``full_masks/``."""
    return out / ("masks" if tuple(shape) == (size, size) else "full_masks") / f"{image_id}.png"


def list_entries(inputs: Inputs, size: int) -> list[Entry]:
    """One cache entry per training image (its DICOM and RLE rows) and per test image."""
    entries = []
    csv = str(inputs.train_csv)
    groups = inputs.annotations.groupby("ImageId", sort=False)
    for image_id, group in groups:
        rles = tuple(zip(group["EncodedPixels"], group["line"].astype(int), strict=True))
        dicom = inputs.dicoms.get(image_id)
        files = (f"images/{image_id}.png", f"masks/{image_id}.png")
        key = source_key(VERSION, [dicom], size, rles)
        entries.append(Entry(image_id, "train.csv", key, files, Source(dicom, rles, csv)))
    for image_id in inputs.test_ids:
        dicom = inputs.dicoms.get(image_id)
        key = source_key(VERSION, [dicom], size)
        files = (f"images/{image_id}.png",)
        entries.append(Entry(image_id, "test.csv", key, files, Source(dicom, (), csv)))
    return entries


def _prepare_one(entry: Entry, out: Path, size: int) -> dict:
    image_id, source = entry.id, entry.source
    if source.dicom is None:
        raise ValueError(f"no DICOM file named {image_id}.dcm below the data folder")
    image, tags = read_dicom_with_tags(source.dicom, TAGS)
    height, width = image.shape
    row = {"ImageId": image_id, "height": height, "width": width, **tags}
    if entry.table == "train.csv":
        mask = merged_mask_rows(source.rles, (height, width), source.csv)
        area = np.count_nonzero(mask)
        row |= {
            "has_mask": int(area > 0),
            "mask_area": area,
            "n_annotations": sum(rle != "-1" for rle, _ in source.rles),
        }
        write_mask(out / "masks" / f"{image_id}.png", resize_mask(mask, size))
        if (height, width) != (size, size):
            write_mask(full_mask_path(out, image_id, (height, width), size), mask)
    write_png(out / "images" / f"{image_id}.png", resize_image(image, size))
    return row


def prepare(
    inputs: Inputs, out: str | os.PathLike, size: int, *, n_jobs: int = 2, skip_bad: bool = False
) -> dict[str, int]:
    """Write the prepared cache for ``inputs`` at ``size`` into ``out`` (``common.io.cache``);
    returns counts (``train``, ``test``, ``done``, ``cached``, ``bad``). With bad images it raises
    ``CacheError`` listing them all, unless ``skip_bad``, which reports them and leaves them out.
    """
    if size < 32:
        raise ValueError(f"size {size} is too small: use at least 32 pixels")
    result = refresh(
        out,
        TABLES,
        list_entries(inputs, size),
        partial(_prepare_one, size=size),
        n_jobs=n_jobs,
        desc=f"prepare {size}px",
        skip_bad=skip_bad,
    )
    return {
        "train": len(result.tables["train.csv"]),
        "test": len(result.tables["test.csv"]),
        "done": result.done,
        "cached": result.cached,
        "bad": len(result.bad),
    }


def prepare_config(
    config,
    *,
    size: int | None = None,
    spec: SyntheticSpec | None = None,
    n_jobs: int | None = None,
    skip_bad: bool = False,
    log=print,
) -> Path:
    """Prepare the experiment ``config``'s data (``data.raw``, else the synthetic set made from
    ``spec``) at ``size``, else at every size it trains at (parts included), into
    ``data.prepared/<size>/``, write ``data.folds``, and cut the crops of a crop stage; returns
    the last folder written."""
    data, n_jobs = config.data, n_jobs or os.cpu_count() or 1
    part_sizes = [p.get("data", {}).get("size") for p in config.train.parts]
    sizes = [size] if size else sorted({data.size, *filter(None, part_sizes)})
    crops = []  # (data section, size) of each crop set to cut after the frames
    if crop_spec(data):  # the frame is prepared; the model's sizes are crops of it
        crops, sizes = [data | {"size": s} for s in sizes], [crop_spec(data).frame]
    inputs = resolve_inputs(data.raw, data.synthetic, spec, n_jobs=n_jobs, log=log)
    if inputs.unlabelled():
        log(f"note: {len(inputs.unlabelled())} DICOM(s) are in neither CSV; ignored")
    for side in sizes:
        out = Path(data.prepared) / str(side)
        counts = prepare(inputs, out, side, n_jobs=n_jobs, skip_bad=skip_bad)
        if counts["bad"]:
            listed = pd.read_csv(out / BAD_IDS, dtype=str, keep_default_na=False)
            print(bad_report(listed.values.tolist()), file=sys.stderr)
            print(f"--skip-bad: left {counts['bad']} image(s) out", file=sys.stderr)
        log(f"prepared {counts['train']} train + {counts['test']} test images in {out} "
            f"({counts['done']} decoded, {counts['cached']} unchanged)")  # fmt: skip
    train = pd.read_csv(out / "train.csv", dtype={"ImageId": str})
    log(ensure_folds(train["ImageId"], train["mask_area"], data.folds, data.n_folds,
                     data.fold_seed))  # fmt: skip
    for crop in crops:
        prepare_crops(crop, [table.name for table in TABLES], n_jobs=n_jobs, log=log)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(BASE), help="an experiment (sizes and paths)")
    parser.add_argument("--size", type=int, default=None, help="this size only")
    for flag, key in (("raw", "raw"), ("synthetic", "synthetic"), ("out", "prepared"),
                      ("folds", "folds")):  # fmt: skip
        parser.add_argument(f"--{flag}", help=f"data.{key} (the config's by default)")
    defaults = SyntheticSpec()
    parser.add_argument("--synthetic-size", type=int, default=defaults.size)
    parser.add_argument("--synthetic-train", type=int, default=defaults.n_train)
    parser.add_argument("--synthetic-test", type=int, default=defaults.n_test)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    add_skip_bad(parser)
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of --config")
    args = parser.parse_args(argv)
    paths = [f"data.{key}={value}" for key, value in (
        ("raw", args.raw), ("synthetic", args.synthetic), ("prepared", args.out),
        ("folds", args.folds)) if value]  # fmt: skip
    try:
        spec = SyntheticSpec(args.synthetic_size, args.synthetic_train, args.synthetic_test)
        config = load_config(args.config, [*args.overrides, *paths])
        prepare_config(config, size=args.size, spec=spec, n_jobs=args.jobs, skip_bad=args.skip_bad)
    except ValueError as error:
        sys.exit(f"siim prepare: {error}")
    except OSError as error:  # a full disk, a read-only folder: one line naming the path
        sys.exit(f"siim prepare: {os_error_line(error)}")


if __name__ == "__main__":
    main()
