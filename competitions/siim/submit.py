"""Validate a SIIM submission CSV, then submit it with the ``kaggle`` package.

    python -m competitions.siim.submit --csv submissions/siim/default.csv [--message "..."]

Validation comes first and always (``competitions.siim.submission.validate``: every sample id
exactly once, nothing extra, valid relative RLE within the image, ``-1`` for empty, the header).
A CSV made for the synthetic test set is refused: Kaggle would score it against other images.
Without Kaggle credentials, or without a network, the command prints one line and exits 1;
nothing is changed and no credential is ever printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.io.paths import data_dir
from common.submit.kaggle import call_kaggle
from competitions.siim import layout, submission

COMPETITION = "siim-acr-pneumothorax-segmentation"
RAW = data_dir("siim", "raw")
SYNTHETIC = data_dir("siim", "synthetic")
PREPARED = data_dir("siim", "prepared")


def find_sample() -> tuple[Path, bool]:
    """The sample submission (real download first) and whether it is the synthetic one."""
    for root, synthetic in ((RAW, False), (SYNTHETIC, True)):
        sample = layout.find_sample(root)
        if sample is not None:
            return sample, synthetic
    raise ValueError(f"no sample submission in {RAW}/ or {SYNTHETIC}/: pass --sample")


def kaggle_submit(csv: Path, message: str, competition: str) -> str:
    """Submit through the kaggle API; ``RuntimeError`` with one line on any failure."""
    return str(
        call_kaggle(
            lambda api: api.competition_submit(str(csv), message, competition), "submission"
        )
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True, type=Path)
    parser.add_argument("--sample", type=Path, help="sample submission (found if omitted)")
    parser.add_argument("--test-csv", type=Path, help="prepared test.csv with image sizes")
    parser.add_argument("--message", default="", help="submission description")
    parser.add_argument("--competition", default=COMPETITION)
    parser.add_argument("--check-only", action="store_true", help="validate, do not submit")
    args = parser.parse_args(argv)
    try:
        if args.sample:
            sample, synthetic = args.sample, False
        else:
            sample, synthetic = find_sample()
        test_csv = args.test_csv or next(iter(sorted(PREPARED.glob("*/test.csv"))), None)
        counts = submission.validate(args.csv, sample, test_csv)
        print(
            f"{args.csv}: valid against {sample} ({counts['rows']} rows, "
            f"{counts['non_empty']} non-empty)"
        )
        if args.check_only:
            return
        if synthetic:
            raise RuntimeError(
                "this CSV is for the synthetic test set (no data in data/siim/raw/); not submitted"
            )
        message = args.message or args.csv.stem
        print(kaggle_submit(args.csv, message, args.competition))
    except (ValueError, RuntimeError) as error:
        sys.exit(f"siim submit: {error}")


if __name__ == "__main__":
    main()
