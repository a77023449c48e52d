"""Ensemble prediction for any competition: trained fold models averaged with weights, image by
image, at each image's native (or scoring) size, over every mask channel. A model trained on
crops (``data.crop_stage``) reads its crops and its map is pasted back into the whole image.

Each fold model reads the prepared images at its own training size; models that share a size
share one loader, and the loaders run in lockstep over the same ids, so at any time only one
batch of each is in memory, whatever the number of images. Probability maps are resized to the
image's native (height, width) before averaging, then quantised to uint8.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from common.config import Config, to_config
from common.data.crops import Box, crop_dir, paste, prepared_root, read_box_table
from common.data.datasets import SegmentationDataset, check_preprocess
from common.infer.inference import TtaPolicy, predict_tensor
from common.infer.memory import trim_heap
from common.post.postprocess import quantise
from common.train.checkpoints import load_checkpoint
from common.train.models import build_model

TRIM_EVERY = 64  # images between two heap trims


@dataclass
class FoldModel:
    experiment: str
    fold: int
    weight: float
    model: nn.Module
    config: Config  # the resolved config stored in the checkpoint
    channels: tuple[int, ...] | None = None  # the ensemble's channels it predicts; None = all

    @property
    def size(self) -> int:
        return self.config.data.size

    @property
    def images(self) -> Path:
        return prepared_root(self.config.data, fold=self.fold) / "images"

    @cached_property
    def boxes(self) -> dict[str, Box] | None:
        """Each image's crop box in its full frame, for a model trained on crops (a crop
        stage, ``common.infer.cascade``); None for a model of whole images."""
        folder = crop_dir(self.config.data, fold=self.fold)
        return None if folder is None else read_box_table(folder)


FINAL_CONFIG = "final.yaml"  # beside final.pt: the resolved config it was trained with


def final_path(output: str | Path, experiment: str, fold: int) -> Path:
    return Path(output) / experiment / f"fold{fold}" / "final.pt"


def final_config(output: str | Path, experiment: str, fold: int) -> Config:
    """The resolved config of a fold's ``final.pt`` (its last part's), read from ``final.yaml``
    without loading the weights; a run from before that file existed falls back to the copy
    stored in the checkpoint."""
    path = final_path(output, experiment, fold)
    stored = path.with_name(FINAL_CONFIG)
    if stored.is_file():
        return to_config(yaml.safe_load(stored.read_text()))
    if not path.is_file():
        raise ValueError(f"{path} not found: {experiment} fold {fold} is not trained")
    return to_config(load_checkpoint(path)["config"])


def load_fold_model(
    output: str | Path,
    experiment: str,
    fold: int,
    weight: float,
    device: torch.device,
    *,
    classes: int | None = 1,
    prepared: str | Path | None = None,
    channels: Sequence[str] | None = None,
) -> FoldModel:
    """A fold's ``final.pt`` with ``classes`` mask channels (None: as many as its segmentation
    head has), rebuilt from the config stored inside it (no weights downloaded). ``prepared`` replaces the prepared-data folder of that config
    (e.g. in a Kaggle notebook)."""
    path = final_path(output, experiment, fold)
    state = load_checkpoint(path)
    heads = [v for k, v in state["model"].items() if k.endswith("segmentation_head.0.weight")]
    head = int(heads[0].shape[0]) if heads else None
    if classes is None:  # as many as the checkpoint's segmentation head has
        if head is None:
            raise ValueError(f"{path}: not a segmentation model (no segmentation head)")
        classes = head
    config = to_config(state["config"])
    subset = None
    if channels is not None and head is not None and head != len(channels):
        names = list(config.data.get("structures") or [])  # a refinement stage's channels
        if len(names) != head or not set(names) <= set(channels):
            raise ValueError(f"{path}: predicts {head} channel(s) {names}, not the ensemble's "
                             f"{list(channels)} or a subset of them")  # fmt: skip
        subset, classes = tuple(list(channels).index(n) for n in names), head
    if prepared:
        config["data"]["prepared"] = str(prepared)
    m = config.model
    model = build_model(
        task=m.task,
        arch=m.arch,
        encoder=m.encoder,
        in_channels=config.data.in_channels,
        cls_head=m.cls_head,
        classes=classes,
        params=m.params,
    )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit the model in its config: {error}") from None
    return FoldModel(experiment, fold, weight, model.to(device).eval(), config, subset)


@dataclass(frozen=True)
class Prediction:
    image_id: str
    mask: np.ndarray | None  # (C, H, W) uint8 quantised maps at the image's size (segmenters)
    head: float | None  # weighted mean of the segmentation models' classification heads
    classifier: float | None  # weighted mean of the classifiers


@dataclass(frozen=True)
class PredictOptions:
    """How every fold model predicts: TTA views (undone through ``policy``), extra input sides
    for multi-scale TTA, and the loaders' batch size and workers."""

    device: torch.device
    tta: tuple[str, ...] = ("none",)
    scales: tuple[int, ...] = ()
    policy: TtaPolicy | None = None
    batch_size: int = 8
    num_workers: int = 0


