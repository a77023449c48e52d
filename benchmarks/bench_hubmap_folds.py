"""``make hubmap-folds`` (the default experiment, every fold, the cross-fitted out-of-fold Dice at
full resolution) against one change at a time, on the synthetic slides: the same tiles, folds,
epochs and seed.

    python -m benchmarks.bench_hubmap_folds --compare sampling|filter|extras [--smoke] [--out FILE]
                                            [--root DIR] [key=value ...]

- ``sampling``: the static tiles against windows drawn every epoch (``data.sampling``); both
  runs share one synthetic set and one tile cache (the sampling is not part of its key).
- ``filter``: the seed's tile filter, every fold. The default run on static tiles, then its tile filter on each
  fold (each fold's training tiles scored by that fold's model at the pair its held-out slides
  were scored with, searched on the other folds), then ``filtered.yaml`` (6 more epochs on the
  tiles not already perfect) against ``continued.yaml`` (the same 6 epochs on every tile).
- ``extras``: a synthetic set whose annotations miss ``MISSED`` of each slide's glomeruli
  (``data.synthetic_unannotated``; the misses given as extra GeoJSON, as the top teams'
  re-annotations were), trained without the extras (``data.extra_use: score``) and with them
  (``both``); both scored against the complete truth, train.csv OR-ed with the extras.

Prints the figures and merges them into ``benchmarks/results.json`` (``hubmap_sampling_*``,
``hubmap_filter_*``, ``hubmap_extras_*``); ``--smoke`` runs on the tests' tenth-scale slides for one short epoch (a
check of the script, not a figure).
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

import pandas as pd

from benchmarks._util import record
from common.config import load_run_config
from common.io.paths import REPO

CONFIGS = "competitions/hubmap/configs"
FOLDS = "0,1,2"
SMOKE = ["data.synthetic_scale=0.1", "train.epochs=1", "train.max_steps=2", "data.window=256",
         "data.size=64", "predict.tta=[none]", "predict.overlap=16"]  # fmt: skip


def stage(root: Path, workspace: str, name: str, config: str, overrides: list[str],
          synthetic: str = "synthetic") -> float:  # fmt: skip
    """One ``common.cli`` stage of every fold in ``root/workspace``, sharing ``root``'s synthetic
    set and tiles; returns its wall time in seconds. A stage that finished before in the same
    ``root`` with the same command (``--root``) is not run again: its time is read back."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = os.environ | {"KSEG_WORKSPACE": str(root / workspace), "PYTHONPATH": path}
    command = [sys.executable, "-m", "common.cli", name, "--competition", "hubmap", "--config",
               f"{CONFIGS}/{config}", "--folds", FOLDS, f"data.synthetic={root / synthetic}",
               f"data.prepared={root / 'prepared'}", *overrides]  # fmt: skip
    done = root / workspace / f"{name}-{config}.done.json"
    if done.is_file() and (before := json.loads(done.read_text()))["command"] == command:
        return before["seconds"]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True)
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"command": command, "seconds": seconds}))
    return seconds


def oof(root: Path, workspace: str, run: str) -> dict:
    return json.loads((root / workspace / "models" / "hubmap" / run / "oof.json").read_text())


def train_seconds(root: Path, workspace: str, run: str) -> float:
    """The folds' training time (held-out prediction excluded), summed."""
    folds = (root / workspace / "models" / "hubmap" / run).glob("fold*/metrics.json")
    return sum(json.loads(p.read_text())["train_seconds"] for p in folds)


def sampling(root: Path, overrides: list[str], save) -> dict:
    figures: dict = {}
    for mode in ("static", "epoch"):
        seconds = stage(root, mode, "train", "unet_resnet18_cpu.yaml",
                        [f"data.sampling={mode}", *overrides])  # fmt: skip
        summary = oof(root, mode, "unet_resnet18_cpu")
        figures |= {f"hubmap_sampling_{mode}_oof_dice": summary["oof_dice"],
                    f"hubmap_sampling_{mode}_empty_dice": summary["empty_dice"],
                    f"hubmap_sampling_{mode}_seconds": seconds,
                    f"hubmap_sampling_{mode}_slides": len(summary["per_slide"]),
                    "_mode": summary["threshold_search"]}  # fmt: skip
        save(figures)
    return figures


