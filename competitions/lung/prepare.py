"""Prepare JSRT/SCR cases for training and scoring.

    python -m common.cli prepare --competition lung --config competitions/lung/configs/clavicles_refine.yaml [--skip-bad] [key=value ...]

Reads ``data/lung/raw/`` (either layout of ``competitions.lung.raw``: native 2048 palette PNGs
with 1024 GIF masks, or the 512 PNGs), or the embedded synthetic set when ``raw/`` is absent,
and writes ``data/lung/prepared/<size>/``:

    images/<case>.png                 the image at the training size (area averaging)
    masks/<structure>/<case>.png      each structure at the training size ({0, 255})
    reference/<structure>/<case>.png  each structure at the scoring size, the ground truth
    cases.csv                         case, number, nodule, scr_fold, native height/width,
                                      area_<structure> at the scoring size
    test.csv                          the test images (id, scoring height and width)
    source.json                       what was read (and whether it is the synthetic set)

The files are a ``common.io.cache``: a re-run redoes only the cases whose files changed.

Reference masks are sampled from the image-grid mask at the centre of each block (the native
1024 masks on the 2048 grid, sampled at ``[2::4, 2::4]``, are exactly the published 512 masks).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from common.config import Config
from common.data.crops import crop_spec
from common.data.sources import Source, raw_or_synthetic
from common.io.atomic import write_text_if_changed
from common.io.cache import Entry, Table, refresh, source_key
from common.io.images import resize_image, resize_mask, write_mask, write_png
from common.io.paths import data_dir
from common.train.runner import config_main
from competitions.lung.raw import (
    STRUCTURES,
    Case,
    find_cases,
    find_test_images,
    load_case,
    read_image,
    scr_fold,
)
from competitions.lung.synthetic import SyntheticSpec, generate

VERSION = 3  # bump when the prepared files change, to redo them
RAW = data_dir("lung", "raw")
SYNTHETIC = data_dir("lung", "synthetic")
PREPARED = data_dir("lung", "prepared")
CASES = Table("cases.csv", ("case", "number", "nodule", "scr_fold", "height", "width",
                            *(f"area_{s}" for s in STRUCTURES)))  # fmt: skip
TEST = Table("test.csv", ("id", "height", "width"))


def resolve_raw(raw: str | Path = RAW, synthetic: str | Path = SYNTHETIC, log=print) -> Source:
    """``raw`` when it holds images; otherwise the synthetic set (generated if needed), said
    loudly."""
    spec = SyntheticSpec()
    return raw_or_synthetic(
        raw,
        synthetic,
        has_data=lambda root: (root / "images").is_dir(),
        expected="images/ (the JSRT images) and masks/<structure>/ (the SCR masks)",
        generate=lambda root: generate(root, spec),
        describe=f"JSRT/SCR lung: {spec.n_cases} cases at {spec.size}x{spec.size}, seed "
        f"{spec.seed}, not the SCR benchmark,",
        log=log,
    )


def sample_centres(mask: np.ndarray, size: int) -> np.ndarray:
    """A {0, 1} mask on a square grid resampled to ``size``: the centre pixel of each block when
    shrinking by an integer factor, nearest neighbour otherwise."""
    height, width = mask.shape
    if (height, width) == (size, size):
        return mask
    if height == width and height % size == 0:
        factor = height // size
        return np.ascontiguousarray(mask[factor // 2 :: factor, factor // 2 :: factor])
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def _case_entry(case: Case, size: int, score_size: int) -> Entry:
    files = [f"images/{case.case_id}.png"]
    files += [
        f"{kind}/{s}/{case.case_id}.png" for kind in ("masks", "reference") for s in STRUCTURES
    ]
    key = source_key(VERSION, [case.image, *case.masks.values()], size, score_size)
    return Entry(case.case_id, CASES.name, key, tuple(files), case)


def _test_entry(case_id: str, path: Path, size: int, score_size: int) -> Entry:
    key = source_key(VERSION, [path], size, score_size)
    return Entry(case_id, TEST.name, key, (f"images/{case_id}.png",), path)


def _prepare_one(entry: Entry, out: Path, size: int, score_size: int) -> dict:
    if entry.table == TEST.name:
        image = read_image(entry.source, entry.id)
        write_png(out / "images" / f"{entry.id}.png", resize_image(image, size))
        return {"id": entry.id, "height": score_size, "width": score_size}
    case = entry.source
    image, masks = load_case(case)
    height, width = image.shape
    if height != width:
        raise ValueError(f"case {case.case_id}: {case.image} is {width}x{height}, not square")
    write_png(out / "images" / f"{case.case_id}.png", resize_image(image, size))
    row = {
        "case": case.case_id,
        "number": case.number,
        "nodule": int(case.nodule),
        "scr_fold": scr_fold(case),
        "height": height,
        "width": width,
    }
    for structure, mask in zip(STRUCTURES, masks, strict=True):
        write_mask(out / "masks" / structure / f"{case.case_id}.png", resize_mask(mask, size))
        reference = sample_centres(mask, score_size)
        write_mask(out / "reference" / structure / f"{case.case_id}.png", reference)
        row[f"area_{structure}"] = int(reference.sum())
    return row


def prepare_test(
    tests: dict[str, Path], out: Path, size: int, score_size: int, *, n_jobs: int = 2
) -> pd.DataFrame:
    """Test images (case id -> file) at the training size into ``out/images/``, and
    ``out/test.csv`` (id, and the scoring size their masks are predicted at)."""
    entries = [_test_entry(case_id, path, size, score_size) for case_id, path in tests.items()]
    work = partial(_prepare_one, size=size, score_size=score_size)
    return refresh(out, [TEST], entries, work, n_jobs=n_jobs, desc="prepare test").tables[TEST.name]


def prepare(
    size: int,
    score_size: int = 512,
    *,
    raw: str | Path = RAW,
    synthetic: str | Path = SYNTHETIC,
    prepared: str | Path = PREPARED,
    n_jobs: int = 2,
    skip_bad: bool = False,
    log=print,
) -> Path:
    """Bring ``prepared/<size>/`` (see the module docs) up to date with the input
    (``common.io.cache``: only what changed is redone); with ``skip_bad`` an unreadable case is
    left out (``bad_ids.csv``) instead of stopping."""
    source = resolve_raw(raw, synthetic, log)
    cases = find_cases(source.root)
    tests = find_test_images(source.root)
    both = sorted(set(tests) & {case.case_id for case in cases})
    if both:
        raise ValueError(
            f"{source.root}: {len(both)} case(s) are both a training and a test image, e.g. {both[0]}"
        )
    out = Path(prepared) / str(size)
    entries = [_case_entry(case, size, score_size) for case in cases]
    entries += [_test_entry(case_id, path, size, score_size) for case_id, path in tests.items()]
    work = partial(_prepare_one, size=size, score_size=score_size)
    result = refresh(out, [CASES, TEST], entries, work, n_jobs=n_jobs, desc="lung prepare",
                     skip_bad=skip_bad)  # fmt: skip
    stamp = {"root": str(source.root), "synthetic": source.synthetic, "size": size,
             "score_size": score_size}  # fmt: skip
    write_text_if_changed(out / "source.json", json.dumps(stamp) + "\n")
    if result.done:
        log(
            f"lung prepare: {len(cases)} cases + {len(tests)} test images from {source.root} -> "
            f"{out} (train {size}px, score {score_size}px; {result.done} prepared, "
            f"{result.cached} unchanged)"
        )
    return out


def prepare_config(config: Config, skip_bad: bool = False, log=print) -> Path:
    """The prepare stage of an experiment: its whole images at ``data.size`` (a refinement
    stage's ``frame``) and ``data.score_size``, from its folders."""
    d = config.data
    spec = crop_spec(d)  # a refinement stage cuts its crops from the frame
    for key in ("size", "score_size"):
        if int(d[key]) <= 0:
            raise ValueError(f"data.{key} = {d[key]}: must be a positive number of pixels")
    return prepare(spec.frame if spec else d.size, d.score_size, raw=d.raw, synthetic=d.synthetic,
                   prepared=d.prepared, skip_bad=skip_bad, log=log)  # fmt: skip


def main(argv=None) -> None:
    config_main(__doc__, argv, prepare_config, label="lung prepare", skip_bad=True)
