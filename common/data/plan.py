"""The auto plan of a dataset folder (nnU-Net's idea): a fingerprint of the data picks the
training size, crop or resize, batch size, epochs, non-empty sampling, post-processing search and
TTA. Each choice is a config override with the reason; ``key=value`` on the command line wins.

The fingerprint is computed from prepare's per-image table (``FINGERPRINT_COLUMNS``): sizes,
channels, intensity range, each class's pixel share, the share of empty masks and object sizes.
Rules (budgets stated for the device the run trains on):

- size: images of side <= 384 train whole at their side rounded up to a multiple of 32; larger
  ones are resized to 256, unless their median object would shrink under 8 x 8 px there: then
  they are prepared at up to 512 and trained on random 256 crops (validated whole);
- batch: 8 images of 256^2 on a CPU (32 on a GPU), scaled with the pixel count, 2 to 64; on a
  CPU the images load in the training process (workers would take the model's cores);
- epochs: what fits ``plan.minutes`` of training at the throughput measured on this machine
  (a few steps of the model at 256^2 before planning; machines differ several-fold), counting
  each epoch's validation, 8 to 80 epochs;
- learning rate: 1e-3 for a model from random init (the schema's 3e-4 suits pretrained
  encoders; a short run from scratch needs the larger step);
- sampling: non-empty images drawn at 60% of every epoch when more than half are empty;
- post-processing: the triplet search (top, min area, bottom) for one class, a threshold per
  class for several; TTA: hflip unless the dataset says it is orientation-sensitive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

FINGERPRINT_COLUMNS = ("height", "width", "channels", "p01", "p99", "mean", "objects",
                       "median_object")  # fmt: skip
EPOCHS = (8, 80)  # the fewest and the most epochs a plan gives
# a CPU epoch takes longer than its bare steps: loading, augmentation, validation metrics
# (measured on a 2-core CPU at 256^2 with the loading in the training process: 15.5 s an epoch
# against 14.4 s predicted from the probe)
CPU_LOOP_OVERHEAD = 1.1
MIN_OBJECT_SIDE = 8  # px at the training size under which a smaller resize loses objects


def fingerprint(train: pd.DataFrame, classes: Sequence[str]) -> dict:
    """Dataset statistics from prepare's table of training images (one row per image: native
    ``height``, ``width``, ``channels``, intensity percentiles, ``area_<class>`` pixels,
    ``objects`` and ``median_object`` area)."""
    pixels = (train["height"] * train["width"]).astype(np.float64)
    areas = train[[f"area_{c}" for c in classes]].to_numpy(np.float64)
    empty = (areas.sum(axis=1) == 0).mean()
    objects = train.loc[train["objects"] > 0, "median_object"]
    return {
        "images": len(train),
        "height": int(train["height"].median()),
        "width": int(train["width"].median()),
        "sizes": int(train[["height", "width"]].drop_duplicates().shape[0]),
        "side": int(np.median(np.maximum(train["height"], train["width"]))),
        "channels": int(train["channels"].max()),
        "intensity": [float(train["p01"].median()), float(train["p99"].median())],
        "class_share": {c: float(areas[:, i].sum() / pixels.sum()) for i, c in enumerate(classes)},
        "empty_share": float(empty),
        "objects_per_image": float(train["objects"].mean()),
        "median_object": float(objects.median()) if len(objects) else 0.0,
    }


def _ceil32(value: float) -> int:
    return int(math.ceil(value / 32) * 32)


def make_plan(
    print_: dict,
    *,
    n_train: int,
    n_val: int,
    throughput: float,
    minutes: float,
    gpu: bool = False,
    orientation_sensitive: bool = False,
    random_init: bool = True,
) -> list[tuple[str, object, str]]:
    """(config key, value, reason) of every planned choice, from a ``fingerprint``, the
    training and validation image counts of a fold, and ``throughput``: training images of
    256^2 a second measured on this machine."""
    side, n_classes = print_["side"], len(print_["class_share"])
    plan: list[tuple[str, object, str]] = []
    object_at_256 = math.sqrt(max(print_["median_object"], 1.0)) * 256 / side
    if side <= 384:
        size, crop = _ceil32(side), 0
        why = f"images of side {side} train whole"
    elif object_at_256 >= MIN_OBJECT_SIDE or print_["median_object"] == 0:
        size, crop = 256, 0
        why = f"side {side} resized: the median object stays {object_at_256:.0f} px wide at 256"
    else:
        size, crop = min(_ceil32(side), 512), 256
        why = (f"the median object would be {object_at_256:.1f} px wide at 256: prepared at "
               f"{min(_ceil32(side), 512)}, trained on 256 crops")  # fmt: skip
    plan.append(("data.size", size, why))
    plan.append(
        ("data.crop", crop, "whole images" if not crop else "random crops, validated whole")
    )
    side_trained = crop or size
    scale = (256 / side_trained) ** 2
    batch = int(np.clip(round((32 if gpu else 8) * scale), 2, min(64, max(2, n_train // 2))))
    plan.append(("data.batch_size", batch, f"{'GPU' if gpu else 'CPU'}: 8 x 256^2 scaled"
                 if not gpu else "GPU: 32 x 256^2 scaled"))  # fmt: skip
    plan.append(("data.val_batch_size", batch * 2, "twice the training batch"))
    if random_init:
        plan.append(("optim.lr", 1e-3, "random init: a short run needs the larger step (cosine "
                     "to 1e-6)"))  # fmt: skip
    if not gpu:  # worker processes would take cores from the model's threads
        plan.append(("data.num_workers", 0, "CPU: images load in the training process "
                     "(2 workers on 2 cores: 18-20 s an epoch against 15-16 s)"))  # fmt: skip
    speed = throughput * scale  # training images a second at the planned side
    val_speed = 3 * speed * (side_trained / size) ** 2  # forward only, whole images
    epoch = (n_train / speed + n_val / val_speed) * (1.0 if gpu else CPU_LOOP_OVERHEAD)
    epochs = int(np.clip(minutes * 60 // epoch, *EPOCHS))
    why = (f"{minutes:g} min at {speed:.1f} img/s measured here ({epoch:.0f} s an epoch with "
           f"validation)")  # fmt: skip
    plan.append(("train.epochs", epochs, why))
    if print_["empty_share"] > 0.5:
        plan.append(("data.sample_rate.kind", "fixed", f"{print_['empty_share']:.0%} empty masks"))
        plan.append(("data.sample_rate.start", 0.6, "60% of each epoch non-empty"))
    else:
        plan.append(
            ("data.sample_rate.kind", "none", f"{print_['empty_share']:.0%} empty: shuffle")
        )
    if n_classes == 1:
        plan.append(("search.tops", None, "triplet search: top, min area, bottom (one class)"))
    else:
        plan.append(("search.tops", [0.0], f"a threshold per class ({n_classes} classes)"))
        plan.append(("search.min_areas", [0], "per-class thresholds only"))
    tta = ["none"] if orientation_sensitive else ["none", "hflip"]
    transforms = "upright" if orientation_sensitive else "light"
    why = "orientation-sensitive: no flips" if orientation_sensitive else "flips keep the labels"
    plan.append(("predict.tta", tta, why))
    plan.append(("data.transforms", transforms, why))
    return plan


def plan_overrides(plan) -> list[str]:
    """The plan as ``key=value`` config overrides (YAML values)."""
    import yaml

    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value, _ in plan]  # fmt: skip


def plan_table(print_: dict, plan, effective: dict | None = None) -> str:
    """The fingerprint and the plan as a Markdown table (what is printed and saved);
    ``effective`` maps a key to the run's value where an override changed the plan's."""
    lines = ["| fingerprint | value |", "|---|---|"]
    for key, value in print_.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v:.2%}" for k, v in value.items())
        elif isinstance(value, list):
            value = " to ".join(f"{v:.4g}" for v in value)
        lines.append(f"| {key} | {value} |")
    lines += ["", "| plan | value | why |", "|---|---|---|"]
    for key, value, why in plan:
        if effective and key in effective and effective[key] != value:
            value, why = effective[key], f"overridden (the plan: {value}, {why})"
        lines.append(f"| {key} | {value} | {why} |")
    return "\n".join(lines)