def tile_filter(root: Path, overrides: list[str], save) -> dict:
    seconds = stage(
        root, "runs", "train", "unet_resnet18_cpu.yaml", ["data.sampling=static", *overrides]
    )
    base = oof(root, "runs", "unet_resnet18_cpu")
    oof_figures = {"hubmap_filter_base_oof_dice": base["oof_dice"],
                   "hubmap_filter_base_seconds": seconds, "_mode": base["threshold_search"]}  # fmt: skip
    save(oof_figures)
    stage(root, "runs", "tile-filter", "unet_resnet18_cpu.yaml", overrides)
    scores = pd.concat(
        pd.read_csv(p).assign(fold=p.parent.name)
        for p in (root / "runs" / "models" / "hubmap" / "unet_resnet18_cpu").glob("fold*/tile_filter.csv")
    )  # fmt: skip
    min_dice = load_run_config(
        REPO / CONFIGS / "filtered.yaml", overrides
    ).data.tile_filter.min_dice
    figures = oof_figures | {"hubmap_filter_tiles": len(scores),
                             "hubmap_filter_dropped_share": float((scores["dice"] >= min_dice).mean())}  # fmt: skip
    for run, config in (("filtered", "filtered.yaml"), ("continued", "continued.yaml")):
        stage(root, "runs", "train", config, overrides)
        summary = oof(root, "runs", run)
        figures |= {f"hubmap_filter_{run}_oof_dice": summary["oof_dice"],
                    f"hubmap_filter_{run}_train_seconds": train_seconds(root, "runs", run)}  # fmt: skip
        if summary["threshold_search"] != figures["_mode"]:
            raise RuntimeError(f"{run}: {summary['threshold_search']} against {figures['_mode']}")
        save(figures)
    return figures


MISSED = 0.3


def extras(root: Path, overrides: list[str], save) -> dict:
    missed = [f"data.synthetic_unannotated={MISSED}",
              f"data.extra_annotations={root / 'missed' / 'extra_annotations'}"]  # fmt: skip
    figures: dict = {"hubmap_extras_missed_share": MISSED}
    for use, name in (("score", "without"), ("both", "with")):
        seconds = stage(root, name, "train", "unet_resnet18_cpu.yaml",
                        [*missed, f"data.extra_use={use}", *overrides], synthetic="missed")  # fmt: skip
        summary = oof(root, name, "unet_resnet18_cpu")
        if summary["truth"] != "train.csv + data.extra_annotations":
            raise RuntimeError(f"{name}: scored against {summary['truth']}")
        figures |= {f"hubmap_extras_{name}_oof_dice": summary["oof_dice"],
                    f"hubmap_extras_{name}_seconds": seconds, "_mode": summary["threshold_search"]}  # fmt: skip
        save(figures)
    return figures


COMPARE = {"sampling": (sampling, "make hubmap-folds: static tiles against windows drawn every epoch"),
           "extras": (extras, "make hubmap-folds on annotations that miss glomeruli: without and with the extra annotations"),
           "filter": (tile_filter, "make hubmap-folds: the tile filter on every fold, against the same continuation on every tile")}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=sorted(COMPARE), required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--root", type=Path, help="keep the runs here (default: a temporary "
                        "folder); a re-run with the same --root skips the stages that finished")  # fmt: skip
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    overrides = [*(SMOKE if args.smoke else []), *args.overrides]
    compare, title = COMPARE[args.compare]

    def save(figures: dict) -> None:  # after each run: a run cut short keeps what finished
        if args.out:
            args.out.write_text(json.dumps(figures | {"overrides": overrides}, indent=2))

    if args.root is not None:
        args.root.mkdir(parents=True, exist_ok=True)
        figures = compare(args.root.resolve(), overrides, save)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            figures = compare(Path(scratch), overrides, save)
    mode = figures.pop("_mode")
    print(f"threshold search: {mode}")
    save(figures | {"mode": mode})
    if not args.smoke:
        record(figures, title)
    else:
        print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
