"""SIIM prepare throughput at 1024x1024 against a bare pydicom read-and-decode loop (the limit).

The files are the 21 real JPEG Baseline DICOMs of ``../shared/data/siim`` (the synthetic set at
1024 when that is absent), each linked 4 times under another ImageId, laid out as a stage-1
download with their real RLE rows. The baseline only reads and decodes each file
(``pydicom.dcmread(path).pixel_array``) in one process; prepare also windows, merges and
decodes the masks, resizes, writes the image and mask PNGs atomically and the CSVs through
``common.io.cache``, on 2 processes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pydicom

from benchmarks._util import SHARED_DATA, best_time, record
from common.io.rle_csv import read_rle_csv
from competitions.siim.layout import read_inputs
from competitions.siim.prepare import prepare
from competitions.siim.synthetic import SyntheticSpec, generate

COPIES = 4
JOBS = 2


def _sources(work: Path) -> tuple[list[Path], dict[str, list[str]]]:
    siim = SHARED_DATA / "siim"
    if (siim / "dicom").is_dir():
        files = sorted((siim / "dicom").glob("*.dcm")) + sorted(
            (siim / "stage2_test_dicom").glob("*.dcm")
        )
        annotations = read_rle_csv(siim / "train-rle.reconstructed.csv")
    else:
        print("bench_prepare: ../shared/data absent, using the synthetic set at 1024")
        root = generate(work / "synthetic", SyntheticSpec(size=1024, n_train=24, n_test=1))
        files = sorted((root / "dicom-images-train").rglob("*.dcm"))
        annotations = read_rle_csv(root / "train-rle.csv")
    rles = annotations.groupby("ImageId")["EncodedPixels"].apply(list).to_dict()
    return files, rles


def _raw_layout(work: Path) -> list[Path]:
    files, rles = _sources(work)
    raw = work / "raw"
    lines, linked = ["ImageId, EncodedPixels"], []
    for copy in range(COPIES):
        for index, source in enumerate(files):
            image_id = f"{source.stem}_{copy}"
            target = raw / "dicom-images-train" / f"s{copy}" / f"r{index}" / f"{image_id}.dcm"
            target.parent.mkdir(parents=True)
            target.symlink_to(source.resolve())
            lines += [f"{image_id}, {rle}" for rle in rles.get(source.stem, ["-1"])]
            linked.append(target)
    (raw / "train-rle.csv").write_text("\n".join(lines) + "\n")
    return linked


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_prepare."))
    try:
        files = _raw_layout(work)
        inputs = read_inputs(work / "raw", synthetic=False)

        def bare_loop():
            for path in files:
                pydicom.dcmread(path).pixel_array  # noqa: B018 (decoding is the work)

        def prepare_fresh(size: int):
            out = work / f"out{size}"
            shutil.rmtree(out, ignore_errors=True)
            prepare(inputs, out, size, n_jobs=JOBS)

        bare = best_time(bare_loop, repeat=3)
        full = best_time(lambda: prepare_fresh(1024), repeat=3)
        small = best_time(lambda: prepare_fresh(256), repeat=3)
        start = time.perf_counter()
        prepare(inputs, work / "out256", 256, n_jobs=JOBS)  # nothing changed: stats only
        rerun = time.perf_counter() - start
        n = len(files)
        record(
            {
                "prepare_bare_pydicom_images_per_s": n / bare,
                "prepare_1024_images_per_s": n / full,
                "prepare_1024_vs_bare_pydicom": bare / full,
                "prepare_256_images_per_s": n / small,
                "prepare_256_vs_bare_pydicom": bare / small,
                "prepare_rerun_unchanged_ms_per_image": rerun / n * 1e3,
            },
            f"SIIM prepare, {n} DICOMs at 1024x1024 ({JOBS} processes; bare loop: 1 process)",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
