"""``make fold0 DATASET=...`` against a plain hand-written smp U-Net script given the same minutes,
on a dataset folder of real chest X-rays (``benchmarks.jsrt_folder``: 40 training and 20 test
images of 512 px, the heart mask; skipped when the shared data is absent).

    python -m benchmarks.bench_folder [--minutes M]

1. the pipeline: ``python -m common.cli train --dataset F`` (fold 0: plan, prepare, train, the
   out-of-fold search), then ``ensemble`` (the test submission, scored against test/masks/);
2. the plain script, in this process: the same fold-0 training images resized to 256, an smp
   Unet/ResNet-18 from random init, BCE + Dice, Adam 1e-3, horizontal flips, batch 8, trained
   until the pipeline's whole wall time (step 1) is spent, then the test images predicted at 256,
   resized to 512 and thresholded at 0.5; and, since its score swings from epoch to epoch, also
   scored at every epoch end between 0.9 and 1.1 times that time;

both scored the same way: mean Dice per test image. Prints the figures and writes them to
``benchmarks/results.json`` (``folder``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from benchmarks._util import record
from benchmarks.jsrt_folder import SHARED, build
from common.data.folds import read_folds
from common.io.paths import REPO
from common.post.metrics import dice_per_image


def _pipeline(folder: Path, workspace: Path) -> tuple[float, dict]:
    env = os.environ | {"KSEG_WORKSPACE": str(workspace)}
    start = time.perf_counter()
    for stage in ("train", "ensemble"):
        subprocess.run([sys.executable, "-m", "common.cli", stage, "--dataset", str(folder)],
                       cwd=REPO, env=env, check=True)  # fmt: skip
        if stage == "train":
            fold0 = time.perf_counter() - start
    report = pd.read_json(workspace / "submissions" / folder.name / "default.json", typ="series")
    return fold0, report.to_dict() | {"total_seconds": time.perf_counter() - start}


def _read(folder: Path, split: str, ids, size: int | None):
    images, masks = [], []
    for i in ids:
        image = cv2.imread(str(folder / split / "images" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(folder / split / "masks" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) > 127
        if size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        images.append(image)
        masks.append(mask)
    x = torch.tensor(np.stack(images), dtype=torch.float32)[:, None].repeat(1, 3, 1, 1) / 255
    return (x - 0.5) / 0.25, torch.tensor(np.stack(masks), dtype=torch.float32)[:, None]


def plain_script(folder: Path, train_ids, seconds: float, size: int = 256) -> dict[str, float]:
    """The hand-written baseline (see the module docs), trained for ``seconds`` and on to 1.1
    times that: its mean test Dice when the time runs out (``at_budget``), and over every
    stopping point (epoch end) between 0.9 and 1.1 times it (``mean``, ``min``, ``max``,
    ``stops``): with a constant learning rate its score swings from one epoch to the next, so
    one stopping point alone says little. The test evaluations are not counted as its time."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    x, y = _read(folder, "train", train_ids, size)
    test_ids = sorted(p.stem for p in (folder / "test" / "images").glob("*.png"))
    xt, _ = _read(folder, "test", test_ids, size)
    _, truth = _read(folder, "test", test_ids, None)
    model = smp.Unet("resnet18", encoder_weights=None, classes=1)
    dice = smp.losses.DiceLoss("binary")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def test_dice() -> float:
        model.eval()
        with torch.no_grad():
            prob = torch.sigmoid(torch.cat([model(b) for b in xt.split(8)]))
        pred = torch.nn.functional.interpolate(prob, size=truth.shape[-2:], mode="bilinear") > 0.5
        return float(dice_per_image(pred[:, 0].numpy(), truth[:, 0].numpy() > 0).mean())

    spent, epochs, at_budget, stops = 0.0, 0, None, []
    while spent < 1.1 * seconds:
        start = time.perf_counter()
        model.train()
        for batch in torch.randperm(len(x)).split(8):
            xb, yb = x[batch], y[batch]
            flip = torch.rand(len(batch)) < 0.5
            xb[flip], yb[flip] = xb[flip].flip(-1), yb[flip].flip(-1)
            logits = model(xb)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb) + dice(
                logits, yb
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        spent += time.perf_counter() - start
        epochs += 1
        if spent >= 0.9 * seconds:
            stops.append(test_dice())
            if at_budget is None and spent >= seconds:
                at_budget = stops[-1]
                print(f"plain script: {epochs} epochs in {spent:.0f} s: test Dice {at_budget:.4f}")
    print(f"plain script: test Dice over {len(stops)} stopping points in 0.9-1.1x the time: "
          + " ".join(f"{v:.3f}" for v in stops))  # fmt: skip
    return {"at_budget": at_budget, "mean": float(np.mean(stops)), "min": min(stops),
            "max": max(stops), "stops": len(stops)}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="a scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (the shared test data)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        folder = build(work / "jsrt_heart")
        fold0_seconds, report = _pipeline(folder, work / "workspace")
        folds = read_folds(work / "workspace" / "data" / folder.name / "folds.csv")
        train_ids = folds.loc[folds["fold"] != 0, "ImageId"].tolist()
        plain = plain_script(folder, train_ids, fold0_seconds)
    figures = {
        "make_fold0_seconds": round(fold0_seconds, 1),
        "ensemble_total_seconds": round(report["total_seconds"], 1),
        "oof_dice_fold0": round(report["oof_dice"], 4),
        "test_dice_pipeline": round(report["test_score"], 4),
        "test_dice_plain_smp_same_minutes": round(plain["at_budget"], 4),
        "test_dice_plain_smp_stops_mean": round(plain["mean"], 4),
        "test_dice_plain_smp_stops_min": round(plain["min"], 4),
        "test_dice_plain_smp_stops_max": round(plain["max"], 4),
        "plain_smp_stops": plain["stops"],
        "test_dice_all_empty": round(report["test_empty_score"], 4),
    }
    record({f"folder_{k}": v for k, v in figures.items()},
           "make fold0 DATASET=<40 + 20 JSRT images, heart> against a plain smp script")  # fmt: skip


if __name__ == "__main__":
    main()
