"""A dataset folder in the documented layout built from the shared JSRT/SCR 512 px set (real
chest X-rays, outside the project): ``n_train`` training images with the heart mask as
``train/masks/<id>.png``, ``n_test`` test images with ``test/masks/`` (scored locally). Used by
``bench_folder`` to time ``make fold0 DATASET=...`` and compare it with a plain smp script."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from benchmarks._util import SHARED_DATA

SHARED = SHARED_DATA / "jsrt_scr" / "512"


def build(out: Path, n_train: int = 40, n_test: int = 20, structure: str = "heart") -> Path:
    if not SHARED.is_dir():
        raise FileNotFoundError(f"{SHARED} is absent (the shared test data): nothing to build from")
    ids = sorted(p.stem for p in (SHARED / "images").glob("*.png"))
    picked = ids[:: max(1, len(ids) // (n_train + n_test))][: n_train + n_test]
    for split, chosen in (("train", picked[:n_train]), ("test", picked[n_train:])):
        for folder in ("images", "masks"):
            (out / split / folder).mkdir(parents=True, exist_ok=True)
        for image_id in chosen:
            shutil.copyfile(
                SHARED / "images" / f"{image_id}.png", out / split / "images" / f"{image_id}.png"
            )
            shutil.copyfile(SHARED / "masks" / structure / f"{image_id}.png",
                            out / split / "masks" / f"{image_id}.png")  # fmt: skip
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
