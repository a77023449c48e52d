"""Prepare JSRT/SCR cases for training and scoring.

    python -m competitions.lung.prepare [--size 256] [--score-size 512] [--config ...]

Reads ``data/lung/raw/`` (either layout of ``competitions.lung.raw``: native 2048 palette PNGs
with 1024 GIF masks, or the 512 PNGs), or the embedded synthetic set when ``raw/`` is absent,
and writes ``data/lung/prepared/<size>/``:

    images/<case>.png                 the image at the training size (area averaging)
    masks/<structure>/<case>.png      each structure at the training size ({0, 255})
    reference/<structure>/<case>.png  each structure at the scoring size, the ground truth
    cases.csv                         case, number, nodule, scr_fold, native height/width,
                                      area_<structure> at the scoring size
    source.json                       what was read (and whether it is the synthetic set): a
                                      re-run with the same input is a no-op

Reference masks are sampled from the image-grid mask at the centre of each block (the native
1024 masks on the 2048 grid, sampled at ``[2::4, 2::4]``, are exactly the published 512 masks).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from common.atomic import atomic_dir, atomic_path
from common.config import load_run_config
from common.images import resize_image, resize_mask, write_png
from common.paths import data_dir
from common.report import banner
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

VERSION = 2  # bump when the prepared files change, to redo them
RAW = data_dir("lung", "raw")
SYNTHETIC = data_dir("lung", "synthetic")
PREPARED = data_dir("lung", "prepared")


def resolve_raw(raw: str | Path = RAW, synthetic: str | Path = SYNTHETIC, log=print) -> Path:
    """``raw`` when it holds images; otherwise the synthetic set (generated if needed), said
    loudly."""
    raw, synthetic = Path(raw), Path(synthetic)
    if (raw / "images").is_dir():
        return raw
    if raw.exists() and any(raw.iterdir()):
        raise ValueError(
            f"{raw} exists but has no images/ folder: put the JSRT images in {raw}/images/ and "
            f"the SCR masks in {raw}/masks/<structure>/, or remove {raw} to use the synthetic set"
        )
    spec = SyntheticSpec()
    log(
        banner(
            [
                f"No chest X-rays in {raw}/: using the embedded SYNTHETIC lung set",
                f"({spec.n_cases} cases at {spec.size}x{spec.size}, seed {spec.seed}) in {synthetic}/.",
                "Scores on it say the pipeline works; they are not the SCR benchmark.",
            ]
        )
    )
    return generate(synthetic, spec)


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


def _source_key(cases: list[Case], tests: dict, size: int, score_size: int) -> dict:
    files = []
    paths = [p for case in cases for p in (case.image, *case.masks.values())]
    for path in [*paths, *tests.values()]:
        stat = path.stat()
        files.append([str(path), stat.st_size, stat.st_mtime_ns])
    return {"version": VERSION, "size": size, "score_size": score_size, "files": files}


def _prepare_one(case: Case, build: Path, size: int, score_size: int) -> dict:
    image, masks = load_case(case)
    height, width = image.shape
    if height != width:
        raise ValueError(f"case {case.case_id}: {case.image} is {width}x{height}, not square")
    write_png(build / "images" / f"{case.case_id}.png", resize_image(image, size))
    row = {
        "case": case.case_id,
        "number": case.number,
        "nodule": int(case.nodule),
        "scr_fold": scr_fold(case),
        "height": height,
        "width": width,
    }
    for structure, mask in zip(STRUCTURES, masks, strict=True):
        write_png(
            build / "masks" / structure / f"{case.case_id}.png", resize_mask(mask, size) * 255
        )
        reference = sample_centres(mask, score_size)
        write_png(build / "reference" / structure / f"{case.case_id}.png", reference * 255)
        row[f"area_{structure}"] = int(reference.sum())
    return row


def prepare_test(tests: dict[str, Path], out: Path, size: int, score_size: int) -> pd.DataFrame:
    """Test images (case id -> file) at the training size into ``out/images/``, and
    ``out/test.csv`` (id, and the scoring size their masks are predicted at)."""
    for case_id, path in tests.items():
        write_png(out / "images" / f"{case_id}.png", resize_image(read_image(path, case_id), size))
    test = pd.DataFrame({"id": list(tests), "height": score_size, "width": score_size})
    with atomic_path(out / "test.csv") as tmp:
        test.to_csv(tmp, index=False)
    return test


def prepare(
    size: int,
    score_size: int = 512,
    *,
    raw: str | Path = RAW,
    synthetic: str | Path = SYNTHETIC,
    prepared: str | Path = PREPARED,
    n_jobs: int = 2,
    log=print,
) -> Path:
    """Write ``prepared/<size>/`` (see the module docs) unless it already holds this input."""
    source = resolve_raw(raw, synthetic, log)
    cases = find_cases(source)
    tests = find_test_images(source)
    both = sorted(set(tests) & {case.case_id for case in cases})
    if both:
        raise ValueError(
            f"{source}: {len(both)} case(s) are both a training and a test image, e.g. {both[0]}"
        )
    out = Path(prepared) / str(size)
    key = _source_key(cases, tests, size, score_size) | {"synthetic": source == Path(synthetic)}
    stamp = out / "source.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return out
    log(
        f"lung prepare: {len(cases)} cases from {source} -> {out} (train {size}px, score {score_size}px)"
    )
    with atomic_dir(out) as build:
        rows = Parallel(n_jobs=n_jobs)(
            delayed(_prepare_one)(case, build, size, score_size)
            for case in tqdm(cases, desc="prepare", unit="case", disable=not sys.stderr.isatty())
        )
        frame = pd.DataFrame(rows)
        with atomic_path(build / "cases.csv") as tmp:
            frame.to_csv(tmp, index=False)
        prepare_test(tests, build, size, score_size)
        (build / "source.json").write_text(json.dumps(key) + "\n")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="training size")
    parser.add_argument("--score-size", type=int, default=512, help="scoring size")
    parser.add_argument("--config", help="take the sizes and folders from this experiment")
    parser.add_argument("--clean", action="store_true", help="remove prepared/<size>/ first")
    args = parser.parse_args(argv)
    try:
        size, score_size = args.size, args.score_size
        raw, synthetic, prepared = RAW, SYNTHETIC, PREPARED
        if args.config:
            config = load_run_config(args.config, [])
            size, score_size = config.data.size, config.data.score_size
            raw, synthetic = Path(config.data.raw), Path(config.data.synthetic)
            prepared = Path(config.data.prepared)
        if args.clean:
            shutil.rmtree(prepared / str(size), ignore_errors=True)
        out = prepare(size, score_size, raw=raw, synthetic=synthetic, prepared=prepared)
        print(f"lung prepare: {out} ready")
    except ValueError as error:
        sys.exit(f"lung prepare: {error}")


if __name__ == "__main__":
    main()