def _preprocess_key(m: FoldModel) -> str:
    """The run's ``data.preprocess`` as a hashable key (models sharing it share a loader)."""
    return json.dumps(check_preprocess(m.config.data.get("preprocess")), sort_keys=True)


def predict_ids(
    ids: list[str],
    shapes: dict[str, tuple[int, int]],
    segmenters: list[FoldModel],
    classifiers: list[FoldModel],
    options: PredictOptions,
) -> Iterator[Prediction]:
    """One ``Prediction`` per id, in order, from the weighted mean of the models."""
    models = segmenters + classifiers
    if not models:
        raise ValueError("an ensemble needs at least one model")
    groups: dict[tuple, list[FoldModel]] = {}
    for m in models:
        key = (str(m.images), m.size, m.config.data.in_channels, _preprocess_key(m))
        groups.setdefault(key, []).append(m)
    loaders = [
        DataLoader(
            SegmentationDataset(
                ids, images, size=size, in_channels=channels, preprocess=dict(json.loads(spec))
            ),
            batch_size=options.batch_size,
            shuffle=False,
            num_workers=options.num_workers,
        )
        for images, size, channels, spec in groups
    ]
    forward = {"device": options.device, "tta": options.tta, "scales": options.scales}
    forward["policy"] = options.policy
    seg_weight = sum(m.weight for m in segmenters)
    cls_weight = sum(m.weight for m in classifiers)
    # a model of some channels only (a refinement stage) replaces the others on those channels
    specialist = sorted({c for m in segmenters if m.channels for c in m.channels})
    if specialist and all(m.channels for m in segmenters):
        raise ValueError("a member of some channels only needs a member that predicts them all")
    remaps = options.policy.remap if options.policy is not None else {}
    if specialist and any(view in remaps for view in options.tta):
        raise ValueError("a TTA view that remaps channels (hflip with left/right swapped back) "
                         "cannot be applied to a member of some channels only")  # fmt: skip
    full = sum(m.weight for m in segmenters if not m.channels)
    special = {c: sum(m.weight for m in segmenters if m.channels and c in m.channels)
               for c in specialist}  # fmt: skip
    start = 0
    for batches in zip(*loaders, strict=True):
        if start % TRIM_EVERY < options.batch_size:
            trim_heap()  # flat memory whatever the number of images (see common.infer.memory)
        n = len(batches[0]["image"])
        batch_ids = ids[start : start + n]
        start += n
        maps: list | None = [None] * n if segmenters else None
        parts: list[list] = [[] for _ in range(n)]  # specialists' maps, added at the end
        head = np.zeros(n) if segmenters else None
        cls = np.zeros(n) if classifiers else None
        for batch, group in zip(batches, groups.values(), strict=True):
            for m in group:
                probs = predict_tensor(m.model, batch["image"], **forward)
                if m.config.model.task == "classification":
                    cls += m.weight * probs["label"]
                    continue
                for k, prob in enumerate(probs["mask"]):
                    shape = shapes[batch_ids[k]]
                    if m.boxes is None:
                        native = _resize_channels(prob, shape) * m.weight
                    else:  # a crop's map back in the whole image, zero outside its box
                        native = paste(prob, m.boxes[batch_ids[k]].scaled(shape)) * m.weight
                    if m.channels:
                        parts[k].append((list(m.channels), native))
                        continue
                    native[specialist] = 0
                    maps[k] = native if maps[k] is None else maps[k] + native
                head = head + m.weight * probs["label"] if "label" in probs else None
        for k, image_id in enumerate(batch_ids):
            if maps is not None:
                weights = np.full(len(maps[k]), full if specialist else seg_weight, np.float32)
                for c, w in special.items():
                    weights[c] = w
                for channels, native in parts[k]:
                    maps[k][channels] += native
                maps[k] /= weights[:, None, None]
            yield Prediction(
                image_id,
                quantise(maps[k]) if maps is not None else None,
                float(head[k] / seg_weight) if head is not None else None,
                float(cls[k] / cls_weight) if cls is not None else None,
            )


def _resize_channels(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, h, w) float maps at (C, H, W), bilinearly."""
    height, width = shape
    if prob.shape[1:] == (height, width):
        return prob.astype(np.float32, copy=True)
    return np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in prob])
