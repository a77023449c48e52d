"""The seed's techniques, each on and off against one recipe, on both SCR folds (the ablation of
docs/RESULTS.md).

    python -m experiments.lung_techniques --config competitions/lung/configs/unet_resnet18_cpu.yaml \
        --prefix abl [--variants baseline,boundary,...] [key.sub=value ...]

Each variant is ``make lung-folds`` of the config with the common overrides and its own, run
as ``<prefix>_<variant>`` in a fresh process, one after the other (so the wall times compare);
``refine`` trains ``clavicles_refine.yaml`` on ``<prefix>_baseline``'s boxes (run it after
``baseline``; its wall time is the second stage's only);
a variant whose submission JSON already exists is not run again. The table (Jaccard and Dice per
group over every held-out case at the scoring size, the change against ``baseline``, wall
time and the median training epoch time, which other work on the machine moves less) is
written to ``models/lung/<prefix>_techniques.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from common.config import load_run_config
from common.io.atomic import write_text_atomic

LOSS = "{name: bce, weight: 1.0}, {name: dice, weight: 1.0}"
VARIANTS = {
    "baseline": [],
    "boundary": [f"loss.terms=[{LOSS}, {{name: boundary, weight: 1.0}}]"],
    "hausdorff": [f"loss.terms=[{LOSS}, {{name: hausdorff, weight: 1.0, alpha: 2.0}}]"],
    "learned_weights": ["loss.learned_weights=true"],
    "clahe": ["data.preprocess.name=clahe"],
    "cutmix": ["data.mix.cutmix.p=0.5"],
    "cutout": ["data.mix.cutout.p=0.5", "data.mix.cutout.holes=2", "data.mix.cutout.size=0.15"],
    # a second model on crops around the baseline's clavicles (@: a config of the same folder)
    "refine": ["@clavicles_refine.yaml", "data.crop_stage.run=models/lung/{prefix}_baseline"],
}
GROUPS = ("lungs", "heart", "clavicles")


def run_variant(config: str, name: str, overrides: list[str], submissions: Path) -> dict:
    """Train and score both folds of one variant in a fresh process (skipped when its JSON
    exists); returns its report with ``wall_seconds``."""
    report_path = submissions / f"{name}.json"
    timing = report_path.with_suffix(".wall")
    if not report_path.is_file():
        start = time.perf_counter()
        command = [sys.executable, "-m", "common.cli", "train", "--competition", "lung", "--config", config,
                   "--folds", "0,1", f"name={name}", *overrides]  # fmt: skip
        result = subprocess.run(command)
        if result.returncode != 0:
            raise ValueError(f"variant {name} failed (exit {result.returncode})")
        write_text_atomic(timing, f"{time.perf_counter() - start:.1f}\n")
    report = json.loads(report_path.read_text())
    report["wall_seconds"] = float(timing.read_text()) if timing.is_file() else None
    report["epoch_seconds"] = epoch_seconds(Path(load_run_config(config, overrides).output) / name)
    return report


def epoch_seconds(run: Path) -> float | None:
    """The median training epoch time over the run's folds (``log.csv``): a cost figure that
    other work on the machine during a few epochs does not move, unlike the wall time."""
    logs = sorted(run.glob("fold*/log.csv"))
    if not logs:
        return None
    seconds = pd.concat([pd.read_csv(log)["seconds"] for log in logs])
    return float(seconds.median())


def table(rows: dict[str, dict]) -> str:
    base = rows.get("baseline")
    lines = [
        "| variant | lungs | heart | clavicles | mean | change of the mean | clavicles Dice | s/epoch | wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, report in rows.items():
        jaccard = [report["groups"][g]["jaccard"] for g in GROUPS]
        mean = sum(jaccard) / len(jaccard)
        change = "" if base is None or variant == "baseline" else f"{mean - base['cv']:+.4f}"
        wall, epoch = report.get("wall_seconds"), report.get("epoch_seconds")
        lines.append(
            f"| {variant} | " + " | ".join(f"{v:.4f}" for v in jaccard) + f" | {mean:.4f} | "
            f"{change} | {report['groups']['clavicles']['dice']:.4f} | "
            + (f"{epoch:.1f} | " if epoch else "? | ")
            + (f"{wall / 60:.1f} min |" if wall else "? |")
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--prefix", required=True, help="run names are <prefix>_<variant>")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("overrides", nargs="*", help="key.sub=value for every variant")
    args = parser.parse_args(argv)
    try:
        variants = [v for v in args.variants.split(",") if v]
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
        config = load_run_config(args.config, args.overrides)  # fails before any training
        rows = {}
        for variant in variants:
            name = f"{args.prefix}_{variant}"
            own = [o.replace("{prefix}", args.prefix) for o in VARIANTS[variant]]
            path = args.config
            if own and own[0].startswith("@"):
                path, own = str(Path(args.config).parent / own[0][1:]), own[1:]
            overrides = [*args.overrides, *own]
            rows[variant] = run_variant(path, name, overrides, Path(config.submissions))
        text = table(rows)
        out = Path(config.output) / f"{args.prefix}_techniques"
        write_text_atomic(out.with_suffix(".md"), text + "\n")
        summary = {v: {"jaccard": {g: r["groups"][g]["jaccard"] for g in GROUPS},
                       "dice": {g: r["groups"][g]["dice"] for g in GROUPS},
                       "wall_seconds": r["wall_seconds"], "epoch_seconds": r["epoch_seconds"]}
                   for v, r in rows.items()}  # fmt: skip
        write_text_atomic(out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
        print(text)
    except ValueError as error:
        sys.exit(f"lung techniques: {error}")


if __name__ == "__main__":
    main()
