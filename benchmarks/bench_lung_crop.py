"""Lung crop first (SIIM 3rd place) on real chest X-rays: does the crop keep every annotated
pneumothorax pixel, how much of the image does it keep, and what does it buy in training speed?

Needs the shared test data (13 real SIIM train DICOMs, 7 of them positive, with the stage-1
``train-rle.reconstructed.csv``) and a lung run trained on the real JSRT/SCR cases, by default
``models/lung/lungs_256`` (``make lung-fold0 LUNG_CONFIG=competitions/lung/configs/lungs_only.yaml
ARGS="data.raw=<JSRT/SCR folder> data.size=256 data.crop=0 train.epochs=10 name=lungs_256"``);
``LUNG_RUN=<models/lung/name>`` picks another. Figures:

- per image: the box's share of the pixels, whether it fell back to the whole image, and the
  share of the annotated pneumothorax pixels inside it (must be 1.0);
- the training speed-up of the default SIIM model (Unet/resnet18, forward + backward, batch 8)
  at the crop's side for the same effective resolution as 256 px on the whole image
  (256 x sqrt(mean share), rounded to 32) against 256 px.

Both box shapes are measured: ``square`` (the box widened to a square, as far as the image
allows) and ``rect`` (the lungs' box with its margin, resized to the square training size).
The boxes drawn over the images go to ``<lung run>/siim_crops_square.png`` and ``_rect.png``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._util import SHARED_DATA, record
from common.infer.cascade import load_stage, predict_boxes
from common.io.dicom import read_dicom
from common.io.paths import models_dir
from common.io.rle_csv import merged_masks, read_rle_csv
from common.plots import mask_overlays
from common.train.models import build_model


def _train_speed(side: int, steps: int = 6) -> float:
    torch.manual_seed(0)
    model = build_model(
        task="segmentation", arch="Unet", encoder="resnet18", in_channels=3, classes=1
    )
    optimiser = torch.optim.AdamW(model.parameters(), 1e-4)
    x, y = torch.randn(8, 3, side, side), (torch.rand(8, 1, side, side) > 0.9).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        optimiser.zero_grad()
        loss_fn(model(x)["mask"], y).backward()
        optimiser.step()
    return 8 * steps / (time.perf_counter() - start)


def main() -> None:
    siim = SHARED_DATA / "siim"
    run = Path(os.environ.get("LUNG_RUN", models_dir("lung") / "lungs_256"))
    if not (siim / "dicom").is_dir() or not (run / "fold0" / "final.pt").is_file():
        print(f"skipped: needs {siim / 'dicom'} and a lung run {run}/fold0/final.pt")
        return
    stage = load_stage(run.parent, run.name, [0], torch.device("cpu"))
    files = sorted((siim / "dicom").glob("*.dcm"))
    images = {f.stem: read_dicom(f) for f in files}
    labels = read_rle_csv(siim / "train-rle.reconstructed.csv")
    truth = merged_masks(labels[labels["ImageId"].isin(images)], (1024, 1024))
    figures = {}
    for shape, square in (("square", True), ("rect", False)):
        boxes = dict(
            predict_boxes(stage, images.items(), required=(0, 1), margin=0.1, square=square)
        )
        kept, inside, fallbacks, panels = [], [], 0, []
        for image_id, box in boxes.items():
            kept.append(box.kept())
            fallbacks += bool(box.fallback)
            region = np.zeros((1024, 1024), np.uint8)
            region[box.y0 : box.y1, box.x0 : box.x1] = 1
            mask = truth.get(image_id)
            if mask is not None and mask.any():
                inside.append(float((mask & region).sum() / mask.sum()))
            panels.append(
                (f"{image_id[-12:]} kept {box.kept():.2f}", images[image_id], mask, region)
            )
        mask_overlays(panels, run / f"siim_crops_{shape}.png", columns=5)
        side = 256
        crop_side = max(32, round(side * math.sqrt(float(np.mean(kept))) / 32) * 32)
        whole, cropped = _train_speed(side), _train_speed(crop_side)
        figures |= {
            "lung_crop_images": len(boxes),
            "lung_crop_positive_images": len(inside),
            f"lung_crop_{shape}_fallbacks": fallbacks,
            f"lung_crop_{shape}_mean_share_kept": float(np.mean(kept)),
            f"lung_crop_{shape}_min_share_kept": float(np.min(kept)),
            f"lung_crop_{shape}_max_share_kept": float(np.max(kept)),
            f"lung_crop_{shape}_min_pneumothorax_inside": float(min(inside))
            if inside
            else math.nan,
            f"lung_crop_{shape}_crop_side": crop_side,
            f"lung_crop_{shape}_train_speedup": cropped / whole,
        }
    record(figures, f"lung crop on {len(boxes)} real SIIM DICOMs ({run.name}, CPU)")
    print(f"-> {run}/siim_crops_square.png, siim_crops_rect.png")


if __name__ == "__main__":
    main()
