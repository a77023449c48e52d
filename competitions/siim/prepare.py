"""Prepare SIIM for training: decode every DICOM and merge every mask once, at the training size.

    python -m competitions.siim.prepare --size 256

reads ``data/siim/raw/`` (or the synthetic set when it is absent) and writes

    data/siim/prepared/<size>/images/<ImageId>.png   uint8 image, size x size
    data/siim/prepared/<size>/masks/<ImageId>.png    merged mask {0, 255}, training images only
    data/siim/prepared/<size>/full_masks/<id>.png    the same at the image's native size (scoring)
    data/siim/prepared/<size>/train.csv              one row per training image (TRAIN_COLUMNS)
    data/siim/prepared/<size>/test.csv               one row per test image (TEST_COLUMNS)
    data/siim/prepared/<size>/bad_ids.csv            ImageId, split, reason (when any were bad)
    data/siim/folds.csv                              ImageId, fold (kept while the ids are the same)

Each row carries a ``key`` hashing what produced it (DICOM path, size and mtime, the RLE rows, the
training size, the code version), so a re-run redoes only what changed and, when nothing did, only
stats the files. Work is spread over joblib processes in chunks, with a progress bar.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm import tqdm

from common.atomic import atomic_path
from common.config import load_config
from common.dicom import read_dicom_with_tags
from common.folds import make_folds, read_folds, write_folds
from common.images import resize_image, resize_mask, write_png
from common.paths import data_dir
from competitions.siim.layout import Inputs, resolve_inputs
from competitions.siim.raw import merged_mask_rows
from competitions.siim.synthetic import SyntheticSpec

VERSION = 2  # bump when the output of _prepare_one changes, to redo every cached image
TAGS = ("PatientAge", "PatientSex", "ViewPosition", "PhotometricInterpretation", "BitsStored")
TEST_COLUMNS = ("ImageId", "height", "width", *TAGS, "key")
TRAIN_COLUMNS = ("ImageId", "has_mask", "mask_area", "n_annotations", *TEST_COLUMNS[1:])
_CHUNK = 16  # images per joblib task: amortises the inter-process round trip


@dataclass(frozen=True)
class Item:
    image_id: str
    split: str  # "train" or "test"
    dicom: Path | None
    rles: tuple[tuple[str, int], ...]  # (EncodedPixels, line in the CSV); empty for test
    key: str


class PrepareError(ValueError):
    """Some images could not be prepared; ``bad`` lists (ImageId, split, reason)."""

    def __init__(self, bad: list[tuple[str, str, str]], report: str):
        super().__init__(report)
        self.bad = bad


def _key(dicom: Path | None, rles, size: int) -> str:
    stat = dicom.stat() if dicom is not None else None
    parts = [VERSION, size, str(dicom), stat and stat.st_size, stat and stat.st_mtime_ns, rles]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def list_items(inputs: Inputs, size: int) -> list[Item]:
    items = []
    groups = inputs.annotations.groupby("ImageId", sort=False)
    for image_id, group in groups:
        rles = tuple(zip(group["EncodedPixels"], group["line"].astype(int), strict=True))
        dicom = inputs.dicoms.get(image_id)
        items.append(Item(image_id, "train", dicom, rles, _key(dicom, rles, size)))
    for image_id in inputs.test_ids:
        dicom = inputs.dicoms.get(image_id)
        items.append(Item(image_id, "test", dicom, (), _key(dicom, (), size)))
    return items


def _prepare_one(item: Item, out: Path, size: int, source: str) -> dict:
    if item.dicom is None:
        raise ValueError(f"no DICOM file named {item.image_id}.dcm below the data folder")
    image, tags = read_dicom_with_tags(item.dicom, TAGS)
    height, width = image.shape
    row = {"ImageId": item.image_id, "height": height, "width": width, **tags, "key": item.key}
    if item.split == "train":
        mask = merged_mask_rows(item.rles, (height, width), source)
        row |= {
            "has_mask": int(mask.any()),
            "mask_area": int(mask.sum()),
            "n_annotations": sum(rle != "-1" for rle, _ in item.rles),
        }
        write_png(out / "masks" / f"{item.image_id}.png", resize_mask(mask, size) * np.uint8(255))
        write_png(out / "full_masks" / f"{item.image_id}.png", mask * np.uint8(255))
    write_png(out / "images" / f"{item.image_id}.png", resize_image(image, size))
    return row


def _prepare_chunk(items: list[Item], out: Path, size: int, source: str) -> list[dict]:
    rows = []
    for item in items:
        try:
            rows.append(_prepare_one(item, out, size, source))
        except ValueError as error:
            rows.append({"ImageId": item.image_id, "split": item.split, "error": str(error)})
    return rows


def _cached_rows(out: Path, items: list[Item]) -> dict[str, dict]:
    """Rows of the previous run whose key still matches and whose PNG files still exist."""
    rows = {}
    for name in ("train.csv", "test.csv"):
        if (out / name).is_file():
            frame = pd.read_csv(out / name, dtype=str, keep_default_na=False)
            rows |= {row["ImageId"]: row for row in frame.to_dict("records")}
    cached = {}
    for item in items:
        row = rows.get(item.image_id)
        if row is None or row.get("key") != item.key:
            continue
        files = [out / "images" / f"{item.image_id}.png"]
        if item.split == "train":
            files.append(out / "masks" / f"{item.image_id}.png")
            files.append(out / "full_masks" / f"{item.image_id}.png")
        if all(path.is_file() for path in files):
            cached[item.image_id] = row
    return cached


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _report(bad: list[tuple[str, str, str]], limit: int = 20) -> str:
    lines = [f"{len(bad)} image(s) could not be prepared:"]
    lines += [f"  {split} {image_id}: {reason}" for image_id, split, reason in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more (all listed in bad_ids.csv)")
    return "\n".join(lines)


def prepare(
    inputs: Inputs, out: str | os.PathLike, size: int, *, n_jobs: int = 2, skip_bad: bool = False
) -> dict[str, int]:
    """Write the prepared cache for ``inputs`` at ``size`` into ``out``; returns counts
    (``train``, ``test``, ``done``, ``cached``, ``bad``). With bad images it raises
    ``PrepareError`` listing them all, unless ``skip_bad``, which reports them and leaves them out.
    """
    out = Path(out)
    if size < 32:
        raise ValueError(f"size {size} is too small: use at least 32 pixels")
    items = list_items(inputs, size)
    cached = _cached_rows(out, items)
    todo = [item for item in items if item.image_id not in cached]
    source = str(inputs.train_csv)
    chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
    rows = dict(cached)
    if chunks:
        jobs = Parallel(n_jobs=min(n_jobs, len(chunks)), return_as="generator_unordered")(
            delayed(_prepare_chunk)(chunk, out, size, source) for chunk in chunks
        )
        with tqdm(total=len(todo), desc=f"prepare {size}px", unit="img", disable=None) as bar:
            for chunk_rows in jobs:
                rows |= {row["ImageId"]: row for row in chunk_rows}
                bar.update(len(chunk_rows))
    bad = [(r["ImageId"], r["split"], r["error"]) for r in rows.values() if "error" in r]
    bad_path = out / "bad_ids.csv"
    if bad:
        _write_csv(pd.DataFrame(bad, columns=["ImageId", "split", "reason"]), bad_path)
        if not skip_bad:
            raise PrepareError(bad, _report(bad) + "\nFix them, or pass --skip-bad to go on.")
    else:
        bad_path.unlink(missing_ok=True)
    good = {image_id for image_id, row in rows.items() if "error" not in row}
    for split, columns in (("train", TRAIN_COLUMNS), ("test", TEST_COLUMNS)):
        ids = [item.image_id for item in items if item.split == split and item.image_id in good]
        frame = pd.DataFrame([rows[i] for i in ids], columns=list(columns))
        _write_csv(frame, out / f"{split}.csv")
    return {
        "train": sum(item.split == "train" and item.image_id in good for item in items),
        "test": sum(item.split == "test" and item.image_id in good for item in items),
        "done": len(todo),
        "cached": len(cached),
        "bad": len(bad),
    }


def ensure_folds(train: pd.DataFrame, path: str | os.PathLike, n_folds: int, seed: int) -> str:
    """Write ``path`` from the training table unless it already covers exactly these ids with
    ``n_folds`` folds (a split must not change under a running experiment). Returns what it did."""
    path = Path(path)
    if path.is_file():
        folds = read_folds(path)
        same_ids = set(folds["ImageId"]) == set(train["ImageId"])
        if same_ids and folds["fold"].nunique() == n_folds:
            return f"kept {path}"
    folds = make_folds(train["ImageId"], train["mask_area"], n_folds=n_folds, seed=seed)
    write_folds(folds, path)
    return f"wrote {path} ({n_folds} folds of {len(folds)} images)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None, help="image side (default 256)")
    parser.add_argument(
        "--config", help="take the size and the output paths from an experiment's data section"
    )
    parser.add_argument("--raw", default=str(data_dir("siim", "raw")), help="the Kaggle download")
    parser.add_argument(
        "--synthetic", default=str(data_dir("siim", "synthetic")), help="used without raw"
    )
    defaults = SyntheticSpec()
    parser.add_argument("--synthetic-size", type=int, default=defaults.size)
    parser.add_argument("--synthetic-train", type=int, default=defaults.n_train)
    parser.add_argument("--synthetic-test", type=int, default=defaults.n_test)
    parser.add_argument("--out", default=str(data_dir("siim", "prepared")))
    parser.add_argument("--folds", default=str(data_dir("siim", "folds.csv")))
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=42)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--skip-bad", action="store_true", help="report bad images and go on without them"
    )
    args = parser.parse_args(argv)
    try:
        sizes = [args.size] if args.size else [256]
        if args.config:
            config = load_config(args.config)
            args.out, args.folds = config.data.prepared, config.data.folds
            if not args.size:  # every size the experiment trains at, parts included
                part_sizes = [p.get("data", {}).get("size") for p in config.train.parts]
                sizes = sorted({config.data.size, *filter(None, part_sizes)})
        spec = SyntheticSpec(
            size=args.synthetic_size, n_train=args.synthetic_train, n_test=args.synthetic_test
        )
        inputs = resolve_inputs(args.raw, args.synthetic, spec, n_jobs=args.jobs)
        unlabelled = inputs.unlabelled()
        if unlabelled:
            print(f"note: {len(unlabelled)} DICOM(s) are in neither CSV; ignored")
        for size in sizes:
            out = Path(args.out) / str(size)
            counts = prepare(inputs, out, size, n_jobs=args.jobs, skip_bad=args.skip_bad)
            if counts["bad"]:
                print(_report(pd.read_csv(out / "bad_ids.csv").values.tolist()), file=sys.stderr)
                print(f"--skip-bad: left {counts['bad']} image(s) out", file=sys.stderr)
            print(
                f"prepared {counts['train']} train + {counts['test']} test images in {out} "
                f"({counts['done']} decoded, {counts['cached']} unchanged)"
            )
        train = pd.read_csv(out / "train.csv", dtype={"ImageId": str})
        print(ensure_folds(train, args.folds, args.n_folds, args.fold_seed))
    except ValueError as error:
        sys.exit(f"siim prepare: {error}")


if __name__ == "__main__":
    main()
