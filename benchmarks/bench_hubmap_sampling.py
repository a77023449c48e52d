"""``make hubmap-folds`` (the default experiment, every fold, the cross-fitted out-of-fold Dice at
full resolution) with the static tiles against windows drawn every epoch (``data.sampling``),
on the synthetic slides: the same tiles, folds, epochs and seed, one run each.

    python -m benchmarks.bench_hubmap_sampling [--smoke] [--out FILE] [key=value ...]

Both runs share one synthetic set and one tile cache (the sampling is not part of its key).
Prints the figures and merges them into ``benchmarks/results.json`` (``hubmap_sampling_*``);
``--smoke`` runs both on the tests' tenth-scale slides for one short epoch (a check of the
script, not a figure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._util import record
from common.io.paths import REPO

CONFIG = "competitions/hubmap/configs/unet_resnet18_cpu.yaml"
SMOKE = ["data.synthetic_scale=0.1", "train.epochs=1", "train.max_steps=2", "data.window=256",
         "data.size=64", "predict.tta=[none]", "predict.overlap=16"]  # fmt: skip


def run(root: Path, sampling: str, overrides: list[str]) -> dict:
    workspace = root / sampling
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = os.environ | {"KSEG_WORKSPACE": str(workspace), "PYTHONPATH": path}
    command = [sys.executable, "-m", "common.cli", "train", "--competition", "hubmap", "--config",
               CONFIG, "--folds", "0,1,2", f"data.sampling={sampling}",
               f"data.synthetic={root / 'synthetic'}", f"data.prepared={root / 'prepared'}",
               *overrides]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True)
    seconds = time.perf_counter() - start
    oof = json.loads(next((workspace / "models").rglob("oof.json")).read_text())
    return {f"hubmap_sampling_{sampling}_oof_dice": oof["oof_dice"],
            f"hubmap_sampling_{sampling}_empty_dice": oof["empty_dice"],
            f"hubmap_sampling_{sampling}_seconds": seconds,
            f"hubmap_sampling_{sampling}_slides": len(oof["per_slide"]),
            "_mode": oof.get("threshold_search", "")}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    overrides = [*(SMOKE if args.smoke else []), *args.overrides]
    figures: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        for sampling in ("static", "epoch"):
            figures |= run(Path(scratch), sampling, overrides)
            if args.out:  # after each run: a run cut short keeps what finished
                args.out.write_text(json.dumps(figures | {"overrides": overrides}, indent=2))
    mode = figures.pop("_mode")
    print(f"threshold search: {mode}")
    if args.out:
        args.out.write_text(json.dumps(figures | {"overrides": overrides, "mode": mode}, indent=2))
    if not args.smoke:
        record(figures, "make hubmap-folds: static tiles against windows drawn every epoch")
    else:
        print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
